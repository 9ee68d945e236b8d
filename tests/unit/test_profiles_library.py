"""The profile library in profiles/: every profile loads, is documented, and
does to a representative message what its summary says."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from faultlab.faults import ConnectView, Decision, Engine, list_profiles, load_profile, profiles_dir
from faultlab.sip import parse_message

from .test_faults_support import request, response, view

LIBRARY = {
    "clean",
    "register-drop",
    "register-drop-10s",
    "register-first-3-dropped",
    "register-response-drop",
    "register-503",
    "register-503-retry-1s",
    "invite-delay-3s",
    "invite-delay-7s",
    "invite-drop",
    "cancel-drop",
    "cancel-strip-reason",
    "bye-drop",
    "tls-handshake-stall",
    "tcp-reset-after-register",
    "lossy-wifi",
    "nlc-100-loss",
    "nlc-very-bad-network",
    "nlc-edge",
    "nlc-3g",
    "nlc-dsl",
    "nlc-high-latency-dns",
}
TIMER_E = [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "profiles.md"


def eng(name: str, seed: int = 1, at: float = 0.0) -> Engine:
    return Engine(load_profile(name), random.Random(seed), activated_at=at)


def dropped(d: Decision) -> bool:
    return d.data is None and d.respond is None and not d.hold


INVITE_IN = request("INVITE", from_uri="sip:carol@example.com", to_uri="sip:alice@example.com")
REINVITE_IN = request(
    "INVITE", from_uri="sip:carol@example.com", to_uri="sip:alice@example.com", to_tag="dlg", branch="z9hG4bK-re", cseq=2
)
CANCEL_IN = request(
    "CANCEL",
    from_uri="sip:carol@example.com",
    to_uri="sip:alice@example.com",
    headers=['Reason: SIP;cause=200;text="Call completed elsewhere"'],
)


# ---------------------------------------------------------------------------
# the library as a whole


def test_library_is_complete_and_loads():
    profiles = list_profiles()
    assert {p.name for p in profiles} == LIBRARY
    assert [p.name for p in profiles] == sorted(LIBRARY)


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_profile_file_is_named_summarised_commented_and_documented(name):
    p = load_profile(name)
    path = profiles_dir() / f"{name}.toml"
    assert p.name == name and p.source == str(path) and p.text == path.read_text()
    assert p.summary and "\n" not in p.summary and len(p.summary) <= 120
    comments = [line for line in p.text.splitlines() if line.startswith("#")]
    assert len(comments) >= 2, "each library profile explains itself in comments"
    docs = DOCS.read_text()
    assert f"| `{name}` | {p.summary} |" in docs, "docs/profiles.md lists the profile with its summary"


def test_load_by_path_equals_load_by_name():
    assert load_profile(profiles_dir() / "register-drop.toml") == load_profile("register-drop")


# ---------------------------------------------------------------------------
# each profile on a representative message


def test_clean():
    e = eng("clean")
    for msg, direction in [(request(), "to-pbx"), (INVITE_IN, "to-device"), (response(200), "to-device")]:
        assert e.decide(view(msg, direction), 0.0) == Decision(data=msg.raw)


def test_register_drop():
    e = eng("register-drop")
    assert all(dropped(e.decide(view(request()), t)) for t in TIMER_E)
    assert dropped(e.decide(view(request(branch="z9hG4bK-2", cseq=2)), 40.0))
    assert e.decide(view(request("OPTIONS")), 0.0).data is not None
    assert e.decide(view(response(200), "to-device"), 0.0).data is not None


def test_register_drop_10s():
    e = eng("register-drop-10s", at=0.0)
    assert e.decide(view(request("OPTIONS")), 50.0).data is not None
    out = [dropped(e.decide(view(request()), 100.0 + t)) for t in TIMER_E]
    assert out == [True, True, True, True, True, False, False]


def test_register_first_3_dropped():
    e = eng("register-first-3-dropped")
    assert [dropped(e.decide(view(request()), t)) for t in TIMER_E] == [True, True, True] + [False] * 4
    assert not dropped(e.decide(view(request(branch="z9hG4bK-2", cseq=2)), 60.0))


def test_register_response_drop():
    e = eng("register-response-drop")
    assert e.decide(view(request()), 0.0).data is not None  # the PBX gets the REGISTER
    assert dropped(e.decide(view(response(200), "to-device"), 0.1))
    assert dropped(e.decide(view(response(200), "to-device"), 0.6))  # its retransmission too
    assert e.decide(view(response(401, reason="Unauthorized"), "to-device"), 0.0).data is not None
    assert e.decide(view(response(200, method="INVITE"), "to-device"), 0.0).data is not None


@pytest.mark.parametrize("name, retry_after", [("register-503", "30"), ("register-503-retry-1s", "1")])
def test_register_503(name, retry_after):
    e = eng(name)
    req = request()
    d = e.decide(view(req), 0.0)
    assert d.data is None
    resp = parse_message(d.respond)
    assert resp.status == 503 and resp.get("Retry-After") == retry_after
    assert resp.call_id == req.call_id and resp.get("Via") == req.get("Via") and resp.to_tag
    assert e.decide(view(req), 0.5).respond == d.respond  # retransmission: same answer
    later = e.decide(view(request(branch="z9hG4bK-2", cseq=2)), 2.0)
    if name == "register-503":
        assert later.respond is not None
    else:
        assert later.data is not None and later.respond is None


@pytest.mark.parametrize("name, seconds", [("invite-delay-3s", 3.0), ("invite-delay-7s", 7.0)])
def test_invite_delay(name, seconds):
    e = eng(name)
    assert e.decide(view(INVITE_IN, "to-device"), 0.0).delay == seconds
    assert e.decide(view(INVITE_IN, "to-device"), 0.5).delay == seconds  # retransmission
    assert e.decide(view(REINVITE_IN, "to-device"), 0.0).delay == 0.0
    assert e.decide(view(request("INVITE"), "to-pbx"), 0.0).delay == 0.0
    assert e.decide(view(CANCEL_IN, "to-device"), 0.0).delay == 0.0


def test_invite_drop():
    e = eng("invite-drop")
    assert all(dropped(e.decide(view(INVITE_IN, "to-device"), t)) for t in (0.0, 0.5, 1.5))
    assert e.decide(view(REINVITE_IN, "to-device"), 0.0).data is not None
    assert e.decide(view(CANCEL_IN, "to-device"), 0.0).data is not None
    assert e.decide(view(request("INVITE"), "to-pbx"), 0.0).data is not None


def test_cancel_drop():
    e = eng("cancel-drop")
    assert dropped(e.decide(view(CANCEL_IN, "to-device"), 0.0))
    assert e.decide(view(INVITE_IN, "to-device"), 0.0).data is not None
    assert e.decide(view(request("CANCEL"), "to-pbx"), 0.0).data is not None


def test_cancel_strip_reason():
    d = eng("cancel-strip-reason").decide(view(CANCEL_IN, "to-device"), 0.0)
    out = parse_message(d.data)
    assert out.get("Reason") is None and out.method == "CANCEL" and d.delay == 0.0
    assert d.data == CANCEL_IN.raw.replace(b'Reason: SIP;cause=200;text="Call completed elsewhere"\r\n', b"")


def test_bye_drop():
    e = eng("bye-drop")
    assert dropped(e.decide(view(request("BYE", to_tag="x"), "to-pbx"), 0.0))
    assert dropped(e.decide(view(request("BYE", to_tag="x", branch="z9hG4bK-b"), "to-device"), 0.0))
    assert e.decide(view(response(200, method="BYE"), "to-device"), 0.0).data is not None


def test_tls_handshake_stall():
    e = eng("tls-handshake-stall")
    assert e.on_connect(ConnectView("tls", ("192.0.2.10", 40000), "t1"), 0.0).stall == math.inf
    assert e.on_connect(ConnectView("tcp", ("192.0.2.10", 40001), "t2"), 0.0).stall is None
    assert e.decide(view(request(), transport="tls"), 0.0) == Decision(data=request().raw)


def test_tcp_reset_after_register():
    e = eng("tcp-reset-after-register")
    ok = response(200)
    assert e.decide(view(ok, "to-device"), 0.0).close is None  # UDP: nothing
    d = e.decide(view(ok, "to-device", transport="tcp"), 1.0)
    assert d.data == ok.raw and (d.close, d.close_when) == ("rst", "after")
    again = e.decide(view(response(200, branch="z9hG4bK-2", cseq=2), "to-device", transport="tcp"), 30.0)
    assert again.close is None and again.data is not None  # only the first registration


def test_lossy_wifi():
    e = eng("lossy-wifi", seed=8)
    v = view(request())
    n = 5000
    decisions = [e.decide(v, float(i)) for i in range(n)]
    lost = sum(d.lost_by_link for d in decisions)
    sd = (n * 0.1 * 0.9) ** 0.5
    assert n * 0.1 - 4 * sd <= lost <= n * 0.1 + 4 * sd
    delays = [d.delay for d in decisions if d.data is not None]
    assert min(delays) >= 0.07 and max(delays) <= 0.13
    back = e.decide(view(response(200), "to-device"), 0.0)
    assert back.lost_by_link or 0.07 <= back.delay <= 0.13


def test_nlc_100_loss():
    e = eng("nlc-100-loss")
    assert e.decide(view(request()), 0.0).lost_by_link
    assert e.decide(view(INVITE_IN, "to-device"), 0.0).lost_by_link
    assert e.decide(view(request(), transport="tcp"), 0.0).lost_by_link


# (name, to-device delay, to-device rate, to-pbx delay, to-pbx rate), the published numbers the profiles library cites (docs/profiles.md)
NLC = [
    ("nlc-very-bad-network", 0.5, 1e6, 0.5, 1e6),
    ("nlc-edge", 0.4, 240e3, 0.44, 200e3),
    ("nlc-3g", 0.1, 780e3, 0.1, 330e3),
    ("nlc-dsl", 0.005, 2e6, 0.005, 256e3),
]


@pytest.mark.parametrize("name, down_delay, down_rate, up_delay, up_rate", NLC)
def test_nlc_presets(name, down_delay, down_rate, up_delay, up_rate):
    link = load_profile(name).link
    assert (link.to_device.delay, link.to_device.rate_bps) == (down_delay, down_rate)
    assert (link.to_pbx.delay, link.to_pbx.rate_bps) == (up_delay, up_rate)
    e = eng(name, seed=4)
    for i in range(20):  # far apart: no queueing; skip the few losses of very-bad-network
        d = e.decide(view(INVITE_IN, "to-device"), 10.0 * i)
        if d.data is not None:
            assert d.delay == pytest.approx(down_delay + len(INVITE_IN.raw) * 8 / down_rate)
        up = request()
        d = e.decide(view(up), 10.0 * i + 5)
        if d.data is not None:
            assert d.delay == pytest.approx(up_delay + len(up.raw) * 8 / up_rate)


def test_nlc_very_bad_network_loses_ten_percent():
    link = load_profile("nlc-very-bad-network").link
    assert link.to_pbx.loss == link.to_device.loss == pytest.approx(0.1)
    assert load_profile("nlc-edge").link.to_pbx.loss == 0.0


def test_nlc_high_latency_dns():
    p = load_profile("nlc-high-latency-dns")
    assert p.link.dns_delay == 3.0 and p.link.to_pbx.is_clean and p.link.to_device.is_clean
    assert eng("nlc-high-latency-dns").decide(view(request()), 0.0) == Decision(data=request().raw)


def test_profiles_readme_indexes_the_library():
    index = (profiles_dir() / "README.md").read_text()
    assert all(f"`{name}`" in index for name in LIBRARY)
