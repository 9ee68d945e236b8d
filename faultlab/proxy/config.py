"""The proxy's configuration (what ``faultlab proxy`` takes on its command line), checked before
anything is bound: every error says how to fix it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from faultlab.addr import Endpoint
from faultlab.ca import normalize_names
from faultlab.faults import Profile
from faultlab.net.transparent import support_problem
from faultlab.sip import MAX_MESSAGE_SIZE

#: The range --max-message-size accepts: a SIP element must take messages of 1,300 octets over UDP
#: (RFC 3261 §18.1.1), and the framer buffers up to one message per connection direction.
MESSAGE_SIZE_RANGE = (1300, 16 * 1024 * 1024)
from faultlab.trace import Trace
from faultlab.trace.hep import HepTarget


class ConfigError(ValueError):
    """A proxy configuration that cannot run; the message says how to fix it."""


@dataclass
class ProxyConfig:
    listen: Sequence[Endpoint]
    upstream: Sequence[Endpoint]
    record_route: bool = True
    tls_name: str | None = None
    # The name the PBX's TLS certificate is verified against (and sent as SNI). None: the --upstream host,
    # or in transparent mode tls_name, else the PBX's address.
    upstream_tls_name: str | None = None
    upstream_ca: Path | None = None
    upstream_insecure: bool = False
    confdir: Path | None = None
    trace_path: Path | None = None
    quiet: bool = True
    verbose: bool = False  # console: also the messages received, and each message's first line
    udp_idle_timeout: float = 600.0
    connect_timeout: float = 10.0
    # TCP/TLS: a message begun must be complete within message_timeout (64*T1); a connection with no bytes
    # either way (CRLF keep-alives count) closes after stream_idle_timeout, unless a registration that passed
    # on it has not yet expired. drain: at SIGINT/SIGTERM, how long what is in flight may take to be answered.
    message_timeout: float = 32.0
    stream_idle_timeout: float = 3600.0
    drain: float = 5.0
    keep_events: int | None = None
    handle_signals: bool = False
    profile: Profile | None = None
    seed: int | None = None  # None: drawn at start, recorded in the trace
    # The control API's address and token (None: no API). The proxy does not serve it: the composition above
    # both does (faultlab.api.run.serve_proxy_with_api), checking the address with the rest of the config.
    api: tuple[str, int] | None = None
    api_token: str | None = None
    # Transparent mode (Linux, root): relay intercepted traffic to its original
    # destination, adding no headers; spoof_source: the PBX sees the device's address.
    transparent: bool = False
    spoof_source: bool = False
    # Write the relay's events to this trace (e.g. a lab's shared timeline), with times relative to
    # trace_t0 (trio clock); None: a trace of its own from now. A given trace is not closed at stop.
    trace: Trace | None = None
    trace_t0: float | None = None
    # Bounds (faultlab.net.limits): None derives the count from the descriptor limit at start.
    max_flows: int | None = None  # UDP flows; at the limit a new device closes the flow idle longest
    max_connections: int | None = None  # TCP/TLS device connections; more are closed at once
    max_message_size: int = MAX_MESSAGE_SIZE  # octets; larger: 513 over UDP, connection closed on TCP/TLS
    # Send every message and decision as HEP v3 to this collector (faultlab.net.hep), as capture agent hep_id.
    hep: HepTarget | None = None
    hep_id: int = 1
    hep_password: str | None = None

    def upstream_for(self, transport: str) -> Endpoint | None:
        if self.transparent:
            return None
        for ep in self.upstream:
            if ep.transport == transport:
                return ep
        raise ConfigError(
            f"--listen {transport}:... has no upstream: add --upstream {transport}:HOST:PORT"
        )

    def validate(self) -> None:
        if not self.listen:
            raise ConfigError("nothing to listen on: add --listen udp:HOST:PORT (or tcp:, tls:)")
        for option, value in (("--message-timeout", self.message_timeout),
                              ("--stream-idle-timeout", self.stream_idle_timeout), ("--drain", self.drain)):
            if not value >= (0 if option == "--drain" else 0.001):
                raise ConfigError(f"{option} {value}: give a number of seconds above 0 (--drain: 0 or more)")
        seen: set[str] = set()
        for ep in self.upstream:
            if ep.transport in seen:
                raise ConfigError(f"two --upstream for {ep.transport}: give one per transport")
            seen.add(ep.transport)
            if ep.port == 0:
                raise ConfigError(f"--upstream {ep}: port 0 is not a destination; give the PBX's port")
        if self.spoof_source and not self.transparent:
            raise ConfigError("--spoof-source needs --transparent")
        if self.trace is not None and self.trace_path is not None:
            raise ConfigError("a shared trace is written by its owner: give trace_path to it, not to the proxy")
        if self.transparent:
            if self.upstream:
                raise ConfigError("--transparent relays each flow to where the device sent it: "
                                  "drop --upstream")
            problem = support_problem()
            if problem:
                raise ConfigError(problem)
        for ep in self.listen:
            self.upstream_for(ep.transport)
        self._validate_limits()
        if self.upstream_insecure and self.upstream_ca:
            raise ConfigError("--upstream-insecure and --upstream-ca exclude each other: choose one")
        if self.upstream_tls_name is not None:
            try:
                normalize_names([self.upstream_tls_name])
            except ValueError as exc:
                raise ConfigError(f"--upstream-tls-name: {exc}; give the name on the PBX's certificate") from None
            tls_to_pbx = (any(ep.transport == "tls" for ep in self.listen) if self.transparent
                          else any(ep.transport == "tls" for ep in self.upstream))
            if not tls_to_pbx:
                raise ConfigError("--upstream-tls-name is for TLS to the PBX: add --upstream tls:HOST:PORT "
                                  "(with --transparent: --listen tls:HOST:PORT), or drop it")

    def _validate_limits(self) -> None:
        for option, value in (("--max-flows", self.max_flows), ("--max-connections", self.max_connections)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{option} {value!r}: give a whole number of 1 or more (or leave it out: "
                                  "the default follows the descriptor limit)")
        low, high = MESSAGE_SIZE_RANGE
        size = self.max_message_size
        if isinstance(size, bool) or not isinstance(size, int) or not low <= size <= high:
            raise ConfigError(f"--max-message-size {size!r}: give a number of octets from {low} to {high} "
                              f"(default {MAX_MESSAGE_SIZE})")
