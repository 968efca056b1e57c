"""What ships for deployment: the systemd unit's hardening, as systemd itself rates it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "deploy" / "archiver.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_systemd_unit_is_rated_at_most_2() -> None:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)],
                          capture_output=True, text=True, timeout=60, check=False)
    rating = re.search(r"Overall exposure level for archiver\.service: ([\d.]+)", done.stdout)
    assert rating is not None, done.stdout + done.stderr
    assert float(rating[1]) <= 2.0, done.stdout


def test_the_systemd_unit_needs_no_user_created_by_hand() -> None:
    settings = dict(line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line and not line.startswith("#"))
    assert settings["DynamicUser"] == "yes" and settings["StateDirectory"] == "archiver"
    assert "User" not in settings and "Group" not in settings
