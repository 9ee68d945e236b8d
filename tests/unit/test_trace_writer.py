"""The trace file is readable while it is written: the flush rule on an injected clock, the proxy's flush task
on trio's virtual clock, and readers that take a file with a last line still being written."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from faultlab.proxy import keep_flushed
from faultlab.trace import Event, JsonlWriter, read_jsonl


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def on_disk(path: Path) -> list[str]:
    """The event kinds another process would read from the file now."""
    return [e.kind for e in read_jsonl(path)]


def test_an_event_after_a_quiet_spell_is_in_the_file_at_once(tmp_path: Path):
    clock = Clock()
    writer = JsonlWriter(tmp_path / "t.jsonl", clock=clock)
    writer(Event(0.0, "start"))
    assert on_disk(writer.path) == ["start"]
    assert writer.due_in() is None
    clock.now += 5
    writer(Event(5.0, "sent"))
    assert on_disk(writer.path) == ["start", "sent"]


def test_a_burst_is_flushed_once_per_interval(tmp_path: Path):
    clock = Clock()
    clock.now = 0.0
    writer = JsonlWriter(tmp_path / "t.jsonl", clock=clock, flush_interval=0.25)  # binary-exact times below
    pending: list[float] = []
    writer.on_pending = lambda: pending.append(clock.now)
    writer(Event(0.0, "start"))  # flushed: nothing before it
    clock.now = 0.0625
    writer(Event(0.0625, "received"))
    clock.now = 0.125
    writer(Event(0.125, "sent"))
    assert on_disk(writer.path) == ["start"]  # buffered: the last flush is younger than the interval
    assert pending == [0.0625]  # once, when the buffer stopped being empty
    assert writer.due_in() == 0.125
    assert writer.flush_if_due(0.1875) is False
    assert on_disk(writer.path) == ["start"]
    assert writer.flush_if_due(0.25) is True
    assert on_disk(writer.path) == ["start", "received", "sent"]
    assert writer.due_in() is None
    clock.now = 0.375
    writer(Event(0.375, "received"))  # an interval after the last flush: buffered, due then
    assert writer.due_in() == 0.125
    clock.now = 0.5
    writer(Event(0.5, "sent"))  # the write finds the last flush an interval old and flushes both
    assert on_disk(writer.path) == ["start", "received", "sent", "received", "sent"]
    assert pending == [0.0625, 0.375]


def test_close_writes_everything(tmp_path: Path):
    clock = Clock()
    writer = JsonlWriter(tmp_path / "t.jsonl", clock=clock)
    for i in range(3):
        writer(Event(float(i), "sent"))
    writer.close()
    assert on_disk(writer.path) == ["sent"] * 3
    writer(Event(9.0, "late"))  # after close: ignored, no error


def test_a_write_error_stops_the_trace_not_the_run(caplog):
    writer = JsonlWriter(Path("/dev/full"))
    with caplog.at_level(logging.ERROR, logger="faultlab.trace"):
        writer(Event(0.0, "start"))  # flushed at once: ENOSPC
        writer(Event(1.0, "sent"))
        writer.close()
    assert writer.error is not None and "/dev/full: cannot write the trace" in writer.error
    assert [r.getMessage() for r in caplog.records] == [writer.error]


async def test_keep_flushed_writes_a_quiet_tail_within_the_interval(tmp_path: Path, autojump_clock):
    writer = JsonlWriter(tmp_path / "t.jsonl", clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        writer(Event(0.0, "start"))
        writer(Event(0.0, "received"))  # no further event comes to flush this one
        nursery.start_soon(keep_flushed, writer)  # which may start after the events
        t0 = trio.current_time()
        assert on_disk(writer.path) == ["start"]
        while on_disk(writer.path) != ["start", "received"]:
            await trio.sleep(0.01)
        assert trio.current_time() - t0 == pytest.approx(0.1, abs=0.011)
        assert writer.due_in() is None
        await trio.sleep(0.1)
        writer(Event(0.2, "sent"))  # the last flush is 100 ms old: at once
        assert on_disk(writer.path)[-1] == "sent"
        t1 = trio.current_time()
        writer(Event(0.2, "stop"))  # right after: buffered, and the task flushes it 100 ms after "sent"
        while on_disk(writer.path)[-1] != "stop":
            await trio.sleep(0.01)
        assert trio.current_time() - t1 == pytest.approx(0.1, abs=0.011)
        nursery.cancel_scope.cancel()
    assert writer.on_pending is None
    writer.close()


def test_readers_skip_a_last_line_still_being_written(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"t":0,"kind":"start"}\n{"t":1,"kind":"sent","summary":"INV')
    assert [e.kind for e in read_jsonl(path)] == ["start"]


def test_readers_still_refuse_a_bad_line_in_the_middle(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"t":0,"kind":"start"}\n{"t":1,"kind":\n{"t":2,"kind":"stop"}\n')
    with pytest.raises(ValueError, match=r"t.jsonl:2: not a faultlab trace event"):
        list(read_jsonl(path))
