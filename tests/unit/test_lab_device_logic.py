"""DeviceLogic table tests: the reference §6 scenarios the device alone decides, no sockets, no clock.

Each test feeds inputs at times (t0 = push at 0) and runs the logic's timers in between, then checks the device
events (time, event, reason) and the SIP it answered with.
"""

from __future__ import annotations

import pytest

from faultlab.lab.device.logic import (
    BEHAVIOURS,
    MAX_FLOW_RECOVERIES,
    DeviceConfig,
    DeviceLogic,
    Emit,
    Reply,
    SendRegister,
    StopRegister,
    cancel_reason,
)
from faultlab.sip import Reason

CALL = {"type": "call", "call-id": "c1@pbx", "uuid": "U-1", "from-uri": "sip:bob@lab", "display-name": "Bob"}
INVITE, CANCEL, BYE = "INVITE-ref", "CANCEL-ref", "BYE-ref"


class Run:
    """Drive a DeviceLogic: inputs at times, with its timers fired in between, as the trio driver does."""

    def __init__(self, **config) -> None:
        self.logic = DeviceLogic(DeviceConfig(**config))
        self.now = 0.0
        self.events: list[tuple[float, str, str | None]] = []
        self.replies: list[tuple[float, int, str]] = []
        self.registers: list[float] = []
        self.stops: list[float] = []

    def _take(self, outputs) -> None:
        for o in outputs:
            if isinstance(o, Emit):
                assert o.t == self.now
                self.events.append((round(o.t, 6), o.event, o.reason))
            elif isinstance(o, Reply):
                self.replies.append((round(self.now, 6), o.status, o.what))
            elif isinstance(o, SendRegister):
                self.registers.append(self.now)
            elif isinstance(o, StopRegister):
                self.stops.append(self.now)

    def until(self, t: float) -> Run:
        while (nt := self.logic.next_timer()) is not None and nt <= t:
            assert nt >= self.now, "a timer in the past"
            self.now = nt
            self._take(self.logic.on_timer(nt))
        self.now = t
        return self

    def at(self, t: float, name: str, *args, **kwargs) -> Run:
        self.until(t)
        self._take(getattr(self.logic, name)(t, *args, **kwargs))
        return self

    def push(self, t: float, kind: str = "call", payload=None) -> Run:
        return self.at(t, "push", kind, dict(CALL if payload is None else payload))

    def ended(self) -> list[tuple[float, str | None]]:
        return [(t, r) for t, e, r in self.events if e == "ended"]


def sip_reason(cause: int | None, text: str | None = None, protocol: str = "SIP") -> Reason:
    return Reason(protocol, cause, text)


# ------------------------------------------------------------------ well-behaved


def test_s01_baseline_answer_then_bye() -> None:
    r = Run(answer_after=2.0).push(0).at(0.3, "register_response", 200).at(0.5, "invite_received", INVITE, "c1@pbx")
    r.at(0.6, "ack_received").at(10.0, "bye_received", BYE).until(100)
    assert r.events == [
        (0, "reported", None),
        (2.0, "answer-tapped", None),
        (2.0, "answer-fulfilled", None),
        (10.0, "ended", "remoteEnded"),
    ]
    assert r.replies == [(0.5, 180, "INVITE"), (2.0, 200, "INVITE"), (10.0, 200, "BYE")]
    assert r.registers == [0]


def test_reports_at_once_and_registers() -> None:
    r = Run().push(0)
    assert r.events == [(0, "reported", None)] and r.registers == [0]


@pytest.mark.parametrize("t_register", [0.2, 3.0, 7.9])
def test_s04_cancelled_before_register_ends_unanswered_at_min_of_deadlines(t_register: float) -> None:
    r = Run().push(0).at(t_register, "register_response", 200).until(60)
    assert r.ended() == [(min(t_register + 5, 15), "unanswered")]


