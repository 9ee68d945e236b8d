"""The lab certificate authority: the CA that signs faultlab's TLS server certificates.

faultlab terminates a device's TLS with a certificate for the name the device asked
for, so the device must trust faultlab's own CA (installed on a lab iPhone as a
configuration profile, or passed to a test client as a CA file). The model is
mitmproxy's ``CertStore`` (``mitmproxy/certs.py``):

* the CA lives in a config directory (``$FAULTLAB_HOME``, else ``~/.faultlab``) as
  ``ca.key`` (PEM, mode 0600) and ``ca.crt`` (PEM, public);
* it is created once, explicitly (``faultlab ca init``) or on first use
  (:meth:`LabCA.load_or_init`), and never replaced silently;
* leaf certificates are issued on demand and cached by their names, with a cap.

Choices, and why:

* **EC P-256 everywhere** (CA and leaves). Key generation takes well under a
  millisecond, so a leaf can be issued inside the TLS handshake. iOS, Android,
  OpenSSL, GnuTLS and PJSIP accept it. (A very old SIP stack that offers only RSA
  cipher suites would not; nothing here needs RSA yet.)
* **An IP address is named twice in subjectAltName**: as an IP entry (what
  OpenSSL, Python, Apple and recent mbedTLS 3.x check) and as a DNS entry with the same
  text (what mbedTLS 2.x, e.g. in linphone-based apps, checks: it reads no IP entry
  and ignores the commonName once subjectAltName exists).
* **Leaves follow Apple's rules for TLS server certificates** (iOS 13 / macOS
  10.15, https://support.apple.com/en-us/103769): names only in subjectAltName,
  extendedKeyUsage serverAuth, validity at most 825 days. We stay at 397 days, the
  stricter limit for publicly trusted certificates, so no client has a reason to
  refuse them. Validity starts two days in the past (mitmproxy's
  ``CERT_VALIDITY_OFFSET``) so a device whose clock is slightly behind still
  accepts a fresh certificate.
* **Every lab CA has its own name** ("faultlab lab CA" plus a random suffix), so a
  device that trusts one lab's CA can tell two labs apart and an old CA left in a
  trust store is easy to find and remove.
* Certificates carry real wall-clock dates (a certificate is checked against the
  device's clock); this is the one place faultlab reads the wall clock.
"""

from faultlab.ca.authority import (
    CA_CERT_FILE,
    CA_COMMON_NAME,
    CA_KEY_FILE,
    CA_VALIDITY,
    LEAF_CACHE_SIZE,
    LEAF_RENEW_MARGIN,
    LEAF_VALIDITY,
    ORGANIZATION,
    VALIDITY_BACKDATE,
    CAError,
    LabCA,
    default_confdir,
)
from faultlab.ca.names import normalize_names

__all__ = [
    "CA_CERT_FILE",
    "CA_COMMON_NAME",
    "CA_KEY_FILE",
    "CA_VALIDITY",
    "CAError",
    "LEAF_CACHE_SIZE",
    "LEAF_RENEW_MARGIN",
    "LEAF_VALIDITY",
    "LabCA",
    "ORGANIZATION",
    "VALIDITY_BACKDATE",
    "default_confdir",
    "normalize_names",
]
