"""APNs token authentication (faultlab.lab.push.auth): the JWT's exact shape and signature, token reuse and
renewal on an injected clock, and the errors for keys and ids that APNs would not accept, from the library and from
the two CLIs that take ``--apns-key``."""

from __future__ import annotations

import base64
import json

import pytest
import typer
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from typer.testing import CliRunner

from faultlab.lab.push.auth import TOKEN_LIFETIME, ApnsAuthError, ApnsSigner, check_id, load_key, make_token
from faultlab.cli.push_gateway import app as push_app

KEY_ID = "ABC123DEFG"
TEAM_ID = "DEF123GHIJ"


def _unb64(part: str) -> bytes:
    assert "=" not in part and "+" not in part and "/" not in part  # base64url without padding
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify(token: str, public_key: ec.EllipticCurvePublicKey) -> tuple[dict, dict]:
    """The JWT's header and claims, after checking its raw r||s ES256 signature (raises if it does not verify)."""
    header, claims, signature = token.split(".")
    raw = _unb64(signature)
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public_key.verify(der, f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    return json.loads(_unb64(header)), json.loads(_unb64(claims))


def p8(key) -> bytes:
    """``key`` as Apple writes a .p8 file: PKCS#8 PEM, unencrypted."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def key_file(tmp_path, key):
    path = tmp_path / f"AuthKey_{KEY_ID}.p8"
    path.write_bytes(p8(key))
    return path


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_token_verifies_with_the_public_key_and_has_exactly_the_apns_header_and_claims(key):
    token = make_token(key, KEY_ID, TEAM_ID, 1764166500)
    header, claims = verify(token, key.public_key())
    assert header == {"alg": "ES256", "kid": KEY_ID}
    assert claims == {"iss": TEAM_ID, "iat": 1764166500}


def test_every_signature_is_raw_r_s_of_64_bytes(key):
    # DER signatures are 70-72 bytes and vary; r and s with leading zero bytes must still be 32 bytes each
    for iat in range(1764166500, 1764166540):
        assert len(_unb64(make_token(key, KEY_ID, TEAM_ID, iat).split(".")[2])) == 64


def test_a_token_from_another_key_does_not_verify(key):
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(Exception):
        verify(make_token(other, KEY_ID, TEAM_ID, 1764166500), key.public_key())


def test_signer_reuses_its_token_for_50_minutes_then_signs_a_new_one(key_file, key):
    clock = Clock(1764166500.7)
    signer = ApnsSigner.from_file(key_file, KEY_ID, TEAM_ID, clock=clock)
    assert signer.issued_at is None
    first = signer.authorization()
    assert first.startswith("bearer ")
    assert verify(first.removeprefix("bearer "), key.public_key())[1] == {"iss": TEAM_ID, "iat": 1764166500}
    clock.now += TOKEN_LIFETIME - 1  # 49:59 later: the same token (APNs refuses renewals under 20 min)
    assert signer.authorization() == first
    assert TOKEN_LIFETIME == 50 * 60
    clock.now += 1  # 50 minutes: a new one, well before APNs's one-hour limit
    second = signer.authorization()
    assert second != first
    assert verify(second.removeprefix("bearer "), key.public_key())[1]["iat"] == 1764166500 + 50 * 60
    assert signer.issued_at == 1764166500 + 50 * 60
    clock.now += 20 * 60
    assert signer.authorization() == second


@pytest.mark.parametrize("value", ["ABC123DEF", "ABC123DEFGH", "ABC-123DEF", "ABC 123DEF", "", "ÄBC123DEFG"])
def test_ids_must_be_10_letters_or_digits(value):
    with pytest.raises(ApnsAuthError, match="not 10 letters or digits: give the Key ID"):
        check_id("key id", value)
    with pytest.raises(ApnsAuthError, match="team id .* Membership"):
        ApnsSigner(ec.generate_private_key(ec.SECP256R1()), KEY_ID, value)


def test_an_unreadable_key_file_says_which_file_and_what_to_give(tmp_path):
    with pytest.raises(ApnsAuthError, match=r"cannot read the APNs key .*missing\.p8: No such file.*\.p8 file"):
        ApnsSigner.from_file(tmp_path / "missing.p8", KEY_ID, TEAM_ID)
    with pytest.raises(ApnsAuthError, match="cannot read"):
        ApnsSigner.from_file(tmp_path, KEY_ID, TEAM_ID)  # a directory


@pytest.mark.parametrize(("make", "needle"), [
    (lambda: b"not a key at all\n", "is not a PEM private key"),
    (lambda: p8(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "is a RSA key, not an EC P-256"),
    (lambda: p8(ec.generate_private_key(ec.SECP384R1())), "on secp384r1, not P-256"),
    (lambda: ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")), "is encrypted"),
    (lambda: ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), "is not a PEM private key"),
])
def test_keys_apns_cannot_use_are_refused_with_the_reason(tmp_path, make, needle):
    path = tmp_path / "AuthKey.p8"
    path.write_bytes(make())
    with pytest.raises(ApnsAuthError, match=needle) as info:
        ApnsSigner.from_file(path, KEY_ID, TEAM_ID)
    assert str(path) in str(info.value) and "Apple Developer > Keys" in str(info.value)


def test_a_sec1_pem_ec_key_is_accepted_too(key):
    # openssl ecparam -genkey writes "BEGIN EC PRIVATE KEY"; the key is the same
    sec1 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())
    assert load_key(sec1).private_numbers() == key.private_numbers()


# --- the CLIs ------------------------------------------------------------------------------------------------------

root = typer.Typer()
root.add_typer(push_app, name="push-gateway")


@root.command()
def other() -> None:  # a second command, so that push-gateway is a subcommand as in faultlab
    pass


def test_push_gateway_help_names_the_options_and_the_replacement():
    result = CliRunner().invoke(root, ["push-gateway", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for option in ("--apns-key", "--apns-key-id", "--apns-team-id"):
        assert option in result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert "replacing any authorization header the PBX sent" in text


@pytest.mark.parametrize(("args", "needle"), [
    (["--apns-key", "{key}"], "go together"),
    (["--apns-key", "{key}", "--apns-key-id", KEY_ID, "--apns-team-id", TEAM_ID], "needs --relay"),
    (["--relay", "http://127.0.0.1:9", "--apns-key", "{key}", "--apns-key-id", "short", "--apns-team-id", TEAM_ID],
     "key id 'short' is not 10"),
    (["--relay", "http://127.0.0.1:9", "--apns-key", "{dir}/none.p8", "--apns-key-id", KEY_ID,
      "--apns-team-id", TEAM_ID], "cannot read the APNs key"),
    (["--relay", "http://127.0.0.1:9", "--apns-key", "{dir}/bad.p8", "--apns-key-id", KEY_ID,
      "--apns-team-id", TEAM_ID], "not a PEM private key"),
])
def test_push_gateway_refuses_bad_apns_auth_options(tmp_path, key_file, args, needle):
    (tmp_path / "bad.p8").write_text("garbage")
    args = [a.format(key=key_file, dir=tmp_path) for a in args]
    result = CliRunner().invoke(root, ["push-gateway", *args])
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split())


@pytest.mark.parametrize(("extra", "needle"), [
    (["--apns-key-id", KEY_ID], "go together"),
    (["--apns-key", "{key}", "--apns-key-id", KEY_ID, "--apns-team-id", TEAM_ID], "needs --apns-url"),
    (["--apns-url", "http://127.0.0.1:9", "--apns-key", "{key}", "--apns-key-id", KEY_ID, "--apns-team-id",
      "TEAM"], "team id 'TEAM' is not 10"),
    (["--apns-url", "http://127.0.0.1:9", "--apns-key", "{dir}/rsa.p8", "--apns-key-id", KEY_ID, "--apns-team-id",
      TEAM_ID], "not an EC P-256 key"),
])
def test_lab_run_external_refuses_bad_apns_auth_options(tmp_path, key_file, extra, needle):
    from faultlab.cli import app

    (tmp_path / "rsa.p8").write_bytes(p8(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    extra = [a.format(key=key_file, dir=tmp_path) for a in extra]
    result = CliRunner().invoke(app, ["lab", "run", "--device", "external", *extra])
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split())


def test_lab_run_external_takes_valid_apns_auth_into_its_settings(key_file):
    from faultlab.cli.lab import _external_settings

    settings = _external_settings({"apns_url": "https://api.sandbox.push.apple.com", "apns_key": key_file,
                                   "apns_key_id": KEY_ID, "apns_team_id": TEAM_ID},
                                  virtual=None, behaviour=None, network="", transports=[])
    assert (settings.apns_key, settings.apns_key_id, settings.apns_team_id) == (key_file, KEY_ID, TEAM_ID)


def test_apns_auth_options_need_the_external_device(key_file):
    from faultlab.cli import app

    result = CliRunner().invoke(app, ["lab", "run", "--apns-key-id", KEY_ID])
    assert result.exit_code == 2
    assert "--apns-key-id only with --device external" in " ".join(result.output.split())
