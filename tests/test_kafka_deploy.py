"""What deploy/ ships for a Kafka consumer group member: the member config passes the daemon's
own validation with its secret from the environment, and its unit is the MQTT unit with only
the ordering, the description and the stop timeout changed, and `systemd-analyze verify`
accepts it."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest
import yaml
from test_deploy_systemd import REPO_BINARY, verify  # noqa: F401  (the same checks as the MQTT unit)

from daemon.live.config import ENV_INFLUXDB_TOKEN, ENV_KAFKA_PASSWORD, build, validate

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MEMBER = DEPLOY / "kafka" / "member.yaml"
UNIT = DEPLOY / "systemd" / "anomalyd-kafka.service"
MQTT_UNIT = DEPLOY / "systemd" / "anomalyd.service"


def directives(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_the_member_config_validates_and_takes_its_secrets_from_the_environment():
    raw = yaml.safe_load(MEMBER.read_text())
    assert validate(raw) == []
    config = build(raw, environ={ENV_KAFKA_PASSWORD: "from-env", ENV_INFLUXDB_TOKEN: "from-env"})
    assert config.source == "kafka" and config.kafka.password == "from-env" and config.influxdb.token == "from-env"
    assert config.kafka.group_instance_id, "static membership: a restart keeps its partitions"
    assert config.model.path == "/var/lib/anomalyd/models/current"
    writable = [line.split("=", 1)[1] for line in directives(UNIT) if line.startswith("ReadWritePaths=")]
    assert writable == [config.influxdb.spool_dir]


def test_the_member_unit_differs_from_the_mqtt_unit_only_in_ordering_description_and_stop_timeout():
    changed = [line[1:] for line in difflib.unified_diff(directives(MQTT_UNIT), directives(UNIT), lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert sorted(key.split("=")[0] for key in changed) == sorted(["Description", "After", "TimeoutStopSec"] * 2)


def test_systemd_analyze_verify_accepts_the_member_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found (Debian package systemd)")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/anomalyd/.venv/bin/anomalyd", str(REPO_BINARY)))
    assert verify(analyze, tmp_path, UNIT.name) == []
