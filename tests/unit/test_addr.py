import pytest

from faultlab.addr import Endpoint, EndpointError, device_at, parse_endpoint


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


@pytest.mark.parametrize(
    "device, peer, ports, expected",
    [
        ("10.0.0.2", "10.0.0.2:5060", True, True),  # no port in the spec: any port
        ("10.0.0.2:5060", "10.0.0.2:5062", True, False),
        ("10.0.0.2:5060", "10.0.0.2:5062", False, True),  # addresses only (a new TCP connection, a new port)
        ("::1", "[::1]:5060", True, True),
        ("::0001", "[::1]:5060", True, True),  # the address, not its spelling
        ("[::1]:5061", "[::1]:5060", True, False),
        ("10.0.0.0/8", "10.9.0.2:5060", True, True),
        ("10.0.0.0/8", "192.0.2.1:5060", True, False),
        ("not an address", "10.0.0.2:5060", True, False),
        ("10.0.0.2", None, True, False),
    ],
)
def test_device_at_compares_addresses_not_text(device, peer, ports, expected):
    assert device_at(device, peer, ports=ports) is expected
