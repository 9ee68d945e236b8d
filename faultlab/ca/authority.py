"""The lab CA itself (:class:`LabCA`): created once, loaded from its directory, issuing and caching leaf
certificates; the reasons for its choices are in :mod:`faultlab.ca`."""


from __future__ import annotations

import datetime
import logging
import os
import secrets
import stat
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from faultlab.ca.names import general_names, normalize_names

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CAError",
    "LabCA",
    "default_confdir",
    "normalize_names",
]

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.crt"

CA_COMMON_NAME = "faultlab lab CA"
ORGANIZATION = "faultlab"

#: Start validity this far in the past, for devices whose clock runs behind
#: (mitmproxy: ``CERT_VALIDITY_OFFSET``).
VALIDITY_BACKDATE = datetime.timedelta(days=2)
#: Lifetime of the CA certificate.
CA_VALIDITY = datetime.timedelta(days=3650)
#: Total lifetime of a leaf (notAfter - notBefore, backdating included). Apple
#: accepts up to 825 days for certificates chaining to a user-installed root and
#: 398 for publicly trusted ones; 397 satisfies both.
LEAF_VALIDITY = datetime.timedelta(days=397)
#: A cached leaf closer than this to its expiry is issued again.
LEAF_RENEW_MARGIN = datetime.timedelta(days=1)
#: How many leaves the cache keeps (mitmproxy: ``STORE_CAP = 100``).
LEAF_CACHE_SIZE = 100

# RFC 5280 upper bound for commonName (ub-common-name).
_MAX_CN_LENGTH = 64
class CAError(Exception):
    """The lab CA cannot be created, loaded or written. The message says what to do."""


