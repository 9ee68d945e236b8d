"""The lab CA for devices, served by the control API (like mitmproxy's mitm.it)::

    GET /ca                             an install page for a phone screen: what this is, the download, the
                                        iOS steps (including "enable full trust"), removal, the PEM
    GET /ca/faultlab-ca.mobileconfig    the iOS configuration profile (application/x-apple-aspen-config)
    GET /ca/faultlab-ca.pem             the CA certificate, PEM (other platforms, the iOS Simulator)

These three are public: the control API answers them without a token and for any ``Host`` (see
:func:`is_public`), because a phone's browser cannot send ``Authorization: Bearer`` and what they serve is
the CA's *certificate*, which every device that connects over TLS is shown anyway. The private key is
never served. Everything else in the API keeps its rule (a token, or loopback only).

The CA is read from ``confdir`` at each request, so a CA created with ``faultlab ca init`` while the
proxy runs is served at once. With no CA there, the page says how to create one and the two files are 404.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from faultlab.ca import CAError, LabCA, default_confdir
from faultlab.mobileconfig import MOBILECONFIG_MEDIA_TYPE, PROFILE_DISPLAY_NAME, build_mobileconfig

__all__ = ["CA_PATHS", "PEM_MEDIA_TYPE", "ca_routes", "is_public"]

log = logging.getLogger("faultlab.api")

PAGE_PATH = "/ca"
MOBILECONFIG_PATH = "/ca/faultlab-ca.mobileconfig"
PEM_PATH = "/ca/faultlab-ca.pem"
#: The paths answered without a token (GET and HEAD only).
CA_PATHS = frozenset({PAGE_PATH, MOBILECONFIG_PATH, PEM_PATH})

#: What Android and desktop browsers offer to install as a CA certificate (mitmproxy serves its PEM so too).
PEM_MEDIA_TYPE = "application/x-x509-ca-cert"

_NO_STORE = {"Cache-Control": "no-store"}  # a replaced CA (ca init --force) must not come from a cache


def is_public(scope: Scope) -> bool:
    """True for a GET or HEAD of one of :data:`CA_PATHS`: public material, no token needed."""
    return scope.get("method") in ("GET", "HEAD") and str(scope.get("path", "")).rstrip("/") in CA_PATHS


def ca_routes(confdir: Path | None = None) -> list[Route]:
    """The routes, serving the CA in ``confdir`` (None: ``$FAULTLAB_HOME`` or ``~/.faultlab`` at each request)."""
    page = _CAPage(confdir)
    return [
        Route(PAGE_PATH, page.page, methods=["GET"]),
        Route(MOBILECONFIG_PATH, page.mobileconfig, methods=["GET"]),
        Route(PEM_PATH, page.pem, methods=["GET"]),
    ]


class _CAPage:
    def __init__(self, confdir: Path | None) -> None:
        self.confdir = confdir

    def _ca(self) -> tuple[LabCA | None, str]:
        """The CA, or None and why not (for the page: no file paths, the page is public)."""
        confdir = self.confdir or default_confdir()
        if not (confdir / "ca.crt").exists() and not (confdir / "ca.key").exists():
            return None, "missing"
        try:
            return LabCA.load(confdir), ""
        except CAError as exc:
            log.warning("the /ca page cannot load the lab CA: %s", exc)
            return None, "broken"

    async def page(self, request: Request) -> Response:
        ca, why = self._ca()
        body = _page_html(ca) if ca is not None else _no_ca_html(why)
        return HTMLResponse(body, headers=_NO_STORE)

    async def mobileconfig(self, request: Request) -> Response:
        ca, why = self._ca()
        if ca is None:
            return _no_ca_file(why)
        return Response(build_mobileconfig(ca.cert), media_type=MOBILECONFIG_MEDIA_TYPE, headers={
            **_NO_STORE, "Content-Disposition": 'attachment; filename="faultlab-ca.mobileconfig"'})

    async def pem(self, request: Request) -> Response:
        ca, why = self._ca()
        if ca is None:
            return _no_ca_file(why)
        return Response(ca.cert_pem, media_type=PEM_MEDIA_TYPE, headers={
            **_NO_STORE, "Content-Disposition": 'attachment; filename="faultlab-ca.pem"'})


def _no_ca_file(why: str) -> Response:
    return PlainTextResponse(_NO_CA_TEXT[why] + "\n", status_code=404, headers=_NO_STORE)


_NO_CA_TEXT = {
    "missing": "faultlab has no lab CA yet. On the machine that runs faultlab, run `faultlab ca init` "
               "(with the proxy's --confdir if it has one), then reload.",
    "broken": "faultlab's lab CA cannot be loaded. On the machine that runs faultlab, `faultlab ca export` "
              "says what is wrong; `faultlab ca init --force` replaces the CA.",
}


# -- the page ---------------------------------------------------------------------------------------
# One self-contained HTML document: no script, no external resources, readable on a phone in portrait.

_STYLE = """
body{font:17px/1.45 -apple-system,system-ui,sans-serif;margin:0 auto;max-width:40em;padding:1em;color:#111}
h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.15em;margin-top:1.6em}
.button{display:block;text-align:center;background:#0a63d6;color:#fff;text-decoration:none;
 padding:.9em;border-radius:.6em;font-weight:600;margin:1em 0}
