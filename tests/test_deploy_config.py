"""The example configs, the sharding helper and the README of deploy/.

- deploy/config/*.yaml pass the daemon's own validation and agree with the units (model symlink,
  spool = the unit's only writable path, secrets left to the environment file);
- the shard configs differ where instances must (client id, metrics port, spool, topic) and
  their topic filters split the devices exactly as deploy/sharding/shard.py assigns them;
- the secrets file names exactly the variables the daemon reads;
- the README's `anomalyd` commands exist, and every deploy/ file it mentions exists.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

from daemon.cli import COMMANDS
from daemon.live.config import ENV_INFLUXDB_TOKEN, ENV_MQTT_PASSWORD, build, validate

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CONFIGS = sorted((DEPLOY / "config").glob("*.yaml"))
SHARDS = sorted((DEPLOY / "config").glob("shard*.yaml"))
README = (DEPLOY / "README.md").read_text()


def load_shard_module():
    spec = importlib.util.spec_from_file_location("deploy_shard", DEPLOY / "sharding" / "shard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shard = load_shard_module()


def unit_values(name: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in (DEPLOY / "systemd" / name).read_text().splitlines()
            if line.startswith(key + "=")]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_config_passes_the_daemons_validation(path):
    raw = yaml.safe_load(path.read_text())
    assert validate(raw) == [], f"{path.name}: run anomalyd check-config on it"
    config = build(raw, environ={ENV_MQTT_PASSWORD: "from-env", ENV_INFLUXDB_TOKEN: "from-env"})
    assert config.mqtt.password == "from-env" and config.influxdb.token == "from-env"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_config_fits_the_unit_and_keeps_secrets_out(path):
    raw = yaml.safe_load(path.read_text())
    config = build(raw, environ={})
    assert config.model.path == "/var/lib/anomalyd/models/current"
    assert config.mqtt.persistent_session and config.mqtt.qos == 1 and config.mqtt.username
    assert config.mqtt.password is None and config.influxdb.token is None, "secrets belong in anomalyd.env"
    assert config.influxdb.enabled and config.local_store.path is None
    unit = "anomalyd@.service" if path in SHARDS else "anomalyd.service"
    writable = unit_values(unit, "ReadWritePaths")
    assert [w.replace("%i", path.stem) for w in writable] == [config.influxdb.spool_dir]


def test_the_shards_differ_where_instances_must():
    configs = [build(yaml.safe_load(p.read_text()), environ={}) for p in SHARDS]
    assert len(configs) >= 2
    for attribute in ("mqtt.client_id", "mqtt.topic", "mqtt.username", "metrics.port", "influxdb.spool_dir"):
        section, name = attribute.split(".")
        values = [getattr(getattr(c, section), name) for c in configs]
        assert len(set(values)) == len(values), f"{attribute} must differ between instances: {values}"
    single = build(yaml.safe_load((DEPLOY / "config" / "config.yaml").read_text()), environ={})
    assert single.metrics.port not in {c.metrics.port for c in configs}


def test_every_device_lands_in_exactly_its_own_shard():
    configs = [build(yaml.safe_load(p.read_text()), environ={}) for p in SHARDS]
    devices = [f"pump-{i:04d}" for i in range(400)] + ["ünïcode-dev", "a", "line1.motor_7"]
    for device in devices:
        topic = shard.topic_of(device, len(configs))
        matching = [i for i, c in enumerate(configs) if mqtt.topic_matches_sub(c.mqtt.topic, topic)]
        assert matching == [shard.shard_of(device, len(configs))], (device, topic, matching)
        level = configs[matching[0]].mqtt.device_level
        assert topic.split("/")[level] == device


def test_the_shard_function_is_stable_and_spreads_devices():
    # 0xCBF43926 is the published CRC-32/IEEE check value of "123456789": every correct
    # implementation in any language agrees, so publishers written in C or Go pick the same shard
    assert shard.shard_of("123456789", 1 << 32) == 0xCBF43926
    counts = Counter(shard.shard_of(f"device-{i}", 4) for i in range(4000))
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 800, counts


def test_the_secrets_file_sets_exactly_the_variables_the_daemon_reads():
    lines = [line for line in (DEPLOY / "systemd" / "anomalyd.env.example").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert sorted(line.split("=", 1)[0] for line in lines) == sorted([ENV_MQTT_PASSWORD, ENV_INFLUXDB_TOKEN])


def test_the_readme_uses_only_existing_anomalyd_commands():
    used = set(re.findall(r"bin/anomalyd (\S+)", README)) | set(re.findall(r"`anomalyd ([a-z-]+)", README))
    used.discard("--version")
    assert used and not used - set(COMMANDS), f"not anomalyd commands: {sorted(used - set(COMMANDS))}"


def test_every_deploy_file_the_readme_mentions_exists():
    mentioned = set(re.findall(r"deploy/([\w./@-]+\w)", README))
    mentioned |= {m for m in re.findall(r"`((?:systemd|config|sharding|mosquitto|prometheus|grafana)/[\w./@-]+)`",
                                        README)}
    assert mentioned
    missing = [m for m in sorted(mentioned) if not (DEPLOY / m).exists()]
    assert not missing, f"README mentions missing files: {missing}"
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.name != "README.md":
            assert path.name in README, f"{path.relative_to(DEPLOY)} is not explained in deploy/README.md"


def test_the_readme_documents_the_grafana_environment():
    text = (DEPLOY / "grafana" / "provisioning" / "datasources" / "anomalyd.yaml").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for variable in set(re.findall(r"\$\{(\w+)\}", text)):
        assert variable in README, f"{variable} (Grafana data source) is not documented"


def test_the_readme_switches_the_model_link_atomically():
    commands = [shlex.split(line) for line in README.splitlines() if "current.new" in line and "mv -T" in line]
    assert commands, "the upgrade and rollback use ln -sfn ... current.new && mv -T current.new current"
