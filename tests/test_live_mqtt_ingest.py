"""MQTT ingest: the broker-free message pipeline, then the paho client against a real mosquitto."""

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from servers import wait_until

from daemon.live.ingest.buffers import DeviceBuffers
from daemon.live.config import MqttConfig
from daemon.live.telemetry.metrics import Metrics
from daemon.live.ingest.mqtt import MessagePipeline, MqttIngest
from daemon.live.ingest.payload import PayloadParser
from daemon.live.worker import WindowQueue

FEATURES = ["a", "b"]


def results(metrics: Metrics) -> dict[str, float]:
    samples = metrics.messages.collect()[0].samples
    return {s.labels["result"]: s.value for s in samples if s.name.endswith("_total") and s.value}


def pipeline(window: int = 2, max_devices: int = 100) -> tuple[MessagePipeline, WindowQueue, Metrics]:
    metrics = Metrics()
    queue = WindowQueue(1000, metrics)
    buffers = DeviceBuffers(window, 1, len(FEATURES), None, 5.0, max_devices, 3600, metrics)
    return MessagePipeline(PayloadParser(FEATURES), buffers, queue, metrics), queue, metrics


def reading(ts: float, a: float = 1.0) -> bytes:
    return json.dumps({"ts": ts, "a": a, "b": 2.0}).encode()


# ---- MessagePipeline (no broker) --------------------------------------------------------------

def test_pipeline_turns_valid_messages_into_queued_windows_and_counts_ok():
    handle, queue, metrics = pipeline(window=2)
    now = time.time()
    assert handle("sensors/d1/data", reading(now - 2), now) == "ok"
    assert handle("sensors/d1/data", reading(now - 1, a=5), now) == "ok"
    assert len(queue) == 1
    assert queue.take(1, 0)[0].window[:, 0].tolist() == [1.0, 5.0]
    assert results(metrics) == {"ok": 2}


def test_pipeline_counts_each_rejection_under_its_reason():
    handle, queue, metrics = pipeline(max_devices=1)
    now = time.time()
    handle("sensors/d1/data", reading(now - 5), now)
    outcomes = [
        handle("sensors/d1/data", b"not json", now),
        handle("sensors/d1/data", reading(now - 5), now),
        handle("sensors/d1/data", reading(now - 9), now),
        handle("sensors/d2/data", reading(now), now),
        handle("sensors/a,b=c/data", reading(now), now),
        handle("sensors/d1/data", b'{"a": NaN, "b": 1}', now),
    ]
    assert outcomes == ["invalid_json", "duplicate", "out_of_order", "too_many_devices", "bad_device_id",
                        "non_finite"]
    assert results(metrics) == {"ok": 1, "invalid_json": 1, "duplicate": 1, "out_of_order": 1,
                                "too_many_devices": 1, "bad_device_id": 1, "non_finite": 1}
    assert len(queue) == 0


def test_pipeline_exposes_seconds_since_the_last_valid_reading():
    handle, _, metrics = pipeline()
    assert np.isnan(metrics.registry.get_sample_value("anomalyd_last_message_age_seconds"))
    handle("sensors/d1/data", reading(time.time() - 10), time.time() - 3)
    assert 2.5 < metrics.registry.get_sample_value("anomalyd_last_message_age_seconds") < 60


def test_pipeline_is_fast_enough_for_the_hot_path():
    handle, queue, _ = pipeline(window=60)
    now = time.time()
    payloads = [json.dumps({"ts": now - 10 + i * 1e-3, **{f: i * 0.5 for f in FEATURES}, "x": "y"}).encode()
                for i in range(5000)]
    started = time.perf_counter()
    for payload in payloads:
        handle("sensors/pump-1/data", payload, now)
    rate = len(payloads) / (time.perf_counter() - started)
    assert rate > 20_000, f"{rate:.0f} msg/s"  # measured ~50k/s; paho itself tops out near there


def test_ingest_side_never_imports_torch():
    code = "import sys, daemon.live.ingest.mqtt, daemon.live.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


