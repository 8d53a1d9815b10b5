"""Prometheus alert rules in deploy/prometheus: `promtool check rules` accepts them, the unit tests
in anomalyd.rules.test.yml pass (`promtool test rules`), every alert has a unit test in which it
fires, and the example scrape config is valid (`promtool check config`). Metric names are checked
against the daemon's registry in test_deploy_queries.py, and against a real scrape in
test_deploy_service.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from servers import binary_or_skip

PROMETHEUS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULES = PROMETHEUS / "anomalyd.rules.yml"
RULE_TESTS = PROMETHEUS / "anomalyd.rules.test.yml"
SCRAPE_CONFIG = PROMETHEUS / "prometheus.yml"
SEVERITIES = {"critical", "warning", "info"}


@pytest.fixture(scope="module")
def promtool() -> str:
    return binary_or_skip("/usr/bin/promtool", "prometheus")


def run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_check_rules_accepts_the_rules(promtool):
    result = run(promtool, "check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass(promtool):
    result = run(promtool, "test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_config_accepts_the_scrape_config_and_its_rule_files(promtool):
    result = run(promtool, "check", "config", SCRAPE_CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_scrape_job_is_the_job_the_rules_select():
    jobs = {job["job_name"] for job in yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]}
    selected = set(re.findall(r'job="([^"]+)"', RULES.read_text()))
    assert selected and selected <= jobs, f"rules select {selected}, scrape config defines {jobs}"


def test_every_alert_has_a_severity_a_summary_and_a_description():
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in alerts():
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_alert_fires_in_some_unit_test_and_stays_quiet_in_another():
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fires, quiet = set(), set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fires == set(), f"alerts never shown to fire: {sorted(names - fires)}"
    assert names - quiet == set(), f"alerts never shown to stay quiet: {sorted(names - quiet)}"


def test_the_issue_alerts_exist():
    """Device in alert, daemon down, broker disconnected, sink spooling / dropping, invalid message
    rate and queue drops: what the operators asked to be paged for."""
    exprs = {rule["alert"]: rule["expr"] for rule in alerts()}
    wanted = {"anomalyd_alerts_active", 'up{job="anomalyd"}', "anomalyd_mqtt_connected", "anomalyd_sink_spool_bytes",
              'anomalyd_sink_points_total{result="dropped"}', 'anomalyd_messages_total{result!="ok"}',
              'anomalyd_windows_dropped_total{reason="queue_full"}'}
    text = "\n".join(exprs.values())
    assert not {w for w in wanted if w not in text}
