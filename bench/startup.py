"""CLI start-up as a user meets it: faultlab installed from a wheel into a fresh virtualenv.

Builds a wheel of this checkout and of a baseline revision (default: the last one before subcommands were loaded
lazily), installs each into its own fresh virtualenv (no system site-packages; dependencies from the package
index, as `pip install` would), then times, alternating the two installs run by run:

- `faultlab --help` and `faultlab version` (whole process, median of --runs);
- `faultlab proxy` from exec to its "listening on" line (UDP on 127.0.0.1, no traffic; stopped with SIGTERM);
- `python -c pass` in the same virtualenv: the interpreter's own floor.

    python3 bench/startup.py [--baseline REV] [--runs 15]

Targets (docs/PERFORMANCE.md): --help and version 0.3 s or less (median), the proxy listening within 0.6 s.
The virtualenvs are kept in bench/results/startup/ and reused while the revision is the same.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "results" / "startup"
DEFAULT_BASELINE = "17d8103"  # eager imports of every subcommand (before the lazy root group)


def _run(*cmd: str | Path, cwd: Path | None = None) -> str:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, check=True, capture_output=True, text=True).stdout


def install(rev: str) -> Path:
    """A fresh virtualenv with faultlab at ``rev`` (``WORKTREE`` for the working tree) installed from a wheel."""
    sha = "worktree" if rev == "WORKTREE" else _run("git", "rev-parse", "--short", rev, cwd=ROOT).strip()
    venv = WORK / sha
    if rev == "WORKTREE" and venv.exists():
        shutil.rmtree(venv)  # the working tree changes: always rebuild it
    if (venv / "bin" / "faultlab").exists():
        return venv
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        if rev == "WORKTREE":
            shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "bench", "*.egg-info",
                                                                      "build", "__pycache__"))
        else:
            src.mkdir()
            archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        print(f"building and installing {rev} ({sha}) into {venv} ...", file=sys.stderr)
        _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", Path(tmp) / "dist", src)
        [wheel] = (Path(tmp) / "dist").glob("faultlab-*.whl")
        _run(sys.executable, "-m", "venv", venv)
        _run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel)
    return venv


def time_command(cmd: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd="/")
    return time.perf_counter() - began


def time_proxy(exe: Path) -> float:
    began = time.perf_counter()
    proc = subprocess.Popen([str(exe), "proxy", "-q", "-l", "udp:127.0.0.1:0", "-u", "udp:127.0.0.1:9"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd="/")
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "listening on" in line:
                return time.perf_counter() - began
        raise RuntimeError(f"faultlab proxy exited with {proc.wait()} before listening")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help=f"revision to compare with ({DEFAULT_BASELINE})")
    parser.add_argument("--runs", type=int, default=15, help="runs per figure and install (median shown)")
    args = parser.parse_args()
    installs = {"this tree": install("WORKTREE"), f"baseline {args.baseline}": install(args.baseline)}
    figures = {
        "python -c pass": lambda v: time_command([str(v / "bin" / "python"), "-c", "pass"]),
        "faultlab --help": lambda v: time_command([str(v / "bin" / "faultlab"), "--help"]),
        "faultlab version": lambda v: time_command([str(v / "bin" / "faultlab"), "version"]),
        "faultlab proxy -> listening": lambda v: time_proxy(v / "bin" / "faultlab"),
    }
    results: dict[tuple[str, str], list[float]] = {}
    for name, measure in figures.items():
        for venv in installs.values():
            measure(venv)  # warm-up: the page cache, .pyc files
        for _ in range(args.runs):
            for label, venv in installs.items():
                results.setdefault((name, label), []).append(measure(venv))
    labels = list(installs)
    print(f"median of {args.runs} runs, seconds (min-max)")
    print(f"{'':<30}" + "".join(f"{label:>26}" for label in labels))
    for name in figures:
        cells = []
        for label in labels:
            xs = results[(name, label)]
            cells.append(f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})")
        print(f"{name:<30}" + "".join(f"{c:>26}" for c in cells))


if __name__ == "__main__":
    main()