# ---- against a real mosquitto (fixture from conftest.py; skipped if the binary is absent) ------

class Publisher:
    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def ingest_factory(mosquitto):
    started: list[MqttIngest] = []

    def make(handler, metrics, **settings) -> MqttIngest:
        settings = {"client_id": f"anomalyd-test-{uuid.uuid4().hex[:8]}", "persistent_session": False,
                    "keepalive": 5, **settings}
        ingest = MqttIngest(MqttConfig(host=mosquitto.host, port=mosquitto.port, **settings), handler, metrics)
        ingest.start()
        started.append(ingest)
        wait_until(lambda: ingest.subscribed, 10, "subscription")
        return ingest

    yield make
    for ingest in started:
        ingest.stop()


def test_readings_arrive_and_invalid_messages_are_counted(mosquitto, ingest_factory):
    handle, queue, metrics = pipeline(window=2)
    ingest = ingest_factory(handle, metrics)
    assert metrics.registry.get_sample_value("anomalyd_mqtt_connected") == 1
    pub = Publisher(mosquitto.port)
    now = time.time()
    for i in range(20):
        pub.send("sensors/pump-1/data", reading(now - 20 + i))
    pub.send("sensors/pump-1/data", b"{broken")
    pub.send("sensors/a,b=c/data", reading(now))
    pub.send("sensors/pump-1/data", b"x" * 70_000)
    pub.send("sensors/pump-1/data", b'{"a": 1}')
    pub.close()
    wait_until(lambda: sum(results(metrics).values()) == 24, 10, "24 messages")
    assert results(metrics) == {"ok": 20, "invalid_json": 1, "bad_device_id": 1, "oversized": 1,
                                "missing_feature": 1}
    assert len(queue) == 19
    assert ingest.connected


def test_a_failing_handler_is_counted_and_does_not_stop_the_network_thread(mosquitto, ingest_factory):
    metrics = Metrics()
    seen = []

    def handler(topic: str, payload: bytes, now: float) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        seen.append(payload)

    ingest_factory(handler, metrics)
    pub = Publisher(mosquitto.port)
    pub.send("sensors/d/data", b"boom")
    pub.send("sensors/d/data", b"after")
    pub.close()
    wait_until(lambda: seen == [b"after"], 10, "the message after the failure")
    assert results(metrics) == {"internal_error": 1}


def test_ingest_reconnects_and_resubscribes_after_a_broker_crash(mosquitto, ingest_factory):
    handle, queue, metrics = pipeline(window=1)
    ingest = ingest_factory(handle, metrics, persistent_session=True)
    mosquitto.kill()  # nothing saved yet: the restarted broker has no session and no subscription for us
    wait_until(lambda: not ingest.connected, 10, "disconnect to be noticed")
    assert metrics.registry.get_sample_value("anomalyd_mqtt_connected") == 0
    mosquitto.start()
    wait_until(lambda: ingest.subscribed, 15, "reconnect and resubscribe")
    pub = Publisher(mosquitto.port)
    pub.send("sensors/pump-1/data", reading(time.time()))
    pub.close()
    wait_until(lambda: len(queue) == 1, 10, "a reading after the restart")
    assert metrics.registry.get_sample_value("anomalyd_mqtt_connects_total") == 2


def test_persistent_session_receives_what_was_published_while_the_daemon_was_away(mosquitto, ingest_factory):
    client_id = f"anomalyd-persist-{uuid.uuid4().hex[:8]}"
    first = ingest_factory(lambda *args: None, Metrics(), client_id=client_id, persistent_session=True, qos=1)
    first.stop()
    pub = Publisher(mosquitto.port)
    for i in range(5):
        pub.send("sensors/pump-1/data", reading(1000 + i))
    pub.close()
    handle, queue, metrics = pipeline(window=5)
    ingest_factory(handle, metrics, client_id=client_id, persistent_session=True, qos=1)
    wait_until(lambda: len(queue) == 1, 10, "the queued readings")
    assert results(metrics) == {"ok": 5}
