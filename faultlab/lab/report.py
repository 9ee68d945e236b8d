"""Reports of a lab run: JSON, JUnit XML, and the verdict rows the terminal table shows.

* :func:`rows` -- one row per case and check: scenario, profile, transport, check, pass/fail, message, key times;
* :func:`to_json` -- the whole run (settings, every case with its checks, evidence and times, trace files);
* :func:`to_junit` -- JUnit XML as CI systems read it (``<testsuites>`` > one ``<testsuite>`` per scenario >
  one ``<testcase>`` per profile x transport x check, ``<failure message=...>`` with the evidence as text,
  ``time`` in wall-clock seconds).
"""

from __future__ import annotations

import platform
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from faultlab import __version__
from faultlab.lab.runner import Case

__all__ = ["rows", "to_json", "to_junit"]


def rows(cases: Sequence[Case]) -> list[dict[str, Any]]:
    out = []
    for case in cases:
        times = case.times()
        for check in case.checks:
            out.append({"scenario": case.scenario.id, "slug": case.scenario.slug, "profile": case.profile_name,
                        "transport": case.transport, "check": check.check, "passed": check.passed,
                        "message": check.message, "times": {k: round(v, 3) for k, v in times.items()}})
    return out


def to_json(cases: Sequence[Case], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "faultlab": __version__,
        "settings": settings,
        "passed": all(c.passed for c in cases),
        "counts": {"cases": len(cases), "failed": sum(not c.passed for c in cases),
                   "checks": sum(len(c.checks) for c in cases),
                   "failed_checks": sum(not r.passed for c in cases for r in c.checks)},
        "cases": [{
            "scenario": c.scenario.id, "slug": c.scenario.slug, "title": c.scenario.title,
            "profile": c.profile_name, "transport": c.transport, "passed": c.passed,
            "times": {k: round(v, 6) for k, v in c.times().items()},
            "runs": [{"cancel_pushes": r.cancel_pushes, "seed": r.seed, "behaviour": r.behaviour,
                      "virtual_time": r.virtual, "call_id": r.call_id, "error": r.error,
                      "lab_seconds": round(r.duration, 6), "wall_seconds": round(r.wall, 6),
                      "trace": r.trace_path} for r in c.runs],
            "checks": [r.to_json() for r in c.checks],
        } for c in cases],
    }


def to_junit(cases: Sequence[Case], *, name: str = "faultlab lab run") -> bytes:
    suites = ET.Element("testsuites", name=name)
    by_scenario: dict[str, list[Case]] = {}
    for case in cases:
        by_scenario.setdefault(f"{case.scenario.id} {case.scenario.slug}", []).append(case)
    total = failures = 0
    total_time = 0.0
    for suite_name, group in by_scenario.items():
        checks = [(c, r) for c in group for r in c.checks]
        failed = sum(not r.passed for _, r in checks)
        wall = sum(run.wall for c in group for run in c.runs)
        suite = ET.SubElement(suites, "testsuite", name=suite_name, tests=str(len(checks)), failures=str(failed),
                              errors="0", skipped="0", time=f"{wall:.3f}", hostname=platform.node())
        for case, result in checks:
            per = sum(run.wall for run in case.runs) / max(1, len(case.checks))
            tc = ET.SubElement(suite, "testcase", classname=f"faultlab.{case.scenario.id}.{case.profile_name}",
                               name=f"{case.transport}: {result.check}", time=f"{per:.3f}")
            if not result.passed:
                failure = ET.SubElement(tc, "failure", message=result.message, type=result.check)
                failure.text = "\n".join(result.evidence)
            else:
                out = ET.SubElement(tc, "system-out")
                out.text = result.message
        total += len(checks)
        failures += failed
        total_time += wall
    suites.set("tests", str(total))
    suites.set("failures", str(failures))
    suites.set("errors", "0")
    suites.set("time", f"{total_time:.3f}")
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)
