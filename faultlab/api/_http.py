"""HTTP helpers shared by the control API (``app``) and the web page's routes (``web``): the error
answered as JSON, compact JSON responses that always encode, and request bodies read within bounds (size, depth,
text: :func:`faultlab.text.load_json`)."""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from faultlab.text import clean, load_json, readable

# A rule or a profile name is a few hundred bytes; 64 KiB leaves room for a large rule and no more.
MAX_BODY_SIZE = 64 * 1024


class ApiError(Exception):
    """An error answered as ``{"error": message, "status": status}`` (and ``extra``'s keys)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.extra = extra


class JSON(JSONResponse):
    """Compact JSON with a final newline, so ``curl`` output ends cleanly."""

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8", "backslashreplace")


def dumps(content: Any) -> str:
    """``content`` as one line of JSON for an answer: text from the wire kept readable (:func:`faultlab.text.clean`:
    a byte that was not UTF-8 shows as ``\\xbd``), a float that JSON cannot hold (NaN, infinity) as null, any
    other object as its text."""
    try:
        text = json.dumps(clean(content), ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                          default=_as_text)
    except ValueError:  # NaN or infinity somewhere: JSON has no such number
        text = json.dumps(_no_nan(clean(content)), ensure_ascii=False, separators=(",", ":"), default=_as_text)
    return text + "\n"


def _as_text(value: Any) -> str:
    return readable(str(value))


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value


def error_response(status: int, message: str, headers: dict[str, str] | None = None,
                   extra: dict[str, Any] | None = None) -> Response:
    return JSON({"error": message, "status": status, **(extra or {})}, status_code=status, headers=headers)


async def json_body(
    request: Request, *, required: tuple[str, ...] = (), optional: tuple[str, ...] = (), example: str
) -> dict[str, Any]:
    """The body as a JSON object with exactly the keys allowed; 400/415 saying what is wrong."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, f"send the body as JSON with 'Content-Type: application/json', e.g. {example}")
    raw = await read_body(request)
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = load_json(raw)
        except ValueError as exc:
            raise ApiError(400, f"the body is {exc}; e.g. {example}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, e.g. {example}")
    allowed = required + optional
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ApiError(400, f"unknown key {unknown[0]!r} in the body; allowed: {', '.join(allowed)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ApiError(400, f"missing key {missing[0]!r} in the body, e.g. {example}")
    return data


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 past :data:`MAX_BODY_SIZE` (without reading all of it)."""
    too_large = ApiError(413, f"the body is over {MAX_BODY_SIZE} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_SIZE:
        raise too_large
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_SIZE:
            raise too_large
    return raw