def test_total_deadline_caps_the_invite_wait() -> None:
    r = Run(register_deadline=14, invite_deadline=5, total_deadline=15).push(0).at(12, "register_response", 200)
    assert r.until(60).ended() == [(15, "unanswered")]


def test_s09_cancel_push_is_ignored_same_outcome_as_without() -> None:
    with_push = Run().push(0).at(0.2, "register_response", 200).push(1.0, "cancel").until(60)
    without = Run().push(0).at(0.2, "register_response", 200).until(60)
    assert with_push.events == without.events == [(0, "reported", None), (5.2, "ended", "unanswered")]


def test_s05_cancel_without_reason_is_remote_ended() -> None:
    r = Run().push(0).at(0.2, "register_response", 200).at(0.4, "invite_received", INVITE, "c1@pbx")
    r.at(3.0, "cancel_received", CANCEL, None).until(60)
    assert r.ended() == [(3.0, "remoteEnded")]
    assert r.replies == [(0.4, 180, "INVITE"), (3.0, 200, "CANCEL"), (3.0, 487, "INVITE")]


@pytest.mark.parametrize(
    "reason, expected",
    [
        (None, "remoteEnded"),
        (sip_reason(200, "Call completed elsewhere"), "answeredElsewhere"),  # S06
        (sip_reason(600, "Busy Everywhere"), "declinedElsewhere"),  # S07
        (sip_reason(603), "declinedElsewhere"),  # S07 variant
        (sip_reason(486, "Call completed elsewhere"), "remoteEnded"),  # S08: the cause decides, not the text
        (sip_reason(None, "Call completed elsewhere"), "remoteEnded"),
        (sip_reason(16, "Terminated", protocol="Q.850"), "remoteEnded"),
        (sip_reason(200, protocol="Q.850"), "remoteEnded"),
        (sip_reason(200, protocol="sip"), "answeredElsewhere"),
    ],
)
def test_s05_s06_s07_s08_cancel_reason_mapping(reason, expected: str) -> None:
    assert cancel_reason(reason) == expected
    r = Run().push(0).at(0.2, "register_response", 200).at(0.4, "invite_received", INVITE, "c1@pbx")
    r.at(1.0, "cancel_received", CANCEL, reason).until(60)
    assert r.ended() == [(1.0, expected)]


def test_s17_early_answer_is_held_and_fulfilled_after_the_200() -> None:
    r = Run(answer_after=1.0).push(0).at(0.2, "register_response", 200)
    r.until(2.0)
    assert r.events == [(0, "reported", None), (1.0, "answer-tapped", None)]  # held: not fulfilled yet
    r.at(2.2, "invite_received", INVITE, "c1@pbx").at(2.3, "ack_received").until(60)
    assert r.events[2:] == [(2.2, "answer-fulfilled", None)]
    assert r.replies == [(2.2, 180, "INVITE"), (2.2, 200, "INVITE")]
    assert r.ended() == []  # a connected call does not end on a timer


def test_s17_fulfilled_is_emitted_after_the_200_is_handed_out() -> None:
    logic = DeviceLogic(DeviceConfig())
    logic.push(0, "call", dict(CALL))
    logic.register_response(0.1, 200)
    logic.tap_answer(0.5)
    out = logic.invite_received(1.0, INVITE, "c1@pbx")
    kinds = [(type(o).__name__, getattr(o, "status", None) or getattr(o, "event", None)) for o in out]
    assert kinds == [("Reply", 180), ("Reply", 200), ("Emit", "answer-fulfilled")]


def test_s18_early_answer_invite_never_comes_fails_the_action_and_ends_failed() -> None:
    r = Run(answer_after=1.0).push(0).at(0.2, "register_response", 200).until(60)
    assert r.events == [
        (0, "reported", None),
        (1.0, "answer-tapped", None),
        (5.2, "answer-failed", None),
        (5.2, "ended", "failed"),
    ]


