"""The control API's lab CA pages over real loopback HTTP: the install page, the iOS profile, the PEM;
public (no token, any Host) while the rest of the API keeps its rule."""

from __future__ import annotations

import plistlib
from functools import partial
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from faultlab.api import serve_api
from faultlab.ca import LabCA
from faultlab.mobileconfig import build_mobileconfig
from tests.loopback.test_api import FakeControl, request

TOKEN = "s3cret-token"
LAB_HOST = {"host": "192.168.50.1:5099"}  # what a phone on the lab Wi-Fi sends


@pytest.fixture
def ca(tmp_path: Path) -> LabCA:
    return LabCA.init(tmp_path / "conf")


async def start(nursery, confdir: Path, token: str | None = TOKEN) -> int:
    _, port = await nursery.start(partial(serve_api, FakeControl(), "127.0.0.1", 0, token=token, ca_confdir=confdir))
    return port


async def test_the_three_urls_without_a_token(nursery, ca):
    port = await start(nursery, ca.confdir)

    page = await request(port, "GET", "/ca", headers=LAB_HOST)
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    text = page.body.decode()
    assert "full trust" in text and "Certificate Trust Settings" in text
    assert "VPN &amp; Device Management" in text and "Remove Profile" in text
    assert ca.common_name in text and "faultlab ca init" not in text
    assert 'href="/ca/faultlab-ca.mobileconfig"' in text and 'href="/ca/faultlab-ca.pem"' in text
    assert ca.cert_pem.decode().splitlines()[1] in text  # the PEM, for other platforms
    assert 'name="viewport"' in text

    profile = await request(port, "GET", "/ca/faultlab-ca.mobileconfig", headers=LAB_HOST)
    assert profile.status == 200
    assert profile.headers["content-type"] == "application/x-apple-aspen-config"
    assert profile.body == build_mobileconfig(ca.cert)
    parsed = plistlib.loads(profile.body)
    assert parsed["PayloadType"] == "Configuration"
    assert parsed["PayloadContent"][0]["PayloadContent"] == ca.cert.public_bytes(serialization.Encoding.DER)

    pem = await request(port, "GET", "/ca/faultlab-ca.pem", headers=LAB_HOST)
    assert pem.status == 200
    assert pem.headers["content-type"] == "application/x-x509-ca-cert"
    assert pem.body == ca.cert_pem
    assert b"PRIVATE KEY" not in page.body + profile.body + pem.body


async def test_everything_else_still_needs_the_token(nursery, ca):
    port = await start(nursery, ca.confdir)
    assert (await request(port, "GET", "/active", headers=LAB_HOST)).status == 401
    assert (await request(port, "GET", "/", headers=LAB_HOST)).status == 401
    assert (await request(port, "GET", "/ca/../active", headers=LAB_HOST)).status == 401
    assert (await request(port, "GET", "/ca/ca.key", headers=LAB_HOST)).status == 401
    # only reading is public
    assert (await request(port, "POST", "/ca", headers=LAB_HOST, body=b"")).status == 401


async def test_head_and_without_a_token_configured(nursery, ca):
    port = await start(nursery, ca.confdir, token=None)
    head = await request(port, "HEAD", "/ca/faultlab-ca.mobileconfig")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-type"] == "application/x-apple-aspen-config"
    # the loopback-Host rule stays for the API itself
    assert (await request(port, "GET", "/active", headers=LAB_HOST)).status == 403
    assert (await request(port, "GET", "/ca", headers=LAB_HOST)).status == 200


async def test_no_ca_page_says_how_to_create_one(nursery, tmp_path):
    port = await start(nursery, tmp_path / "empty")
    page = await request(port, "GET", "/ca", headers=LAB_HOST)
    assert page.status == 200 and "faultlab ca init" in page.body.decode()
    for path in ("/ca/faultlab-ca.mobileconfig", "/ca/faultlab-ca.pem"):
        reply = await request(port, "GET", path, headers=LAB_HOST)
        assert reply.status == 404 and b"faultlab ca init" in reply.body
    assert str(tmp_path).encode() not in page.body  # the public page names no paths on the gateway


async def test_a_ca_created_while_running_is_served_at_once(nursery, tmp_path):
    confdir = tmp_path / "later"
    port = await start(nursery, confdir)
    assert (await request(port, "GET", "/ca/faultlab-ca.pem", headers=LAB_HOST)).status == 404
    ca = LabCA.init(confdir)
    reply = await request(port, "GET", "/ca/faultlab-ca.pem", headers=LAB_HOST)
    assert reply.status == 200 and reply.body == ca.cert_pem


async def test_a_broken_ca_is_reported_without_details(nursery, ca):
    (ca.confdir / "ca.key").unlink()
    port = await start(nursery, ca.confdir)
    page = await request(port, "GET", "/ca", headers=LAB_HOST)
    assert page.status == 200 and "faultlab ca export" in page.body.decode()
    assert (await request(port, "GET", "/ca/faultlab-ca.mobileconfig", headers=LAB_HOST)).status == 404