def default_confdir() -> Path:
    """faultlab's config directory: ``$FAULTLAB_HOME`` if set and non-empty, else ``~/.faultlab``."""
    home = os.environ.get("FAULTLAB_HOME")
    if home:
        return Path(home).expanduser()
    return Path.home() / ".faultlab"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class LabCA:
    """A lab CA loaded in memory: its key, its certificate and a cache of leaves.

    Build one with :meth:`init`, :meth:`load` or :meth:`load_or_init`. Not
    thread-safe: use it from one thread (faultlab runs everything in one trio loop).
    """

    #: Number of leaves kept by :meth:`issue_leaf` (least recently used go first).
    leaf_cache_size: int = LEAF_CACHE_SIZE

    def __init__(
        self,
        confdir: Path,
        key: ec.EllipticCurvePrivateKey,
        cert: x509.Certificate,
    ) -> None:
        self.confdir = Path(confdir)
        self.key = key
        self.cert = cert
        self._cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self._ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self._leaves: OrderedDict[tuple[str, ...], tuple[datetime.datetime, bytes, bytes]] = (
            OrderedDict()
        )

    # -- creating and loading -------------------------------------------------

    @classmethod
    def init(cls, confdir: Path, *, force: bool = False) -> LabCA:
        """Create a new CA in ``confdir`` (made with mode 0700 if missing).

        Refuses to replace an existing CA unless ``force``: devices that trust the
        old CA stop trusting faultlab until they get the new one (its key is made
        private, as :meth:`load` does). Refuses a directory that others can write to.
        """
        confdir = Path(confdir)
        key_path, cert_path = confdir / CA_KEY_FILE, confdir / CA_CERT_FILE
        existing = [p for p in (key_path, cert_path) if p.exists() or p.is_symlink()]
        if existing and not force:
            _check_dir(confdir)
            if key_path.is_file():
                _read_private(key_path)  # the CA stays: but not with a key that others can read
            raise CAError(
                f"a lab CA already exists in {confdir} ({', '.join(p.name for p in existing)}). "
                "Devices that trust it would stop trusting faultlab if it were replaced. "
                "To replace it anyway, run `faultlab ca init --force` "
                "(or use another directory with $FAULTLAB_HOME)."
            )
        _make_private_dir(confdir)
        _check_dir(confdir)
        key, cert = _new_ca()
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        # The key first: a crash in between leaves a key without a certificate,
        # which load() reports, rather than a certificate nobody can sign for.
        try:
            _write_atomic(key_path, key_pem, 0o600)
            _write_atomic(cert_path, cert_pem, 0o644)
        except OSError as exc:
            raise CAError(f"cannot write the lab CA to {confdir}: {exc.strerror or exc}") from None
        return cls(confdir, key, cert)

    @classmethod
    def load(cls, confdir: Path) -> LabCA:
        """Load the CA from ``confdir``. Raises :class:`CAError` saying what is wrong.

        Permissions: a directory that its group or others can write to is refused (``chmod 700`` it); a key that
        its group or others can read is made private (mode 0600) with a warning on the ``faultlab.ca`` logger, or
        refused when faultlab cannot change its mode.
        """
        confdir = Path(confdir)
        key_path, cert_path = confdir / CA_KEY_FILE, confdir / CA_CERT_FILE
        missing = [p for p in (key_path, cert_path) if not p.exists()]
        if len(missing) == 2:
            raise CAError(f"no lab CA in {confdir}: run `faultlab ca init`")
        if missing:
            raise CAError(
                f"incomplete lab CA in {confdir}: {missing[0].name} is missing. "
                "Restore it, or create a new CA with `faultlab ca init --force` "
                "(devices must then trust the new CA)."
            )
        _check_dir(confdir)
        key_pem = _read_private(key_path)
        cert_pem = _read(cert_path)
        replace_hint = "Create a new CA with `faultlab ca init --force` (devices must then trust the new CA)."
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except TypeError:
            raise CAError(
                f"{key_path} is encrypted with a password; faultlab needs an unencrypted key. "
                + replace_hint
            ) from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CAError(f"{key_path} is not a valid PEM private key ({exc}). {replace_hint}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError(
                f"{key_path} holds a {type(key).__name__}; faultlab's lab CA uses an EC key. "
                + replace_hint
            )
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise CAError(f"{cert_path} is not a valid PEM certificate ({exc}). {replace_hint}") from None
        if cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise CAError(f"{cert_path} and {key_path} do not belong together. {replace_hint}")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CAError(f"{cert_path} is not a CA certificate. {replace_hint}")
        return cls(confdir, key, cert)

    @classmethod
    def load_or_init(cls, confdir: Path) -> LabCA:
        """Load the CA from ``confdir``, creating it first if there is none at all.

        A damaged CA (one file missing, corrupt) is an error, never silently replaced.
        """
        confdir = Path(confdir)
        if not (confdir / CA_KEY_FILE).exists() and not (confdir / CA_CERT_FILE).exists():
            return cls.init(confdir)
        return cls.load(confdir)

    # -- what devices need ------------------------------------------------------

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, PEM (public; what devices install)."""
        return self._cert_pem

    @property
    def cert_path(self) -> Path:
        return self.confdir / CA_CERT_FILE

    @property
    def key_path(self) -> Path:
        return self.confdir / CA_KEY_FILE

    @property
    def common_name(self) -> str:
        return str(self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate (DER), lower-case hex without separators."""
        return self.cert.fingerprint(hashes.SHA256()).hex()

    def export(self, out: Path | None = None) -> bytes:
        """Return the CA certificate PEM and, if ``out`` is given, write it there (mode 0644).

        Only the public certificate is ever exported.
        """
        if out is not None:
            out = Path(out)
            try:
                _write_atomic(out, self._cert_pem, 0o644)
            except OSError as exc:
                raise CAError(f"cannot write the CA certificate to {out}: {exc.strerror or exc}") from None
        return self._cert_pem

    def export_mobileconfig(self, out: Path | None = None) -> bytes:
        """Return the iOS configuration profile carrying the CA certificate (see
        :mod:`faultlab.mobileconfig`) and, if ``out`` is given, write it there (mode 0644)."""
        from faultlab.mobileconfig import build_mobileconfig

        data = build_mobileconfig(self.cert)
        if out is not None:
            out = Path(out)
            try:
                _write_atomic(out, data, 0o644)
            except OSError as exc:
                raise CAError(f"cannot write the configuration profile to {out}: {exc.strerror or exc}") from None
        return data

    # -- leaves ----------------------------------------------------------------

    def issue_leaf(self, names: Sequence[str]) -> tuple[bytes, bytes]:
        """A TLS server certificate for ``names``: ``(leaf cert PEM, leaf key PEM)``.

        ``names`` are DNS names or IP addresses (IPv4, IPv6); each goes into
        subjectAltName (a DNS name as a DNS entry; an IP address as an IP entry
        and, for mbedTLS 2.x clients, a DNS entry with the same text, see
        :func:`general_names`) and the first is the commonName. The
        certificate PEM holds only the leaf: the CA is a root that devices trust
        directly, so there is nothing else to send. Results are cached by the
        normalized names (see :func:`normalize_names`), least recently used
        evicted beyond :attr:`leaf_cache_size`.
        """
        key = normalize_names(names)
        now = _now()
        cached = self._leaves.get(key)
        if cached is not None and cached[0] - now > LEAF_RENEW_MARGIN:
            self._leaves.move_to_end(key)
            return cached[1], cached[2]
        not_after, cert_pem, key_pem = self._make_leaf(key, now)
        self._leaves[key] = (not_after, cert_pem, key_pem)
        self._leaves.move_to_end(key)
        while len(self._leaves) > max(self.leaf_cache_size, 0):
            self._leaves.popitem(last=False)
        return cert_pem, key_pem

    def _make_leaf(
        self, names: tuple[str, ...], now: datetime.datetime
    ) -> tuple[datetime.datetime, bytes, bytes]:
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
        if len(names[0]) <= _MAX_CN_LENGTH:
            subject.append(x509.NameAttribute(NameOID.COMMON_NAME, names[0]))
        not_before = now - VALIDITY_BACKDATE
        not_after = not_before + LEAF_VALIDITY
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.cert.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([g for n in names for g in general_names(n)]), critical=False
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return not_after, cert_pem, key_pem

    def verify_leaf(self, cert_pem: bytes) -> bool:
        """True if ``cert_pem`` (first certificate) was signed by this CA."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def __repr__(self) -> str:
        return f"<LabCA {self.common_name!r} in {self.confdir} sha256={self.fingerprint[:16]}…>"


def _new_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{CA_COMMON_NAME} {secrets.token_hex(4)}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - VALIDITY_BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        # path_length=0: this CA signs leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700. An existing directory is left as it is."""
    if path.is_dir():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask; set it exactly
    except FileExistsError:
        if not path.is_dir():
            raise CAError(f"cannot create the lab CA directory {path}: a file is in the way") from None
    except OSError as exc:
        raise CAError(f"cannot create the lab CA directory {path}: {exc.strerror or exc}") from None


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory.

    The temporary file is created with mode 0600 (``mkstemp``), so a private key
    is never readable by others, not even for a moment; ``mode`` is applied with
    ``fchmod`` before the rename (so the umask cannot change it), and the rename
    replaces ``path`` atomically.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _check_dir(confdir: Path) -> None:
    """Refuse a CA directory that others can write to: they could have put their own CA in it, and could replace
    it at any time, so nothing in it can be trusted; faultlab does not change the mode of a directory it did not
    make (it may be shared), the message says how."""
    try:
        st = os.stat(confdir)
    except OSError:
        return  # what is missing or unreadable is reported when the files are read
    if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022:
        who = "others" if st.st_mode & 0o002 else "its group"
        raise CAError(
            f"the lab CA directory {confdir} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}): whoever "
            "can write there can replace the CA that devices trust, so faultlab does not use it. Make it private "
            f"with `chmod 700 {confdir}` (and check that ca.key and ca.crt are yours), or use another "
            "directory (--confdir or $FAULTLAB_HOME).")


def _read_private(path: Path) -> bytes:
    """Read the CA key. A key that its group or others may read or write is made private (mode 0600) first, and
    the change logged (``faultlab.ca``, a warning on stderr); a key faultlab cannot change (not its owner) is
    refused, saying how to fix it."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                old = stat.S_IMODE(st.st_mode)
                try:
                    os.fchmod(f.fileno(), 0o600)
                except PermissionError:
                    raise CAError(
                        f"the lab CA key {path} can be read by others (mode {old:04o}) and faultlab cannot "
                        f"change that (it is not the file's owner): run `chmod 600 {path}` as its owner") from None
                logging.getLogger("faultlab.ca").warning(
                    "the lab CA key %s could be read by others (mode %04o); its mode is now 0600. If someone may "
                    "have copied it, make a new CA with `faultlab ca init --force` (devices must then trust the "
                    "new one)", path, old)
            return f.read()
    except OSError as exc:
        raise CAError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CAError(f"cannot read {path}: {exc.strerror or exc}") from None
