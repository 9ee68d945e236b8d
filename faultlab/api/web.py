"""The web page of the control API, and the endpoints it needs beyond the API's own resources.

::

    GET  /                     the page (to a browser: an Accept with text/html); JSON clients get the index
    GET  /static/{file}        the page's script and style sheet
    GET  /api/ladder[?call=ID] {"call", "calls": [{"call_id", "first", "t"}], "devices": [DEVICE], "rows": ladder
                               rows, each with "device"}; by default the newest call that has an INVITE (else the
                               newest call); one column per device (see device_ladder)
    GET  /api/scenarios        the scenario catalogue: [{"id", "slug", "title", "script", "expect", ...}]
    POST /api/guided/start     {"scenario": "S17", "device"?: "IP[:PORT]"}: switch the catalogue scenario's
                               own faults on (globally, or for that device) and start guiding -> the status;
                               for a device, a scenario without faults pins it to "clean" (no global faults)
    GET  /api/guided           the guided run's status (prompts, call, verdict); {"phase": "idle"} if none
    POST /api/guided/stop      {}: end the guided run and put back the profile active before it -> the status
    POST /events               device events from an instrumented app (docs/device-events.md), onto the
                               proxy's timeline: {"accepted": N}; 422 {"error", "status", "field", "index"}
                               for an event that breaks the schema
    GET  /schema/{name}.json   the JSON Schemas (faultlab.lab.schema): events.json, push-stream.json
    GET  /prompts              the guided run's prompts (call, answer, decline, hang-up) for programs: NDJSON,
                               or SSE (faultlab.lab.prompts); ?since=SEQ, Last-Event-ID

Guided prompts are worked out from the timeline when the status is (:func:`~faultlab.lab.guided.status`): when
the page polls ``GET /api/guided``, at start and stop, and, while anyone follows ``GET /prompts``, at each
prompt's due time (and every ``PROMPT_TICK`` seconds, to see the call's events). Each step is published once,
when it is due, with ``at`` its due time on this machine's wall clock.

The page itself, its two static files and the schemas are the only resources answered without the token when one
is set: they hold no data, and a phone's browser cannot send a header when it opens a URL. The page reads the token from
``/?token=TOKEN`` once, keeps it in the browser's local storage, removes it from the address bar, and sends it as
``Authorization: Bearer TOKEN`` on every request (the event stream then comes through ``fetch``, because
``EventSource`` cannot send headers). Everything else follows the API's rules (token, loopback Host, JSON bodies).

A scenario is named by its catalogue id or slug, never by a path: as with profiles, nothing that reaches the API
makes faultlab read a file of the caller's choosing.

These endpoints read and write the running proxy's timeline: they need a control with a ``proxy`` attribute
(:class:`RunningProxy`, which :class:`faultlab.proxy.Proxy` is); on another control they answer 501.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any, Protocol

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from faultlab.addr import parse_device
from faultlab.faults import Profile
from faultlab.trace import Event
from faultlab.trace.ladder import call_ids, ladder_rows
from faultlab.trace.pcap import RELAY

from ._http import JSON, ApiError, json_body, read_body
from .protocol import Control
from faultlab.lab.guided import GuidedRun, due_prompts, needs_push_gateway, scenario_json, status
from faultlab.lab.prompts import PromptHub, PromptRequestError, prompt_stream
from faultlab.lab.schema import MEDIA_TYPE, SCHEMAS, schema_bytes

__all__ = ["RunningProxy", "WebPage", "device_ladder", "is_page", "wants_html"]

_STATIC = {"app.js": "text/javascript", "app.css": "text/css"}
SCHEMA_PATHS = frozenset(f"/schema/{name}.json" for name in SCHEMAS)
PROMPT_TICK = 0.25  # seconds: how often a /prompts follower has the guided status worked out
PROMPT_DEADLINE = 2.0  # an answer, decline or hang-up prompt's deadline: this long after it is due


class RunningProxy(Protocol):
    """What the page needs from the running proxy beyond :class:`Control`: its timeline and its profiles."""

    @property
    def events(self) -> Sequence[Event]: ...

    def now(self) -> float: ...

    def emit(self, kind: str, **fields: Any) -> None: ...

    def activate(self, profile: Any, device: str | None = None) -> Any: ...


def is_page(scope: Scope) -> bool:
    """The page and its static files: answered without the token or Host check (they carry no data)."""
    if scope.get("method") not in ("GET", "HEAD"):
        return False
    path = scope.get("path", "")
    if path.startswith("/static/") or path in SCHEMA_PATHS:
        return True
    if path != "/":
        return False
    return wants_html(scope.get("headers") or [])


def wants_html(headers) -> bool:
    """Whether the request's Accept header(s) ask for HTML: the one reading of Accept for both the guard
    (:func:`is_page`) and the handler of ``/``. ``headers`` are the ASGI scope's raw ``(name, value)`` pairs;
    every Accept header counts (a client may send several)."""
    return any(name.lower() == b"accept" and b"text/html" in value for name, value in headers)


def _asset(name: str) -> bytes:
    return resources.files("faultlab.api").joinpath("static", name).read_bytes()


class WebPage:
    """The page and its endpoints over ``control`` (and the proxy behind it)."""

    def __init__(self, control: Control) -> None:
        self.control = control
        self.run: GuidedRun | None = None
        self.prompts = PromptHub()
        self._before: tuple[str | None, Any] | None = None  # (device, Profile or None) before the guided run

    # -- the page -----------------------------------------------------------------------------------

    def index_or(self, json_index):
        async def index(request: Request) -> Response:
            if wants_html(request.scope.get("headers") or []):
                return Response(_asset("index.html"), media_type="text/html; charset=utf-8",
                                headers={"Cache-Control": "no-cache"})
            return await json_index(request)
        return index

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            raise ApiError(404, f"no static file {name!r}; there are: {', '.join(_STATIC)}")
        return Response(_asset(name), media_type=f"{_STATIC[name]}; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    async def schema(self, request: Request) -> Response:
        path = request.url.path
        if path not in SCHEMA_PATHS:
            raise ApiError(404, f"no schema {path!r}; there are: {', '.join(sorted(SCHEMA_PATHS))}")
        return Response(schema_bytes(path.removeprefix("/schema/").removesuffix(".json")), media_type=MEDIA_TYPE)

    def routes(self, route) -> list:
        return [
            route("/static/{name}", GET=self.static),
            route("/schema/{name}", GET=self.schema),
            route("/api/ladder", GET=self.ladder),
            route("/api/scenarios", GET=self.scenarios),
            route("/api/guided", GET=self.guided),
            route("/api/guided/start", POST=self.guided_start),
            route("/api/guided/stop", POST=self.guided_stop),
            route("/prompts", GET=self.prompts_stream),
        ]

    def _running_proxy(self) -> RunningProxy:
        proxy = getattr(self.control, "proxy", None)
        if proxy is None:
            raise ApiError(501, "this control API is not in front of a running faultlab proxy: "
                                "there is no timeline to read")
        return proxy

    # -- the ladder ---------------------------------------------------------------------------------

    async def ladder(self, request: Request) -> Response:
        events = list(self._running_proxy().events)
        calls = _calls(events)
        call = request.query_params.get("call") or None
        if call is not None and call not in {c["call_id"] for c in calls}:
            raise ApiError(404, f"no call {call!r} on the timeline (the proxy keeps the recent events); "
                                f"calls: {', '.join(c['call_id'] for c in calls) or 'none'}")
        if call is None:
            invites = [c for c in calls if c["first"] == "INVITE"]
            chosen = invites[-1] if invites else (calls[-1] if calls else None)
            call = chosen["call_id"] if chosen else None
        flows = self.control.flows() if call is not None else []
        rows, devices = device_ladder(events, call, {f["id"]: f["device"] for f in flows}) if call else ([], [])
        return JSON({"call": call, "calls": calls, "devices": devices, "rows": rows})

    # -- guided scenarios ---------------------------------------------------------------------------

    async def scenarios(self, request: Request) -> Response:
        return JSON([scenario_json(s) for s in _catalogue()])

    async def guided(self, request: Request) -> Response:
        return JSON(self._status())

    def _status(self) -> dict[str, Any]:
        if self.run is None:
            return {"phase": "idle"}
        proxy = self._running_proxy()
        out = status(self.run, list(proxy.events), proxy.now())
        wall = time.time()
        for p in due_prompts(self.run, out):
            at = wall if p["due"] is None else wall - (out["now"] - p["due"])
            self.prompts.publish(p["action"], p["text"], at=at,
                                 deadline=None if p["action"] == "call" else at + PROMPT_DEADLINE,
                                 scenario=p["scenario"], uuid=p["uuid"], call_id=p["call_id"])
        return out

    async def prompts_stream(self, request: Request) -> Any:
        try:
            stream = prompt_stream(self.prompts, request.query_params, request.headers)
        except PromptRequestError as exc:
            raise ApiError(400, str(exc)) from None
        if request.method == "HEAD":
            return Response(media_type=stream.media_type)
        return _Ticking(stream, self._tick)

    async def _tick(self) -> None:
        """While a follower is on: the guided status worked out at the next prompt's due time (or every
        ``PROMPT_TICK`` s), so that prompts are published when due even with no page polling."""
        while True:
            wait = PROMPT_TICK
            if self.run is not None and getattr(self.control, "proxy", None) is not None:
                ahead = self._status().get("next", {}).get("in")
                if isinstance(ahead, (int, float)) and ahead < wait:
                    wait = max(ahead, 0.0)
            await trio.sleep(wait)

    async def guided_start(self, request: Request) -> Response:
        body = await json_body(request, required=("scenario",), optional=("device",),
                                example='{"scenario": "S17"}, or {"scenario": "S17", "device": "10.0.0.2"}')
        name, device = body["scenario"], body.get("device")
        if not isinstance(name, str) or not name:
            raise ApiError(400, f'"scenario" must be a scenario id or slug from GET /api/scenarios, not {name!r}')
        if device is not None and not isinstance(device, str):
            raise ApiError(400, '"device" must be a string: "IP" or "IP:PORT" (IPv6 as "[::1]:5060")')
        catalogue = _catalogue()
        scenario = next((s for s in catalogue if name.upper() == s.id.upper() or name == s.slug), None)
        if scenario is None:
            raise ApiError(404, f"no scenario {name!r} in the catalogue; scenarios: "
                                f"{', '.join(s.id for s in catalogue)}")
        proxy = self._running_proxy()
        key = None
        if device is not None:
            try:
                key = parse_device(device)
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
        self._restore()
        if key is None:
            engine = getattr(proxy, "engine", None)
        else:
            engine = getattr(proxy, "device_engines", {}).get(key)
        self._before = (key, engine.profile if engine is not None else None)
        faults = scenario.faults
        if faults is None and key is not None:
            # with no profile of its own the device would follow the global one: pin it to no faults instead
            faults = Profile(name="clean", summary=f"No faults on this device during guided {scenario.id} "
                                                   "(the scenario has none; the global profile does not apply)")
        proxy.activate(faults, key)
        now = proxy.now()
        self.run = GuidedRun(scenario, now, key)
        missing = needs_push_gateway(scenario)
        if missing:
            self.run.notes.append("not applied by faultlab's relay (they need faultlab's push gateway in the "
                                  f"push path): {', '.join(missing)}")
        proxy.emit("guided", detail={"action": "start", "scenario": scenario.id, "device": key,
                                     "profile": faults.name if faults is not None else None})
        return JSON(self._status())

    async def guided_stop(self, request: Request) -> Response:
        await json_body(request, example="{}")
        if self.run is None:
            raise ApiError(404, "no guided run to stop: start one with POST /api/guided/start")
        proxy = self._running_proxy()
        if self.run.stopped_at is None:
            self.run.stopped_at = proxy.now()
        result = self._status()
        self._restore()
        proxy.emit("guided", detail={"action": "stop", "scenario": self.run.scenario.id,
                                     "passed": (self.run.result or {}).get("passed")})
        result["phase"] = "stopped" if result["phase"] != "done" else "done"
        result["restored"] = True
        self.run = None
        return JSON(result)

    def _restore(self) -> None:
        """Put back the profile that was active before the guided run (once)."""
        if self._before is None:
            return
        key, profile = self._before
        self._before = None
        self._running_proxy().activate(profile, key)

    # -- device events ------------------------------------------------------------------------------

    async def post_events(self, request: Request) -> Response:
        from faultlab.lab.collector import DeviceEventError, parse_device_events

        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "send device events as JSON with 'Content-Type: application/json' "
                                "(docs/device-events.md)")
        proxy = self._running_proxy()
        raw = await read_body(request)
        try:
            events = parse_device_events(raw)
        except DeviceEventError as exc:
            extra = {k: v for k, v in exc.to_json().items() if k != "error"}
            raise ApiError(exc.status, str(exc), extra=extra) from None
        for event in events:
            event.emit(proxy)  # type: ignore[arg-type]  # the proxy emits as a lab Timeline does
        return JSON({"accepted": len(events)})


class _Ticking:
    """An ASGI response: ``stream`` while ``tick()`` runs beside it."""

    def __init__(self, stream, tick) -> None:
        self.stream, self.tick = stream, tick

    async def __call__(self, scope, receive, send) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.tick)
            await self.stream(scope, receive, send)
            nursery.cancel_scope.cancel()


def _catalogue():
    from faultlab.lab.scenario import ScenarioError, list_scenarios

    try:
        return list_scenarios()
    except ScenarioError as exc:
        raise ApiError(500, f"the scenario catalogue does not load: {exc}") from None


def _calls(events: Sequence[Event]) -> list[dict[str, Any]]:
    """The timeline's calls in order of first appearance, each with its first method and time."""
    first: dict[str, Event] = {}
    for e in events:
        if e.call_id and e.call_id not in first and e.kind in ("received", "sent", "responded", "dropped"):
            first[e.call_id] = e
    order = call_ids(events)
    return [{"call_id": c, "first": first[c].method or first[c].cseq_method, "t": first[c].t}
            for c in order if c in first]


