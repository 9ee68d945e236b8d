"""Minimal HTTP/1.1 over asyncio for the external device: POST a JSON body, follow an NDJSON stream.

Standalone on purpose (standard library only).
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

MAX_LINE = 1 << 20


class HTTPError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status


def _target(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url!r}: expected http://HOST:PORT/...")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = (await reader.readline()).decode("latin-1")
    try:
        status = int(status_line.split(" ", 2)[1])
    except (IndexError, ValueError):
        raise HTTPError(0, f"not an HTTP answer: {status_line!r}") from None
    headers = {}
    while True:
        line = (await reader.readline()).decode("latin-1")
        if line in ("\r\n", "\n", ""):
            break
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers


async def _body_chunks(reader: asyncio.StreamReader, headers: dict[str, str]):
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            data = await reader.readexactly(size)
            await reader.readline()
            yield data
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while data := await reader.read(65536):
            yield data


async def request(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None,
                  timeout: float = 5.0) -> tuple[int, bytes]:
    """One request on a fresh connection; (status, body)."""
    host, port, path = _target(url)

    async def go() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            writer.write((f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
                          f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body)
            await writer.drain()
            status, head = await _head(reader)
            if method == "HEAD":
                return status, b""
            data = b"".join([c async for c in _body_chunks(reader, head)])
            return status, data
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)


async def post_json(url: str, obj: object) -> tuple[int, bytes]:
    return await request("POST", url, json.dumps(obj).encode(), {"Content-Type": "application/json"})


async def ndjson(url: str):
    """Follow an NDJSON stream: yields each JSON object (skips keep-alive blank lines); HTTPError for a non-200
    answer; returns when the server ends the stream."""
    host, port, path = _target(url)
    reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/x-ndjson\r\n\r\n".encode())
        await writer.drain()
        status, head = await _head(reader)
        if status != 200:
            data = b"".join([c async for c in _body_chunks(reader, head)])
            raise HTTPError(status, data.decode("utf-8", "replace"))
        pending = b""
        async for chunk in _body_chunks(reader, head):
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(obj, dict):
                        yield obj
            if len(pending) > MAX_LINE:
                pending = b""
    finally:
        writer.close()
