"""An iOS configuration profile (``.mobileconfig``) that installs the lab CA as a trusted root.

Pure: :func:`build_mobileconfig` turns a CA certificate into the profile's bytes, with no I/O.

The profile is an XML property list (Apple's "Configuration Profile Reference"): one top-level payload of
type ``Configuration`` holding one ``com.apple.security.root`` payload whose ``PayloadContent`` is the CA
certificate in DER. It is not signed, so iOS shows it as "Not Signed" when installing; that changes
nothing about what it installs.

Identifiers and UUIDs are derived from the certificate's SHA-256 fingerprint, so the same CA always gives
the same bytes (reinstalling replaces the profile rather than adding a second one), and a new CA
(``faultlab ca init --force``) gives a new profile that can sit beside the old one until that is removed.

Installing the profile is only half of it: iOS trusts a root installed this way for TLS only after
Settings > General > About > Certificate Trust Settings > "Enable full trust" is switched on for it.
"""

from __future__ import annotations

import plistlib
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

__all__ = [
    "MOBILECONFIG_MEDIA_TYPE",
    "PROFILE_DISPLAY_NAME",
    "build_mobileconfig",
    "profile_identifier",
]

#: The media type Safari on iOS hands to Settings as a profile to install.
MOBILECONFIG_MEDIA_TYPE = "application/x-apple-aspen-config"

PROFILE_DISPLAY_NAME = "faultlab lab CA"
PROFILE_ORGANIZATION = "faultlab"
PROFILE_DESCRIPTION = (
    "Installs the root certificate of a faultlab lab CA. faultlab is a SIP fault-injection proxy for "
    "testing VoIP apps: it terminates TLS between this device and the PBX with certificates from this CA. "
    "To trust it for TLS, also enable full trust for it in Settings > General > About > Certificate Trust "
    "Settings. Install it only on test devices, and remove this profile after testing "
    "(Settings > General > VPN & Device Management)."
)

# uuid5 namespace for faultlab's profile UUIDs (a fixed, arbitrary value: changing it changes every UUID).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "faultlab.lab-ca.mobileconfig")

# Enough of the fingerprint to tell CAs apart in an identifier (64 bits), short enough to read in Settings.
_ID_HEX = 16


def profile_identifier(cert: x509.Certificate) -> str:
    """The profile's ``PayloadIdentifier``: ``faultlab.ca.<first 16 hex digits of the SHA-256 fingerprint>``."""
    return f"faultlab.ca.{_fingerprint(cert)[:_ID_HEX]}"


def build_mobileconfig(cert: x509.Certificate) -> bytes:
    """The ``.mobileconfig`` (XML plist bytes) installing ``cert`` as a root CA; the same ``cert`` gives
    the same bytes."""
    fingerprint = _fingerprint(cert)
    identifier = profile_identifier(cert)
    root_payload = {
        "PayloadType": "com.apple.security.root",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{identifier}.root",
        "PayloadUUID": _uuid(fingerprint, "root"),
        "PayloadDisplayName": PROFILE_DISPLAY_NAME,
        "PayloadDescription": "The faultlab lab CA root certificate.",
        "PayloadOrganization": PROFILE_ORGANIZATION,
        "PayloadCertificateFileName": "faultlab-ca.cer",
        "PayloadContent": cert.public_bytes(serialization.Encoding.DER),
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": _uuid(fingerprint, "profile"),
        "PayloadDisplayName": PROFILE_DISPLAY_NAME,
        "PayloadDescription": PROFILE_DESCRIPTION,
        "PayloadOrganization": PROFILE_ORGANIZATION,
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [root_payload],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _uuid(fingerprint: str, role: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{fingerprint}/{role}")).upper()
