"""Fault profiles in front of a real PBX: what the device experiences, and what
Kamailio never sees."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from faultlab.faults import load_profile
from faultlab.addr import parse_endpoint
from faultlab.proxy import ProxyConfig, serve_proxy
from faultlab.lab.ua import SipUA, UATimeout
from tests.integration.conftest import Kamailio

pytestmark = pytest.mark.integration


async def start(nursery, kam: Kamailio, transport: str, profile: str, tmp_path: Path):
    port = kam.tls_port if transport == "tls" else kam.sip_port
    proxy = await nursery.start(serve_proxy, ProxyConfig(
        listen=[parse_endpoint(f"{transport}:127.0.0.1:0")],
        upstream=[parse_endpoint(f"{transport}:{kam.host}:{port}")],
        upstream_ca=kam.ca_file, confdir=tmp_path / "fl", profile=load_profile(profile), seed=1))
    ua = SipUA("bob", transport, tuple(proxy.bound[transport]), timeout=1.5,
               ca_file=proxy.ca_cert_path if transport == "tls" else None)
    await ua.start(nursery)
    return proxy, ua


def kamailio_saw_register(kam: Kamailio) -> bool:
    return "FLT req REGISTER" in kam.log.read_text(errors="replace")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_register_drop_times_the_register_transaction_out(kamailio, nursery, tmp_path, transport):
    proxy, bob = await start(nursery, kamailio, transport, "register-drop", tmp_path)
    with pytest.raises(UATimeout):
        await bob.register()
    assert [e.method for e in proxy.events if e.kind == "dropped"] == ["REGISTER"]
    assert not kamailio_saw_register(kamailio)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_register_503_fails_the_register_at_once(kamailio, nursery, tmp_path, transport):
    proxy, bob = await start(nursery, kamailio, transport, "register-503", tmp_path)
    started = trio.current_time()
    response = await bob.register()
    assert response.status == 503 and response.get("Retry-After") == "30"
    assert trio.current_time() - started < 0.5
    assert not kamailio_saw_register(kamailio)
