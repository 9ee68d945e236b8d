"""Ladder diagrams: one call (Call-ID) of a trace as messages between parties, with faultlab's faults marked.

Two layers, kept apart:

* :func:`ladder_rows` is the model: a list of JSON-ready dicts, one per message or step, in time order::

      {"t": 3.0, "from": "faultlab", "to": "device", "label": "INVITE", "fault": "delayed 2s [delay-invite]",
       "note": None}

  ``from``/``to`` are parties (``device``, ``faultlab``, ``pbx``, ``caller``, ``push``); a note on one party's
  column (a device event, a push delivery, a PBX step, a connection faultlab reset) has ``to = None``,
  ``label = None`` and its text in ``note``. ``fault`` says what faultlab did to that message, where it did it:
  ``✗ dropped`` / ``✗ lost`` (on the row of the message that never left), ``delayed 2s``, ``held 3s``,
  ``responded by faultlab`` (on faultlab's answer), ``duplicate 1/2``, ``edited``, ``reset`` / ``closed``,
  ``stalled``; each names the rule in brackets. The live web page reuses these rows.
* :func:`render_ladder` draws rows as plain text in a given width (100 columns by default).

Each wire message is one row: faultlab's relay records both of its hops (device -> faultlab, faultlab -> PBX),
so a relayed message is two rows and a delay shows as the time between them. Lab actors' own records of the
same message are not repeated (the same rule as :mod:`faultlab.trace.pcap`).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Iterable
from typing import Any

from ._event import Event
from .pcap import RELAY, _AddressBook

__all__ = ["PARTY_ORDER", "LadderLayout", "LiveLadder", "call_ids", "ladder_rows", "render_ladder"]

PARTY_ORDER = ("device", "faultlab", "pbx", "caller", "push")
MIN_WIDTH = 40
_TIME_WIDTH = 10  # "  1234.567"
_LANE_GAP = 20
_CSEQ = re.compile(rb"^CSeq[ \t]*:[ \t]*\d+[ \t]+([A-Za-z]+)", re.MULTILINE | re.IGNORECASE)
# Actions that do not concern forwarding one message: a note of their own on faultlab's column.
_CONNECTION_ACTIONS = {"close", "reset", "stall", "error"}
_PBX_QUIET = {"start", "register", "push-sent", "forward"}


def _party(source: str) -> str:
    if source == RELAY:
        return "faultlab"
    if source.startswith("device"):
        return "device"
    return source


def _seconds(x: Any) -> str:
    if isinstance(x, (int, float)):
        return f"{x:g}s"
    return str(x)


def _label(e: Event) -> str:
    if e.method:
        return e.method
    if e.status is None and e.raw and not e.raw.startswith(b"SIP/"):
        first = e.raw.split(b" ", 1)[0]
        if first.isalpha():
            return first.decode("ascii")
    status = e.status
    if status is None and e.raw and e.raw.startswith(b"SIP/"):
        code = e.raw.split(b" ", 2)[1:2]
        status = int(code[0]) if code and code[0].isdigit() else None
    if status is not None:
        cseq = e.cseq_method
        if cseq is None and e.raw:
            m = _CSEQ.search(e.raw)
            cseq = m.group(1).decode("ascii").upper() if m else None
        return f"{status}/{cseq}" if cseq else str(status)
    return e.summary or e.kind


def _fault_text(detail: dict[str, Any]) -> str:
    action, rule = detail.get("action"), detail.get("rule")
    tag = f" [{rule}]" if rule else ""
    if action == "drop":
        return f"✗ dropped{tag}"
    if action == "loss":
        return "✗ lost on the link"
    if action == "delay":
        return f"delayed {_seconds(detail.get('delay'))}{tag}"
    if action == "respond":
        return f"responded {detail.get('status', '')} by faultlab{tag}".replace("  ", " ")
    if action == "duplicate":
        return f"duplicated x{detail.get('copies', 1)}{tag}"
    if action == "hold":
        return f"held{tag}"
    if action == "edit":
        return f"edited{tag}"
    if action == "reset":
        return f"reset connection ({detail.get('when', 'after')}){tag}"
    if action == "close":
        return f"closed connection ({detail.get('when', 'after')}){tag}"
    if action == "stall":
        return f"stalled {detail.get('for', '')}{tag}".replace("  ", " ")
    if action == "reorder":
        return "reordered on the link"
    return f"{action}{tag}"


def call_ids(events: Iterable[Event]) -> list[str]:
    """The Call-IDs of a trace's SIP messages, in order of first appearance."""
    seen: dict[str, None] = {}
    for e in events:
        if e.call_id and e.kind in ("received", "sent", "responded", "dropped"):
            seen.setdefault(e.call_id)
    return list(seen)


