"""What ships for deployment: the systemd unit's hardening, as systemd itself rates it, and the
alert rules, as promtool checks them, against the metrics and close reasons that exist."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from archiver.api.cloudflare import RequestStats
from archiver.archive import migrate, reasons
from archiver.archive.store import make_engine
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


def exported_metric_names() -> set[str]:
    """The names of every series a service exports once it has run a cycle."""
    metrics = Metrics(["a" * 32])
    metrics.record_interval("a" * 32, 30.0)
    metrics.record_listing("a" * 32, 1, True)
    metrics.record_listing("a" * 32, 1, True)  # a second one: the gap between them
    counts = {"closed:BrowserIdle": 1, "gone": 1}
    metrics.record_cycle(CycleResult("a" * 32, 1, "ok", True, counts, 0.1), RequestStats(requests=1, by_status={200: 1}))
    metrics.count_open("a" * 32, {"active": 3, "vanished": 1})  # the service counts them after the first cycle
    return set(re.findall(r"^([a-z_]+)[{ ]", metrics.exposition().decode(), re.M))


def test_the_alert_rules_name_metrics_and_close_reasons_that_exist() -> None:
    exported = exported_metric_names()
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    named = {name for rule in rules for name in re.findall(r"\b(archiver_[a-z_]+)", rule["expr"])}
    assert named and named <= exported, named - exported
    matched = [alternatives for rule in rules for alternatives in re.findall(r'reason=~?"([^"]+)"', rule["expr"])]
    reasons_named = {reason for alternatives in matched for reason in alternatives.split("|")}
    assert reasons_named and reasons_named <= {reason.name for reason in reasons.DOCUMENTED}
    assert reasons_named >= set(reasons.PLATFORM_NAMES) | {reasons.IDLE.name}


DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "archiver.json"


def test_the_dashboard_queries_metrics_that_exist_and_views_that_answer(postgres_url: str) -> None:
    """Every Prometheus query names exported series; every SQL query runs on a migrated
    PostgreSQL archive (Grafana's time filter stood in for by a true condition)."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    targets = [target for panel in panels for target in panel["targets"]]
    exprs = [t["expr"] for t in targets if "expr" in t]
    named = {name for expr in exprs for name in re.findall(r"\b(archiver_[a-z_]+)", expr)}
    assert named and named <= exported_metric_names(), named - exported_metric_names()
    statements = [re.sub(r"\$__timeFilter\([a-z_]+\)", "TRUE", t["rawSql"]) for t in targets if "rawSql" in t]
    assert statements
    engine = make_engine(postgres_url)
    migrate.upgrade(engine)
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(text(statement)).all()
    finally:
        engine.dispose()
