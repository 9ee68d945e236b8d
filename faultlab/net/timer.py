"""Precise waits for delayed messages.

trio sleeps through epoll, whose timeout Python rounds up to whole
milliseconds: a delayed message would leave 0-1 ms late, plus the rest of the
loop's work (measured here: 0.9 ms median, 2 ms p99). For a fault injector
whose delays are the thing being tested that is too coarse, so the last few
milliseconds of a wait are done on a Linux timerfd (nanosecond timer, still
an I/O wait: no thread, no spinning).

Under a virtual clock (trio.testing.MockClock) or without timerfd, this is
plain ``trio.sleep_until``: tests keep their exact virtual times.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import sys

import trio

# Hand over to the timerfd this long before the deadline: more than epoll's
# rounding and the loop's usual latency, short enough that few waits are open.
HANDOVER = 0.004

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
        return libc
    except (OSError, AttributeError):
        return None


_libc = _load_libc()


def precise_available() -> bool:
    return _libc is not None


async def _timerfd_wait(seconds: float) -> None:
    fd = _libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
    if fd < 0:
        await trio.sleep(seconds)
        return
    try:
        spec = _Itimerspec()
        spec.it_value.tv_sec = int(seconds)
        spec.it_value.tv_nsec = max(1, int((seconds - int(seconds)) * 1e9))  # 0 would disarm it
        if _libc.timerfd_settime(fd, 0, ctypes.byref(spec), None) != 0:
            await trio.sleep(seconds)
            return
        await trio.lowlevel.wait_readable(fd)
        try:
            struct.unpack("Q", os.read(fd, 8))
        except BlockingIOError:
            pass
    finally:
        os.close(fd)


def _virtual_clock() -> bool:
    """Whether the run is on trio's MockClock. ``trio.testing`` costs about 0.1 s to import, and a run on its clock
    has imported it already: a relay on the real clock never pays for it."""
    testing = sys.modules.get("trio.testing")
    return testing is not None and isinstance(trio.lowlevel.current_clock(), testing.MockClock)


async def sleep_until(deadline: float) -> None:
    """``trio.sleep_until(deadline)``, leaving within microseconds of it on a real clock."""
    if _libc is None or _virtual_clock():
        await trio.sleep_until(deadline)
        return
    now = trio.current_time()
    if deadline - now > HANDOVER:
        await trio.sleep_until(deadline - HANDOVER)
        now = trio.current_time()
    remaining = deadline - now
    if remaining > 0:
        await _timerfd_wait(remaining)
    else:
        await trio.lowlevel.checkpoint()
