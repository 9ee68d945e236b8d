"""Suite-wide test hooks.

Integration tests (marker ``integration``) need real sockets and external programs such as Kamailio. On a
developer's machine they may skip when those programs are missing; under ``CI=true`` a skip would hide a broken
CI setup, so it is reported as a failure that carries the skip reason.
"""

from __future__ import annotations

import os

import pytest


def _ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    if (
        _ci()
        and report.skipped
        and not hasattr(report, "wasxfail")
        and any(item.get_closest_marker(m) is not None for m in ("integration", "netns", "browser"))
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"integration test skipped under CI=true, which counts as a failure: {reason}"
    return report


_EXTERNAL_DEVICE = "tests/integration/test_external_device.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The external-device tests run last: their lanes (real time, mostly waiting) run in the background while the
    rest of the suite runs (started in :func:`pytest_collection_finish`)."""
    items.sort(key=lambda item: item.nodeid.startswith(_EXTERNAL_DEVICE))


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.nodeid.startswith(_EXTERNAL_DEVICE) and "lanes" in getattr(item, "fixturenames", ())
           for item in session.items):
        from tests.integration.test_external_device import start_lanes_early

        start_lanes_early()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import sys

    module = sys.modules.get("tests.integration.test_external_device")
    if module is not None:
        module.stop_lanes(keep=exitstatus != 0)
