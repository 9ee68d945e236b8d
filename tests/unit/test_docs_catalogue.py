"""docs/integrating-your-app.md's catalogue table is the catalogue's: regenerate it with
``python -m tests.unit.test_docs_catalogue`` after changing a scenario file, and paste it between the markers."""

from __future__ import annotations

from pathlib import Path

from faultlab.lab.scenario import Scenario, list_scenarios

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrating-your-app.md"
BEGIN, END = "<!-- catalogue:begin -->", "<!-- catalogue:end -->"


def _external(s: Scenario) -> str:
    """Whether ``lab run --device external`` plays it (faultlab/lab/external.py's skips)."""
    if s.push_refuse is not None or s.pbx_payload_size is not None:
        return "skipped (judges the PBX)"
    if s.media:
        return "skipped (RTP to 127.0.0.1)"
    if s.move_at is not None:
        return "skipped (address change)"
    return "2 calls" if s.cancel_push_check else "1 call"


def _bounds(s: Scenario) -> str:
    return "; ".join(f"{b.after} + {b.within:g} s" + (f" ({b.deadline})" if b.deadline else "") for b in s.by) or "-"


def table() -> str:
    lines = ["| id | title | transports | expected end | deadline (end by) | checks | real device |",
             "|---|---|---|---|---|---|---|"]
    for s in list_scenarios():
        checks = ",".join(["1"] + (["2"] if s.early_answer else []) + (["3"] if s.cancel_push_check else []))
        lines.append(f"| {s.id} | {s.title} | {', '.join(s.transports)} | {' or '.join(s.end) or 'none'} | "
                     f"{_bounds(s)} | {checks} | {_external(s)} |")
    return "\n".join(lines)


def test_the_documented_catalogue_is_the_catalogue():
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"{DOC.name}: the catalogue markers are missing"
    documented = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert documented == table(), "regenerate the table: python -m tests.unit.test_docs_catalogue"


if __name__ == "__main__":
    print(table())
