"""The running daemon against what deploy/ promises about it.

- `promtool check metrics` finds nothing to complain about in a real scrape of a running service
  (in-process `Service`, real mosquitto, a tiny trained bundle, readings flowing), and every
  `anomalyd_*` name that deploy/ queries is in that scrape.
- The model upgrade and rollback of deploy/README.md work as written: bundles in
  models/NAME-vN, a `current` symlink switched atomically (ln + mv -T), `anomalyd inspect` and
  `anomalyd check-config` on the new target, a reload (what `systemctl reload` = SIGHUP asks for),
  then anomalyd_model_info and the `model` tag of new points name the new bundle; a broken
  bundle is refused and the running one kept.
- The Type=notify contract of deploy/systemd/anomalyd.service, with the real ExecStart binary as
  systemd would start it (NOTIFY_SOCKET, WATCHDOG_USEC): READY=1 once up, WATCHDOG=1 pings,
  RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 and exit 0 on SIGTERM, every message sent by
  the main PID (NotifyAccess=main).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from daemon.offline import synthetic
from daemon.cli import main as cli_main
from daemon.live.config import load_config
from daemon.live.sinks.file import read_points
from daemon.live.service import Service
from daemon.offline.publisher import Publisher, payload
from datafiles import normal_csv, train_bundle
from servers import find_binary, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ANOMALYD = ROOT / ".venv" / "bin" / "anomalyd"
WINDOW = 20  # tests/datafiles.FAST_TRAIN


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """models/pump-v1, models/pump-v2 (same weights, another name and version: what matters here
    is which one is served), models/broken, and models/current -> pump-v1."""
    tmp = tmp_path_factory.mktemp("deploy-models")
    trained = train_bundle(tmp, normal_csv(tmp, rows=400), "--name", "pump-v1", "--epochs", "2")
    models = tmp / "models"
    models.mkdir()
    trained.rename(models / "pump-v1")
    v2 = models / "pump-v2"
    v2.mkdir()
    for item in (models / "pump-v1").iterdir():
        (v2 / item.name).write_bytes(item.read_bytes())
    meta = json.loads((v2 / "bundle.json").read_text())
    meta.update(name="pump-v2", version="2")
    (v2 / "bundle.json").write_text(json.dumps(meta, indent=2))
    (models / "broken").mkdir()
    (models / "broken" / "bundle.json").write_text("{}")
    os.symlink("pump-v1", models / "current")
    return models


@pytest.fixture
def promtool() -> str:
    binary = find_binary("/usr/bin/promtool")
    if binary is None:
        pytest.skip("promtool not found: install the Debian package 'prometheus' (scripts/setup) to run this test")
    return binary


def write_config(tmp_path: Path, broker, models: Path, client_id: str) -> Path:
    raw = {"mqtt": {"host": broker.host, "port": broker.port, "client_id": client_id},
           "model": {"path": str(models / "current")},
           "metrics": {"address": "127.0.0.1", "port": 0},
           "local_store": {"path": str(tmp_path / "scores.lp")},
           "batching": {"max_wait_ms": 10},
           # the test bundle has no budget of its own: a stated one puts the budget gauges in the scrape
           "alerting": {"false_alarms_per_day": 1.0},
           "logging": {"level": "WARNING"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def service(tmp_path, mosquitto_session, models, monkeypatch) -> Iterator[Service]:
    """A started service whose serve() loop runs in a thread, as `anomalyd run` runs it."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)  # never talk to a real systemd from a test
    os.replace(_relink(models, "pump-v1"), models / "current")
    config_path = write_config(tmp_path, mosquitto_session, models, f"deploy-{uuid.uuid4().hex[:12]}")
    svc = Service(load_config(config_path), str(config_path))
    svc.start()
    loop = threading.Thread(target=svc.serve, name="serve", daemon=True)
    loop.start()
    try:
        wait_until(lambda: svc.ingest.subscribed, 15, "service subscribed")
        yield svc
    finally:
        svc.request_stop()
        loop.join(10)
        svc.shutdown()


def _relink(models: Path, target: str) -> Path:
    new = models / "current.new"
    if new.is_symlink():
        new.unlink()
    os.symlink(target, new)
    return new


def scrape(svc: Service) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{svc.http.port}/metrics", timeout=5) as response:
        return response.read().decode()


def value(svc: Service, name: str, **labels: str) -> float | None:
    return svc.metrics.registry.get_sample_value(name, labels)