def _key(e: Event) -> tuple:
    return (e.flow, e.direction, e.call_id, e.cseq, e.cseq_method, e.method, e.status)


class _Parties:
    """Who is where, from what the trace says (addresses, sources, who records its messages); grows as
    events are added."""

    def __init__(self) -> None:
        self.book = _AddressBook()
        self.sources: set[str] = set()
        self.recording: set[str] = set()  # parties whose trace records the messages they send
        self._devices: set[str] = set()
        self._actors: dict[str, str] = {}  # "host:port" -> party

    def add(self, e: Event) -> None:
        self.book.add(e)
        self.sources.add(e.source)
        if e.kind == "sent" and e.raw is not None:
            self.recording.add(_party(e.source))
        if e.source == RELAY and e.kind == "flow-open" and e.flow in self.book.flows:
            device = self.book.flows[e.flow][0]
            if device is not None:
                self._devices.add(_hostport(device))
        elif e.source in self.book.actors:
            for addr in self.book.actors[e.source].values():
                self._actors.setdefault(_hostport(addr), _party(e.source))

    def at(self, peer: str) -> str | None:
        """The party at "host:port": faultlab's own sockets, then devices, then the lab actors."""
        if peer in self.book.faultlab:
            return "faultlab"
        if peer in self._devices:
            return "device"
        return self._actors.get(peer)


