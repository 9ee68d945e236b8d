"""Link impairment: loss (random, Gilbert-Elliott), delay and jitter,
duplication, reordering, rate; per packet (LinkState) and per SIP message
through the engine (UDP and the TCP retransmission model)."""

from __future__ import annotations

import random

import pytest

from faultlab.faults import LinkState
from faultlab.faults import Decision, Fired, GilbertElliott, LinkSpec
from faultlab.faults._engine import TCP_MAX_RETRIES, TCP_MIN_RTO

from .test_faults_support import engine, request, view


def bound(n: int, p: float, sigmas: float = 4.0) -> tuple[float, float]:
    sd = (n * p * (1 - p)) ** 0.5
    return n * p - sigmas * sd, n * p + sigmas * sd


def losses(spec: LinkSpec, n: int, seed: int = 1) -> list[bool]:
    state = LinkState(spec, random.Random(seed))
    return [state.packet(100, i * 0.01).lost for i in range(n)]


def bursts(lost: list[bool]) -> list[int]:
    out, run = [], 0
    for x in lost:
        if x:
            run += 1
        elif run:
            out.append(run)
            run = 0
    if run:
        out.append(run)
    return out


# ---------------------------------------------------------------------------
# LinkState, per packet


def test_clean_link_changes_nothing():
    state = LinkState(LinkSpec(), random.Random(1))
    lost, delay, copies = state.packet(1500, 0.0)
    assert (lost, delay, copies) == (False, 0.0, ())


@pytest.mark.parametrize("seed", [1, 7])
def test_random_loss_within_binomial_bound(seed):
    n = 10_000
    lost = sum(losses(LinkSpec(loss=0.08), n, seed))
    lo, hi = bound(n, 0.08)
    assert lo <= lost <= hi


def test_full_and_no_loss():
    assert all(losses(LinkSpec(loss=1.0), 100))
    assert not any(losses(LinkSpec(loss=0.0, delay=0.1), 100))


def test_gilbert_elliott_is_bursty():
    ge = GilbertElliott(p=0.02, r=0.25)  # mean loss 0.02/0.27 = 7.4%, mean burst 4
    n = 10_000
    lost = losses(LinkSpec(loss_model=ge), n, seed=3)
    # losses are correlated, so the spread is wider than binomial: the bounds
    # hold for each of seeds 0-39 (worst: 20% off in rate, 15% in burst length)
    rate = sum(lost) / n
    assert rate == pytest.approx(ge.mean_loss, rel=0.25)
    ge_bursts = bursts(lost)
    assert sum(ge_bursts) / len(ge_bursts) == pytest.approx(ge.mean_burst, rel=0.25)
    # random loss at the same mean rate: bursts of about 1 / (1 - p)
    rnd_bursts = bursts(losses(LinkSpec(loss=ge.mean_loss), n, seed=3))
    assert sum(rnd_bursts) / len(rnd_bursts) < 1.2
    assert max(ge_bursts) > max(rnd_bursts)


def test_gilbert_elliott_partial_loss_in_states():
    ge = GilbertElliott(p=0.1, r=0.1, h=0.5, k=0.99)  # half of bad-state packets, 1% of good ones
    n = 10_000
    rate = sum(losses(LinkSpec(loss_model=ge), n, seed=11)) / n
    assert ge.mean_loss == pytest.approx(0.5 * 0.5 + 0.5 * 0.01)
    assert rate == pytest.approx(ge.mean_loss, rel=0.1)


def test_delay_and_uniform_jitter():
    state = LinkState(LinkSpec(delay=0.1, jitter=0.03), random.Random(2))
    delays = [state.packet(100, 0.0).delay for _ in range(2000)]
    assert min(delays) >= 0.07 and max(delays) <= 0.13
    assert sum(delays) / len(delays) == pytest.approx(0.1, abs=0.003)


def test_normal_jitter_never_negative():
    state = LinkState(LinkSpec(delay=0.01, jitter=0.05, distribution="normal"), random.Random(2))
    assert min(state.packet(100, 0.0).delay for _ in range(2000)) == 0.0


def test_rate_serialisation_queues_back_to_back_packets():
    state = LinkState(LinkSpec(rate_bps=8000.0, delay=0.05), random.Random(1))  # 1000 bytes/s
    fates = [state.packet(100, 0.0) for _ in range(3)]
    assert [f.delay for f in fates] == pytest.approx([0.15, 0.25, 0.35])
    assert [f.queued for f in fates] == pytest.approx([0.1, 0.2, 0.3])
    # half-way through the queue
    assert state.packet(100, 0.2).delay == pytest.approx(0.4 - 0.2 + 0.05)
    # after the link went idle, no wait
    assert state.packet(100, 10.0).delay == pytest.approx(0.15)


def test_lost_packets_take_no_link_time():
    state = LinkState(LinkSpec(rate_bps=8000.0, loss=1.0), random.Random(1))
    state.packet(100, 0.0)
    state.spec = LinkSpec(rate_bps=8000.0)
    assert state.packet(100, 0.0).delay == pytest.approx(0.1)


def test_duplicate_probability():
    state = LinkState(LinkSpec(duplicate=0.2, delay=0.01), random.Random(4))
    n = 5000
    dups = sum(len(state.packet(100, 0.0).copies) for _ in range(n))
    lo, hi = bound(n, 0.2)
    assert lo <= dups <= hi
    assert not LinkState(LinkSpec(duplicate=1.0), random.Random(1)).packet(10, 0.0, duplicates=False).copies


