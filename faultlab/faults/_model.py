"""The validated profile model: frozen dataclasses, built by :mod:`._load`.

Nothing here reads files or TOML; these are plain values that compare by
value, so tests assert on them with ``==``. Every duration is in seconds,
every probability a float in [0, 1], every rate in bits per second.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ._kind import KINDS

__all__ = [
    "Profile",
    "Rule",
    "Match",
    "Action",
    "StatusSet",
    "HeaderTest",
    "DeviceSpec",
    "Occurrence",
    "Window",
    "DelaySpec",
    "RespondSpec",
    "DuplicateSpec",
    "HoldSpec",
    "CloseSpec",
    "Link",
    "LinkSpec",
    "GilbertElliott",
    "DIRECTIONS",
    "TRANSPORTS",
]

DIRECTIONS = ("to-pbx", "to-device")
TRANSPORTS = ("udp", "tcp", "tls")


# ---------------------------------------------------------------------------
# match


@dataclass(frozen=True)
class StatusSet:
    """Response statuses: exact ``codes`` and whole ``classes`` (``5`` for ``"5xx"``)."""

    codes: frozenset[int] = frozenset()
    classes: frozenset[int] = frozenset()

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and (status in self.codes or status // 100 in self.classes)


@dataclass(frozen=True)
class HeaderTest:
    """A header condition: ``key`` is the canonical lower-case name.

    ``present`` False: the header must be absent. Else it must be present,
    and if ``pattern`` is set, one of its values must match it (``re.search``).
    """

    name: str
    key: str
    present: bool = True
    pattern: re.Pattern[str] | None = None


@dataclass(frozen=True)
class DeviceSpec:
    """One ``device`` value: an address or network (``network``, optional ``port``)
    or a SIP AOR (``aor_user``, ``aor_host`` lower-case, optional ``port``)."""

    text: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None
    aor_user: str | None = None
    aor_host: str | None = None

    @property
    def is_aor(self) -> bool:
        return self.aor_host is not None


@dataclass(frozen=True)
class Occurrence:
    """Which occurrences (1-based ordinal ``n`` of matching messages) are selected.

    Selected when ``n > after``, and ``n <= after + first`` if ``first`` is set,
    and ``(n - after) % every == 0`` if ``every`` is set. ``per`` scopes the
    counter: ``"rule"`` (one counter for the run), ``"device"``, ``"flow"``,
    ``"call"`` (Call-ID) or ``"transaction"``.
    """

    first: int | None = None
    every: int | None = None
    after: int = 0
    per: str = "rule"

    def selects(self, n: int) -> bool:
        if n <= self.after:
            return False
        k = n - self.after
        if self.first is not None and k > self.first:
            return False
        if self.every is not None and k % self.every:
            return False
        return True


@dataclass(frozen=True)
class Window:
    """Active from ``start`` to ``start + duration`` seconds after the anchor
    (``"activation"`` of the profile, or the ``"first-match"`` of the rule);
    ``duration`` None: open-ended."""

    start: float = 0.0
    duration: float | None = None
    anchor: str = "activation"

    def contains(self, elapsed: float) -> bool:
        if elapsed < self.start:
            return False
        return self.duration is None or elapsed < self.start + self.duration


@dataclass(frozen=True)
class Match:
    """All conditions of a rule, combined with AND; ``None``/empty = any.

    ``on``: ``"message"`` (a SIP message), ``"connect"`` (a TCP/TLS
    connection accepted from a device) or ``"keep-alive"`` (a CRLF keep-alive,
    RFC 5626 §4.4.1; ``keep_alive``: ``"ping"`` (CRLF CRLF), ``"pong"`` (CRLF)
    or None for both). ``count``: ``"transaction"`` (the
    retransmissions of a request or response count as one occurrence and
    share its decision) or ``"transmission"`` (each copy on the wire counts).
    ``in_dialog``: the To header has (True) / has not (False) a tag.
    """

    on: str = "message"
    direction: str | None = None
    transport: frozenset[str] | None = None
    method: frozenset[str] | None = None
    status: StatusSet | None = None
    cseq_method: frozenset[str] | None = None
    in_dialog: bool | None = None
    headers: tuple[HeaderTest, ...] = ()
    body: re.Pattern[str] | None = None
    device: tuple[DeviceSpec, ...] = ()
    occurrence: Occurrence | None = None
    count: str = "transaction"
    probability: float | None = None
    window: Window | None = None
    keep_alive: str | None = None


# ---------------------------------------------------------------------------
# action


@dataclass(frozen=True)
class DelaySpec:
    """``delay`` seconds, spread by ``jitter`` with ``distribution``:
    ``"uniform"`` in [delay - jitter, delay + jitter] or ``"normal"`` (mean
    delay, standard deviation jitter); never below 0."""

    delay: float
    jitter: float = 0.0
    distribution: str = "uniform"


@dataclass(frozen=True)
class RespondSpec:
    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DuplicateSpec:
    """``copies`` extra copies (``duplicate = 1`` sends the message twice),
    the i-th one ``i * spacing`` after the original."""

    copies: int
    spacing: float = 0.0


@dataclass(frozen=True)
class HoldSpec:
    """Keep the message until released; after ``timeout`` (None: never) ``then`` forward or drop it."""

    timeout: float | None = None
    then: str = "forward"


@dataclass(frozen=True)
class CloseSpec:
    """``kind``: ``"fin"`` (close) or ``"rst"`` (reset); ``when``: ``"before"``
    (the message is not forwarded) or ``"after"`` forwarding it."""

    kind: str
    when: str = "after"


@dataclass(frozen=True)
class Action:
    """What a rule does. ``kind`` names its class in :mod:`faultlab.faults.actions` (``"forward"``: only
    header edits). The spec field of that kind is set."""

    kind: str = "forward"
    delay: DelaySpec | None = None
    respond: RespondSpec | None = None
    duplicate: DuplicateSpec | None = None
    hold: HoldSpec | None = None
    close: CloseSpec | None = None
    stall: float | None = None  # seconds; math.inf: until the connection ends
    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()

    @property
    def terminal(self) -> bool:
        """True when no later rule runs after this one (drop, respond, hold, close/reset before forwarding)."""
        return KINDS[self.kind].ends(self)

    @property
    def edits(self) -> bool:
        return bool(self.set_headers or self.remove_headers)


# ---------------------------------------------------------------------------
# rules and profiles


@dataclass(frozen=True)
class Rule:
    """One rule: when ``match`` holds, do ``action``; ``continue_`` (TOML
    ``continue``) lets later rules apply to the same message too.

    ``spec`` is the rule as written (TOML table or API JSON), for display.
    """

    name: str
    match: Match
    action: Action
    continue_: bool = False
    spec: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class GilbertElliott:
    """The Gilbert-Elliott loss model, with tc-netem's ``gemodel`` parameters.

    ``p``: P(good -> bad) per packet; ``r``: P(bad -> good); ``h``: P(delivered
    | bad state), so netem's ``1-h`` is the loss in the bad state; ``k``:
    P(delivered | good state), netem's ``1-k`` the loss in the good state.
    The defaults (h = 0, k = 1) are the simple Gilbert model: every packet in
    the bad state is lost, none in the good state. As in netem, a packet's
    fate depends on the state it arrives in, and the state then moves on.
    """

    p: float
    r: float
    h: float = 0.0
    k: float = 1.0

    @property
    def bad_loss(self) -> float:
        return 1.0 - self.h

    @property
    def good_loss(self) -> float:
        return 1.0 - self.k

    @property
    def mean_loss(self) -> float:
        """The long-run loss ratio: pi_bad (1-h) + pi_good (1-k)."""
        if self.p + self.r == 0:
            return self.good_loss
        bad = self.p / (self.p + self.r)
        return bad * self.bad_loss + (1 - bad) * self.good_loss

    @property
    def mean_burst(self) -> float:
        """The mean number of consecutive packets in the bad state, 1/r."""
        return math.inf if self.r == 0 else 1.0 / self.r


@dataclass(frozen=True)
class LinkSpec:
    """Impairment of one direction of the link (also usable per packet).

    ``delay`` + ``jitter`` (``distribution`` as in :class:`DelaySpec`),
    ``loss`` (random, probability) or ``loss_model`` (Gilbert-Elliott, then
    ``loss`` is 0), ``duplicate`` and ``reorder`` (probabilities; a reordered
    packet skips the delay, as in netem), ``rate_bps`` (serialisation at this
    many bits per second, None: unlimited).
    """

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    loss_model: GilbertElliott | None = None
    duplicate: float = 0.0
    reorder: float = 0.0
    rate_bps: float | None = None
    distribution: str = "uniform"

    @property
    def is_clean(self) -> bool:
        return self == LinkSpec()


@dataclass(frozen=True)
class Link:
    """The ``[link]`` section: one :class:`LinkSpec` per direction.

    ``dns_delay`` (NLC's "DNS delay") is used only by the network lab, which
    sees DNS; the proxy carries SIP only and ignores it.
    """

    to_pbx: LinkSpec = LinkSpec()
    to_device: LinkSpec = LinkSpec()
    dns_delay: float = 0.0

    def for_direction(self, direction: str) -> LinkSpec:
        return self.to_pbx if direction == "to-pbx" else self.to_device


@dataclass(frozen=True)
class Profile:
    """A validated fault profile. ``text`` is the original TOML, ``source`` its file."""

    name: str
    summary: str
    rules: tuple[Rule, ...] = ()
    link: Link | None = None
    source: str = "<string>"
    text: str = field(default="", compare=False, repr=False)
    description: str = ""

    def rule(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)