def test_s03_late_invite_is_rejected_after_the_end() -> None:
    r = Run().push(0).at(0.2, "register_response", 200).at(7.2, "invite_received", INVITE, "c1@pbx").until(60)
    assert r.ended() == [(5.2, "unanswered")]
    assert r.replies == [(7.2, 480, "INVITE")]


def test_s10_register_never_answered_ends_failed_at_register_deadline() -> None:
    r = Run().push(0).until(60)
    assert r.ended() == [(8.0, "failed")] and r.stops == [8.0]


@pytest.mark.parametrize("status", [403, 404, 401, 500, 408])
def test_s13_definitive_register_failure_ends_failed_at_once(status: int) -> None:
    r = Run().push(0).at(0.3, "register_response", status).until(60)
    assert r.ended() == [(0.3, "failed")]


def test_s12_503_retry_after_beyond_budget_fails_at_once() -> None:
    r = Run().push(0).at(0.3, "register_response", 503, 30).until(60)
    assert r.ended() == [(0.3, "failed")]


def test_s12b_503_retry_after_within_budget_retries_once() -> None:
    r = Run().push(0).at(0.3, "register_response", 503, 1).until(1.3)
    assert r.registers == [0, 1.3] and r.ended() == []
    r.at(1.5, "register_response", 200).at(2.0, "invite_received", INVITE, "c1@pbx").until(60)
    assert r.ended() == [(47.0, "unanswered")]  # nobody answers: the 45 s ring timeout
    assert r.replies[-1] == (47.0, 480, "INVITE")


def test_s15_transport_failure_fails_fast() -> None:
    r = Run().push(0).at(0.01, "transport_failed").until(60)
    assert r.ended() == [(0.01, "failed")]


def test_s14_handshake_that_never_completes_is_bounded_by_the_register_deadline() -> None:
    # the driver's connect hangs: no input at all after the push; the REGISTER is stopped at t0 + 8
    r = Run().push(0).until(60)
    assert r.ended() == [(8.0, "failed")] and r.stops == [8.0]


# ------------------------------------------------------------------ flow recovery (S24)


def test_s24_flow_lost_after_register_re_registers_at_once() -> None:
    r = Run().push(0).at(0.3, "register_response", 200).at(0.8, "flow_lost")
    assert r.registers == [0, 0.8] and r.events == [(0, "reported", None)]
    # the second 2xx is the new tR: the INVITE deadline is tR2 + 5 (capped at t0 + 15)
    r.at(1.0, "register_response", 200).until(60)
    assert r.ended() == [(6.0, "unanswered")]


def test_s24_invite_after_the_re_register_rings_as_usual() -> None:
    r = Run(answer_after=2.0).push(0).at(0.3, "register_response", 200).at(0.8, "flow_lost")
    r.at(1.0, "register_response", 200).at(1.1, "invite_received", INVITE, "c1@pbx").at(9, "bye_received", BYE)
    assert r.until(60).events == [(0, "reported", None), (2.0, "answer-tapped", None),
                                  (2.0, "answer-fulfilled", None), (9, "ended", "remoteEnded")]
    assert r.registers == [0, 0.8]


def test_s24_re_register_keeps_the_total_cap() -> None:
    r = Run().push(0).at(7.9, "register_response", 200).at(12.0, "flow_lost").at(12.5, "register_response", 200)
    assert r.until(60).ended() == [(15.0, "unanswered")]


def test_s24_deadline_before_the_re_register_2xx_ends_failed_at_the_deadline_in_force() -> None:
    # tR1 = 0.3: the deadline in force stays 5.3 while the re-REGISTER is unanswered; it did not succeed: failed
    r = Run().push(0).at(0.3, "register_response", 200).at(1.0, "flow_lost").until(60)
    assert r.registers == [0, 1.0] and r.ended() == [(5.3, "failed")] and r.stops == [5.3]


