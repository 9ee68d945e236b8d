"""The event collector: where a real, instrumented app posts its device events (``docs/device-events.md``).

``POST /events`` takes one event (a JSON object) or a batch (a JSON array of them)::

    {"device": "alice-iphone", "event": "ended", "uuid": "6F1C...", "call_id": "a84b4c76e66710",
     "reason": "remoteEnded", "client_time": 1764166500.125, "detail": {"note": "free-form"}}

- ``device`` (required): the device's name, 1-64 characters from ``A-Z a-z 0-9 . _ -``.
- ``event`` (required): ``reported``, ``answer-tapped``, ``answer-fulfilled``, ``answer-failed``, ``ended``.
- ``uuid`` (the CallKit UUID) and/or ``call_id`` (the SIP Call-ID): at least one.
- ``reason``: required with ``ended`` and only there: ``failed``, ``remoteEnded``, ``unanswered``,
  ``answeredElsewhere``, ``declinedElsewhere`` (CXCallEndedReason), ``declined`` (the user declined: a local end).
- ``client_time`` (required): the device's clock, UNIX seconds (a number).
- ``detail`` (optional): a JSON object, kept as it is.

The schema is also a JSON Schema, ``faultlab/lab/schema/events.schema.json``, served as ``GET
/schema/events.json``; :meth:`DeviceEvent.from_json` checks the same rules by hand (tests keep them in agreement).

Answers: 200 ``{"accepted": N}``; 422 ``{"error": reason, "field": F, "index": I}`` for an event that breaks the
schema (``field`` when one field is at fault, ``index`` for a batch; nothing of a bad batch is accepted); 400
``{"error": reason}`` for a body that is not UTF-8 JSON; 413 over 64 KiB. Each accepted event goes on the timeline as ``kind="device"``,
``source=f"device:{device}"``, ``call_id``, ``detail={"event", "reason" (ended only), "uuid",
"client_time", "origin": "collector", "extra": detail}`` — the same shape the reference device emits with
:meth:`DeviceEvent.emit`, so the checks read both alike.

``GET /prompts`` (when the lab gives the collector a :class:`~faultlab.lab.prompts.PromptHub`): the lab's
prompts, NDJSON or Server-Sent Events (:mod:`faultlab.lab.prompts`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from faultlab.text import load_json

from .prompts import PromptHub, PromptRequestError, prompt_stream
from .schema import MEDIA_TYPE, SCHEMAS, schema_bytes
from .timeline import Timeline

__all__ = [
    "END_REASONS",
    "EVENTS",
    "MAX_BODY",
    "DeviceEvent",
    "DeviceEventError",
    "EventBodyError",
    "create_collector_app",
    "schema_response",
    "parse_device_events",
    "serve_collector",
]

EVENTS = ("reported", "answer-tapped", "answer-fulfilled", "answer-failed", "ended")
END_REASONS = ("failed", "remoteEnded", "unanswered", "answeredElsewhere", "declinedElsewhere", "declined")
MAX_BODY = 64 * 1024
_DEVICE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_FIELDS = {"device", "event", "uuid", "call_id", "reason", "client_time", "detail"}


class DeviceEventError(ValueError):
    """A device event that does not follow the schema (HTTP 422); the message says which field and why, ``field``
    names it (None: the event as a whole) and ``index`` is the event's position in a batch (None: not a batch)."""

    status = 422

    def __init__(self, message: str, field: str | None = None, index: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.index = index

    def to_json(self) -> dict[str, Any]:
        """The answer's body: ``{"error"}``, with ``"field"`` and ``"index"`` when known."""
        out: dict[str, Any] = {"error": str(self)}
        if self.field is not None:
            out["field"] = self.field
        if self.index is not None:
            out["index"] = self.index
        return out


class EventBodyError(DeviceEventError):
    """A body that is no JSON at all (empty, not UTF-8, not JSON, too deep): HTTP 400."""

    status = 400


@dataclass(frozen=True)
class DeviceEvent:
    device: str
    event: str
    client_time: float
    uuid: str | None = None
    call_id: str | None = None
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"device": self.device, "event": self.event}
        for key in ("uuid", "call_id", "reason"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["client_time"] = self.client_time
        if self.detail:
            out["detail"] = self.detail
        return out

    @classmethod
    def from_json(cls, obj: Any) -> DeviceEvent:
        """Validate one event; raises :class:`DeviceEventError` naming the problem."""
        if not isinstance(obj, Mapping):
            raise DeviceEventError(f"an event is a JSON object, not {type(obj).__name__}")
        unknown = sorted(set(obj) - _FIELDS)
        if unknown:
            raise DeviceEventError(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_FIELDS))}",
                                   unknown[0])
        device = obj.get("device")
        if not isinstance(device, str) or not _DEVICE.fullmatch(device):
            raise DeviceEventError("device: required, 1-64 characters from A-Z a-z 0-9 . _ -", "device")
        event = obj.get("event")
        if event not in EVENTS:
            raise DeviceEventError(f"event: {event!r} is not one of {', '.join(EVENTS)}", "event")
        uuid, call_id = obj.get("uuid"), obj.get("call_id")
        for key, value in (("uuid", uuid), ("call_id", call_id)):
            if value is not None and (not isinstance(value, str) or not value):
                raise DeviceEventError(f"{key}: a non-empty string (or leave it out)", key)
        if uuid is None and call_id is None:
            raise DeviceEventError("uuid or call_id: give at least one, to say which call", "uuid")
        reason = obj.get("reason")
        if event == "ended":
            if reason not in END_REASONS:
                raise DeviceEventError(f"reason: {reason!r} is not one of {', '.join(END_REASONS)} "
                                       "(required with event ended)", "reason")
        elif reason is not None:
            raise DeviceEventError(f"reason: only with event ended, not with {event}", "reason")
        client_time = _seconds(obj.get("client_time"))
        if client_time is None:
            raise DeviceEventError("client_time: required, the device clock in UNIX seconds (a number)",
                                   "client_time")
        detail = obj.get("detail", {})
        if not isinstance(detail, Mapping):
            raise DeviceEventError("detail: a JSON object", "detail")
        return cls(device=device, event=event, client_time=float(client_time), uuid=uuid,
                   call_id=call_id, reason=reason, detail=dict(detail))

    def emit(self, timeline: Timeline, *, origin: str = "collector"):
        """Put this event on the timeline (kind ``device``, source ``device:<device>``)."""
        summary = self.event + (f" ({self.reason})" if self.reason else "")
        return timeline.emit(
            "device", source=f"device:{self.device}", call_id=self.call_id, summary=summary,
            detail={"event": self.event, **({"reason": self.reason} if self.reason else {}), "uuid": self.uuid,
                    "client_time": self.client_time, "origin": origin, "extra": self.detail})


