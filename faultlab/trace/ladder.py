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

import re
from collections.abc import Iterable
from typing import Any

from ._event import Event
from .pcap import RELAY, _AddressBook

__all__ = ["PARTY_ORDER", "call_ids", "ladder_rows", "render_ladder"]

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


def ladder_rows(events: Iterable[Event], call_id: str) -> list[dict[str, Any]]:
    """The rows of one call's ladder (see the module docstring); ``[]`` when the trace has no such call."""
    events = list(events)
    book = _AddressBook(events)
    party_at: dict[str, str] = {a: "faultlab" for a in book.faultlab}
    for device, _, _ in book.flows.values():
        if device is not None:
            party_at.setdefault(_hostport(device), "device")
    for source, by_transport in book.actors.items():
        for addr in by_transport.values():
            party_at.setdefault(_hostport(addr), _party(source))
    sources = {e.source for e in events}
    recording = {_party(e.source) for e in events if e.kind == "sent" and e.raw is not None}
    holds: dict[str, float] = {}  # hold id -> held at
    hold_calls = {e.detail.get("hold"): e.call_id for e in events if e.kind == "held" and e.call_id == call_id}
    # message key -> one group of fault events per reception not yet carried out (FIFO: retransmissions of a
    # message share its key, and each reception has its own outcome)
    pending: dict[tuple, list[list[dict[str, Any]]]] = {}
    labels: dict[tuple, str] = {}
    responds: dict[tuple, dict[str, Any]] = {}  # (flow, call_id, cseq) -> the respond fault
    rows: list[dict[str, Any]] = []

    def row(t: float, frm: str, to: str | None, label: str | None = None, fault: str | None = None,
            note: str | None = None) -> None:
        rows.append({"t": round(t, 6), "from": frm, "to": to, "label": label, "fault": fault, "note": note})

    def take(e: Event) -> list[str]:
        groups = pending.get(_key(e))
        return [_fault_text(f) for f in groups.pop(0)] if groups else []

    for e in events:
        mine = e.call_id == call_id or (e.call_id is None and e.detail.get("hold") in hold_calls)
        if not mine:
            continue
        if e.source == RELAY:
            dev_hop_party = "device"
            far = "pbx" if e.direction == "to-pbx" else dev_hop_party
            near = dev_hop_party if e.direction == "to-pbx" else "pbx"
            if e.kind == "received":
                pending.setdefault(_key(e), []).append([])
                row(e.t, near, "faultlab", _label(e))
            elif e.kind == "fault":
                action = e.detail.get("action")
                groups = pending.setdefault(_key(e), [])
                labels[_key(e)] = _label(e)
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
                    continue
                texts = take(e) or [f"✗ {e.detail.get('how', 'dropped')}"]
                row(e.t, "faultlab", far, _label(e), fault="; ".join(texts))
            elif e.kind == "held":
                holds[e.detail.get("hold")] = e.t
                texts = take(e) or ["held"]
                row(e.t, "faultlab", None, fault="; ".join(texts), note=f"holding {_label(e)}")
            continue
        party = _party(e.source)
        if e.kind in ("received", "sent") and e.peer:
            if e.peer in book.faultlab:
                continue  # faultlab's own record of this hop is there
            other = party_at.get(e.peer) or ("caller" if "caller" in sources and party != "caller" else e.peer)
            if e.kind == "received" and other in recording:
                continue  # the sender's record of it is there
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
    end = rows[-1]["t"] if rows else 0.0
    for key, groups in pending.items():  # faults whose message had no outcome yet when the trace ended
        for f in (f for group in groups for f in group):
            row(end, "faultlab", None, fault=_fault_text(f), note=f"{labels[key]}: not sent by the end of the trace")
    return rows


def _hostport(addr: tuple[str, int]) -> str:
    from faultlab.net.addr import format_hostport

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


def render_ladder(rows: list[dict[str, Any]], *, width: int = 100, title: str | None = None) -> str:
    """Rows as a text ladder no wider than ``width`` columns (at least 40): a time column, one lane per party,
    labels on the arrows, faults and notes to the right."""
    if width < MIN_WIDTH:
        raise ValueError(f"width must be at least {MIN_WIDTH} columns, not {width}")
    names = parties(rows)
    if not names:
        return (title + "\n" if title else "") + "(no messages)\n"
    margin = min(max(len(n) for n in names) // 2 + 1, 6)
    n = len(names)
    # lanes take what they need (about 20 columns between neighbours) and leave the rest to the notes
    lanes_w = min(width - _TIME_WIDTH - max(14, int(width * 0.27)), (n - 1) * _LANE_GAP + 2 * margin + 1)
    if n == 1:
        pos = {names[0]: _TIME_WIDTH + lanes_w // 2}
    else:
        step = (lanes_w - 2 * margin) / (n - 1)
        pos = {name: _TIME_WIDTH + margin + round(i * step) for i, name in enumerate(names)}
    right = _TIME_WIDTH + lanes_w + 1  # where the fault/note text starts

    def blank() -> list[str]:
        line = [" "] * width
        for x in pos.values():
            line[x] = "|"
        return line

    def put(line: list[str], x: int, text: str) -> None:
        for i, ch in enumerate(text):
            if 0 <= x + i < width:
                line[x + i] = ch

    out: list[str] = []
    if title:
        out.append(_fit(title, width))
    head = [" "] * width
    put(head, 0, "     t (s)")
    gap = min((b - a for a, b in zip(sorted(pos.values()), sorted(pos.values())[1:])), default=width)
    for name in names:
        label = _fit(name, max(gap - 1, 3))
        put(head, pos[name] - len(label) // 2, label)
    out.append("".join(head).rstrip())
    for r in rows:
        line = blank()
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
        out.append("".join(line).rstrip())
    return "\n".join(out) + "\n"