@pytest.mark.parametrize("failure", [("transport_failed",), ("register_response", 403), ("register_timeout",)])
def test_s24_re_register_failure_ends_failed_at_once(failure) -> None:
    r = Run().push(0).at(0.3, "register_response", 200).at(1.0, "flow_lost").at(1.2, *failure).until(60)
    assert r.ended() == [(1.2, "failed")]


def test_s24_re_register_503_retry_must_fit_the_deadline_in_force() -> None:
    r = Run().push(0).at(0.3, "register_response", 200).at(1.0, "flow_lost")
    r.at(1.2, "register_response", 503, 2.0).at(3.3, "register_response", 200).until(60)
    assert r.registers == [0, 1.0, 3.2] and r.ended() == [(8.3, "unanswered")]
    late = Run().push(0).at(0.3, "register_response", 200).at(1.0, "flow_lost")
    assert late.at(1.2, "register_response", 503, 5.0).until(60).ended() == [(1.2, "failed")]  # 6.2 > 5.3


def test_flow_lost_while_registering_is_left_to_the_register_transaction() -> None:
    r = Run().push(0).at(0.2, "flow_lost")
    assert r.registers == [0] and r.events == [(0, "reported", None)]
    r.at(0.2, "transport_failed").until(60)  # the driver fails the REGISTER that was on the lost flow
    assert r.ended() == [(0.2, "failed")]


def test_flow_lost_after_the_invite_or_with_no_call_or_after_the_end_does_nothing() -> None:
    idle = Run()
    assert idle.logic.flow_lost(0.0) == []
    r = Run().push(0).at(0.3, "register_response", 200).at(0.5, "invite_received", INVITE, "c1@pbx")
    r.at(1.0, "flow_lost").until(100)
    assert r.registers == [0] and r.ended() == [(45.5, "unanswered")]
    assert r.logic.flow_lost(200.0) == []


def test_flow_recoveries_are_bounded_per_call() -> None:
    r = Run().push(0)
    t = 0.0
    for _ in range(MAX_FLOW_RECOVERIES + 1):
        t += 0.1
        r.at(t, "register_response", 200).at(t, "flow_lost")
    assert len(r.registers) == 1 + MAX_FLOW_RECOVERIES
    assert r.logic.registered is True  # the last 2xx stands: a lost flow beyond the bound is not recovered
    assert r.until(60).ended() == [(round(t + 5.0, 6), "unanswered")]


def test_depends_on_cancel_push_does_not_recover_after_its_deadline() -> None:
    r = Run(behaviour="depends-on-cancel-push").push(0).at(0.3, "register_response", 200).until(6)
    assert r.at(7, "flow_lost").registers == [0]


def test_s20_no_user_action_ring_timeout_480_unanswered() -> None:
    r = Run().push(0).at(0.2, "register_response", 200).at(0.4, "invite_received", INVITE, "c1@pbx").until(100)
    assert r.ended() == [(45.4, "unanswered")] and r.replies[-1] == (45.4, 480, "INVITE")


def test_s19_cancel_after_200_has_no_effect_then_bye_ends() -> None:
    r = Run(answer_after=0.5).push(0).at(0.2, "register_response", 200).at(0.3, "invite_received", INVITE, "c1@pbx")
    r.at(0.6, "cancel_received", CANCEL, None).at(0.7, "ack_received").at(3, "bye_received", BYE).until(60)
    assert (0.6, 200, "CANCEL") in r.replies and (0.6, 487, "INVITE") not in r.replies
    assert r.ended() == [(3, "remoteEnded")]


def connected_with_media(**config) -> Run:
    """Answered at 2, ACKed (and media started) at 2.1: the call is up with RTP expected."""
    r = Run(answer_after=2.0, **config).push(0).at(0.3, "register_response", 200)
    r.at(0.5, "invite_received", INVITE, "c1@pbx").at(2.1, "ack_received")
    r.logic.silence.start(2.1)  # the driver, at the ACK of its 200, for an offer that sends RTP
    return r