.button.secondary{background:#e8eef8;color:#0a63d6}
.warn{background:#fff4d6;border-left:4px solid #e0a800;padding:.6em .8em;border-radius:.3em}
.path{font-weight:600}code,pre{font:13px/1.35 ui-monospace,Menlo,monospace}
pre{background:#f3f3f3;padding:.7em;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
li{margin:.45em 0}small{color:#555}
"""


def _doc(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _page_html(ca: LabCA) -> str:
    cn = html.escape(ca.common_name)
    fingerprint = ca.fingerprint.upper()
    fp_pairs = html.escape(" ".join(fingerprint[i:i + 2] for i in range(0, len(fingerprint), 2)))
    pem = html.escape(ca.cert_pem.decode("ascii"))
    profile = html.escape(PROFILE_DISPLAY_NAME)
    return _doc("faultlab lab CA", f"""
<h1>faultlab lab CA</h1>
<p>faultlab is a SIP fault-injection proxy used to test VoIP apps. For SIP over TLS it sits between this
phone and the PBX and shows the phone certificates signed by its own lab CA. The phone accepts them only
once it trusts that CA: install it here, <b>on test devices only</b>, and remove it after testing.</p>
<p><small>This CA: <b>{cn}</b><br>SHA-256: <code>{fp_pairs}</code></small></p>

<a class="button" href="{MOBILECONFIG_PATH}">Download the profile (iPhone, iPad)</a>

<h2>On iOS: install, then enable full trust</h2>
<ol>
<li>Open this page in <b>Safari</b>, tap <b>Download the profile</b> above and then <b>Allow</b>.
 iOS says &ldquo;Profile Downloaded&rdquo;.</li>
<li>Open <span class="path">Settings &rsaquo; General &rsaquo; VPN &amp; Device Management</span>, tap
 <b>{profile}</b> under &ldquo;Downloaded Profile&rdquo;, then <b>Install</b> (enter the passcode) and
 <b>Install</b> again. iOS shows it as <b>Not Signed</b>: expected, the profile is not signed.</li>
<li><b>Do not skip this step.</b> Open <span class="path">Settings &rsaquo; General &rsaquo; About &rsaquo;
 Certificate Trust Settings</span> and, under &ldquo;Enable full trust for root certificates&rdquo;, switch on
 <b>{cn}</b>, then <b>Continue</b>.</li>
</ol>
<p class="warn">Without <b>enable full trust</b> the profile is installed but iOS still rejects faultlab's
certificates: the app's TLS connection to the PBX fails, and faultlab's trace shows the TLS handshake
failing. It is the step people miss.</p>

<h2>Removing it after testing</h2>
<p><span class="path">Settings &rsaquo; General &rsaquo; VPN &amp; Device Management</span> &rsaquo;
<b>{profile}</b> &rsaquo; <b>Remove Profile</b>. That removes the certificate and its trust.</p>

<h2>Other platforms</h2>
<a class="button secondary" href="{PEM_PATH}">Download the certificate (PEM)</a>
<p>Android, macOS, Linux and browsers take the PEM as a CA certificate. The iOS Simulator:
<code>xcrun simctl keychain booted add-root-cert faultlab-ca.pem</code>.</p>
<pre>{pem}</pre>
""")


def _no_ca_html(why: str) -> str:
    if why == "broken":
        text = ("<p>faultlab has a lab CA, but it cannot be loaded. On the machine that runs faultlab, "
                "<code>faultlab ca export</code> says what is wrong, and <code>faultlab ca init --force</code> "
                "replaces the CA (devices that trusted the old one must then install the new one).</p>")
    else:
        text = ("<p>faultlab has no lab CA yet. It needs one only for SIP over TLS: over UDP and TCP the phone "
                "needs no certificate.</p><p>On the machine that runs faultlab, create it:</p>"
                "<pre>faultlab ca init</pre><p>(add <code>--confdir DIR</code> if the proxy runs with one; "
                "<code>faultlab proxy</code> with a <code>tls:</code> listener also creates it), "
                "then reload this page.</p>")
    return _doc("faultlab lab CA", f"<h1>faultlab lab CA</h1>\n{text}")
