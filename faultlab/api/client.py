"""A small synchronous client for the control API (stdlib ``urllib`` only), for the CLI and scripts.

Each function takes the API's base URL (``http://127.0.0.1:5099``; a bare ``HOST:PORT`` is taken as
``http://``) and an optional bearer token, and returns the decoded JSON. Every failure is an
:class:`ApiClientError` whose message is the server's own ``error`` text, or says why the server could
not be reached. Proxy settings from the environment are ignored: the API is usually on loopback.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

__all__ = [
    "DEFAULT_TIMEOUT",
    "ApiClientError",
    "add_rule",
    "events",
    "flows",
    "get_active",
    "holds",
    "list_profiles",
    "release",
    "remove_rule",
    "rules",
    "seed",
    "set_profile",
    "version",
]

DEFAULT_TIMEOUT = 10.0

_NO_BODY = object()


class ApiClientError(Exception):
    """A request to the control API failed; ``status`` is the HTTP status, or None if there was no answer."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def version(url: str, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> str:
    return _call(url, "GET", "/version", token=token, timeout=timeout)["version"]


def list_profiles(url: str, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
    return _call(url, "GET", "/profiles", token=token, timeout=timeout)


def get_active(url: str, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """``{"global": ENTRY | None, "devices": {DEVICE: ENTRY}}``."""
    return _call(url, "GET", "/active", token=token, timeout=timeout)


def set_profile(
    url: str, name: str | None, device: str | None = None, token: str | None = None, *,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any] | None:
    """Activate profile ``name`` (None: no profile) globally or for ``device``; returns the new entry
    ``{"name", "summary", "activated_at"}``, or None when no profile is active now."""
    if device is None:
        return _call(url, "PUT", "/active", body={"profile": name}, token=token, timeout=timeout)["global"]
    path = f"/devices/{quote(device, safe='')}/profile"
    return _call(url, "PUT", path, body={"profile": name}, token=token, timeout=timeout)["profile"]


def rules(url: str, device: str | None = None, token: str | None = None, *,
          timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
    return _call(url, "GET", "/rules", query={"device": device}, token=token, timeout=timeout)


def add_rule(
    url: str, rule: dict[str, Any], device: str | None = None, index: int | None = None,
    token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Add ``rule`` (as a profile's ``[[rules]]`` table), at ``index`` or last; returns it as stored."""
    body: dict[str, Any] = {"rule": rule}
    if device is not None:
        body["device"] = device
    if index is not None:
        body["index"] = index
    return _call(url, "POST", "/rules", body=body, token=token, timeout=timeout)


def remove_rule(url: str, name: str, device: str | None = None, token: str | None = None, *,
                timeout: float = DEFAULT_TIMEOUT) -> None:
    _call(url, "DELETE", f"/rules/{quote(name, safe='')}", query={"device": device}, token=token, timeout=timeout)


def holds(url: str, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
    return _call(url, "GET", "/holds", token=token, timeout=timeout)


def release(url: str, hold_id: str | None = None, token: str | None = None, *,
            timeout: float = DEFAULT_TIMEOUT) -> int:
    """Release one held message, or all of them (``hold_id`` None); returns how many were released."""
    body = {} if hold_id is None else {"id": hold_id}
    return _call(url, "POST", "/holds/release", body=body, token=token, timeout=timeout)["released"]


def flows(url: str, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
    return _call(url, "GET", "/flows", token=token, timeout=timeout)


def seed(url: str, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> int:
    return _call(url, "GET", "/seed", token=token, timeout=timeout)["seed"]


def events(url: str, token: str | None = None, *, timeout: float | None = None, since: float | None = None,
           after: int | None = None) -> Iterator[dict[str, Any]]:
    """The timeline from now on, one event (as JSON) at a time, until the proxy stops.

    With ``since`` (seconds on the trace clock) or ``after`` (an event number), the events the proxy still holds
    from there come first, after a ``{"kind": "replay", ...}`` record that says how many and whether any are no
    longer held (docs/api.md). ``timeout`` bounds the wait for each event (None: wait as long as it takes); past
    it, :class:`ApiClientError`. Closing the generator closes the connection, which unsubscribes.
    """
    base = _base(url)
    query = {k: v for k, v in (("since", since), ("after", after)) if v is not None}
    with _open(base, _request(base, "GET", "/events", token=token, query=query or None), timeout) as resp:
        while True:
            try:
                line = resp.readline()
            except (TimeoutError, socket.timeout):
                raise ApiClientError(f"no event from {base} within {timeout:g} s") from None
            except (http.client.IncompleteRead, ConnectionError):
                return  # the proxy stopped while the stream was open
            except OSError as exc:
                raise _unreachable(base, exc, timeout) from None
            if not line:
                return  # the proxy ended the stream
            if line.strip():
                yield json.loads(line)


# -- plumbing -------------------------------------------------------------------------------------

def _base(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiClientError(f"{url!r} is not an http:// URL of a faultlab control API, e.g. http://127.0.0.1:5099")
    return url


def _request(base: str, method: str, path: str, *, body: Any = _NO_BODY, query: dict[str, Any] | None = None,
             token: str | None = None) -> urllib.request.Request:
    query = {k: v for k, v in (query or {}).items() if v is not None}
    full = base + path + (f"?{urlencode(query)}" if query else "")
    headers = {"Accept": "application/json"}
    data = None
    if body is not _NO_BODY:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(full, data=data, method=method, headers=headers)


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _open(base: str, req: urllib.request.Request, timeout: float | None) -> Any:
    try:
        return _OPENER.open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise _server_error(base, exc) from None
    except urllib.error.URLError as exc:
        raise _unreachable(base, exc.reason, timeout) from None
    except OSError as exc:  # timeouts and resets while waiting for the answer
        raise _unreachable(base, exc, timeout) from None


def _call(url: str, method: str, path: str, *, body: Any = _NO_BODY, query: dict[str, Any] | None = None,
          token: str | None = None, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
    base = _base(url)
    req = _request(base, method, path, body=body, query=query, token=token)
    with _open(base, req, timeout) as resp:
        try:
            data = resp.read()
        except OSError as exc:
            raise _unreachable(base, exc, timeout) from None
        status = resp.status
    if status == 204 or not data.strip():
        return None
    try:
        return json.loads(data)
    except ValueError:
        raise ApiClientError(f"{base} did not answer like a faultlab control API (HTTP {status}, not JSON)",
                             status=status) from None


def _server_error(base: str, exc: urllib.error.HTTPError) -> ApiClientError:
    try:
        message = json.loads(exc.read())["error"]
    except Exception:  # not faultlab's JSON error: say what came back
        message = f"{base} answered HTTP {exc.code} {exc.reason}"
    return ApiClientError(str(message), status=exc.code)


def _unreachable(base: str, reason: Any, timeout: float | None) -> ApiClientError:
    if isinstance(reason, ConnectionRefusedError):
        return ApiClientError(f"no faultlab control API at {base}: is `faultlab proxy --api ...` running?")
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return ApiClientError(f"the faultlab control API at {base} did not answer within {timeout:g} s")
    if isinstance(reason, socket.gaierror):
        return ApiClientError(f"cannot resolve the host of {base}: {reason.strerror or reason}")
    if isinstance(reason, OSError):
        reason = reason.strerror or reason
    return ApiClientError(f"cannot reach the faultlab control API at {base}: {reason}")
