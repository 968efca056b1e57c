"""Headless Chromium for the tests that open a page in a real browser.

Where no Chromium is installed those tests skip, saying so, unless ARCHIVER_TEST_REQUIRE_BROWSER=1
(as CI sets it), which makes a missing browser a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of a Chromium to drive headless."""
    found = next((path for path in map(shutil.which, NAMES) if path), None)
    if found is None:
        if os.environ.get("ARCHIVER_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail("ARCHIVER_TEST_REQUIRE_BROWSER=1, but no chromium is on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium); set ARCHIVER_TEST_REQUIRE_BROWSER=1 to fail instead")
    return found


def dump_dom(browser: str, page: Path, profile: Path) -> tuple[str, str]:
    """The page's DOM once its scripts have run, and what the browser logged (its console included)."""
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr
