import dataclasses

import pytest
import yaml

from daemon.core.errors import ConfigError
from daemon.live.config import (
    Config,
    build,
    describe,
    example_yaml,
    load_config,
    validate,
)

NO_ENV: dict[str, str] = {}


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_empty_file_gives_the_documented_defaults(tmp_path):
    config = load_config(write(tmp_path, ""), NO_ENV)
    assert config == Config()
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.topic, config.mqtt.qos) == ("127.0.0.1", 1883,
                                                                                        "sensors/+/data", 1)
    assert config.mqtt.persistent_session is True and config.mqtt.client_id == "anomalyd"
    assert (config.model.path, config.model.runtime) == ("models/demo", "torch")
    assert config.stream.stride is None and config.stream.sample_period_seconds is None
    assert (config.batching.max_batch, config.batching.max_wait_ms, config.batching.queue_size) == (64, 50, 10000)
    assert (config.alerting.enter_after, config.alerting.leave_after, config.alerting.threshold) == (None, None, None)
    assert config.influxdb.enabled is False and config.influxdb.spool_max_bytes == 100_000_000
    assert (config.metrics.address, config.metrics.port) == ("127.0.0.1", 9108)
    assert (config.limits.max_devices, config.limits.max_payload_bytes) == (10000, 65536)


def test_given_values_override_defaults_section_by_section(tmp_path):
    config = load_config(write(tmp_path, """
mqtt: {host: broker.local, port: 8883, qos: 0}
stream: {stride: 10, sample_period_seconds: 0.5}
alerting: {threshold: 0.25}
model: {runtime: ONNX}
logging: {level: debug}
"""), NO_ENV)
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.qos, config.mqtt.keepalive) == ("broker.local", 8883,
                                                                                            0, 30)
    assert (config.stream.stride, config.stream.sample_period_seconds) == (10, 0.5)
    assert config.alerting.threshold == 0.25
    assert config.model.runtime == "onnx"
    assert config.logging.level == "DEBUG"


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().mqtt.port = 1


def test_every_problem_is_reported_with_its_field_path():
    problems = validate({
        "mqtt": {"hots": "x", "port": "1883", "qos": 3, "tls": {"ca_file": "/no/such/ca.pem"}},
        "batching": {"max_batch": 0, "max_wait_ms": -1},
        "stream": {"gap_factor": float("nan"), "sample_period_seconds": 0},
        "logging": {"format": "xml"},
        "influxdb": {"enabled": "yes please"},
        "limits": {"max_devices": True},
        "surprise": 1,
    })
    assert problems == [  # schema order; unknown keys first within their section
        "surprise: unknown key (known: source, mqtt, kafka, model, stream, batching, alerting, influxdb, local_store, metrics, "
        "logging, limits)",
        "mqtt.hots: unknown key (did you mean 'host'?)",
        "mqtt.port: must be an integer between 1 and 65535, got '1883'",
        "mqtt.qos: must be an integer between 0 and 2, got 3",
        "mqtt.tls.ca_file: no such file: /no/such/ca.pem",
        "stream.sample_period_seconds: must be a number > 0 or null, got 0",
        "stream.gap_factor: must be a number >= 1, got NaN",
        "batching.max_batch: must be an integer >= 1, got 0",
        "batching.max_wait_ms: must be an integer >= 0, got -1",
        "influxdb.enabled: must be true or false, got 'yes please'",
        "logging.format: must be one of text, json, got 'xml'",
        "limits.max_devices: must be an integer >= 1, got true",
    ]


@pytest.mark.parametrize(("raw", "problem"), [
    ({"mqtt": {"topic": "sensors/data", "device_level": 1}}, "mqtt.topic: level 1 of 'sensors/data' is 'data'"),
    ({"mqtt": {"persistent_session": True, "client_id": ""}}, "mqtt.client_id: must be set when"),
    ({"mqtt": {"username": "u", "password": "p", "password_file": "/etc/hostname"}},
     "mqtt.password_file: both password and password_file are set"),
    ({"mqtt": {"password": "p"}}, "mqtt.username: must be set when a password is configured"),
    ({"mqtt": {"tls": {"cert_file": "/etc/hostname"}}}, "mqtt.tls.key_file: cert_file and key_file go together"),
    ({"influxdb": {"enabled": True}}, "influxdb.url: required when influxdb.enabled is true"),
    ({"influxdb": {"url": "localhost:8086"}}, "influxdb.url: must start with http:// or https://"),
    ({"model": {"devices": {"": "models/fan"}}}, "model.devices: a device glob must not be empty"),
    ({"mqtt": "broker"}, "mqtt: must be a mapping, got 'broker'"),
    (["not", "a", "mapping"], "config: must be a mapping"),
])
def test_cross_field_and_shape_rules(raw, problem):
    assert any(p.startswith(problem) for p in validate(raw)), validate(raw)