# Relay events that say who is where rather than what was sent: every ladder pass needs them.
_BOOK_KINDS = frozenset({"start", "listening", "flow-open", "flow-close"})


def device_ladder(events: Sequence[Event], call: str,
                  open_flows: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """One call's ladder with a column per device: ``(rows, devices)``.

    The rows are :func:`faultlab.trace.ladder.ladder_rows`'s, each with one more key, ``"device"``: the device
    (``IP:PORT``, as in ``GET /flows``) that the row's ``"device"`` party stands for, or None. ``devices`` are those
    columns in order of first appearance. faultlab's relay records which flow each message crossed, and a flow
    has one device, so the relay's events are laddered per device (each device's flows on their own) and the rows
    merged in time order; the rest of the timeline (device events from apps, lab actors) is laddered once, its
    ``"device"`` party given to the one device when there is only one. ``open_flows``: flow id -> device, for
    flows whose ``flow-open`` event is no longer held.
    """
    flow_device = dict(open_flows or {})
    for e in events:
        if e.source == RELAY and e.flow and e.peer and e.flow not in flow_device:
            if e.kind == "flow-open" or (e.kind == "received" and e.direction == "to-pbx") or (
                    e.kind == "sent" and e.direction == "to-device"):
                flow_device[e.flow] = e.peer
    by_device: dict[str, list[Event]] = {}
    rest: list[Event] = []
    for e in events:
        if e.source == RELAY and e.flow and e.kind not in _BOOK_KINDS:
            by_device.setdefault(flow_device.get(e.flow) or f"device {e.flow}", []).append(e)
        else:
            rest.append(e)
    passes: list[tuple[str | None, list[dict[str, Any]]]] = [(None, ladder_rows(rest, call))]
    for device, own in by_device.items():
        rows = ladder_rows(own, call)
        if rows:
            passes.append((device, rows))
    for device, rows in passes:
        for r in rows:
            r["device"] = device
    merged = list(heapq.merge(*(rows for _, rows in passes), key=lambda r: r["t"]))
    devices: list[str] = []
    for r in merged:
        if r["device"] is not None and r["device"] not in devices:
            devices.append(r["device"])
    if len(devices) == 1:
        for r in passes[0][1]:
            if "device" in (r["from"], r["to"]):
                r["device"] = devices[0]
    return merged, devices
