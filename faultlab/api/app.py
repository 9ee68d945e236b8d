"""The control API as an ASGI app (Starlette), over a :class:`~faultlab.api.protocol.Control`.

Resources, shaped after Toxiproxy's API (JSON in and out; errors as ``{"error": MESSAGE, "status": N}``)::

    GET    /                            what this is, and the resources below
    GET    /version                     {"version": "0.1.0"}
    GET    /profiles                    the profile library: [{"name", "summary", "source"}]
    GET    /active                      {"global": ENTRY | null, "devices": {DEVICE: ENTRY}}
    PUT    /active                      {"profile": NAME | null} -> the new /active
    GET    /devices                     {DEVICE: ENTRY} (the devices with a profile of their own)
    GET    /devices/{device}/profile    {"device", "profile": ENTRY}; 404 if the device has none
    PUT    /devices/{device}/profile    {"profile": NAME | null} -> {"device", "profile": ENTRY | null}
    DELETE /devices/{device}/profile    204 (same as PUT null)
    GET    /rules[?device=D]            the rules in force, in order
    GET    /rules/{name}[?device=D]     one rule
    POST   /rules                       {"rule": {...}, "device"?: D, "index"?: N} -> 201, the rule
    DELETE /rules/{name}[?device=D]     204
    GET    /holds                       held messages
    POST   /holds/release               {"id"?: ID} ({} releases all) -> {"released": N}
    GET    /flows                       open flows
    GET    /seed                        {"seed": N}
    GET    /events[?since=T|?after=SEQ] the timeline from now on: NDJSON, or SSE with Accept: text/event-stream;
                                        with since/after (or SSE's Last-Event-ID), what the proxy still holds first
    GET    /ca                          the lab CA install page for phones (and /ca/faultlab-ca.mobileconfig,
                                        /ca/faultlab-ca.pem): public, no token (see faultlab.api.ca_page)
    GET    / (Accept: text/html)        the web page (and /static/app.js, /static/app.css): public, no token
    GET    /schema/events.json          the JSON Schemas of POST /events and of a push-stream line
    GET    /schema/push-stream.json     (application/schema+json): public, no token
    GET    /api/ladder[?call=ID]        {"call", "calls", "rows"}: a call's ladder (default: the newest INVITE's)
    GET    /api/scenarios               the scenario catalogue
    GET    /api/guided                  the guided run: prompts, call, verdict ({"phase": "idle"} if none)
    POST   /api/guided/start            {"scenario": ID, "device"?: D}: the scenario's own faults on, guiding
    POST   /api/guided/stop             {}: end the guided run, the profile before it back
    POST   /events                      device events from an app (docs/device-events.md) -> {"accepted": N}
    GET    /prompts[?since=SEQ]         the guided run's prompts for programs: NDJSON, or SSE (faultlab.lab.prompts)
    (these in faultlab.api.web)

ENTRY is ``{"name", "summary", "activated_at"}``; DEVICE is ``IP`` or ``IP:PORT`` (``[v6]:PORT``),
percent-encoded in a path.

Statuses: 400 bad input (the message gives the reason; 422 for a device event that breaks its schema), 401 a token is configured and the request's
``Authorization: Bearer TOKEN`` is missing or wrong, 403 (no token configured) a ``Host`` that is not a
loopback name, 404 unknown profile, rule, hold or resource (the message lists what exists), 405 wrong
method, 413 body over 64 KiB, 415 a body that is not ``application/json``.

The last two guard the token-less loopback API against web pages in the user's own browser: a page can
send a "simple" cross-origin POST with a text/plain body, and with DNS rebinding even read answers, so
bodies must be JSON (which forces a CORS preflight, never granted) and the Host must be loopback.
"""

from __future__ import annotations

import difflib
import hmac
import ipaddress
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from faultlab import __version__

from ._http import MAX_BODY_SIZE, JSON, ApiError, error_response, json_body
from .ca_page import ca_routes, is_public
from .protocol import Control, ProfileError
from .stream import EventStream
from .web import WebPage, is_page

__all__ = ["MAX_BODY_SIZE", "create_app"]


_DEVICE_HELP = 'a device is "IP" or "IP:PORT" (IPv6 as "[::1]:5060"), percent-encoded in a path'


def create_app(control: Control, *, token: str | None = None, ca_confdir: Path | None = None) -> ASGIApp:
    """The control API over ``control``; with ``token``, every request needs ``Authorization: Bearer TOKEN``
    (but the public CA pages, served from ``ca_confdir``, default ``$FAULTLAB_HOME`` or ``~/.faultlab``)."""
    api = _Api(control)
    web = WebPage(control)
    routes = [
        _route("/", GET=web.index_or(api.index)),
        _route("/version", GET=api.version),
        _route("/profiles", GET=api.profiles),
        _route("/active", GET=api.get_active, PUT=api.put_active),
        _route("/devices", GET=api.devices),
        _route("/devices/{device}/profile", GET=api.get_device, PUT=api.put_device, DELETE=api.delete_device),
        _route("/rules", GET=api.get_rules, POST=api.post_rule),
        _route("/rules/{name:path}", GET=api.get_rule, DELETE=api.delete_rule),  # a name may hold a "/"
        _route("/holds", GET=api.holds),
        _route("/holds/release", POST=api.release),
        _route("/flows", GET=api.flows),
        _route("/seed", GET=api.seed),
        _route("/events", GET=api.events, POST=web.post_events),
        *ca_routes(ca_confdir),
        *web.routes(_route),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ApiError: _on_api_error, HTTPException: _on_http_exception, Exception: _on_crash},
    )
    return _Guard(app, token=token, public=is_page)


Endpoint = Callable[[Request], Awaitable[Response]]


def _route(path: str, **by_method: Endpoint) -> Route:
    """One route per path, so that a wrong method is a 405 whose Allow lists all the right ones."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await by_method[method](request)

    return Route(path, dispatch, methods=list(by_method), name=path)


class _Api:
    """The endpoints: each one call on the control, its errors said as HTTP statuses."""

    def __init__(self, control: Control) -> None:
        self.control = control

    async def index(self, request: Request) -> Response:
        return JSON({
            "name": "faultlab control API",
            "version": __version__,
            "resources": [
                "GET /version", "GET /profiles", "GET /active", "PUT /active", "GET /devices",
                "GET|PUT|DELETE /devices/{device}/profile", "GET|POST /rules", "GET|DELETE /rules/{name}",
                "GET /holds", "POST /holds/release", "GET /flows", "GET /seed", "GET /events[?since=T|?after=SEQ]",
                "GET / (the web page, to a browser)", "GET /api/ladder", "GET /api/scenarios", "GET /api/guided",
                "POST /api/guided/start", "POST /api/guided/stop", "POST /events", "GET /ca",
                "GET /schema/events.json", "GET /schema/push-stream.json",
                "GET /prompts[?since=SEQ]",
            ],
        })

    async def version(self, request: Request) -> Response:
        return JSON({"version": __version__})

    async def profiles(self, request: Request) -> Response:
        return JSON(self.control.list_profiles())

    # -- profiles: global and per device ----------------------------------------------------------

    async def get_active(self, request: Request) -> Response:
        return JSON(self.control.active())

    async def put_active(self, request: Request) -> Response:
        body = await json_body(request, required=("profile",), example='{"profile": "register-drop"}')
        self._set_profile(_profile_name(body), None)
        return JSON(self.control.active())

    async def devices(self, request: Request) -> Response:
        return JSON(self.control.active().get("devices", {}))

    async def get_device(self, request: Request) -> Response:
        device = request.path_params["device"]
        devices = self.control.active().get("devices", {})
        if device not in devices:
            having = ", ".join(devices) or "none"
            raise ApiError(404, f"device {device} has no profile of its own (it follows the global one); "
                                f"devices with their own: {having}")
        return JSON({"device": device, "profile": devices[device]})

    async def put_device(self, request: Request) -> Response:
        device = request.path_params["device"]
        body = await json_body(request, required=("profile",), example='{"profile": "register-drop"}')
        entry = self._set_profile(_profile_name(body), device)
        return JSON({"device": device, "profile": entry})

    async def delete_device(self, request: Request) -> Response:
        self._set_profile(None, request.path_params["device"])
        return Response(status_code=204)

    def _set_profile(self, name: str | None, device: str | None) -> dict[str, Any] | None:
        try:
            return self.control.set_profile(name, device)
        except ProfileError as exc:
            names = [p["name"] for p in self.control.list_profiles()]
            if name not in names:
                raise ApiError(404, _unknown_profile(name, names)) from None
            raise ApiError(400, str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, f"{exc} ({_DEVICE_HELP})" if device is not None else str(exc)) from None

    # -- rules ------------------------------------------------------------------------------------

    async def get_rules(self, request: Request) -> Response:
        return JSON(self._rules(_device_query(request)))

    async def get_rule(self, request: Request) -> Response:
        name, device = request.path_params["name"], _device_query(request)
        rules = self._rules(device)
        for rule in rules:
            if rule.get("name") == name:
                return JSON(rule)
        raise ApiError(404, _no_rule(name, device, rules))

    async def post_rule(self, request: Request) -> Response:
        body = await json_body(request, required=("rule",), optional=("device", "index"),
                                example='{"rule": {"name": "drop-register", "match": {"method": "REGISTER"}, '
                                        '"action": {"drop": true}}}')
        rule, device, index = body["rule"], body.get("device"), body.get("index")
        if not isinstance(rule, dict):
            raise ApiError(400, '"rule" must be an object, as the [[rules]] table of a profile is')
        if device is not None and not isinstance(device, str):
            raise ApiError(400, f'"device" must be a string: {_DEVICE_HELP}')
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
            raise ApiError(400, f'"index" must be an integer (the position among the rules), not {index!r}')
        try:
            stored = self.control.add_rule(rule, device, index)
        except (ProfileError, ValueError) as exc:  # an invalid rule, or a bad device
            raise ApiError(400, str(exc)) from None
        return JSON(stored, status_code=201)

    async def delete_rule(self, request: Request) -> Response:
        name, device = request.path_params["name"], _device_query(request)
        try:
            self.control.remove_rule(name, device)
        except KeyError:
            raise ApiError(404, _no_rule(name, device, self._rules(device))) from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return Response(status_code=204)

    def _rules(self, device: str | None) -> list[dict[str, Any]]:
        try:
            return self.control.rules(device)
        except ValueError as exc:
            raise ApiError(400, f"{exc} ({_DEVICE_HELP})") from None

    # -- holds, flows, seed -----------------------------------------------------------------------

    async def holds(self, request: Request) -> Response:
        return JSON(self.control.holds())

    async def release(self, request: Request) -> Response:
        body = await json_body(request, optional=("id",), example='{"id": "h1"}, or {} to release all')
        hold_id = body.get("id")
        if hold_id is not None and not isinstance(hold_id, str):
            raise ApiError(400, f'"id" must be a string (an id from GET /holds), not {hold_id!r}')
        try:
            released = self.control.release(hold_id)
        except KeyError:
            held = [h["id"] for h in self.control.holds()]
            raise ApiError(404, _listing(f"no held message has id {hold_id!r}", "held", held)) from None
        return JSON({"released": released})

    async def flows(self, request: Request) -> Response:
        return JSON(self.control.flows())

    async def seed(self, request: Request) -> Response:
        return JSON({"seed": self.control.seed()})

    # -- the timeline -----------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        sse = "text/event-stream" in request.headers.get("accept", "")
        since, after = _stream_cursor(request)
        history = getattr(self.control, "history", None)  # optional in a Control
        if history is None and (since is not None or after is not None):
            raise ApiError(501, "this control API keeps no history of the timeline: "
                                "GET /events without since, after or Last-Event-ID follows it from now")
        if request.method == "HEAD":
            return Response(media_type=EventStream.media_type(sse))
        channel = self.control.subscribe()
        if history is None:
            return EventStream(channel, sse=sse)
        first, held, lost_t = history()  # in the same step as subscribe(): the live part follows on exactly
        newest = first + len(held) - 1
        if since is None and after is None:
            return EventStream(channel, sse=sse, first_seq=newest + 1)
        if after is not None:
            if after > newest:
                after = 0  # a number from an earlier run of the proxy: all that is held is new to this client
            start = max(after + 1 - first, 0)
            complete = after + 1 >= first
        else:
            start = next((i for i, e in enumerate(held) if e.t >= since), len(held))
            complete = lost_t is None or lost_t < since
        replay = held[start:]
        lab = getattr(self.control, "proxy", None)
        now = lab.now() if lab is not None and callable(getattr(lab, "now", None)) else (
            held[-1].t if held else 0.0)
        header = {"t": now, "kind": "replay", "source": "api", "detail": {
            "since": since, "after": after, "first_seq": first + start, "replayed": len(replay),
            "earliest": {"seq": first, "t": held[0].t} if held else None, "complete": complete}}
        return EventStream(channel, sse=sse, replay=replay, first_seq=first + start, header=header)


# -- request helpers ------------------------------------------------------------------------------

def _profile_name(body: dict[str, Any]) -> str | None:
    name = body["profile"]
    if name is None or (isinstance(name, str) and name):
        return name
    raise ApiError(400, f'"profile" must be a profile name (see GET /profiles) or null for none, not {name!r}')


def _unknown_profile(name: str | None, names: list[str]) -> str:
    """The 404 for a profile name the library does not have: the name (shortened), a close one, and what there is;
    never where the library lives (the control's own message may say that, so it is not used)."""
    shown = repr(name if name is None or len(name) <= 64 else name[:64] + "…")
    close = difflib.get_close_matches(name, names, n=1) if name is not None and len(name) <= 64 else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    files = ("; the API takes library names only: a profile file is loaded from the command line "
             "(--profile FILE) or put in a library (FAULTLAB_PATH)"
             if name is not None and ("/" in name or "\\" in name or name.endswith(".toml")) else "")
    return f"no profile {shown} in the library{hint}{files}; available profiles: {', '.join(names) or 'none'}"


def _stream_cursor(request: Request) -> tuple[float | None, int | None]:
    """``GET /events``: where the replay starts: ``since`` (trace seconds), or ``after`` (an event number;
    SSE's ``Last-Event-ID`` header, sent by a reconnecting EventSource, is the same and wins)."""
    query = request.query_params
    last_id = request.headers.get("last-event-id", "").strip()
    if last_id:
        return None, _event_number(last_id, "Last-Event-ID")
    since_text, after_text = query.get("since"), query.get("after")
    if since_text is not None and after_text is not None:
        raise ApiError(400, "give since (a trace time) or after (an event number), not both")
    if after_text is not None:
        return None, _event_number(after_text, "after")
    if since_text is None:
        return None, None
    try:
        since = float(since_text)
    except ValueError:
        since = math.nan
    if not math.isfinite(since):
        raise ApiError(400, f"since={since_text!r}: give a time in seconds on the trace clock "
                            '(the events\' "t"), e.g. since=0 for all the proxy still holds')
    return since, None


def _event_number(text: str, where: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ApiError(400, f"{where}={text!r}: give an event number (SSE ids; in JSON lines, the replay "
                            'record\'s "first_seq" numbers the events that follow it), e.g. after=0')
    return int(text)


def _device_query(request: Request) -> str | None:
    return request.query_params.get("device") or None


def _listing(message: str, what: str, names: list[str]) -> str:
    """``message`` plus the names that exist."""
    return f"{message}; {what}: {', '.join(names) if names else 'none'}"


def _no_rule(name: str, device: str | None, rules: list[dict[str, Any]]) -> str:
    where = f" for device {device}" if device else ""
    return _listing(f"no rule named {name!r}{where}", "rules", [str(r.get("name")) for r in rules])


# -- errors and the guard -------------------------------------------------------------------------

async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers, exc.extra)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail
    if exc.status_code == 404:
        message = f"no resource {request.url.path}; GET / lists them"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
    return error_response(exc.status_code, message, dict(exc.headers) if exc.headers else None)


async def _on_crash(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this answer, so the server logs the traceback ("faultlab.api" logger). The answer
    # names the kind of error only: its text may hold paths of the installation, which are no business of a client.
    return error_response(500, f"internal error in faultlab ({type(exc).__name__}) on {request.method} "
                               f"{request.url.path}; the proxy's log has the details")


class _Guard:
    """Token check (401) when a token is set; otherwise a loopback-Host check (403, against DNS rebinding).
    Neither for the public CA pages (:func:`~faultlab.api.ca_page.is_public`), which a phone must reach, nor for the
    web page's files (``public``: :func:`~faultlab.api.web.is_page`), which hold no data."""

    def __init__(self, app: ASGIApp, *, token: str | None, public: Callable[[Scope], bool] | None = None) -> None:
        self.app = app
        self.token = token.encode() if token is not None else None
        self.public = public  # more public requests: the web page's files (faultlab.api.web.is_page)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_public(scope) and not (self.public and self.public(scope)):
            problem = self._check(Headers(scope=scope))
            if problem is not None:
                await problem(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _check(self, headers: Headers) -> Response | None:
        if self.token is None:
            host = headers.get("host")
            if host is not None and not _loopback_host_header(host):
                return error_response(
                    403, f"Host {host!r} is not a loopback name: this API has no token, so it answers only "
                         "requests to localhost or a loopback address; use one, or start it with --api-token")
            return None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="faultlab"'}
        if scheme.lower() != "bearer" or not given.strip():
            return error_response(
                401, "this control API needs a token: send 'Authorization: Bearer TOKEN' "
                     "(faultlab's client: --api-token TOKEN)", challenge)
        if not hmac.compare_digest(given.strip().encode(), self.token):
            return error_response(401, "wrong API token", challenge)
        return None


def _loopback_host_header(value: str) -> bool:
    host = value.strip()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    host = host.rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
