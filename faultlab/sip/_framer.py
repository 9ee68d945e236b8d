"""Framing SIP messages on a byte stream (TCP/TLS), in the shape of h11.

RFC 3261 §18.3: on a stream the head ends at the first empty line and
Content-Length, which MUST be present, gives the body length. CRLFs between
messages are RFC 5626 §3.5.1 keep-alives (ping ``CRLFCRLF``, pong ``CRLF``).
"""

from __future__ import annotations

from ._abnf import REQUEST_LINE_RE, STATUS_LINE_RE
from ._errors import EOF, NEED_DATA, SipError, _Sentinel
from ._message import KeepAlive, Message
from ._parse import MAX_HEADERS, build_message, scan_head

__all__ = ["StreamFramer", "MAX_MESSAGE_SIZE"]

MAX_MESSAGE_SIZE = 64 * 1024
"""Default limit on one message, head and body. Kamailio and OpenSIPS read
SIP into 64 KiB buffers (``BUF_SIZE`` 65535), and a UDP datagram cannot be
larger, so a peer cannot expect more of a SIP element."""

_PING = b"\r\n\r\n"
_PONG = b"\r\n"


class StreamFramer:
    """Turn stream bytes into :class:`Message` and :class:`KeepAlive` events.

    Feed bytes with :meth:`receive_data` (``b""`` means EOF) and pull events
    with :meth:`next_event` until it returns :data:`NEED_DATA` or :data:`EOF`.
    Unframeable input raises :class:`SipError`; from then on the framer is
    broken and every :meth:`next_event` raises the same error, while
    :meth:`take_unframed` hands back the bytes so the caller can relay them raw.

    A buffer holding only ``CRLF`` (or ``CRLF CR``) yields a pong at once,
    rather than waiting to see whether a ping follows: a lone pong must not
    be held. A ping split across reads may therefore come out as two pongs;
    the bytes are the same.
    """

    def __init__(
        self, *, max_message_size: int = MAX_MESSAGE_SIZE, max_headers: int = MAX_HEADERS
    ) -> None:
        self.max_message_size = max_message_size
        self.max_headers = max_headers
        self._buf = bytearray()
        self._searched = 0  # bytes of _buf already searched for CRLFCRLF
        self._start_line_ok = False
        self._head: tuple[int, int, tuple] | None = None  # (head_end, Content-Length, scan_head()) found
        self._eof = False
        self._error: SipError | None = None

    @property
    def broken(self) -> bool:
        """True once :meth:`next_event` has raised."""
        return self._error is not None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as an event: a message (or keep-alive) begun."""
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        """Buffer ``data``; ``b""`` records the end of the stream."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("receive_data() after EOF")
        self._buf += data

    def take_unframed(self) -> bytes:
        """Return and clear every buffered byte not yet returned as an event."""
        data = bytes(self._buf)
        self._buf.clear()
        self._reset()
        return data

    def _reset(self) -> None:
        self._searched = 0
        self._start_line_ok = False
        self._head = None

    def next_event(self) -> Message | KeepAlive | _Sentinel:
        """The next :class:`Message` or :class:`KeepAlive`, else NEED_DATA or EOF."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except SipError as exc:
            self._error = exc
            raise

    def _fail(self, msg: str, status_hint: int = 400) -> SipError:
        return SipError(msg, status_hint=status_hint)

    def _next(self) -> Message | KeepAlive | _Sentinel:
        buf = self._buf
        n = len(buf)
        if n == 0:
            return EOF if self._eof else NEED_DATA
        if buf[0] == 13:  # CR: a keep-alive, or nothing valid
            if buf[:4] == _PING:
                del buf[:4]
                return KeepAlive(_PING)
            if n >= 2:
                if buf[1] != 10:
                    raise self._fail("stray CR before a message")
                del buf[:2]
                return KeepAlive(_PONG)
            if self._eof:
                raise self._fail("stream closed inside a message")
            return NEED_DATA
        if self._head is not None:  # waiting for the body
            head_end, length, head = self._head
        else:
            head_end, length, head = self._find_head()
            if head_end < 0:
                return NEED_DATA
        end = head_end + 4 + length
        if end > n:
            if self._eof:
                raise self._fail("stream closed inside a message")
            return NEED_DATA
        raw = bytes(buf[:end])
        msg = build_message(raw, head, head_end + 4, b"")
        del buf[:end]
        self._reset()
        return msg

    def _find_head(self) -> tuple[int, int, tuple]:
        """(head_end, Content-Length, the head scanned) once the head is complete, else (-1, 0, ()).
        The head is checked and indexed in one pass (:func:`scan_head`) as soon as it is complete.

        The search for CRLFCRLF resumes where the last one stopped (h11's
        ``_receivebuffer``), so feeding a head byte by byte stays O(n)."""
        buf = self._buf
        n = len(buf)
        head_end = buf.find(_PING, max(0, self._searched - 3))
        if head_end < 0:
            self._searched = n
            if not self._start_line_ok:
                self._check_start_line()
            if n > self.max_message_size:
                raise self._fail(
                    f"message head larger than {self.max_message_size} octets", 413
                )
            if self._eof:
                raise self._fail("stream closed inside a message")
            return -1, 0, ()
        head = scan_head(buf, head_end, self.max_headers)
        length = head[3]
        if length is None:
            raise self._fail("no Content-Length on a stream (RFC 3261 §18.3)")
        if head_end + 4 + length > self.max_message_size:
            raise self._fail(f"message larger than {self.max_message_size} octets", 413)
        self._head = (head_end, length, head)
        return head_end, length, head

    def _check_start_line(self) -> None:
        """Fail early on garbage: once the first line is complete, it must be
        a Request-Line or Status-Line (RFC 3261 §7.1, §7.2)."""
        buf = self._buf
        eol = buf.find(b"\r\n")
        if eol < 0:
            if len(buf) > self.max_message_size:
                raise self._fail(f"start line longer than {self.max_message_size} octets", 413)
            return
        line = bytes(buf[: eol + 2])
        if REQUEST_LINE_RE.fullmatch(line) is None and STATUS_LINE_RE.fullmatch(line) is None:
            raise self._fail(f"malformed start line: {line[:80]!r}")
        self._start_line_ok = True
