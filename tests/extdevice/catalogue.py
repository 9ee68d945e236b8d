"""The whole catalogue dealt into parallel lanes of ``faultlab lab run --device external`` (tests/extdevice/lanes.py).

Shared by tests/integration/test_external_device.py (CI) and bench/external_catalogue.py. Unlike the device, this
harness reads faultlab's catalogue and skip rule: which (scenario, transport) cases an external device plays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from faultlab.lab.estimate import skip_reason
from faultlab.lab.scenario import Scenario
from tests.extdevice.lanes import Lane

TRANSPORTS = ("udp", "tcp", "tls")


def cost(scenario: Scenario, transport: str, pause: float) -> float:
    """Seconds one case takes at most in real time (0 when the lab skips it: it says why and moves on)."""
    if skip_reason(scenario, transport) is not None:
        return 0.0
    runs = 2 if scenario.cancel_push_check else 1
    return runs * (scenario.duration + 2 + pause)


def played(scenarios: Iterable[Scenario], transports: Iterable[str]) -> set[tuple[str, str]]:
    """The (scenario id, transport) cases an external device plays."""
    return {(s.id, t) for t in transports for s in scenarios
            if t in s.transports and skip_reason(s, t) is None}


def plan(scenarios: Sequence[Scenario], transports: Iterable[str], lanes: int, pause: float,
         root: Path) -> list[Lane]:
    """Deal (transport, scenario) cases to about ``lanes`` lanes, longest first, each lane one transport's slice
    (at least one lane per transport that has cases)."""
    work = {t: [s for s in scenarios if t in s.transports] for t in transports}
    total = sum(cost(s, t, pause) for t in work for s in work[t])
    share = max(1, lanes) / max(total, 1e-9)
    counts = {t: max(1, round(sum(cost(s, t, pause) for s in work[t]) * share)) for t in work if work[t]}
    out = []
    for t, n in counts.items():
        bins: list[tuple[float, list[Scenario]]] = [(0.0, []) for _ in range(n)]
        for s in sorted(work[t], key=lambda s: -cost(s, t, pause)):
            i = min(range(n), key=lambda k: bins[k][0])
            bins[i] = (bins[i][0] + cost(s, t, pause), bins[i][1] + [s])
        for i, (_, chosen) in enumerate(bins):
            if chosen:
                order = sorted(chosen, key=lambda s: list(scenarios).index(s))
                out.append(Lane(f"{t}-{i + 1}", t, [s.id for s in order], root / f"{t}-{i + 1}"))
    return out
