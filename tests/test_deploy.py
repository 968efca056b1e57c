"""What ships for deployment: the systemd unit's hardening, as systemd itself rates it, and the
alert rules, as promtool checks them, against the metrics and close reasons that exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from archiver.api.cloudflare import RequestStats
from archiver.archive import reasons
from archiver.archive.sync import CycleResult
from archiver.service.metrics import Metrics

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


ALERTS = Path(__file__).parent.parent / "deploy" / "prometheus" / "alerts.yml"


def test_the_alert_rules_pass_promtool() -> None:
    if shutil.which("promtool") is None:
        if os.environ.get("ARCHIVER_TEST_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is not installed (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus); the alert rules were not checked")
    done = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alert_rules_name_metrics_and_close_reasons_that_exist() -> None:
    metrics = Metrics(["a" * 32])
    metrics.record_interval("a" * 32, 30.0)
    metrics.record_listing("a" * 32, 1, True)
    metrics.record_listing("a" * 32, 1, True)  # a second one: the gap between them
    metrics.record_cycle(CycleResult("a" * 32, 1, "ok", True, {"closed:BrowserIdle": 1, "gone": 1}, 0.1), RequestStats())
    exported = set(re.findall(r"^([a-z_]+)[{ ]", metrics.exposition().decode(), re.M))
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    named = {name for rule in rules for name in re.findall(r"\b(archiver_[a-z_]+)", rule["expr"])}
    assert named and named <= exported, named - exported
    matched = [alternatives for rule in rules for alternatives in re.findall(r'reason=~?"([^"]+)"', rule["expr"])]
    reasons_named = {reason for alternatives in matched for reason in alternatives.split("|")}
    assert reasons_named and reasons_named <= {reason.name for reason in reasons.DOCUMENTED}
    assert reasons_named >= set(reasons.PLATFORM_NAMES) | {reasons.IDLE.name}