def hear_rtp(r: Run, start: float, stop: float) -> Run:
    """RTP every 20 ms from ``start`` to ``stop`` (the timers run in between, as in the driver)."""
    t = start
    while t <= stop + 1e-9:
        r.until(t)
        r.logic.silence.hear(t)
        t = round(t + 0.02, 6)
    return r


def test_s21_media_silence_ends_the_call_failed_after_the_timeout() -> None:
    r = hear_rtp(connected_with_media(), 2.12, 7.0).until(200)
    assert r.ended() == [(37.0, "failed")]  # 30 s after the last packet, not after the connection


def test_s21_media_that_keeps_flowing_keeps_the_call_up_and_the_timeout_is_a_setting() -> None:
    r = hear_rtp(connected_with_media(media_timeout=4.0), 2.12, 60.0).until(63.9)
    assert r.ended() == []
    assert r.until(100).ended() == [(64.0, "failed")]
    silent = connected_with_media(media_timeout=4.0).until(100)  # no RTP at all: counted from the connection
    assert silent.ended() == [(6.1, "failed")]


def test_s21_no_media_expected_no_media_timeout() -> None:
    r = Run(answer_after=2.0).push(0).at(0.3, "register_response", 200).at(0.5, "invite_received", INVITE, "c1@pbx")
    r.at(2.1, "ack_received").until(500)  # an inactive offer: the driver never starts media
    assert r.ended() == []
    early = Run().push(0).at(0.3, "register_response", 200).at(0.5, "invite_received", INVITE, "c1@pbx")
    early.logic.silence.hear(0.6)  # RTP before the call connected: nothing to time out
    assert early.until(100).ended() == [(45.5, "unanswered")]  # the ring timeout, not media


def test_bad_no_media_timeout() -> None:
    r = hear_rtp(connected_with_media(behaviour="no-media-timeout"), 2.12, 7.0).until(10_000)
    assert r.ended() == [] and r.logic.next_timer() is None


def test_s22_duplicate_push_is_not_reported_twice() -> None:
    r = Run().push(0).push(0.1).push(0.2, payload={**CALL, "call-id": "other"}).at(0.3, "register_response", 200)
    assert [e for e in r.events if e[1] == "reported"] == [(0, "reported", None)]
    assert r.registers == [0]
    assert DeviceLogic().matches(None, None) is False


def test_decline_before_invite_and_the_late_invite_gets_603() -> None:
    r = Run(decline_after=1.0).push(0).at(0.2, "register_response", 200).at(2, "invite_received", INVITE, "c1")
    assert r.ended() == [(1.0, "declined")] and r.replies == [(2, 603, "INVITE")]


def test_decline_while_ringing_sends_603() -> None:
    r = Run(decline_after=2.0).push(0).at(0.2, "register_response", 200).at(0.4, "invite_received", INVITE, "c1")
    r.until(60)
    assert r.ended() == [(2.0, "declined")] and r.replies == [(0.4, 180, "INVITE"), (2.0, 603, "INVITE")]


def test_ends_exactly_once() -> None:
    r = Run().push(0).at(0.2, "register_response", 200).at(0.4, "invite_received", INVITE, "c1@pbx")
    r.at(1, "cancel_received", CANCEL, None).at(2, "bye_received", BYE).at(3, "transport_failed").until(100)
    assert r.ended() == [(1, "remoteEnded")]


def test_invite_without_push_reports_on_the_invite() -> None:
    r = Run(answer_after=1).at(5, "invite_received", INVITE, "c9").until(7)
    assert r.events == [(5, "reported", None), (6, "answer-tapped", None), (6, "answer-fulfilled", None)]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown behaviour"):
        DeviceConfig(behaviour="nope")
    with pytest.raises(ValueError, match="exclusive"):
        DeviceConfig(answer_after=1, decline_after=1)
    with pytest.raises(ValueError, match="register_deadline"):
        DeviceConfig(register_deadline=-1)