class _CallLadder:
    """The rows of one call, built one event at a time (events of other calls are not given to it)."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.holds: dict[str, float] = {}  # hold id -> held at
        self.hold_ids: set[str] = set()  # holds of this call (their later events carry no Call-ID)
        # message key -> one group of fault events per reception not yet carried out (FIFO: retransmissions of
        # a message share its key, and each reception has its own outcome)
        self.pending: dict[tuple, list[list[dict[str, Any]]]] = {}
        self.labels: dict[tuple, str] = {}
        self.responds: dict[tuple, dict[str, Any]] = {}  # (flow, call_id, cseq) -> the respond fault
        self.last_t = 0.0

    def mine(self, e: Event) -> bool:
        return e.call_id == self.call_id or (e.call_id is None and e.detail.get("hold") in self.hold_ids)

    def add(self, e: Event, parties: _Parties) -> list[dict[str, Any]]:
        """The rows ``e`` (an event of this call) adds."""
        rows: list[dict[str, Any]] = []

        def row(t: float, frm: str, to: str | None, label: str | None = None, fault: str | None = None,
                note: str | None = None) -> None:
            rows.append({"t": round(t, 6), "from": frm, "to": to, "label": label, "fault": fault, "note": note})
            self.last_t = rows[-1]["t"]

        if e.source == RELAY:
            self._relay_rows(e, row)
        else:
            self._actor_rows(e, parties, row)
        return rows

    def _relay_rows(self, e: Event, row: Callable[..., None]) -> None:
        """faultlab's own record of the call: what it received, did and sent."""
        pending, holds, responds = self.pending, self.holds, self.responds

        def take(e: Event) -> list[str]:
            groups = pending.get(_key(e))
            return [_fault_text(f) for f in groups.pop(0)] if groups else []

        dev_hop_party = "device"
        far = "pbx" if e.direction == "to-pbx" else dev_hop_party
        near = dev_hop_party if e.direction == "to-pbx" else "pbx"
        if e.kind == "received":
            pending.setdefault(_key(e), []).append([])
            row(e.t, near, "faultlab", _label(e))
        elif e.kind == "fault":
            action = e.detail.get("action")
            groups = pending.setdefault(_key(e), [])
            self.labels[_key(e)] = _label(e)
            if action == "respond":  # the request goes no further: its outcome is faultlab's response
                responds[(e.flow, e.call_id, e.cseq)] = e.detail
                take(e)
            elif action in _CONNECTION_ACTIONS:
                row(e.t, "faultlab", None, fault=_fault_text(e.detail), note=f"{_label(e)}: connection")
                if e.detail.get("when") == "before":
                    take(e)
            else:
                if not groups:
                    groups.append([])
                groups[-1].append(e.detail)
        elif e.kind == "sent":
            texts: list[str] = []
            if "copy" in e.detail:
                texts = [f"duplicate {e.detail['copy']}"]
            elif "released" in e.detail:
                since = holds.pop(e.detail["released"], None)
                texts = [f"held {_seconds(round(e.t - since, 3))}, released" if since is not None
                         else "released"]
            else:
                texts = take(e)
            row(e.t, "faultlab", far, _label(e), fault="; ".join(texts) or None)
        elif e.kind == "responded":
            back = "device" if e.direction == "to-device" else "pbx"
            rule = responds.pop((e.flow, e.call_id, e.cseq), None)  # keyed by the request it answers
            text = f"responded by faultlab [{rule['rule']}]" if rule else "responded by faultlab"
            row(e.t, "faultlab", back, _label(e), fault=text)
        elif e.kind == "dropped":
            if e.call_id is None:  # a hold that timed out into a drop
                holds.pop(e.detail.get("hold"), None)
                row(e.t, "faultlab", None, fault="✗ dropped (hold timed out)", note="held message")
                return
            texts = take(e) or [f"✗ {e.detail.get('how', 'dropped')}"]
            row(e.t, "faultlab", far, _label(e), fault="; ".join(texts))
        elif e.kind == "held":
            self.hold_ids.add(e.detail.get("hold"))
            holds[e.detail.get("hold")] = e.t
            texts = take(e) or ["held"]
            row(e.t, "faultlab", None, fault="; ".join(texts), note=f"holding {_label(e)}")

    def _actor_rows(self, e: Event, parties: _Parties, row: Callable[..., None]) -> None:
        """An actor's record: the messages faultlab did not relay, the PBX, push, device and caller events."""
        party = _party(e.source)
        if e.kind in ("received", "sent") and e.peer:
            if e.peer in parties.book.faultlab:
                return  # faultlab's own record of this hop is there
            other = parties.at(e.peer) or ("caller" if "caller" in parties.sources and party != "caller"
                                           else e.peer)
            if e.kind == "received" and other in parties.recording:
                return  # the sender's record of it is there
            frm, to = (party, other) if e.kind == "sent" else (other, party)
            row(e.t, frm, to, _label(e))
        elif e.kind == "pbx":
            action = e.detail.get("action")
            if action == "push-sent":
                row(e.t, "pbx", "push", f"push:{e.detail.get('type', '?')}")
            elif action not in _PBX_QUIET:
                row(e.t, "pbx", None, note=str(action))
        elif e.kind == "push":
            kind, outcome = e.detail.get("push_kind", "?"), e.detail.get("outcome")
            fault = None if outcome in ("delivered", "relayed", "delayed") else f"✗ push {outcome}"
            row(e.t, "device", None, fault=fault, note=f"{kind} push {outcome}")
        elif e.kind == "push-delivered":
            row(e.t, "device", None, note=f"{e.detail.get('push_kind', '?')} push delivered late "
                                          f"({_seconds(e.detail.get('delay'))})")
        elif e.kind == "device":
            event, reason = e.detail.get("event", "?"), e.detail.get("reason")
            row(e.t, "device", None, note=f"{event}: {reason}" if reason else str(event))
        elif e.kind == "caller":
            action = e.detail.get("action")
            if action != "call":
                how = e.detail.get("how")
                row(e.t, "caller", None, note=f"{action}: {how}" if how else str(action))
        elif e.kind == "media" and e.detail.get("action") in ("started", "stopped"):  # RTP (beside faultlab)
            row(e.t, _party(e.source), None, note=e.summary or f"RTP {e.detail.get('action')}")

    def finish(self, end: float | None = None) -> list[dict[str, Any]]:
        """Rows for faults whose message had no outcome yet when the trace ended (at ``end``, default the
        last row's time)."""
        end = self.last_t if end is None else end
        return [{"t": round(end, 6), "from": "faultlab", "to": None, "label": None, "fault": _fault_text(f),
                 "note": f"{self.labels[key]}: not sent by the end of the trace"}
                for key, groups in self.pending.items() for f in (f for group in groups for f in group)]