class Devices:
    """Publishes synthetic normal readings, continuing each device's time line across calls."""

    def __init__(self, broker, names: list[str]) -> None:
        self.broker = broker
        self.runs = {name: synthetic.normal(200, seed=i) for i, name in enumerate(names)}
        self.next_row = 0

    def publish(self, rows: int, extra: list[tuple[str, bytes]] = ()) -> None:
        publisher = Publisher(self.broker.host, self.broker.port)
        try:
            for r in range(self.next_row, self.next_row + rows):
                for name, run in self.runs.items():
                    publisher.publish(f"sensors/{name}/data", payload(run.timestamps[r], synthetic.FEATURES,
                                                                      run.values[r]))
            for topic, body in extra:
                publisher.publish(topic, body)
        finally:
            publisher.close()
        self.next_row += rows


# ---- promtool check metrics on a real scrape ---------------------------------------------

def test_promtool_check_metrics_accepts_a_real_scrape(service, mosquitto_session, promtool, unique_name):
    devices = Devices(mosquitto_session, [f"{unique_name[:30]}-{i}" for i in range(2)])
    devices.publish(WINDOW + 10, extra=[(f"sensors/{unique_name[:30]}-0/data", b"not json")])
    wait_until(lambda: (value(service, "anomalyd_windows_scored_total") or 0) >= 2 * 11, 20, "windows scored")
    body = scrape(service)
    assert "anomalyd_inference_seconds_bucket" in body and 'result="invalid_json"} 1.0' in body

    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        f"promtool check metrics complains:\n{result.stdout}{result.stderr}")


def test_every_metric_deploy_queries_is_in_a_real_scrape(service):
    body = scrape(service)
    exposed = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line and not line.startswith("#")}
    used = set()
    for path in [*DEPLOY.rglob("*.json"), *DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")]:
        used |= set(re.findall(r"\b(anomalyd_[a-z0-9_]+)", path.read_text()))
    used = {name for name in used if not name.endswith("_")}  # prose such as "anomalyd_*"
    used.discard("anomalyd_kafka_consumer_lag")  # one series per partition consumed: none from an MQTT daemon
    assert used, "deploy/ queries no anomalyd_ metric?"
    assert not used - exposed, f"queried but not exposed by the running daemon: {sorted(used - exposed)}"


# ---- model upgrade and rollback, as deploy/README.md describes it -------------------------

def switch(models: Path, target: str) -> None:
    """The README's atomic symlink switch."""
    subprocess.run(["sh", "-c", f"ln -sfn {target} current.new && mv -T current.new current"], cwd=models,
                   check=True, timeout=10)
    assert os.readlink(models / "current") == target


def reload_and_wait(svc: Service, result: str) -> None:
    before = value(svc, "anomalyd_config_reloads_total", result=result) or 0
    svc.request_reload()  # what the SIGHUP handler does
    wait_until(lambda: (value(svc, "anomalyd_config_reloads_total", result=result) or 0) > before, 30,
               f"reload {result}")


def served_model(svc: Service) -> list[tuple[str, str]]:
    """(name, version) of every anomalyd_model_info sample in a scrape."""
    return [(s.labels["name"], s.labels["version"]) for family in text_string_to_metric_families(scrape(svc))
            for s in family.samples if s.name == "anomalyd_model_info" and s.value == 1]


def model_tags(svc: Service, device: str) -> list[str]:
    path = svc.config.local_store.path
    return [p["model"] for p in read_points(path) if p["device"] == device] if os.path.exists(path) else []


def test_upgrade_and_rollback_of_the_model_bundle(service, models, mosquitto_session, unique_name, capsys):
    device = f"{unique_name[:40]}-d"
    devices = Devices(mosquitto_session, [device])
    devices.publish(WINDOW + 4)
    wait_until(lambda: len(model_tags(service, device)) >= 5, 20, "first scores")
    assert served_model(service) == [("pump-v1", "1")]
    assert set(model_tags(service, device)) == {"pump-v1"}

    # upgrade: check the new bundle and the config through the symlink, switch, reload
    switch(models, "pump-v2")
    assert cli_main(["inspect", "--model", str(models / "current")]) == 0
    assert "pump-v2 (version 2" in capsys.readouterr().out
    assert cli_main(["check-config", service.config_path]) == 0
    reload_and_wait(service, "ok")
    assert served_model(service) == [("pump-v2", "2")]
    scored = len(model_tags(service, device))
    devices.publish(3)
    wait_until(lambda: len(model_tags(service, device)) >= scored + 3, 20, "scores after the upgrade")
    assert model_tags(service, device)[scored:] == ["pump-v2"] * 3, "new points carry the new model tag"

    # a broken bundle is refused: the running model stays
    switch(models, "broken")
    reload_and_wait(service, "failed")
    assert served_model(service) == [("pump-v2", "2")]

    # rollback
    switch(models, "pump-v1")
    reload_and_wait(service, "ok")
    assert served_model(service) == [("pump-v1", "1")]
    scored = len(model_tags(service, device))
    devices.publish(2)
    wait_until(lambda: len(model_tags(service, device)) >= scored + 2, 20, "scores after the rollback")
    assert model_tags(service, device)[scored:] == ["pump-v1"] * 2


# ---- the systemd Type=notify contract --------------------------------------------------------

class NotifySocket:
    """A stand-in for systemd's notification socket that records (pid, message) pairs."""

    def __init__(self) -> None:
        self.name = f"anomalyd-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)  # abstract namespace: no path-length or cleanup issues
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[int, str]] = []

    @property
    def env(self) -> str:
        return "@" + self.name

    def poll(self) -> None:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
            except (socket.timeout, BlockingIOError):
                return
            pid = next((struct.unpack("3i", d[:12])[0] for level, kind, d in ancillary
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), -1)
            for line in data.decode().splitlines():
                self.messages.append((pid, line))

    def texts(self) -> list[str]:
        self.poll()
        return [text for _, text in self.messages]

    def wait_for(self, text: str, count: int = 1, timeout: float = 30.0) -> None:
        wait_until(lambda: self.texts().count(text) >= count, timeout, f"{count} x {text} on the notify socket")

    def close(self) -> None:
        self.sock.close()


