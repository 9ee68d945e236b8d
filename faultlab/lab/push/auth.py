"""APNs token-based authentication: the provider token (a JWT) the push gateway signs relayed pushes with.

No I/O but reading the key file in :meth:`ApnsSigner.from_file`; time comes from an injected clock. What APNs wants
(docs/callkit-and-sip.md §5)::

    authorization: bearer <header>.<claims>.<signature>        each part base64url, no padding
    header   {"alg": "ES256", "kid": <Key ID, 10 characters>}
    claims   {"iss": <Team ID, 10 characters>, "iat": <UNIX seconds>}
    signature  ECDSA P-256 / SHA-256 over "<header>.<claims>", raw r || s (64 bytes), not DER

The key is the team's ``.p8`` file from Apple (PKCS#8 PEM, an EC P-256 private key). APNs refuses a token issued
more than an hour ago (403 ExpiredProviderToken) and one renewed more often than every 20 minutes (429
TooManyProviderTokenUpdates), so :class:`ApnsSigner` reuses one token for :data:`TOKEN_LIFETIME` (50 minutes) and
then signs a new one.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = ["ApnsAuthError", "ApnsSigner", "TOKEN_LIFETIME", "check_id", "load_key", "make_token"]

TOKEN_LIFETIME = 50 * 60  # seconds: APNs refuses tokens older than 1 h, and renewals more often than every 20 min
_ID = re.compile(r"[A-Za-z0-9]{10}")
_WHERE = {
    "key id": "the Key ID of the key in Apple Developer > Certificates, Identifiers & Profiles > Keys (also the "
              "KEYID in the file name AuthKey_KEYID.p8)",
    "team id": "the Team ID in Apple Developer > Membership details (the prefix of the app's pn-param)",
}


class ApnsAuthError(ValueError):
    """The APNs key or ids cannot be used; the message says what was wrong and how to fix it."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def check_id(kind: str, value: str) -> str:
    """``value`` if it is 10 ASCII letters or digits (an APNs ``"key id"`` or ``"team id"``), else
    :class:`ApnsAuthError`."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ApnsAuthError(f"APNs {kind} {value!r} is not 10 letters or digits: give {_WHERE.get(kind, kind)}")
    return value


def load_key(data: bytes, source: str = "the APNs key") -> ec.EllipticCurvePrivateKey:
    """The EC P-256 private key in ``data`` (PKCS#8 PEM, as in Apple's ``.p8`` files); :class:`ApnsAuthError`
    naming ``source`` otherwise."""
    fix = "give the .p8 file downloaded from Apple Developer > Keys (an APNs auth key)"
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ApnsAuthError(f"{source} is encrypted; Apple's .p8 keys are not: {fix}") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ApnsAuthError(f"{source} is not a PEM private key ({exc}): {fix}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        kind = type(key).__name__.replace("PrivateKey", "").lstrip("_") or "non-EC"
        raise ApnsAuthError(f"{source} is a {kind} key, not an EC P-256 key as APNs needs (ES256): {fix}")
    if not isinstance(key.curve, ec.SECP256R1):
        raise ApnsAuthError(f"{source} is an EC key on {key.curve.name}, not P-256 (secp256r1) as APNs needs "
                            f"(ES256): {fix}")
    return key


def make_token(key: ec.EllipticCurvePrivateKey, key_id: str, team_id: str, issued_at: int) -> str:
    """The ES256 JWT ``{"alg":"ES256","kid":key_id}.{"iss":team_id,"iat":issued_at}.signature``."""
    header = _b64(json.dumps({"alg": "ES256", "kid": key_id}, separators=(",", ":")).encode())
    claims = _b64(json.dumps({"iss": team_id, "iat": int(issued_at)}, separators=(",", ":")).encode())
    signing_input = f"{header}.{claims}".encode("ascii")
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return f"{header}.{claims}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


class ApnsSigner:
    """Provider tokens for one key: :meth:`authorization` is ``"bearer <JWT>"``, the same token for
    ``lifetime`` seconds of ``clock`` (``time.time`` by default; tests pass their own), then a new one."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, key_id: str, team_id: str, *,
                 clock: Callable[[], float] = time.time, lifetime: float = TOKEN_LIFETIME) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ApnsAuthError("the APNs key must be an EC P-256 private key")
        self.key = key
        self.key_id = check_id("key id", key_id)
        self.team_id = check_id("team id", team_id)
        self.clock = clock
        self.lifetime = lifetime
        self._token: str | None = None
        self._issued_at = 0

    @classmethod
    def from_file(cls, path: str | Path, key_id: str, team_id: str, *,
                  clock: Callable[[], float] = time.time) -> ApnsSigner:
        """Read and check the ``.p8`` key and both ids; :class:`ApnsAuthError` saying what to fix."""
        check_id("key id", key_id)
        check_id("team id", team_id)
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ApnsAuthError(f"cannot read the APNs key {path}: {exc.strerror or exc}; give the path of the "
                                ".p8 file downloaded from Apple Developer > Keys") from None
        return cls(load_key(data, f"the APNs key {path}"), key_id, team_id, clock=clock)

    @property
    def issued_at(self) -> int | None:
        """The ``iat`` of the current token (None before the first)."""
        return self._issued_at if self._token is not None else None

    def token(self) -> str:
        """The current JWT, signed anew when none is younger than ``lifetime``."""
        now = int(self.clock())
        if self._token is None or now - self._issued_at >= self.lifetime:
            self._token = make_token(self.key, self.key_id, self.team_id, now)
            self._issued_at = now
        return self._token

    def authorization(self) -> str:
        """The ``authorization`` header value: ``"bearer <JWT>"``."""
        return f"bearer {self.token()}"