def test_reorder_skips_the_delay():
    state = LinkState(LinkSpec(delay=0.5, reorder=0.25), random.Random(9))
    fates = [state.packet(100, 0.0) for _ in range(4000)]
    reordered = [f for f in fates if f.reordered]
    assert all(f.delay == 0.0 for f in reordered) and all(f.delay == 0.5 for f in fates if not f.reordered)
    lo, hi = bound(4000, 0.25)
    assert lo <= len(reordered) <= hi


# ---------------------------------------------------------------------------
# through the engine, per SIP message


def test_link_per_direction():
    e = engine('[link]\ndelay = "100ms"\n[link.to-device]\ndelay = "400ms"\n')
    assert e.decide(view(request()), 0.0).delay == pytest.approx(0.1)
    d = e.decide(view(request("INVITE"), "to-device"), 0.0)
    assert d.delay == pytest.approx(0.4) and d.events == (Fired("link", "delay", {"delay": 0.4}),)


def test_link_adds_to_rule_delay_and_queues_after_it():
    e = engine(
        '[[rules]]\nname = "slow"\nmatch = { method = "INVITE" }\naction = { delay = "1s" }\n'
        '[link]\ndelay = "50ms"\nrate = "8kbit"\n'
    )
    msg = request("INVITE")
    size = len(msg.raw)
    d = e.decide(view(msg), 0.0)
    assert d.delay == pytest.approx(1.0 + size / 1000 + 0.05)
    assert d.events[0] == Fired("slow", "delay", {"delay": 1.0})
    assert d.events[1].detail["queued"] == pytest.approx(size / 1000)
    # a REGISTER sent just after the INVITE entered the link waits for it
    reg = request()
    d2 = e.decide(view(reg), 1.0)
    assert d2.delay == pytest.approx(size / 1000 + len(reg.raw) / 1000 + 0.05)


def test_udp_loss_loses_the_message():
    e = engine('[link]\nloss = "100%"')
    d = e.decide(view(request()), 0.0)
    assert d == Decision(
        data=None, events=(Fired("link", "loss", {"model": "random", "packet": "message"}),), lost_by_link=True
    )
    assert d.outcome == "lost"


def test_tcp_loss_becomes_retransmission_delay():
    # with seed 1, find a message the link loses once on TCP
    e = engine('[link]\nloss = "50%"', seed=1)
    seen = {}
    for i in range(200):
        d = e.decide(view(request(branch=f"z9hG4bK{i}"), transport="tcp"), 1000.0 * i)
        assert d.data is not None and d.copies == ()
        for f in d.events:
            if f.action == "loss":
                seen.setdefault(f.detail["tcp_retransmissions"], d.delay)
    assert seen[1] == pytest.approx(TCP_MIN_RTO)
    assert seen[2] == pytest.approx(TCP_MIN_RTO * 3)  # 0.2 + 0.4


def test_tcp_full_loss_is_lost_after_the_retries():
    d = engine('[link]\nloss = "100%"').decide(view(request(), transport="tls"), 0.0)
    assert d.data is None and d.lost_by_link
    assert d.events == (
        Fired("link", "loss", {"model": "random", "packet": "message", "tcp_retransmissions": TCP_MAX_RETRIES + 1}),
    )


def test_tcp_ignores_link_duplication():
    d = engine('[link]\nduplicate = "100%"').decide(view(request(), transport="tcp"), 0.0)
    assert d.copies == () and d.data is not None


def test_udp_link_duplication():
    d = engine('[link]\nduplicate = "100%"\ndelay = "10ms"').decide(view(request()), 0.0)
    assert d.delay == pytest.approx(0.01) and d.copies == (pytest.approx(0.01),)


def test_surviving_copy_replaces_a_lost_original():
    e = engine(
        '[[rules]]\nname = "dup"\naction = { duplicate = 3, spacing = "10ms" }\n[link]\nloss = "50%"', seed=0
    )
    for i in range(50):
        d = e.decide(view(request(branch=f"z9hG4bK{i}")), float(i))
        lost = [f for f in d.events if f.action == "loss"]
        if d.data is None:
            assert len(lost) == 4 and d.lost_by_link
        else:
            assert len(d.copies) == 3 - len(lost)


def test_keepalives_and_unparsed_bytes_cross_the_link():
    e = engine('[link]\ndelay = "100ms"')
    d = e.decide(view(None, raw=b"\r\n\r\n"), 0.0)
    assert d.data == b"\r\n\r\n" and d.delay == pytest.approx(0.1)


def test_dns_delay_does_not_touch_sip():
    e = engine('[link]\ndns_delay = "3s"')
    assert e.profile.link.dns_delay == 3.0
    assert e.decide(view(request()), 0.0) == Decision(data=request().raw)


def test_gilbert_elliott_event_names_the_model():
    e = engine('[link]\nloss = { p = "100%", r = "0%" }')
    e.decide(view(request()), 0.0)  # good state: delivered, moves to bad
    d = e.decide(view(request()), 1.0)
    assert d.events == (Fired("link", "loss", {"model": "gilbert-elliott", "packet": "message"}),)
