"""Relay-mode header edits (RFC 3261 §16.11 stateless proxy), on bytes only."""

from faultlab.relay import TO_DEVICE, TO_PBX, Rewriter, Side
from faultlab.sip import parse_message, remove_top_value

SIDE = Side("udp", device=("10.0.0.1", 5060), pbx=("10.0.1.1", 40000))
DEV_RR = "<sip:10.0.0.1:5060;transport=udp;lr;fl=abc>"
PBX_RR = "<sip:10.0.1.1:40000;transport=udp;lr;fl=abc>"


def request(method="INVITE", to_tag="", routes=(), extra=""):
    lines = [f"{method} sip:bob@pbx.test SIP/2.0",
             "Via: SIP/2.0/UDP 192.168.1.5:5060;branch=z9hG4bKabc123;rport",
             *[f"Route: {r}" for r in routes],
             "From: <sip:alice@pbx.test>;tag=a1",
             f"To: <sip:bob@pbx.test>{to_tag}",
             "Call-ID: c1@h", f"CSeq: 1 {method}", extra, "Content-Length: 0", "", ""]
    return parse_message("\r\n".join(line for line in lines if line is not None).replace("\r\n\r\n\r\n", "\r\n\r\n").encode())


def rewrite(msg, direction, **kw):
    return parse_message(Rewriter("abc", **kw).request(msg, direction, SIDE))


def test_request_to_pbx_gets_via_with_rport_and_double_record_route():
    msg = request()
    out = rewrite(msg, TO_PBX)
    via = out.top_via
    # the device-side address: the PBX answers to the source (rport) and, seeing
    # sent-by differ from it, sends its own requests back to the flow (NAT logic)
    assert (via.host, via.port, via.transport) == ("10.0.0.1", 5060, "UDP")
    assert via.branch.startswith("z9hG4bKflabc") and via.rport == ""
    # caller reads Record-Route bottom-up: it meets the device-side address first
    assert out.get_all("record-route") == [PBX_RR, DEV_RR]
    # nothing else changed
    stripped = remove_top_value(parse_message(remove_top_value(parse_message(remove_top_value(out, "via")), "record-route")), "record-route")
    assert stripped == msg.raw


def test_request_to_device_gets_via_with_device_side_address_callee_meets_device_side_first():
    out = rewrite(request(), TO_DEVICE)
    assert (out.top_via.host, out.top_via.port) == ("10.0.0.1", 5060)
    assert out.get_all("record-route") == [DEV_RR, PBX_RR]


def test_in_dialog_and_non_dialog_requests_are_not_record_routed():
    assert rewrite(request(to_tag=";tag=b2"), TO_PBX).get_all("record-route") == []
    assert rewrite(request("MESSAGE"), TO_PBX).get_all("record-route") == []
    assert rewrite(request(), TO_PBX, record_route=False).get_all("record-route") == []


def test_own_route_entries_are_consumed_others_kept():
    pbx_route = "<sip:pbx.test;lr>"
    msg = request("BYE", to_tag=";tag=b2", routes=[DEV_RR, PBX_RR, pbx_route, DEV_RR.replace("abc", "zzz")])
    out = rewrite(msg, TO_PBX)
    assert out.get_all("route") == [pbx_route, DEV_RR.replace("abc", "zzz")]


def test_route_mark_must_match_whole_parameter():
    rw = Rewriter("abc")
    assert rw.is_ours(DEV_RR)
    assert not rw.is_ours("<sip:10.0.0.1;lr;fl=abcd>")
    assert rw.is_ours("<sip:10.0.0.1;fl=abc;lr>")


def test_cancel_and_ack_for_non_2xx_get_the_invite_branch():
    invite = rewrite(request(), TO_PBX).top_via.branch
    cancel = rewrite(request("CANCEL"), TO_PBX).top_via.branch
    assert cancel == invite
    retransmission = rewrite(request(), TO_PBX).top_via.branch
    assert retransmission == invite


def test_response_loses_only_faultlabs_via():
    out = rewrite(request(), TO_PBX)
    resp_lines = ["SIP/2.0 180 Ringing", *[f"Via: {v}" for v in out.get_all("via")],
                  "From: <sip:alice@pbx.test>;tag=a1", "To: <sip:bob@pbx.test>;tag=b2",
                  "Call-ID: c1@h", "CSeq: 1 INVITE", "Content-Length: 0", "", ""]
    resp = parse_message("\r\n".join(resp_lines).encode())
    back = parse_message(Rewriter("abc").response(resp))
    assert back.get_all("via") == request().get_all("via")


def test_response_with_foreign_top_via_is_reported_not_edited():
    resp = parse_message(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKother\r\n"
                         b"Call-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    assert Rewriter("abc").response(resp) is None


def test_ipv6_addresses_are_bracketed():
    side = Side("tls", device=("::1", 5061), pbx=("::1", 40001))
    out = parse_message(Rewriter("abc").request(request(), TO_PBX, side))
    assert out.top_via.raw.startswith("SIP/2.0/TLS [::1]:5061;")
    assert out.get_all("record-route")[0] == "<sip:[::1]:40001;transport=tls;lr;fl=abc>"
