#!/usr/bin/env python3
"""Print the gateway VM's interception ruleset (for ``nft -f``), built by faultlab's own code.

On the gateway VM faultlab intercepts in the main network namespace, not in a lab namespace, so
``faultlab net intercept`` (which needs a lab made by ``faultlab net up``) does not apply. This script
calls the same generator, :func:`faultlab.netns.intercept.ruleset`, with the same validation
(:meth:`InterceptSpec.make`), and changes one thing: every rule that catches traffic *to* the PBX
also requires ``iifname "<Wi-Fi interface>"``, so only what the phones send is handed to faultlab.
The rules that catch the PBX's answers (``--spoof-source``) are left as they are: those answers
arrive on the uplink.

faultlab/netns/intercept.py is loaded by path, so this runs with any Python 3.11 (no pyroute2 and no
installed faultlab needed): ``deploy/provision.sh --dry-run`` uses it on a laptop too.

Exit status 0 with the ruleset on stdout; 2 with one line on stderr when a value is wrong.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Linux interface names: at most 15 bytes (IFNAMSIZ - 1), no '/', no whitespace, not "." or "..".
# Quotes are refused too, since the name is written into the nft script between quotes.
_IFNAME = re.compile(r'^(?!\.{1,2}$)[^\s/"\'\\]{1,15}$')


def load_intercept():
    path = REPO / "faultlab" / "netns" / "intercept.py"
    spec = importlib.util.spec_from_file_location("faultlab_intercept_by_path", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"intercept_rules: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def restrict_to_interface(text: str, pbx: str, ifname: str) -> str:
    """Add ``iifname "IF"`` in front of each rule matching ``ip daddr PBX`` (traffic to the PBX)."""
    out = []
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(f"ip daddr {pbx} "):
            line = line[: len(line) - len(stripped)] + f'iifname "{ifname}" ' + stripped
        out.append(line)
    return "\n".join(out) + "\n"


def _ports(value: str, what: str) -> list[int]:
    try:
        return [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        raise SystemExit(f"intercept_rules: {what} {value!r}: comma-separated port numbers, e.g. 5060,5061") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pbx", required=True, help="the PBX's IPv4 address")
    parser.add_argument("--ports", default="5060,5061", help="SIP ports to intercept, comma-separated")
    parser.add_argument("--tls-ports", default="5061", help="which of them carry TLS")
    parser.add_argument("--udp-port", type=int, help="where faultlab proxy --transparent listens for UDP")
    parser.add_argument("--tcp-port", type=int, help="... for TCP")
    parser.add_argument("--tls-port", type=int, help="... for TLS")
    parser.add_argument("--iface", required=True, help="the Wi-Fi-side interface")
    parser.add_argument("--table", default="faultlab_gw", help="nftables table name (inet family)")
    parser.add_argument("--spoof-source", action="store_true", help="also mark the PBX's answers")
    parser.add_argument("--print-policy-route", action="store_true",
                        help="print the fwmark and route table the UDP rules need, as 'MARK TABLE', and exit")
    args = parser.parse_args(argv)

    intercept = load_intercept()
    if args.print_policy_route:
        print(intercept.DEFAULT_MARK, intercept.DEFAULT_ROUTE_TABLE)
        return 0
    if not _IFNAME.match(args.iface):
        print(f"intercept_rules: interface name {args.iface!r} is not a Linux interface name "
              "(1-15 characters, no spaces, '/' or quotes)", file=sys.stderr)
        return 2
    try:
        spec = intercept.InterceptSpec.make(
            pbx=args.pbx, ports=_ports(args.ports, "--ports"), tls_ports=_ports(args.tls_ports, "--tls-ports"),
            proxy_udp_port=args.udp_port, proxy_tcp_port=args.tcp_port, proxy_tls_port=args.tls_port,
            table=args.table, spoof_source=args.spoof_source)
    except intercept.InterceptError as exc:
        print(f"intercept_rules: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(restrict_to_interface(intercept.ruleset(spec), str(spec.pbx), args.iface))
    return 0


if __name__ == "__main__":
    sys.exit(main())
