"""A sweep's report.html in headless Chromium (Debian ``chromium`` and ``chromium-driver``, through Selenium): opened
from disk with no server and no network, it shows the answer and every chart decodes (naturalWidth > 0)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from faultlab.cli import app
from faultlab.lab.sweep.plot import headline
from tests.browser.chrome import open_chrome

# skips (no Chromium) count as failures under CI=true (tests/conftest.py)
pytestmark = [pytest.mark.browser, pytest.mark.integration]

WAIT = 20.0  # seconds for the page to load its images

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser():
    driver = open_chrome("1200,900")
    try:
        yield driver
    finally:
        driver.quit()


def test_the_report_opened_from_disk_shows_the_answer_and_its_charts(tmp_path, browser):
    out = tmp_path / "sweep"
    result = CliRunner().invoke(app, ["sweep", "-s", "S02", "-P", "device.invite_wait=1,2,4", "-P",
                                      "rule.delay-invite-3s.delay=1,3", "--runs", "2", "--jobs", "1", "--out",
                                      str(out), "-q"])
    assert result.exit_code == 0, result.output
    browser.get((out / "report.html").as_uri())
    answer = browser.find_element(By.ID, "answer").find_elements(By.TAG_NAME, "li")
    lines = json.loads((out / "results.json").read_text())["recommendation"]
    assert [li.text for li in answer] == headline(lines) and len(answer) == 2  # one sentence per delay
    assert "delay = 3 s" in answer[1].text and "4 s" in answer[1].text  # the 3 s delay needs the 4 s deadline
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == 3  # pass rate, heatmap (deadline x delay), cost of waiting
    WebDriverWait(browser, WAIT).until(
        lambda d: d.execute_script("return [...document.images].every(i => i.complete)"))
    widths = browser.execute_script("return [...document.images].map(i => i.naturalWidth)")
    assert all(w > 300 for w in widths), widths
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(r => r.name)")
    assert [r for r in resources if not r.startswith("data:")] == []  # nothing fetched: self-contained
