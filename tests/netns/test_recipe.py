"""docs/ci-with-namespaces.md's whole recipe, run verbatim: the shell block under "The whole recipe".

Two baresip phones call each other through faultlab (interception, proxy --transparent in the gateway)
across the lossy-wifi air, with faultlab's embedded PBX in the PBX namespace; then `net down` (the
script's EXIT trap) must leave nothing: no namespace, link, nftables table, /run/faultlab state or
process of the lab. The docs and this test cannot drift apart: the test reads the block from the docs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from faultlab.labnet import lab_down
from faultlab.labnet.impair import STATE_ROOT
from tests.netns import netns_skip_reason

pytestmark = pytest.mark.netns

DOC = Path(__file__).resolve().parents[2] / "docs" / "ci-with-namespaces.md"
HEADING = "## The whole recipe"


def recipe() -> str:
    text = DOC.read_text()
    assert text.count(HEADING) == 1, f"{DOC} must have one section '{HEADING}...'"
    section = text.split(HEADING, 1)[1]
    m = re.search(r"^```sh\n(.*?)^```$", section, re.S | re.M)
    assert m, f"no ```sh block under '{HEADING}' in {DOC}"
    return m.group(1)


def leftovers(lab: str, work: Path) -> list[str]:
    found = []
    prefix = f"fl-{lab}-"
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    found += [f"namespace {line.split()[0]}" for line in ns.splitlines() if line.startswith(prefix)]
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    found += [f"link {line.split()[0]}" for line in links.splitlines() if line.startswith(prefix)]
    if shutil.which("nft"):
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        found += [f"nft {line}" for line in tables.splitlines() if line.endswith(f" faultlab_{lab}")]
    if (STATE_ROOT / lab).exists():
        found.append(f"state {STATE_ROOT / lab}")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(work).encode() in cmdline or f"--lab {lab} ".encode() in cmdline + b" ":
            found.append(f"process {pid}: {cmdline.decode(errors='replace')[:120]}")
    return found


def test_the_documented_recipe_connects_a_call_and_down_leaves_nothing(tmp_path: Path) -> None:
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    for program in ("baresip", "nft"):
        if shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            pytest.skip(f"{program} is not installed (apt-get install {program})")
    lab = f"rc{os.getpid() % 10**6}"
    work = tmp_path / "work"
    script = tmp_path / "recipe.sh"
    script.write_text(recipe())
    env = {**os.environ, "LAB": lab, "NET": "10.79", "WORK": str(work),
           # the faultlab under test, as `faultlab` (what a user's install puts on PATH)
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}:/usr/sbin:/sbin"}
    try:
        done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=240,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "call connected" in done.stdout, done.stdout
        # the air was impaired and faultlab, in the gateway, relayed the call's INVITE
        assert "air fl-" in done.stdout and "profile lossy-wifi" in done.stdout, done.stdout
        assert re.search(r"to-pbx \d+ packets in, [1-9]\d* lost", done.stdout), done.stdout
        events = [json.loads(line) for line in (work / "trace.jsonl").read_text().splitlines() if line.strip()]
        relayed = {(e["kind"], e["direction"]) for e in events if e.get("method") == "INVITE"}
        assert {("received", "to-pbx"), ("sent", "to-pbx")} <= relayed, relayed
        assert f"removed namespace fl-{lab}-air" in done.stdout, done.stdout
        assert leftovers(lab, work) == []
    finally:
        lab_down(lab)
