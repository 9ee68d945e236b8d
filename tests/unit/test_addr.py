import pytest

from faultlab.addr import Endpoint, EndpointError, parse_endpoint


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("udp:127.0.0.1:5060", Endpoint("udp", "127.0.0.1", 5060)),
        ("TCP:pbx.example.test:5060", Endpoint("tcp", "pbx.example.test", 5060)),
        ("tls:[::1]:5061", Endpoint("tls", "::1", 5061)),
        ("udp:[2001:db8::1]:0", Endpoint("udp", "2001:db8::1", 0)),
        ("udp:0.0.0.0:5060", Endpoint("udp", "0.0.0.0", 5060)),
    ],
)
def test_valid_specs(spec, expected):
    assert parse_endpoint(spec) == expected


def test_str_round_trips_ipv6():
    assert str(parse_endpoint("udp:[::1]:5060")) == "udp:[::1]:5060"


@pytest.mark.parametrize(
    "spec, words",
    [
        ("127.0.0.1:5060", "unknown transport"),
        ("5060", "expected TRANSPORT:HOST:PORT"),
        ("sctp:127.0.0.1:5060", "unknown transport 'sctp'"),
        ("udp:::1:5060", "needs brackets"),
        ("udp:[::1:5060", "missing ']'"),
        ("udp:[127.0.0.1]:5060", "not an IPv6 address"),
        ("udp:[::1]5060", "expected ':PORT'"),
        ("udp:127.0.0.1:sip", "port 'sip' is not a number"),
        ("udp:127.0.0.1:70000", "out of range"),
        ("udp:127.0.0.1", "expected HOST:PORT"),
        ("udp:bad_host!:5060", "neither an IP address nor a host name"),
        ("udp:1.2.3:5060", "not a valid IPv4 address"),
    ],
)
def test_invalid_specs_say_what_is_wrong(spec, words):
    with pytest.raises(EndpointError, match=words.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        parse_endpoint(spec)


def test_upstream_port_zero_rejected():
    with pytest.raises(EndpointError, match="out of range 1-65535"):
        parse_endpoint("udp:127.0.0.1:0", allow_port_zero=False)
