"""The control API's address parsing and its refusal to listen beyond loopback without a token."""

from __future__ import annotations

from functools import partial

import pytest

from faultlab.api import (
    DEFAULT_API_PORT,
    ApiAddressError,
    ApiBindError,
    check_api_bind,
    is_loopback,
    parse_api_address,
    serve_api,
)
from faultlab.api.app import _loopback_host_header

REFUSAL = ("the control API on {} would let anyone on the network change faults: "
           "give --api-token TOKEN, or bind 127.0.0.1")


@pytest.mark.parametrize(("spec", "expected"), [
    ("127.0.0.1:8474", ("127.0.0.1", 8474)),
    ("[::1]:8474", ("::1", 8474)),
    ("[::1]", ("::1", DEFAULT_API_PORT)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("localhost", ("localhost", DEFAULT_API_PORT)),
    ("lab-gw.example.test:9000", ("lab-gw.example.test", 9000)),
    ("9000", ("127.0.0.1", 9000)),
    (":9000", ("127.0.0.1", 9000)),
    (" 127.0.0.1:1 ", ("127.0.0.1", 1)),
])
def test_parse_api_address(spec, expected):
    assert parse_api_address(spec) == expected


@pytest.mark.parametrize(("spec", "complaint"), [
    ("", "empty API address"),
    ("::1:8474", "an IPv6 address needs brackets"),
    ("::1", "e.g. [::1]:5099"),
    ("[::1", "missing ']'"),
    ("[127.0.0.1]:80", "is not an IPv6 address"),
    ("[::1]8474", "expected ':PORT'"),
    ("127.0.0.1:http", "port 'http' is not a number"),
    ("127.0.0.1:70000", "out of range 0-65535"),
    ("300.1.1.1:80", "is not a valid IPv4 address"),
    ("bad_host:80", "neither an IP address nor a host name"),
    ("http://127.0.0.1:5099", "not a URL"),
])
def test_parse_api_address_errors_say_what_is_wrong(spec, complaint):
    with pytest.raises(ApiAddressError, match=complaint.replace("[", r"\[").replace(".", r"\.")):
        parse_api_address(spec)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("localhost", True), ("LOCALHOST.", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("fe80::1", False), ("lab.example.test", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "lab.example.test"])
def test_non_loopback_without_token_is_refused_with_the_reason(host):
    with pytest.raises(ApiBindError) as info:
        check_api_bind(host, None)
    assert str(info.value) == REFUSAL.format(host)


def test_non_loopback_with_token_and_loopback_without_are_allowed():
    check_api_bind("0.0.0.0", "s3cret")
    check_api_bind("::", "s3cret")
    check_api_bind("127.0.0.1", None)
    check_api_bind("::1", None)


@pytest.mark.parametrize("token", ["", "   "])
def test_empty_token_is_refused(token):
    with pytest.raises(ApiBindError, match="token is empty"):
        check_api_bind("127.0.0.1", token)


async def test_serve_api_refuses_before_binding(nursery):
    with pytest.raises(ApiBindError) as info:
        await nursery.start(partial(serve_api, object(), "0.0.0.0", 0, token=None))
    assert str(info.value) == REFUSAL.format("0.0.0.0")
    assert isinstance(info.value, ValueError)


async def test_serve_api_reports_an_address_it_cannot_bind(nursery):
    # 192.0.2.0/24 is TEST-NET-1: no interface here has it, so bind() fails (nothing is sent anywhere)
    with pytest.raises(ApiBindError, match=r"cannot listen for the control API on 192\.0\.2\.1:0: .*no interface"):
        await nursery.start(partial(serve_api, object(), "192.0.2.1", 0, token="s3cret"))


@pytest.mark.parametrize(("host", "ok"), [
    ("127.0.0.1:5099", True), ("localhost", True), ("LocalHost:80", True), ("[::1]:5099", True),
    ("127.1.2.3", True), ("evil.example.test", False), ("evil.example.test:5099", False),
    ("10.0.0.1:5099", False), ("[fe80::1]:80", False), ("localhost.evil.test", False),
])
def test_host_header_check(host, ok):
    assert _loopback_host_header(host) is ok
