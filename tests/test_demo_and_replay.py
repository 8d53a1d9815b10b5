"""The README's main command and the replay tool, end to end."""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path

import paho.mqtt.client as mqtt

from daemon.cli import main
from daemon.demo.broker import local_broker
from daemon.offline.publisher import Publisher
from datafiles import faults_csv, fleet_csv
from servers import wait_until

ROOT = Path(__file__).parents[1]


def test_demo_prints_what_the_readme_shows_and_draws_it(tmp_path, capsys, monkeypatch):
    """`anomalyd demo` as the README runs it: every window scored, the faults detected, and the
    summary the README quotes, figure for figure (the data and the shipped bundle are fixed)."""
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"^## Quick start: the demo\n.*?^```\n(model .*?)^```", readme, re.S | re.M).group(1)
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0
    assert capsys.readouterr().out == shown
    assert (tmp_path / "demo-out" / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "demo-out" / "scores.lp").read_text().startswith("anomaly,device=pump-")


def _subscriber(host: str, port: int, topic: str,
                topics: list[str] | None = None) -> tuple[mqtt.Client, list[bytes]]:
    """Every payload published on `topic` (wildcards allowed); each one's topic into `topics`."""
    received: list[bytes] = []
    topics = [] if topics is None else topics
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}")
    client.on_message = lambda c, u, m: (topics.append(m.topic), received.append(m.payload))
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
    client.connect(host, port)
    client.loop_start()
    assert subscribed.wait(10)
    return client, received


def test_embedded_broker_carries_messages_when_mosquitto_is_not_used_and_stops_cleanly(tmp_path, caplog):
    with local_broker(tmp_path, prefer_mosquitto=False) as (host, port):
        caplog.set_level(logging.WARNING, logger="amqtt")  # the demo silences amqtt; this test listens
        client, received = _subscriber(host, port, "t/#")
        publisher = Publisher(host, port)
        for i in range(50):
            publisher.publish("t/x", str(i).encode())
        publisher.close()
        wait_until(lambda: len(received) == 50, 10, "50 messages through amqtt")
        client.disconnect()  # before the broker stops: amqtt's shutdown can wait on a silent open client
        client.loop_stop()
    # A broker built outside its event loop never saw its own shutdown: 5 s and this warning.
    assert "Failed to cleanly shutdown broadcast loop" not in caplog.text


def test_replay_publishes_each_row_as_a_reading_of_the_device(mosquitto_session, tmp_path, unique_name):
    data = faults_csv(tmp_path, rows=200)
    client, received = _subscriber(mosquitto_session.host, mosquitto_session.port, f"sensors/{unique_name}/data")
    assert main(["replay", "--data", str(data), "--device", unique_name, "--host", mosquitto_session.host,
                 "--port", str(mosquitto_session.port), "--rate", "2000"]) == 0
    wait_until(lambda: len(received) == 200, 10, "200 readings")
    client.loop_stop()
    first = json.loads(received[0])
    assert set(first) == {"ts", "vibration", "current", "pressure", "flow", "temperature"}
    assert "anomaly" not in first


def test_replay_of_a_fleet_file_publishes_every_devices_rows_on_its_topic_in_time_order(
        mosquitto_session, tmp_path, unique_name):
    devices = {f"{unique_name}-a": faults_csv(tmp_path, rows=100, seed=2, name="a.csv"),
               f"{unique_name}-b": faults_csv(tmp_path, rows=100, seed=3, name="b.csv")}
    data = fleet_csv(tmp_path / "fleet.csv", devices)
    topics: list[str] = []
    client, received = _subscriber(mosquitto_session.host, mosquitto_session.port, "sensors/+/data", topics)
    assert main(["replay", "--data", str(data), "--host", mosquitto_session.host,
                 "--port", str(mosquitto_session.port), "--rate", "2000"]) == 0
    mine = lambda: [(t, json.loads(p)) for t, p in zip(list(topics), list(received)) if unique_name in t]
    wait_until(lambda: len(mine()) == 200, 10, "200 readings of two devices")
    client.loop_stop()
    for device in devices:
        readings = [body for topic, body in mine() if topic == f"sensors/{device}/data"]
        assert len(readings) == 100
        assert [r["ts"] for r in readings] == sorted(r["ts"] for r in readings)
    assert len({topic for topic, _ in mine()[:10]}) == 2  # interleaved in time order, not one device after the other
