"""`faultlab trace pcap` output as Wireshark reads it: tshark (Wireshark's command-line twin) decodes every packet of
a lab run's pcap as SIP, over UDP and over TLS (written as TCP carrying the decrypted SIP), with the methods and
statuses of the trace. Marker integration: needs tshark (Debian `tshark`); under CI=true a skip is a failure."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from faultlab.cli import app
from faultlab.trace import read_jsonl

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("transport", ["udp", "tls"])
def test_tshark_decodes_every_packet_as_sip(transport, tmp_path):
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("needs tshark (apt-get install tshark)")
    runner = CliRunner()
    run = runner.invoke(app, ["lab", "run", "-s", "S05", "-t", transport, "--seed", "1", "-q",
                              "--trace-dir", str(tmp_path)])
    assert run.exit_code == 0, run.output
    trace = tmp_path / f"S05-cancel-after-invite--none--{transport}.jsonl"
    pcap = tmp_path / "s05.pcap"
    out = runner.invoke(app, ["trace", "pcap", str(trace), "-o", str(pcap)])
    assert out.exit_code == 0, out.output
    fields = subprocess.run(
        [tshark, "-n", "-r", str(pcap), "-T", "fields", "-E", "separator=|", "-e", "frame.protocols",
         "-e", "sip.Method", "-e", "sip.Status-Code", "-e", "sip.CSeq.method"],
        capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    assert fields, "tshark read no packets"
    assert all(":sip" in line.split("|")[0] for line in fields), fields
    carried = [line.split("|")[0].split(":")[3] for line in fields]
    if transport == "udp":
        assert set(carried) == {"udp"}
    else:  # the device's hops over TCP (TLS written decrypted); the caller reaches the PBX over UDP
        assert carried.count("tcp") >= 10 and set(carried) == {"tcp", "udp"}
    methods = [line.split("|")[1] for line in fields if line.split("|")[1]]
    for method in ("REGISTER", "INVITE", "CANCEL"):
        assert method in methods
    statuses = {line.split("|")[2] for line in fields if line.split("|")[2]}
    assert {"200", "487"} <= statuses
    # as many SIP packets as the trace has relayed or answered messages on either hop
    relayed = [e for e in read_jsonl(trace) if e.source == "proxy" and e.kind in ("received", "sent", "responded")
               and e.raw is not None]
    assert len(fields) >= len(relayed)
