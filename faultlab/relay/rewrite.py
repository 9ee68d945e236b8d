"""Relay mode: the header edits of a stateless SIP proxy (RFC 3261 §16.11). Pure.

faultlab sits between devices and one PBX. Every request it forwards gets its
own Via (so UDP responses come back through it), dialog-forming requests get
its Record-Route (so ACK, BYE and re-INVITEs come back through it), and its
own Route entries are consumed from in-dialog requests. Responses lose the Via
faultlab added. Nothing else in a message changes.

Record-Route is *double* (as Kamailio does when a proxy changes interface):
one entry names the address the device side reaches faultlab at, the other
the per-flow address the PBX side reaches it at. Each device sees its own
side's entry first in its route set; the PBX sees the other.

Which entries are "ours" is told by a URI parameter ``fl=<instance>``, and
which Via is ours by the branch prefix ``z9hG4bKfl<instance>``. The instance
is derived from the listen addresses, so it survives a restart.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from faultlab.addr import format_hostport
from faultlab.sip import (
    MAGIC_COOKIE,
    Message,
    add_top_header,
    format_via,
    parse_message,
    remove_top_value,
    stateless_branch,
)

# The branch parameter of a Via value (parameter names are case-insensitive).
_BRANCH = re.compile(r";\s*branch\s*=\s*([^;,\s]+)", re.IGNORECASE)

TO_PBX = "to-pbx"
TO_DEVICE = "to-device"

# Requests that create a dialog (RFC 3261 §12.1, RFC 6665, RFC 3515) and so
# must be Record-Routed when they arrive without a To tag.
DIALOG_FORMING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})


def instance_id(listen_specs: list[str]) -> str:
    return hashlib.sha1("|".join(sorted(listen_specs)).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Side:
    """faultlab's own addresses for one flow.

    ``device``: where the device reaches faultlab (the listen address);
    ``pbx``: where the PBX reaches faultlab for this flow (the local address
    of the flow's upstream socket or connection).
    """

    transport: str
    device: tuple[str, int]
    pbx: tuple[str, int]


class Rewriter:
    def __init__(self, instance: str, *, record_route: bool = True) -> None:
        self.instance = instance
        self.record_route = record_route
        self._branch_prefix = f"z9hG4bKfl{instance}"
        self._route_mark = f";fl={instance}"

    # -- requests ---------------------------------------------------------
    def request(self, msg: Message, direction: str, side: Side) -> bytes:
        """The bytes to forward for a request crossing in ``direction``.

        Raises :class:`SipError` when a header it needs is malformed; the
        caller then forwards the message unchanged and records why.
        """
        while True:
            routes = msg.get_all("route")
            if not (routes and self.is_ours(routes[0])):
                break
            msg = parse_message(remove_top_value(msg, "route"))
        if (
            self.record_route
            and msg.method in DIALOG_FORMING
            and msg.to_tag is None
        ):
            dev = self._rr(side.transport, side.device)
            pbx = self._rr(side.transport, side.pbx)
            # Each new entry goes above the previous one. A calling device
            # (to-pbx) reads the list bottom-up, a called one (to-device)
            # top-down: either way it must meet faultlab's device-side
            # address first, and the PBX the PBX-side one.
            first, second = (dev, pbx) if direction == TO_PBX else (pbx, dev)
            msg = parse_message(add_top_header(msg, "Record-Route", first))
            msg = parse_message(add_top_header(msg, "Record-Route", second))
        branch = self._branch_prefix + self._branch_hash(msg)
        # The Via names faultlab's device-side address in both directions, with
        # rport: the PBX answers to the source of the request (RFC 3581), i.e.
        # the flow's socket, and seeing sent-by differ from the source it
        # treats the device as behind a NAT and sends its own requests back to
        # that source (Kamailio's nat_uac_test, Asterisk's rewrite_contact):
        # back through the flow, which is what the flow is for.
        host, port = side.device
        return add_top_header(msg, "Via", format_via(side.transport.upper(), host, port, branch))

    def _branch_hash(self, msg: Message) -> str:
        """RFC 3261 §16.11: the same new branch for the same incoming one (and so for a
        CANCEL and a non-2xx ACK as for their INVITE). The common case, an RFC 3261
        branch, is read straight from the top Via; anything else takes the full rule."""
        vias = msg.get_all("via")
        found = _BRANCH.search(vias[0]) if vias else None
        if found is not None and len(found.group(1)) > len(MAGIC_COOKIE) and found.group(1).startswith(MAGIC_COOKIE):
            data = f"{self.instance}\0{found.group(1)}".encode("utf-8", "surrogateescape")
            return hashlib.sha256(data).hexdigest()[:16]
        return stateless_branch(msg, self.instance)[len(MAGIC_COOKIE) :]

    # -- responses --------------------------------------------------------
    def response(self, msg: Message) -> bytes | None:
        """The response without faultlab's Via; ``None`` if the top Via is not ours."""
        vias = msg.get_all("via")
        found = _BRANCH.search(vias[0]) if vias else None
        if found is None or not found.group(1).startswith(self._branch_prefix):
            return None
        return remove_top_value(msg, "via")

    # -- helpers ----------------------------------------------------------
    def is_ours(self, route_value: str) -> bool:
        i = route_value.find(self._route_mark)
        if i < 0:
            return False
        end = i + len(self._route_mark)
        return end == len(route_value) or route_value[end] in ";>"

    def _rr(self, transport: str, addr: tuple[str, int]) -> str:
        hostport = format_hostport(*addr)
        return f"<sip:{hostport};transport={transport};lr{self._route_mark}>"