def test_the_daemon_keeps_the_type_notify_contract_of_the_unit(tmp_path, mosquitto_session, models):
    assert ANOMALYD.exists(), "run scripts/setup"
    os.replace(_relink(models, "pump-v1"), models / "current")
    config = write_config(tmp_path, mosquitto_session, models, f"deploy-notify-{uuid.uuid4().hex[:8]}")
    notify = NotifySocket()
    env = {**os.environ, "NOTIFY_SOCKET": notify.env, "WATCHDOG_USEC": "400000"}
    process = subprocess.Popen([str(ANOMALYD), "run", "--config", str(config)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        notify.wait_for("READY=1", timeout=60)
        notify.wait_for("WATCHDOG=1", count=2, timeout=15)
        process.send_signal(signal.SIGHUP)  # ExecReload=/bin/kill -HUP $MAINPID
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1", count=2)
        process.send_signal(signal.SIGTERM)  # systemctl stop
        notify.wait_for("STOPPING=1")
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
        texts = notify.texts()
        notify.close()
    assert texts[0] == "READY=1", texts
    reload_at = texts.index("RELOADING=1")
    assert "READY=1" in texts[reload_at:] and texts.index("STOPPING=1") > reload_at, texts
    senders = {pid for pid, _ in notify.messages}
    assert senders == {process.pid}, f"NotifyAccess=main: messages must come from the main PID, got {senders}"


def test_the_watchdog_keeps_pinging_while_the_broker_is_down(tmp_path, mosquitto, models, monkeypatch):
    notify = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", notify.env)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    os.replace(_relink(models, "pump-v1"), models / "current")
    config_path = write_config(tmp_path, mosquitto, models, f"deploy-wd-{uuid.uuid4().hex[:8]}")
    svc = Service(load_config(config_path), str(config_path))
    svc.start()
    loop = threading.Thread(target=svc.serve, daemon=True)
    loop.start()
    try:
        notify.wait_for("WATCHDOG=1", count=2, timeout=15)
        mosquitto.stop()
        wait_until(lambda: not svc.ingest.connected, 10, "broker connection lost")
        before = notify.texts().count("WATCHDOG=1")
        time.sleep(1.0)  # the serve loop pings every 0.2 s while it considers itself healthy
        assert notify.texts().count("WATCHDOG=1") >= before + 2, "no WATCHDOG=1 while the broker is down"
    finally:
        svc.request_stop()
        loop.join(10)
        svc.shutdown()
        notify.close()
