"""Trace.pause: a sink whose far end is gone (a HEP collector that refuses) gets no events of the kinds it paused,
which are then not even built when no other sink wants them, and learns how many it missed."""

from __future__ import annotations

from faultlab.trace import Event, Trace


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_paused_kind_is_not_built_counted_and_resumes_on_time():
    trace, clock, got = Trace(keep=0), Clock(), []
    sink = got.append
    trace.add_sink(sink, kinds=("received", "flow-open"))
    trace.pause(sink, ("received", "sent"), 1.0, clock)
    assert not trace.wants("received")  # nobody else wants it: the emitter builds nothing
    assert not trace.wants("received")
    assert trace.wants("flow-open")  # not paused: still delivered
    trace.emit(Event(0.1, "flow-open"))
    assert [e.kind for e in got] == ["flow-open"]
    assert trace.withheld(sink) == 2 and trace.withheld(sink) == 0  # read once
    clock.now = 1.0
    assert trace.wants("received")
    trace.emit(Event(1.0, "received"))
    assert [e.kind for e in got] == ["flow-open", "received"]
    assert not trace.wants("sent")  # it never asked for "sent": pausing did not add it


def test_an_event_built_for_another_sink_is_withheld_from_the_paused_one():
    trace, clock, paused, other = Trace(keep=0), Clock(), [], []
    sink = paused.append
    trace.add_sink(sink, kinds=("received",))
    trace.add_sink(other.append, kinds=("received",))
    trace.pause(sink, ("received",), 5.0, clock)
    assert trace.wants("received")
    trace.emit(Event(0.0, "received"))
    assert (len(paused), len(other)) == (0, 1) and trace.withheld(sink) == 1


def test_a_sink_of_every_kind_is_not_paused():
    trace, clock, got = Trace(keep=0), Clock(), []
    sink = got.append
    trace.add_sink(sink)
    trace.pause(sink, ("received",), 5.0, clock)
    trace.emit(Event(0.0, "received"))
    assert len(got) == 1 and trace.withheld(sink) == 0


def test_a_sink_paused_again_gets_back_all_it_asked_for():
    trace, clock, got = Trace(keep=0), Clock(), []
    sink = got.append
    trace.add_sink(sink, kinds=("received", "sent", "flow-open"))
    trace.pause(sink, ("received",), 1.0, clock)
    trace.pause(sink, ("sent",), 1.0, clock)  # while the first pause lasts
    assert not trace.wants("received") and not trace.wants("sent") and trace.wants("flow-open")
    clock.now = 1.0
    assert trace.wants("received") and trace.wants("sent")
