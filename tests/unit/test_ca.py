"""The lab CA: files and permissions, loading and its errors, leaf certificates."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from faultlab.ca import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CAError,
    LabCA,
    default_confdir,
    normalize_names,
)

DAY = datetime.timedelta(days=1)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA.init(tmp_path_factory.mktemp("ca") / "lab")


# -- config directory ---------------------------------------------------------------


def test_default_confdir_uses_faultlab_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FAULTLAB_HOME", str(tmp_path / "lab"))
    assert default_confdir() == tmp_path / "lab"


def test_default_confdir_falls_back_to_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FAULTLAB_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_confdir() == tmp_path / ".faultlab"


# -- init -----------------------------------------------------------------------------


def test_init_creates_private_dir_key_and_cert(tmp_path: Path) -> None:
    confdir = tmp_path / "a" / "faultlab"
    old = os.umask(0)  # even a permissive umask must not loosen the key
    try:
        ca = LabCA.init(confdir)
    finally:
        os.umask(old)
    assert mode(confdir) == 0o700
    assert mode(confdir / CA_KEY_FILE) == 0o600
    assert mode(confdir / CA_CERT_FILE) == 0o644
    assert (confdir / CA_KEY_FILE).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert ca.cert_path == confdir / CA_CERT_FILE
    assert ca.cert_path.read_bytes() == ca.cert_pem
    assert sorted(p.name for p in confdir.iterdir()) == [CA_CERT_FILE, CA_KEY_FILE]  # no temp files


def test_init_leaves_an_existing_directory_mode_alone(tmp_path: Path) -> None:
    confdir = tmp_path / "shared"
    confdir.mkdir(mode=0o755)
    os.chmod(confdir, 0o755)
    LabCA.init(confdir)
    assert mode(confdir) == 0o755
    assert mode(confdir / CA_KEY_FILE) == 0o600


def test_ca_certificate(ca: LabCA) -> None:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert ca.common_name.startswith("faultlab lab CA ")
    assert cert.subject == cert.issuer
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert now() - 3 * DAY < cert.not_valid_before_utc < now() - DAY
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= 3650 * DAY
    assert ca.fingerprint == cert.fingerprint(hashes.SHA256()).hex()
    assert len(ca.fingerprint) == 64


def test_two_labs_have_different_cas(tmp_path: Path, ca: LabCA) -> None:
    other = LabCA.init(tmp_path / "other")
    assert other.common_name != ca.common_name
    assert other.fingerprint != ca.fingerprint


def test_init_refuses_to_replace_an_existing_ca(tmp_path: Path) -> None:
    first = LabCA.init(tmp_path)
    with pytest.raises(CAError, match="already exists") as info:
        LabCA.init(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "faultlab ca init --force" in str(info.value)
    assert LabCA.load(tmp_path).fingerprint == first.fingerprint  # untouched


def test_init_refuses_even_a_partial_ca(tmp_path: Path) -> None:
    LabCA.init(tmp_path)
    (tmp_path / CA_CERT_FILE).unlink()
    with pytest.raises(CAError, match="ca.key"):
        LabCA.init(tmp_path)


def test_init_force_replaces(tmp_path: Path) -> None:
    first = LabCA.init(tmp_path)
    second = LabCA.init(tmp_path, force=True)
    assert second.fingerprint != first.fingerprint
    assert LabCA.load(tmp_path).fingerprint == second.fingerprint
    assert mode(tmp_path / CA_KEY_FILE) == 0o600


def test_init_where_a_file_is_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "lab").write_text("not a directory")
    with pytest.raises(CAError, match="cannot create"):
        LabCA.init(tmp_path / "lab")


# -- load -----------------------------------------------------------------------------


def test_load_round_trip(ca: LabCA) -> None:
    loaded = LabCA.load(ca.confdir)
    assert loaded.fingerprint == ca.fingerprint
    assert loaded.cert_pem == ca.cert_pem
    leaf, _ = loaded.issue_leaf(["pbx.example.test"])
    assert ca.verify_leaf(leaf)  # the loaded key is the same key


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(CAError, match=r"no lab CA in .*: run `faultlab ca init`") as info:
        LabCA.load(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


@pytest.mark.parametrize("name", [CA_KEY_FILE, CA_CERT_FILE])
def test_load_with_one_file_missing(tmp_path: Path, name: str) -> None:
    LabCA.init(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(CAError, match=rf"incomplete lab CA .*{name} is missing.*--force"):
        LabCA.load(tmp_path)


@pytest.mark.parametrize(
    ("name", "message"),
    [(CA_KEY_FILE, "not a valid PEM private key"), (CA_CERT_FILE, "not a valid PEM certificate")],
)
def test_load_corrupt_file(tmp_path: Path, name: str, message: str) -> None:
    LabCA.init(tmp_path)
    (tmp_path / name).write_bytes(b"-----BEGIN GARBAGE-----\nnope\n")
    with pytest.raises(CAError, match=message) as info:
        LabCA.load(tmp_path)
    assert str(tmp_path / name) in str(info.value)
    assert "faultlab ca init --force" in str(info.value)


def test_load_unreadable_file(tmp_path: Path) -> None:
    LabCA.init(tmp_path)
    # A directory where the key should be: unreadable even for root.
    (tmp_path / CA_KEY_FILE).unlink()
    (tmp_path / CA_KEY_FILE).mkdir()
    with pytest.raises(CAError, match=rf"cannot read {tmp_path / CA_KEY_FILE}"):
        LabCA.load(tmp_path)


def test_load_key_and_cert_from_different_cas(tmp_path: Path) -> None:
    LabCA.init(tmp_path / "a")
    LabCA.init(tmp_path / "b")
    (tmp_path / "a" / CA_CERT_FILE).write_bytes((tmp_path / "b" / CA_CERT_FILE).read_bytes())
    with pytest.raises(CAError, match="do not belong together"):
        LabCA.load(tmp_path / "a")


def test_load_rejects_a_leaf_posing_as_ca(tmp_path: Path, ca: LabCA) -> None:
    cert_pem, key_pem = ca.issue_leaf(["pbx.example.test"])
    tmp_path.joinpath(CA_CERT_FILE).write_bytes(cert_pem)
    tmp_path.joinpath(CA_KEY_FILE).write_bytes(key_pem)
    with pytest.raises(CAError, match="not a CA certificate"):
        LabCA.load(tmp_path)


def test_load_or_init(tmp_path: Path) -> None:
    created = LabCA.load_or_init(tmp_path / "lab")
    assert LabCA.load_or_init(tmp_path / "lab").fingerprint == created.fingerprint


def test_load_or_init_does_not_replace_a_damaged_ca(tmp_path: Path) -> None:
    LabCA.init(tmp_path)
    (tmp_path / CA_KEY_FILE).unlink()
    with pytest.raises(CAError, match="incomplete"):
        LabCA.load_or_init(tmp_path)


# -- export ---------------------------------------------------------------------------


def test_export(tmp_path: Path, ca: LabCA) -> None:
    out = tmp_path / "faultlab-ca.pem"
    old = os.umask(0o077)
    try:
        data = ca.export(out)
    finally:
        os.umask(old)
    assert data == ca.cert_pem == out.read_bytes()
    assert b"PRIVATE KEY" not in data
    assert mode(out) == 0o644
    assert ca.export(None) == ca.cert_pem


def test_export_to_a_missing_directory(tmp_path: Path, ca: LabCA) -> None:
    with pytest.raises(CAError, match="cannot write the CA certificate"):
        ca.export(tmp_path / "missing" / "ca.pem")


# -- leaves ---------------------------------------------------------------------------


def sans(cert: x509.Certificate) -> list[object]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["pbx.example.test"], [x509.DNSName("pbx.example.test")]),
        # An address also as a DNS entry with the same text: mbedTLS 2.x checks nothing else.
        (["192.0.2.10"], [x509.IPAddress(ipaddress.ip_address("192.0.2.10")), x509.DNSName("192.0.2.10")]),
        (["2001:db8::10"], [x509.IPAddress(ipaddress.ip_address("2001:db8::10")), x509.DNSName("2001:db8::10")]),
        (
            ["sip.example.test", "10.0.0.1", "::1"],
            [
                x509.DNSName("sip.example.test"),
                x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                x509.DNSName("10.0.0.1"),
                x509.IPAddress(ipaddress.ip_address("::1")),
                x509.DNSName("::1"),
            ],
        ),
    ],
)
def test_leaf(ca: LabCA, names: list[str], expected: list[object]) -> None:
    cert_pem, key_pem = ca.issue_leaf(names)
    assert cert_pem.count(b"BEGIN CERTIFICATE") == 1  # the leaf alone, no chain
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(ca.cert)
    assert ca.verify_leaf(cert_pem)

    assert sans(cert) == expected
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == [names[0]]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"

    # Apple's limits: at most 825 days (we keep to 397), backdated for clock skew.
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= 397 * DAY
    assert now() - 3 * DAY < cert.not_valid_before_utc < now() - DAY
    assert cert.not_valid_after_utc > now() + 390 * DAY


def test_leaf_with_a_name_too_long_for_common_name(ca: LabCA) -> None:
    name = ".".join(["a" * 60, "b" * 60, "example", "test"])
    cert = x509.load_pem_x509_certificate(ca.issue_leaf([name])[0])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    assert sans(cert) == [x509.DNSName(name)]


def test_leaf_cache(ca: LabCA) -> None:
    first = ca.issue_leaf(["cache.example.test", "192.0.2.1"])
    assert ca.issue_leaf(("cache.example.test", "192.0.2.1")) == first
    # Same names in another spelling: same cache entry.
    assert ca.issue_leaf(["CACHE.example.test.", "192.0.2.1", "cache.example.test"]) == first
    assert ca.issue_leaf(["192.0.2.1", "cache.example.test"]) != first  # order: another CN


def test_leaf_cache_is_capped_lru(tmp_path: Path) -> None:
    ca = LabCA.init(tmp_path)
    ca.leaf_cache_size = 2
    a = ca.issue_leaf(["a.test"])
    b = ca.issue_leaf(["b.test"])
    assert ca.issue_leaf(["a.test"]) == a  # a is now the most recent
    ca.issue_leaf(["c.test"])  # evicts b
    assert ca.issue_leaf(["a.test"]) == a
    assert ca.issue_leaf(["b.test"]) != b


def test_leaf_from_another_ca_does_not_verify(tmp_path: Path, ca: LabCA) -> None:
    other = LabCA.init(tmp_path)
    assert not ca.verify_leaf(other.issue_leaf(["pbx.example.test"])[0])


@pytest.mark.parametrize("names", [[], ["bad name"], ["pbx..example"], ["-pbx.example"], ["a" * 64 + ".test"], [""]])
def test_leaf_rejects_bad_names(ca: LabCA, names: list[str]) -> None:
    with pytest.raises(ValueError):
        ca.issue_leaf(names)


def test_leaf_rejects_a_bare_string(ca: LabCA) -> None:
    with pytest.raises(TypeError, match="sequence"):
        ca.issue_leaf("pbx.example.test")  # type: ignore[arg-type]


def test_normalize_names() -> None:
    assert normalize_names(["PBX.Example.Test.", "0:0::1", "[::1]", "192.0.2.1", "pbx.example.test"]) == (
        "pbx.example.test",
        "::1",
        "192.0.2.1",
    )
    assert normalize_names(["*.example.test", "_sip._tls.example.test"]) == (
        "*.example.test",
        "_sip._tls.example.test",
    )


@pytest.mark.parametrize("names", [["192.0.2.10"], ["2001:db8::10"], ["pbx.example.test", "192.0.2.10"]])
def test_leaf_for_an_address_follows_apples_rules(ca: LabCA, names: list[str]) -> None:
    """Apple's requirements for trusted TLS server certificates (iOS 13+), with the extra DNS entry too."""
    cert = x509.load_pem_x509_certificate(ca.issue_leaf(names)[0])
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= 825 * DAY
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    for name in names:  # every name in subjectAltName; an address as IP and DNS entry
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            assert name in san.get_values_for_type(x509.DNSName)
        else:
            assert address in san.get_values_for_type(x509.IPAddress)
            assert name in san.get_values_for_type(x509.DNSName)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
