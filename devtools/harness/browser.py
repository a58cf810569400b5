"""Debian's chromium, driven through Debian's chromium-driver by Selenium, for the console
tests (headless; nothing is downloaded: both binaries come from apt, `make sysdeps`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, None when they can."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} missing (apt-get install {package}, or make sysdeps)"
    return None


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900, javascript: bool = True) -> Iterator[WebDriver]:
    """A headless chromium session, its console messages kept (`console_errors`). The
    console's certificate (the server's own X509-SVID) chains to the trust domain's CA, which
    no browser trusts: certificate errors are accepted, as an operator accepts them once (or
    trusts the bundle)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root, where chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.accept_insecure_certs = True
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, name: str) -> Path:
    """Save the page as build/screenshots/<name>.png (a test artifact, not committed)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def console_errors(driver: WebDriver) -> list[str]:
    """The browser console's warnings and errors since the last call (CSP violations are
    reported there)."""
    return [
        str(entry["message"])
        for entry in driver.get_log("browser")  # type: ignore[no-untyped-call]  # untyped in selenium
        if entry.get("level") in ("WARNING", "SEVERE")
    ]
