"""Headless Chromium for the browser tests (skipped, which counts as failed under CI=true, when it is missing)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def open_chrome(window: str, mobile: dict | None = None):
    """A headless Chromium driver with a ``window`` ("W,H") and, given ``mobile``, that device's emulated metrics."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists() and not shutil.which(path.name):
            pytest.skip(f"{path} is missing: apt-get install {package}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={window}", "--no-first-run", "--no-default-browser-check"):
        options.add_argument(arg)
    if mobile is not None:
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": mobile})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
