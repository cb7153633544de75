"""A headless Chromium for the page tests, driven by Selenium; the tests skip cleanly
when Selenium, Chromium or its driver is missing (see README: Development)."""
from __future__ import annotations

import shutil

import pytest

CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVER = ("chromedriver",)


def _which(names) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def headless_chromium():
    """A Selenium WebDriver on the system Chromium (never downloads a browser)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[test]')")
    browser, driver = _which(CHROMIUM), _which(DRIVER)
    if browser is None or driver is None:
        pytest.skip("no Chromium + chromedriver on PATH (Debian: apt-get install -y chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,2000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
