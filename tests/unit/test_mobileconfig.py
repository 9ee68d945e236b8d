"""The iOS configuration profile carrying the lab CA: structure, the certificate, stable identifiers."""

from __future__ import annotations

import plistlib
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from faultlab.ca import LabCA
from faultlab.mobileconfig import build_mobileconfig, profile_identifier


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA.init(tmp_path_factory.mktemp("ca") / "lab")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA.init(tmp_path_factory.mktemp("ca") / "other")


def parse(data: bytes) -> dict:
    assert data.startswith(b"<?xml"), data[:40]  # an XML plist, as iOS and people reading it expect
    return plistlib.loads(data, fmt=plistlib.FMT_XML)


def test_structure_is_a_configuration_with_one_root_payload(ca: LabCA) -> None:
    profile = parse(build_mobileconfig(ca.cert))
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadVersion"] == 1
    assert profile["PayloadDisplayName"] == "faultlab lab CA"
    assert profile["PayloadOrganization"] == "faultlab"
    assert "remove" in profile["PayloadDescription"].lower()
    assert "full trust" in profile["PayloadDescription"]
    assert profile["PayloadRemovalDisallowed"] is False
    (root,) = profile["PayloadContent"]
    assert root["PayloadType"] == "com.apple.security.root"
    assert root["PayloadVersion"] == 1
    for payload in (profile, root):
        uuid.UUID(payload["PayloadUUID"])  # a well-formed UUID
        assert payload["PayloadIdentifier"].startswith("faultlab.ca.")
    assert root["PayloadUUID"] != profile["PayloadUUID"]
    assert root["PayloadIdentifier"] != profile["PayloadIdentifier"]


def test_payload_content_is_the_ca_certificate_in_der(ca: LabCA) -> None:
    (root,) = parse(build_mobileconfig(ca.cert))["PayloadContent"]
    der = root["PayloadContent"]
    assert isinstance(der, bytes)
    assert der == ca.cert.public_bytes(serialization.Encoding.DER)
    assert x509.load_der_x509_certificate(der) == ca.cert
    assert b"PRIVATE KEY" not in build_mobileconfig(ca.cert)


def test_identifiers_come_from_the_fingerprint(ca: LabCA) -> None:
    profile = parse(build_mobileconfig(ca.cert))
    assert profile["PayloadIdentifier"] == profile_identifier(ca.cert) == f"faultlab.ca.{ca.fingerprint[:16]}"


def test_same_ca_same_profile_even_after_reloading(ca: LabCA) -> None:
    reloaded = LabCA.load(ca.confdir)
    assert build_mobileconfig(reloaded.cert) == build_mobileconfig(ca.cert)


def test_another_ca_gets_other_identifiers_and_uuids(ca: LabCA, other_ca: LabCA) -> None:
    one, two = parse(build_mobileconfig(ca.cert)), parse(build_mobileconfig(other_ca.cert))
    assert one["PayloadIdentifier"] != two["PayloadIdentifier"]
    assert one["PayloadUUID"] != two["PayloadUUID"]
    assert one["PayloadContent"][0]["PayloadUUID"] != two["PayloadContent"][0]["PayloadUUID"]
    assert one["PayloadContent"][0]["PayloadIdentifier"] != two["PayloadContent"][0]["PayloadIdentifier"]


def test_labca_export_mobileconfig_writes_a_public_file(ca: LabCA, tmp_path: Path) -> None:
    out = tmp_path / "lab.mobileconfig"
    data = ca.export_mobileconfig(out)
    assert out.read_bytes() == data == build_mobileconfig(ca.cert)
    assert out.stat().st_mode & 0o777 == 0o644
