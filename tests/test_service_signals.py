"""`anomalyd run` as an operator runs it: a real process, real signals, a real broker."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from daemon.offline import synthetic
from daemon.live.sinks.file import read_points
from daemon.offline.publisher import Publisher, payload
from datafiles import normal_csv, train_bundle
from servers import free_port, wait_until

ANOMALYD = str(Path(sys.executable).with_name("anomalyd"))
WINDOW = 20


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("signal-bundles")
    data = normal_csv(tmp, rows=1500)
    return {name: train_bundle(tmp / name, data, "--name", name) for name in ("model-a", "model-b")}


def scrape(port: int, path: str = "/metrics") -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return ""


def sample(port: int, name_and_labels: str) -> float:
    for line in scrape(port).splitlines():
        if line.startswith(name_and_labels + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Daemon:
    def __init__(self, tmp_path: Path, broker, model: Path, devices: dict[str, str] | None = None,
                 **batching) -> None:
        self.port = free_port()
        self.store = tmp_path / "scores.lp"
        self.config_path = tmp_path / "config.yaml"
        self.config = {"mqtt": {"host": broker.host, "port": broker.port, "client_id": f"sig-{tmp_path.name}"[:60]},
                       "model": {"path": str(model), "devices": devices or {}}, "metrics": {"port": self.port},
                       "local_store": {"path": str(self.store)}, "batching": {"max_wait_ms": 10, **batching}}
        self.write_config()
        self.process = subprocess.Popen([ANOMALYD, "run", "--config", str(self.config_path)],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_until(lambda: '"broker_connected": true' in scrape(self.port, "/healthz"), 30, "daemon healthy")
        except TimeoutError:
            self.process.kill()  # a daemon that never got healthy must not outlive the test
            raise

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=30)
        return self.process.returncode, output


def publish_readings(broker, device: str, rows: range, run: synthetic.Synthetic) -> None:
    publisher = Publisher(broker.host, broker.port)
    try:
        for r in rows:
            publisher.publish(f"sensors/{device}/data", payload(run.timestamps[r], synthetic.FEATURES, run.values[r]))
    finally:
        publisher.close()


def test_sigterm_scores_what_is_queued_flushes_the_sink_and_exits_zero(bundles, mosquitto_session, tmp_path,
                                                                       unique_name):
    # A batch that never fills and a long wait: at SIGTERM every window is still in the queue.
    daemon = Daemon(tmp_path, mosquitto_session, bundles["model-a"], max_batch=100_000, max_wait_ms=600_000)
    device, run = unique_name[:40], synthetic.normal(120, seed=3)
    try:
        publish_readings(mosquitto_session, device, range(120), run)
        wait_until(lambda: sample(daemon.port, 'anomalyd_messages_total{result="ok"}') == 120, 20, "all accepted")
        assert sample(daemon.port, "anomalyd_windows_scored_total") == 0
        assert sample(daemon.port, "anomalyd_queue_windows") == 120 - WINDOW + 1
    finally:
        code, output = daemon.stop()
    assert code == 0, output
    assert len(read_points(daemon.store)) == 120 - WINDOW + 1


def test_sighup_swaps_the_model_and_a_bad_bundle_keeps_the_old_one(bundles, mosquitto_session, tmp_path,
                                                                   unique_name):
    daemon = Daemon(tmp_path, mosquitto_session, bundles["model-a"])
    device, run = unique_name[:40], synthetic.normal(200, seed=4)
    try:
        publish_readings(mosquitto_session, device, range(0, 100), run)
        wait_until(lambda: sample(daemon.port, "anomalyd_windows_scored_total") == 100 - WINDOW + 1, 20, "scored")

        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "bundle.json").write_text("{ truncated")
        daemon.config["model"]["path"] = str(broken)
        daemon.write_config()
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: sample(daemon.port, 'anomalyd_config_reloads_total{result="failed"}') == 1, 20,
                   "bad reload refused")
        assert 'name="model-a"' in scrape(daemon.port)

        daemon.config["model"]["path"] = str(bundles["model-b"])
        daemon.write_config()
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: sample(daemon.port, 'anomalyd_config_reloads_total{result="ok"}') == 1, 20, "reloaded")
        assert 'name="model-b"' in scrape(daemon.port)
        publish_readings(mosquitto_session, device, range(100, 200), run)
        wait_until(lambda: sample(daemon.port, "anomalyd_windows_scored_total") == 200 - WINDOW + 1, 20, "scored")
    finally:
        code, output = daemon.stop()
    assert code == 0, output
    assert "reload failed, keeping model model-a" in output and "broken/bundle.json: not valid JSON" in output
    models = {round(p["ts"], 3): p["model"] for p in read_points(daemon.store)}
    before, after = run.timestamps[99], run.timestamps[100]
    assert {m for ts, m in models.items() if ts <= before} == {"model-a"}
    assert {m for ts, m in models.items() if ts >= after} == {"model-b"}
    assert len(models) == 200 - WINDOW + 1  # same window shape: device buffers survive the swap


def test_devices_matching_a_glob_are_scored_by_their_own_bundle(bundles, mosquitto_session, tmp_path,
                                                                  unique_name):
    # The fan bundle has its own window and a subset of the features: routing decides the
    # parser, the ring buffer and the model of each device.
    fan_bundle = train_bundle(tmp_path / "fan", normal_csv(tmp_path, rows=1500), "--name", "fan-model",
                              "--window", "10", "--features", ",".join(synthetic.FEATURES[:3]))
    daemon = Daemon(tmp_path, mosquitto_session, bundles["model-a"], devices={f"{unique_name[:20]}-fan-*": str(fan_bundle)})
    pump, fan, run = f"{unique_name[:20]}-pump-1", f"{unique_name[:20]}-fan-1", synthetic.normal(60, seed=5)
    try:
        assert 'name="fan-model"' in scrape(daemon.port) and 'name="model-a"' in scrape(daemon.port)
        publish_readings(mosquitto_session, pump, range(60), run)
        publish_readings(mosquitto_session, fan, range(60), run)
        wait_until(lambda: sample(daemon.port, "anomalyd_windows_scored_total") == (60 - WINDOW + 1) + (60 - 10 + 1),
                   20, "both devices scored")
        assert sample(daemon.port, "anomalyd_devices") == 2
    finally:
        code, output = daemon.stop()
    assert code == 0, output
    points = read_points(daemon.store)
    by_device = {device: {p["model"] for p in points if p["device"] == device} for device in (pump, fan)}
    assert by_device == {pump: {"model-a"}, fan: {"fan-model"}}
    fan_point = next(p for p in points if p["device"] == fan)
    assert sorted(k for k in fan_point if k.startswith("err_")) == \
        sorted(f"err_{name}" for name in synthetic.FEATURES[:3])


def test_a_bad_per_device_bundle_is_named_by_its_field(bundles, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"path": str(bundles["model-a"]),
                                              "devices": {"fan-*": str(tmp_path / "missing")}}}))
    check = subprocess.run([ANOMALYD, "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 2
    assert check.stderr.strip() == f"{path}: model.devices.fan-*: {tmp_path / 'missing'}: model bundle directory not found"


def test_bad_config_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("mqtt: {port: 99999}\nbatching: {max_batch: 0}\nmodel: {path: /nonexistent}\n")
    result = subprocess.run([ANOMALYD, "run", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "mqtt.port" in result.stderr and "1 more" in result.stderr
    check = subprocess.run([ANOMALYD, "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 2
    lines = check.stderr.strip().splitlines()
    assert len(lines) == 3
    assert "mqtt.port" in lines[0] and "batching.max_batch" in lines[1]
    assert "model.path: /nonexistent: model bundle directory not found" in lines[2]


def test_bad_model_is_one_line_naming_the_file_and_exit_2(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "bundle.json").write_text(json.dumps({"format": "anomalyd-bundle"}))
    path = tmp_path / "c.yaml"
    path.write_text(f"model: {{path: {tmp_path / 'm'}}}\nmetrics: {{enabled: false}}\n")
    result = subprocess.run([ANOMALYD, "run", "--config", str(path)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "bundle.json: field 'format_version' is missing" in result.stderr


def test_shipped_config_validates_and_documents_every_key():
    root = Path(__file__).parents[1]
    result = subprocess.run([ANOMALYD, "check-config", "config.yaml"], capture_output=True, text=True, timeout=60,
                            cwd=root)
    assert result.returncode == 0, result.stderr
    from daemon.live.config import example_yaml

    def keys(doc: dict, prefix: str = "") -> set[str]:
        return {prefix + k for k in doc} | {x for k, v in doc.items() if isinstance(v, dict)
                                            for x in keys(v, f"{prefix}{k}.")}
    assert keys(yaml.safe_load((root / "config.yaml").read_text())) == keys(yaml.safe_load(example_yaml()))


def test_reload_keeps_device_windows_only_while_the_bundle_windows_them_the_same_way(bundles, tmp_path):
    from daemon.live.config import load_config
    from daemon.live.service import Service

    strided = train_bundle(tmp_path / "strided", normal_csv(tmp_path, rows=1500), "--name", "strided",
                           "--stride", "5")
    path = tmp_path / "config.yaml"

    def configure(model: Path) -> None:
        path.write_text(yaml.safe_dump({"model": {"path": str(model)}, "metrics": {"enabled": False}}))

    configure(bundles["model-a"])
    service = Service(load_config(path), str(path))
    first = service.default_route.buffers
    configure(bundles["model-b"])  # same window, features and stride
    service.reload()
    assert service.default_route.buffers is first and service.scorer.bundle.name == "model-b"
    configure(strided)
    service.reload()
    assert service.default_route.buffers is not first and service.default_route.buffers.stride == 5


def test_a_reload_keeps_every_section_it_does_not_apply_and_says_so(bundles, tmp_path, caplog):
    from daemon.live.config import load_config
    from daemon.live.service import Service

    path = tmp_path / "config.yaml"
    config = {"model": {"path": str(bundles["model-a"])}, "metrics": {"enabled": False}}
    path.write_text(yaml.safe_dump(config))
    service = Service(load_config(path), str(path))
    path.write_text(yaml.safe_dump({**config, "logging": {"level": "DEBUG"}, "kafka": {"group_id": "other"}}))
    with caplog.at_level(logging.WARNING, logger="daemon.live.service"):
        service.reload()
    kept = re.findall(r"changes to section '(\w+)' need a restart", caplog.text)
    assert sorted(kept) == ["kafka", "logging"]
    assert service.config.logging.level == "INFO" and service.config.kafka.group_id == "anomalyd"