# ------------------------------------------------------------------ known-bad behaviours: each shows its deviation


def test_a_stale_push_is_reported_then_ended_at_once_and_still_registers() -> None:
    r = Run().at(45.0, "push", "call", dict(CALL), 45.0)  # sent 45 s ago: past the 15 s budget
    assert r.events == [(45.0, "reported", None), (45.0, "ended", "unanswered")]
    assert r.registers == [45.0]  # RFC 8599: the push still asks for a binding refresh
    r.at(45.2, "register_response", 200).until(100)
    assert r.ended() == [(45.0, "unanswered")] and r.replies == []


def test_a_push_within_the_budget_is_not_stale() -> None:
    r = Run().at(0.0, "push", "call", dict(CALL), 14.0).at(0.3, "register_response", 200).until(100)
    assert r.ended() == [(5.3, "unanswered")]  # the usual path: tR + 5 s


def test_bad_rings_stale_push() -> None:
    r = Run(behaviour="rings-stale-push").at(45.0, "push", "call", dict(CALL), 45.0)
    r.at(45.2, "register_response", 200).until(100)
    assert r.ended() == [(50.2, "unanswered")]  # rang for 5 s a call that was over 37 s before it arrived


def test_bad_depends_on_cancel_push_never_ends_without_it() -> None:
    r = Run(behaviour="depends-on-cancel-push").push(0).at(0.2, "register_response", 200).until(1000)
    assert r.ended() == [] and r.logic.next_timer() is None


def test_bad_depends_on_cancel_push_ends_on_the_cancel_push() -> None:
    r = Run(behaviour="depends-on-cancel-push").push(0).at(0.2, "register_response", 200).push(9, "cancel")
    assert r.until(100).ended() == [(9, "remoteEnded")]


def test_bad_rejects_early_answer() -> None:
    r = Run(behaviour="rejects-early-answer", answer_after=1).push(0).at(0.2, "register_response", 200)
    r.at(2, "invite_received", INVITE, "c1@pbx").until(60)
    assert r.events == [
        (0, "reported", None),
        (1, "answer-tapped", None),
        (1, "answer-failed", None),
        (1, "ended", "failed"),
    ]
    assert r.replies == [(2, 480, "INVITE")]


def test_bad_fulfills_before_invite() -> None:
    r = Run(behaviour="fulfills-before-invite", answer_after=1).push(0).at(0.2, "register_response", 200)
    r.at(2, "invite_received", INVITE, "c1@pbx").until(60)
    assert r.events == [(0, "reported", None), (1, "answer-tapped", None), (1, "answer-fulfilled", None)]
    assert r.replies == [(2, 180, "INVITE"), (2, 200, "INVITE")]


def test_bad_wrong_reason_mapping() -> None:
    r = Run(behaviour="wrong-reason-mapping").push(0).at(0.2, "register_response", 200)
    r.at(0.4, "invite_received", INVITE, "c1@pbx").at(1, "cancel_received", CANCEL, sip_reason(200)).until(60)
    assert r.ended() == [(1, "remoteEnded")]


def test_bad_never_ends() -> None:
    r = Run(behaviour="never-ends").push(0).at(0.2, "register_response", 200).until(1000)
    assert r.ended() == [] and r.logic.ended and r.logic.end_reason == "unanswered"
    r2 = Run(behaviour="never-ends").push(0).at(0.2, "register_response", 200).at(0.4, "invite_received", INVITE, "c")
    r2.at(1, "bye_received", BYE).until(100)
    assert r2.ended() == [] and (1, 200, "BYE") in r2.replies