def ladder_rows(events: Iterable[Event], call_id: str) -> list[dict[str, Any]]:
    """The rows of one call's ladder (see the module docstring); ``[]`` when the trace has no such call."""
    events = list(events)
    parties = _Parties()
    for e in events:
        parties.add(e)
    ladder = _CallLadder(call_id)
    rows: list[dict[str, Any]] = []
    for e in events:
        if ladder.mine(e):
            rows.extend(ladder.add(e, parties))
    return rows + ladder.finish()


class LiveLadder:
    """Ladder rows of a trace that is still being written: give it each event as it is read, it returns the
    rows that event adds, with their Call-ID (every call, or only ``call``).

    The rows are those of :func:`ladder_rows` with two differences: who is where is known from the events
    read so far (a trace says it early: ``start``, ``listening``, ``flow-open``), and the rows of faults
    still waiting for their message come from :meth:`finish`, when the trace ends. At most ``max_calls``
    calls are followed at a time (the least recently active is forgotten first), so memory stays bounded
    however long the trace grows.
    """

    def __init__(self, call: str | None = None, *, max_calls: int = 10_000) -> None:
        self.call = call
        self.max_calls = max_calls
        self._parties = _Parties()
        self._calls: collections.OrderedDict[str, _CallLadder] = collections.OrderedDict()
        self._holds: collections.OrderedDict[str, str] = collections.OrderedDict()  # hold id -> Call-ID

    def feed(self, e: Event) -> list[tuple[str, dict[str, Any]]]:
        self._parties.add(e)
        call_id = e.call_id
        if call_id is None:
            hold = e.detail.get("hold")
            call_id = self._holds.get(hold) if isinstance(hold, str) else None
            if call_id is None:
                return []
        elif e.kind == "held" and isinstance(e.detail.get("hold"), str):
            self._holds[e.detail["hold"]] = call_id
            while len(self._holds) > self.max_calls:
                self._holds.popitem(last=False)
        if self.call is not None and call_id != self.call:
            return []
        ladder = self._calls.get(call_id)
        if ladder is None:
            ladder = self._calls[call_id] = _CallLadder(call_id)
            while len(self._calls) > self.max_calls:
                self._calls.popitem(last=False)
        else:
            self._calls.move_to_end(call_id)
        if not ladder.mine(e):
            ladder.hold_ids.add(e.detail.get("hold"))
        return [(call_id, r) for r in ladder.add(e, self._parties)]

    def finish(self, end: float) -> list[tuple[str, dict[str, Any]]]:
        """The rows of faults whose message was still waiting when the trace ended at ``end``."""
        return [(c, r) for c, ladder in self._calls.items() for r in ladder.finish(end)]


def _hostport(addr: tuple[str, int]) -> str:
    from faultlab.addr import format_hostport

    return format_hostport(*addr)


