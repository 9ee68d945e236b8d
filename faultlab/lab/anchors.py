"""The anchors of one call: the named timeline events (:data:`faultlab.lab.scenario.ANCHORS`) that deadlines,
milestones and duties count from (the push, the REGISTER's 2xx, the INVITE, the CANCEL, the flow's loss...).
Sans-IO: a function of the timeline. The checks (:mod:`faultlab.lab.checks`) and the SIP duties
(:mod:`faultlab.lab.duties`) judge from them."""

from __future__ import annotations

import threading
from typing import Iterable, Sequence

from faultlab.trace import Event

__all__ = ["anchors", "call_push_delivered", "device_events", "find_anchors", "first"]


def device_events(events: Iterable[Event], call_id: str) -> list[Event]:
    """The device's events (``reported``, ``answer-tapped``, ... ``ended``) for one call."""
    return [e for e in events if e.kind == "device" and e.call_id == call_id]


def first(events: Sequence[Event], pred, start: int = 0) -> Event | None:
    """The first of ``events`` from index ``start`` on for which ``pred`` holds."""
    for e in events[start:]:
        if pred(e):
            return e
    return None


_MEMO = threading.local()  # per thread: the last few timelines' anchors, [(events, call_id, found)]
_MEMO_SIZE = 4


def anchors(events: Iterable[Event], call_id: str) -> dict[str, Event]:
    """:func:`find_anchors`, remembered for the last few timelines: the checks of a case all ask for the anchors
    of the same run's events (frozen events: the same events in the same order are the same timeline; comparing
    them is a pass of identity tests, kept alive by the memo); a new dict each time."""
    key = tuple(events)
    memo = _MEMO.__dict__.setdefault("last", [])
    for seen, cid, found in memo:
        if cid == call_id and seen == key:
            return dict(found)
    found = find_anchors(key, call_id)
    memo.insert(0, (key, call_id, found))
    del memo[_MEMO_SIZE:]
    return dict(found)