@pytest.mark.parametrize(
    "script, end",
    [
        (lambda r: r.push(0).at(0.2, "register_response", 200), (8.2, "unanswered")),
        (
            lambda r: r.push(0).at(0.2, "register_response", 200).at(0.4, "invite_received", INVITE, "c")
            .at(1, "cancel_received", CANCEL, sip_reason(200)),
            (4.0, "answeredElsewhere"),
        ),
    ],
)
def test_bad_slow_end_is_3_s_late(script, end) -> None:
    r = Run(behaviour="slow-end")
    script(r)
    assert r.until(100).ended() == [end]


def test_bad_loops_at_one_instant() -> None:
    # the logic is well-behaved here; the driver spins on a call push, so the lab run's watchdog stops it
    from faultlab.lab.runner import run_case
    from faultlab.lab.scenario import load_scenario

    r = Run(behaviour="loops-at-one-instant").push(0).at(0.2, "register_response", 200).until(1000)
    assert r.ended() == [(5.2, "unanswered")]
    case = run_case(load_scenario("S01"), behaviour="loops-at-one-instant", watchdog=400)
    assert "Device._read_pushes" in case.checks[0].message and not case.passed
def test_bad_no_487_answers_the_cancel_only() -> None:
    r = Run(behaviour="no-487").push(0).at(0.2, "register_response", 200).at(0.4, "invite_received", INVITE, "c")
    r.at(2, "cancel_received", CANCEL).until(100)
    assert r.replies == [(0.4, 180, "INVITE"), (2, 200, "CANCEL")] and r.ended() == [(2, "remoteEnded")]


def test_bad_no_480_at_ring_timeout() -> None:
    r = Run(behaviour="no-480-at-ring-timeout").push(0).at(0.2, "register_response", 200)
    r.at(0.4, "invite_received", INVITE, "c").until(100)
    assert r.replies == [(0.4, 180, "INVITE")] and r.ended() == [(45.4, "unanswered")]


def test_bad_late_invite_486() -> None:
    r = Run(behaviour="late-invite-486").push(0).at(0.2, "register_response", 200)
    r.until(6).at(8, "invite_received", INVITE, "c1@pbx")
    assert r.ended() == [(5.2, "unanswered")] and r.replies == [(8, 486, "INVITE")]


@pytest.mark.parametrize("invite_at", [0.4, 3.0])  # ringing, and arriving after the decline
def test_bad_decline_486(invite_at) -> None:
    r = Run(behaviour="decline-486", decline_after=2).push(0).at(0.2, "register_response", 200)
    r.at(invite_at, "invite_received", INVITE, "c1@pbx").until(100)
    assert r.ended() == [(2, "declined")] and (max(invite_at, 2), 486, "INVITE") in r.replies


def test_bad_register_retry_after_403_retries_once() -> None:
    r = Run(behaviour="register-retry-after-403").push(0).at(0.2, "register_response", 403)
    assert r.registers == [0, 0.2] and r.ended() == []
    assert r.at(0.3, "register_response", 403).ended() == [(0.3, "failed")] and r.registers == [0, 0.2]


def test_bad_ignores_retry_after() -> None:
    r = Run(behaviour="ignores-retry-after").push(0).at(0.2, "register_response", 503, retry_after=30)
    assert r.until(0.2).registers == [0, 0.2]  # at once, not 30 s later (nor never, as 30 s does not fit)


def test_bad_no_register_on_push() -> None:
    r = Run(behaviour="no-register-on-push").push(0).until(100)
    assert r.registers == [] and r.events[0] == (0, "reported", None) and r.ended() == [(8, "failed")]


def test_bad_unanswered_after_reregister_gives_up_on_the_new_flow_and_rejects_the_invite() -> None:
    r = Run(behaviour="unanswered-after-reregister").push(0).at(0.3, "register_response", 200).at(0.8, "flow_lost")
    r.at(1.0, "register_response", 200).at(1.1, "invite_received", INVITE, "c1@pbx")
    assert r.until(60).ended() == [(1.0, "unanswered")] and r.replies == [(1.1, 480, "INVITE")]
    # without a lost flow it waits for the INVITE as usual
    good = Run(behaviour="unanswered-after-reregister").push(0).at(0.3, "register_response", 200)
    assert good.until(60).ended() == [(5.3, "unanswered")]