def parties(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The parties that appear in ``rows``, in ladder order (known ones first, others as they come)."""
    seen: list[str] = []
    for r in rows:
        for p in (r["from"], r["to"]):
            if p is not None and p not in seen:
                seen.append(p)
    return sorted(seen, key=lambda p: (PARTY_ORDER.index(p) if p in PARTY_ORDER else len(PARTY_ORDER),
                                       seen.index(p)))


def _fit(text: str, room: int) -> str:
    if room <= 0:
        return ""
    return text if len(text) <= room else text[: max(room - 1, 0)] + "…"


class LadderLayout:
    """Where each party's lane, the time and the fault/note text go in ``width`` columns (at least 40);
    :meth:`header` and :meth:`line` draw one line each, so a ladder can be drawn row by row as it grows."""

    def __init__(self, names: list[str], width: int = 100) -> None:
        if width < MIN_WIDTH:
            raise ValueError(f"width must be at least {MIN_WIDTH} columns, not {width}")
        if not names:
            raise ValueError("a ladder needs at least one party")
        self.names, self.width = list(names), width
        margin = min(max(len(n) for n in names) // 2 + 1, 6)
        n = len(names)
        # lanes take what they need (about 20 columns between neighbours) and leave the rest to the notes
        lanes_w = min(width - _TIME_WIDTH - max(14, int(width * 0.27)), (n - 1) * _LANE_GAP + 2 * margin + 1)
        if n == 1:
            self.pos = {names[0]: _TIME_WIDTH + lanes_w // 2}
        else:
            step = (lanes_w - 2 * margin) / (n - 1)
            self.pos = {name: _TIME_WIDTH + margin + round(i * step) for i, name in enumerate(names)}
        self.right = _TIME_WIDTH + lanes_w + 1  # where the fault/note text starts

    def _blank(self) -> list[str]:
        line = [" "] * self.width
        for x in self.pos.values():
            line[x] = "|"
        return line

    def _put(self, line: list[str], x: int, text: str) -> None:
        for i, ch in enumerate(text):
            if 0 <= x + i < self.width:
                line[x + i] = ch

    def header(self) -> str:
        head = [" "] * self.width
        self._put(head, 0, "     t (s)")
        xs = sorted(self.pos.values())
        gap = min((b - a for a, b in zip(xs, xs[1:])), default=self.width)
        for name in self.names:
            label = _fit(name, max(gap - 1, 3))
            self._put(head, self.pos[name] - len(label) // 2, label)
        return "".join(head).rstrip()

    def line(self, r: dict[str, Any]) -> str:
        """One row (its parties must be lanes of this layout)."""
        pos, width, right, put = self.pos, self.width, self.right, self._put
        line = self._blank()
        put(line, 0, f"{r['t']:{_TIME_WIDTH - 1}.3f}")
        frm, to = r["from"], r["to"]
        extra = r.get("fault")
        if to is None or to == frm:
            x = pos[frm]
            text = "* " + (r.get("note") or r.get("label") or "")
            room = max(width - x - 1, 0) if extra is None else max(right - x - 2, 0)
            put(line, x + 1, _fit(text, room))
        else:
            a, b = pos[frm], pos[to]
            lo, hi = min(a, b), max(a, b)
            lost = bool(extra) and extra.startswith("✗")
            if lost:  # the arrow stops at the ✗, halfway or just past its label
                reach = min(hi - lo - 1, max((hi - lo) // 2, len(r.get("label") or "") + 4, 2))
                if b > a:
                    hi = a + reach
                else:
                    lo = a - reach
            for x in range(lo + 1, hi):
                line[x] = "-"
            if lost:
                line[hi if b > a else lo] = "✗"
            elif b > a:
                line[hi - 1] = ">"
            else:
                line[lo + 1] = "<"
            label = _fit(r.get("label") or "", hi - lo - 3)
            if label:
                put(line, lo + 1 + (hi - lo - 1 - len(label)) // 2, label)
            if r.get("note"):
                extra = f"{extra}; {r['note']}" if extra else r["note"]
        if extra:
            put(line, right, _fit(extra, width - right))
        return "".join(line).rstrip()


def render_ladder(rows: list[dict[str, Any]], *, width: int = 100, title: str | None = None) -> str:
    """Rows as a text ladder no wider than ``width`` columns (at least 40): a time column, one lane per party,
    labels on the arrows, faults and notes to the right."""
    if width < MIN_WIDTH:
        raise ValueError(f"width must be at least {MIN_WIDTH} columns, not {width}")
    names = parties(rows)
    if not names:
        return (title + "\n" if title else "") + "(no messages)\n"
    layout = LadderLayout(names, width)
    out: list[str] = []
    if title:
        out.append(_fit(title, width))
    out.append(layout.header())
    out.extend(layout.line(r) for r in rows)
    return "\n".join(out) + "\n"