def test_load_config_names_the_file_the_first_problem_and_how_many_more(tmp_path):
    path = write(tmp_path, "batching: {max_batch: 0, queue_size: 0}\nmetrics: {port: 70000}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, NO_ENV)
    assert str(err.value) == (f"{path}: batching.max_batch: must be an integer >= 1, got 0 "
                              f"(and 2 more problems; run anomalyd check-config)")


def test_single_problem_has_no_count(tmp_path):
    with pytest.raises(ConfigError, match=r"metrics.port: must be an integer between 0 and 65535, got 70000$"):
        load_config(write(tmp_path, "metrics: {port: 70000}"), NO_ENV)


def test_yaml_syntax_errors_name_file_and_line(tmp_path):
    path = write(tmp_path, "mqtt:\n  host: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"^{path}: line \d+ column \d+: invalid YAML"):
        load_config(path, NO_ENV)


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml", NO_ENV)


def test_env_vars_override_yaml_secrets(tmp_path):
    path = write(tmp_path, "mqtt: {username: u, password: from-yaml}\ninfluxdb: {token: from-yaml}\n")
    config = load_config(path, {"ANOMALYD_MQTT_PASSWORD": "from-env", "ANOMALYD_INFLUXDB_TOKEN": "tok-env"})
    assert (config.mqtt.password, config.influxdb.token) == ("from-env", "tok-env")
    assert load_config(path, NO_ENV).mqtt.password == "from-yaml"


def test_secret_files_are_read_and_trailing_newline_stripped(tmp_path):
    (tmp_path / "token").write_text("s3cret-token\n")
    (tmp_path / "pw").write_text("pa ss\r\n")
    path = write(tmp_path, f"influxdb: {{token_file: {tmp_path / 'token'}}}\n"
                           f"mqtt: {{username: u, password_file: {tmp_path / 'pw'}}}\n")
    config = load_config(path, NO_ENV)
    assert (config.influxdb.token, config.mqtt.password) == ("s3cret-token", "pa ss")
    assert load_config(path, {"ANOMALYD_INFLUXDB_TOKEN": "env"}).influxdb.token == "env"  # env beats file


def test_missing_or_empty_secret_files_are_problems(tmp_path):
    (tmp_path / "empty").write_text("\n")
    problems = validate({"influxdb": {"token_file": str(tmp_path / "absent")},
                         "mqtt": {"username": "u", "password_file": str(tmp_path / "empty")}})
    assert problems == [f"mqtt.password_file: file is empty: {tmp_path / 'empty'}",
                        f"influxdb.token_file: no such file: {tmp_path / 'absent'}"]


def test_secrets_do_not_appear_in_repr():
    config = build({"mqtt": {"username": "u", "password": "hunter2"}, "influxdb": {"token": "t0k3n"}}, NO_ENV)
    assert "hunter2" not in repr(config) and "t0k3n" not in repr(config)


def test_example_yaml_is_valid_and_loads_to_the_defaults(tmp_path):
    text = example_yaml()
    assert validate(yaml.safe_load(text)) == []
    assert load_config(write(tmp_path, text), NO_ENV) == Config()


def test_describe_documents_every_field_with_its_default():
    docs = {d.path: d for d in describe()}
    assert docs["batching.max_batch"].default == 64
    assert docs["mqtt.tls.ca_file"].default is None
    assert all(d.doc for d in docs.values())
    assert len(docs) == len(set(docs))
    assert all(f"{d.path.rsplit('.', 1)[-1]}:" in example_yaml() for d in docs.values())