def test_bad_drops_after_connect_ends_the_answered_call_at_the_ack() -> None:
    r = Run(behaviour="drops-after-connect", answer_after=1.0).push(0).at(0.3, "register_response", 200)
    r.at(0.5, "invite_received", INVITE, "c1@pbx").at(1.1, "ack_received").at(10.0, "bye_received", BYE)
    assert r.until(60).ended() == [(1.1, "failed")]
    assert (1.0, 200, "INVITE") in r.replies


def test_every_behaviour_is_tested_and_documented() -> None:
    names = {n.removeprefix("test_bad_").replace("_", "-") for n in globals() if n.startswith("test_bad_")}
    assert all(b in names or any(n.startswith(b) for n in names) for b in BEHAVIOURS)


def test_a_second_initial_invite_for_the_call_gets_482() -> None:
    r = Run().push(0).at(0.2, "register_response", 200).at(0.4, "invite_received", INVITE, "c1@pbx")
    r.at(0.5, "invite_received", "INVITE-2", "c1@pbx")
    assert r.replies == [(0.4, 180, "INVITE"), (0.5, 482, "INVITE")] and r.logic.invite == INVITE


def test_s26_path_change_waiting_for_the_invite_re_registers_at_once() -> None:
    r = Run(answer_after=4.0).push(0).at(0.3, "register_response", 200).at(2.0, "path_changed")
    assert r.registers == [0, 2.0]
    r.at(2.1, "register_response", 200).at(2.2, "invite_received", INVITE, "c1@pbx").at(8, "bye_received", BYE)
    assert r.until(60).events == [(0, "reported", None), (4.0, "answer-tapped", None),
                                  (4.0, "answer-fulfilled", None), (8, "ended", "remoteEnded")]


def test_s26_path_change_with_a_register_in_flight_starts_it_again() -> None:
    r = Run().push(0).at(1.0, "path_changed")
    assert r.registers == [0, 1.0] and r.stops == [1.0]  # the old one's answer would go to an address that is no more
    r.at(1.5, "register_response", 200).until(60)
    assert r.ended() == [(6.5, "unanswered")]  # tR = 1.5


def test_s26_path_change_after_the_end_or_before_a_call_does_nothing() -> None:
    assert Run().at(1.0, "path_changed").registers == []
    r = Run().push(0).at(0.3, "register_response", 200).at(0.4, "invite_received", INVITE, "c1@pbx")
    r.at(1.0, "cancel_received", CANCEL).at(2.0, "path_changed")
    assert r.registers == [0] and r.ended() == [(1.0, "remoteEnded")]


# The two flow behaviours live in the driver (faultlab.lab.device.flows): shown on a whole lab in virtual time.

def _new_flow_registers(scenario: str, transport: str, behaviour: str | None) -> list[str]:
    from faultlab.lab.runner import run_case
    from faultlab.lab.scenario import load_scenario

    run = run_case(load_scenario(scenario), transport=transport, seed=1, behaviour=behaviour).runs[0]
    return sorted({e.flow for e in run.events if e.source == "proxy" and e.kind == "received"
                   and e.direction == "to-pbx" and e.method == "REGISTER"})


def test_bad_ignores_dead_flow_keeps_pinging_the_dead_flow() -> None:
    assert len(_new_flow_registers("S25", "tcp", None)) >= 2  # the first flow, and one after each lost pong
    assert len(_new_flow_registers("S25", "tcp", "ignores-dead-flow")) == 1


def test_bad_ignores_path_change_keeps_the_old_address() -> None:
    assert len(_new_flow_registers("S26", "udp", None)) == 2  # from the Wi-Fi address, then the cellular one
    assert len(_new_flow_registers("S26", "udp", "ignores-path-change")) == 1