def find_anchors(events: Sequence[Event], call_id: str) -> dict[str, Event]:
    """The named events of one call (:data:`faultlab.lab.scenario.ANCHORS`) that happened: name -> first event.

    Events about the device's REGISTERs and its connection count from the call push on (in timeline order, so an
    earlier REGISTER at the same instant does not count). A timeline with no push gateway on it (a real iPhone
    through faultlab alone) takes the device's ``reported`` as ``push``, and counts from the call's first INVITE
    when that came before the report (an app in the foreground); one with no caller on it takes ``cancel`` and
    ``bye`` as faultlab received them on their way to the device."""
    events = list(events)
    found: dict[str, Event] = {}

    def put(name: str, event: Event | None) -> None:
        if event is not None:
            found[name] = event

    dev = device_events(events, call_id)
    put("push", first(events, lambda e: call_push_delivered(e, call_id)))
    put("reported", first(dev, lambda e: e.detail.get("event") == "reported"))
    sources = {e.source for e in events}
    if "push" not in found and "push" not in sources and "reported" in found:
        # no push gateway on this timeline (a real iPhone through faultlab alone): the report stands in for t0
        found["push"] = found["reported"]
    put("answer-tapped", first(dev, lambda e: e.detail.get("event") == "answer-tapped"))
    put("end", first(dev, lambda e: e.detail.get("event") == "ended"))
    origin = found.get("push") or found.get("reported")
    start = next((i for i, e in enumerate(events) if e is origin), 0)
    if origin is not None and origin.kind == "device":  # no push: an app in the foreground reports on the INVITE
        start = min([start] + [i for i, e in enumerate(events[:start]) if e.source == "proxy" and e.kind == "sent"
                               and e.direction == "to-device" and e.method == "INVITE" and e.call_id == call_id])

    def proxy(kind: str, direction: str, pred, begin: int = start) -> Event | None:
        return first(events, lambda e: e.source == "proxy" and e.kind == kind and e.direction == direction
                      and pred(e), begin)

    put("register-sent", proxy("received", "to-pbx", lambda e: e.method == "REGISTER"))
    put("register-ok", proxy("sent", "to-device", lambda e: e.cseq_method == "REGISTER"
                             and e.status is not None and 200 <= e.status < 300))
    put("register-final", first(events, lambda e: e.source == "proxy" and e.kind in ("sent", "responded")
                                 and e.direction == "to-device" and e.cseq_method == "REGISTER"
                                 and e.status is not None and e.status >= 200, start))
    put("invite", proxy("sent", "to-device", lambda e: e.method == "INVITE" and e.call_id == call_id))
    put("ok", proxy("received", "to-pbx", lambda e: e.call_id == call_id and e.status == 200
                    and e.cseq_method == "INVITE"))
    put("ack", proxy("sent", "to-device", lambda e: e.method == "ACK" and e.call_id == call_id))
    put("invite-rejected", proxy("received", "to-pbx", lambda e: e.call_id == call_id and e.cseq_method == "INVITE"
                                 and e.status is not None and e.status >= 400))
    put("cancel-at-device", proxy("sent", "to-device", lambda e: e.method == "CANCEL" and e.call_id == call_id))
    put("bye-at-device", proxy("sent", "to-device", lambda e: e.method == "BYE" and e.call_id == call_id))
    # the caller's CANCEL and BYE as it sent them; with no caller on this timeline, as faultlab received them
    caller = "caller" in sources
    for name, method in (("cancel", "CANCEL"), ("bye", "BYE")):
        put(name, first(events, lambda e: e.call_id == call_id and e.method == method and (
            (e.source == "caller" and e.kind == "sent") if caller else
            (e.source == "proxy" and e.kind == "received" and e.direction == "to-device"))))
    device_flows = {e.flow for e in events if e.source == "proxy" and e.kind in ("received", "sent")
                    and e.direction == "to-pbx" and e.method == "REGISTER"}
    # closed by faultlab: a reset, or a close/reset fault on that flow
    faulted = {e.flow for e in events if e.source == "proxy" and e.kind == "fault"
               and e.detail.get("action") in ("close", "reset")}
    lost = first(events, lambda e: e.source == "proxy" and e.kind == "flow-close" and e.flow in device_flows
                  and (e.detail.get("how") == "reset" or e.flow in faulted), start)
    put("flow-lost", lost)
    # the caller's RTP stopped; with no caller on this timeline (a softphone of one's own), its BYE: a UA stops its
    # media as it sends the BYE (RFC 3261 §15.1.1)
    put("media-stopped", first(events, lambda e: e.source == "caller" and e.kind == "media" and e.call_id == call_id
                                and e.detail.get("action") == "stopped") if caller else found.get("bye"))
    if lost is not None:
        put("reregister", proxy("received", "to-pbx", lambda e: e.method == "REGISTER", events.index(lost)))
    _flow_anchors(events, found, start, call_id)
    return found


def _flow_anchors(events: list[Event], found: dict[str, Event], start: int, call_id: str) -> None:
    """``ping``, ``address-change``, ``register-new-flow`` and ``invite-new-flow`` (S25, S26), from ``start`` on."""
    def put(name: str, event: Event | None) -> None:
        if event is not None:
            found[name] = event

    put("ping", first(events, lambda e: e.source == "proxy" and e.kind == "received" and e.direction == "to-pbx"
                       and e.summary == "keep-alive ping", start))
    put("address-change", first(events, lambda e: e.kind == "network"
                                 and e.detail.get("event") == "address-change", start))
    sent = found.get("register-sent")
    if sent is None:
        return
    moved = first(events, lambda e: e.source == "proxy" and e.kind == "received" and e.direction == "to-pbx"
                  and e.method == "REGISTER" and e.flow != sent.flow, events.index(sent))
    put("register-new-flow", moved)
    if moved is not None:
        put("invite-new-flow", first(events, lambda e: e.source == "proxy" and e.kind == "sent"
                                      and e.direction == "to-device" and e.method == "INVITE"
                                      and e.call_id == call_id and e.flow == moved.flow, events.index(moved)))


def call_push_delivered(e: Event, call_id: str) -> bool:
    """The push gateway delivered the call push (once, or with copies; or late: a delayed or stored push; or, in
    relay mode, handed it to APNs, which accepted it: a real phone's push is on its way from there)."""
    if e.source == "push" and e.kind == "push-delivered":  # a delayed or stored push, handed over at last
        return e.call_id == call_id and e.detail.get("push_kind") == "call" and e.detail.get("status") == 200
    return (e.source == "push" and e.kind == "push" and e.call_id == call_id and e.detail.get("push_kind") == "call"
            and (e.detail.get("outcome") in ("delivered", "duplicated")
                 or (e.detail.get("outcome") == "relayed" and e.detail.get("status") == 200)))