def _seconds(value: Any) -> float | None:
    """A JSON number that is a time (finite, not negative) as a float; None for anything else (an integer too
    large for a float, e.g. 1 followed by 400 zeros, included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def parse_device_events(body: bytes) -> list[DeviceEvent]:
    """A request body (one JSON object, or an array of them) -> events; :class:`EventBodyError` for a body that is
    not JSON, :class:`DeviceEventError` for JSON that breaks the schema."""
    if not body.strip():
        raise EventBodyError("empty body: post a JSON object (one event) or an array of them")
    try:
        data = load_json(body)  # UTF-8, JSON, at most 32 levels deep, no lone surrogate: or a 400 saying which
    except ValueError as exc:
        raise EventBodyError(f"the body is {exc}") from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise DeviceEventError("an empty array: nothing to record")
    events = []
    for index, item in enumerate(items):
        try:
            events.append(DeviceEvent.from_json(item))
        except DeviceEventError as exc:
            if isinstance(data, list):
                raise DeviceEventError(f"event {index}: {exc}", exc.field, index) from None
            raise
    return events


def create_collector_app(timeline: Timeline, prompts: PromptHub | None = None) -> Starlette:
    """The collector as an ASGI app: ``POST /events``, ``GET /schema/events.json`` and ``GET
    /schema/push-stream.json`` (:mod:`faultlab.lab.schema`), ``GET /`` (what this is), and with ``prompts`` ``GET
    /prompts`` (:func:`~faultlab.lab.prompts.prompt_stream`: the lab's prompts, NDJSON or SSE)."""

    async def post_events(request: Request) -> JSONResponse:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return JSONResponse({"error": f"body over {MAX_BODY} bytes"}, status_code=413)
        try:
            events = parse_device_events(body)
        except DeviceEventError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        for event in events:
            event.emit(timeline)
        return JSONResponse({"accepted": len(events)})

    async def index(request: Request) -> JSONResponse:
        return JSONResponse({"service": "faultlab event collector", "post": "/events",
                             "events": list(EVENTS), "end_reasons": list(END_REASONS),
                             "schema": "/schema/events.json", "push_stream_schema": "/schema/push-stream.json",
                             "docs": "docs/device-events.md"})

    async def get_prompts(request: Request):
        if prompts is None:
            return JSONResponse({"error": "this collector publishes no prompts"}, status_code=404)
        try:
            stream = prompt_stream(prompts, request.query_params, request.headers)
        except PromptRequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return Response(media_type=stream.media_type) if request.method == "HEAD" else stream

    return Starlette(routes=[Route("/events", post_events, methods=["POST"]), Route("/", index),
                             Route("/schema/{name}", schema_response, methods=["GET"]),
                             Route("/prompts", get_prompts, methods=["GET"])])


async def schema_response(request: Request) -> Response:
    """``GET /schema/{name}``: a schema of :mod:`faultlab.lab.schema` as ``application/schema+json``; 404 naming
    the ones there are."""
    name = request.path_params["name"]
    stem = name.removesuffix(".json")
    if not name.endswith(".json") or stem not in SCHEMAS:
        known = ", ".join(f"/schema/{n}.json" for n in SCHEMAS)
        return JSONResponse({"error": f"no schema {name!r}; there are: {known}"}, status_code=404)
    return Response(schema_bytes(stem), media_type=MEDIA_TYPE)


async def serve_collector(
    timeline: Timeline,
    host: str,
    port: int,
    *,
    prompts: PromptHub | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the collector on ``host:port`` (HTTP/1.1 and h2c) until cancelled; started ``(host, port)``."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from faultlab.addr import format_hostport

    config = Config()
    config.bind = [format_hostport(host, port)]
    config.accesslog = None
    config.errorlog = logging.getLogger("faultlab.collector")
    config.graceful_timeout = 0.5

    class _Started:
        def started(self, binds: Any = None) -> None:
            bound = urlsplit(binds[0]).port
            assert bound is not None, binds
            task_status.started((host, bound))

    await serve(create_collector_app(timeline, prompts), config, mode="asgi", task_status=_Started())  # type: ignore[arg-type]
