"""Ingest: the broker-free message pipeline, then the MQTT source against a real mosquitto."""

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from servers import wait_until

from daemon.live.config import LimitsConfig, MqttConfig, StreamConfig
from daemon.live.ingest.buffers import DeviceBuffers
from daemon.live.ingest.mqtt import MqttIngest
from daemon.live.ingest.payload import PayloadParser
from daemon.live.ingest.pipeline import MessagePipeline
from daemon.live.telemetry.metrics import Metrics
from daemon.live.worker import WindowQueue

FEATURES = ["a", "b"]


def results(metrics: Metrics) -> dict[str, float]:
    samples = metrics.messages.collect()[0].samples
    return {s.labels["result"]: s.value for s in samples if s.name.endswith("_total") and s.value}


def pipeline(window: int = 2, max_devices: int = 100) -> tuple[MessagePipeline, WindowQueue, Metrics]:
    metrics = Metrics()
    queue = WindowQueue(1000, metrics)
    buffers = DeviceBuffers(window, len(FEATURES), StreamConfig(stride=1), LimitsConfig(max_devices=max_devices),
                            metrics)
    return MessagePipeline(PayloadParser(FEATURES), buffers, queue.put, metrics.messages), queue, metrics


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


def test_pipeline_remembers_when_the_last_valid_reading_arrived():
    handle, _, _ = pipeline()
    now = time.time()
    assert handle.last_ok is None
    handle("sensors/d1/data", reading(now - 10), now - 3)
    handle("sensors/d1/data", b"not json", now)
    assert handle.last_ok == now - 3


def test_ingest_side_never_imports_torch():
    code = ("import sys, daemon.live.ingest.mqtt, daemon.live.ingest.pipeline, daemon.live.config; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_the_pipeline_does_not_depend_on_the_scoring_side():
    """Any source reuses the pipeline; it hands windows to a callable, not to the worker's queue type."""
    code = "import sys, daemon.live.ingest.pipeline; assert 'daemon.live.worker' not in sys.modules"
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


def restart_broker(broker, persistence: bool) -> None:
    """Stop the broker gracefully and start it again, with or without its persistence file."""
    broker.stop()
    conf = broker.conf_path.read_text()
    broker.conf_path.write_text(conf.replace("persistence true", f"persistence {str(persistence).lower()}"))
    broker.start()


def connects(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("anomalyd_mqtt_connects_total")


def sessions_lost(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("anomalyd_mqtt_sessions_lost_total")


def test_a_persistent_session_the_broker_lost_is_a_warning_naming_the_gap_and_is_counted(
        mosquitto, ingest_factory, caplog):
    handle, queue, metrics = pipeline(window=1)
    ingest = ingest_factory(handle, metrics, persistent_session=True)
    pub = Publisher(mosquitto.port)
    pub.send("sensors/pump-1/data", reading(time.time()))
    pub.close()
    wait_until(lambda: len(queue) == 1, 10, "a reading before the restart")
    last_message = handle.last_ok
    restart_broker(mosquitto, persistence=False)  # the broker comes back without our session
    wait_until(lambda: connects(metrics) == 2 and ingest.subscribed, 15, "reconnect and resubscribe")
    reconnected = time.time()
    assert sessions_lost(metrics) == 1
    [warning] = [r for r in caplog.records if "lost the persistent session" in r.getMessage()]
    assert warning.levelname == "WARNING"
    gap = float(warning.getMessage().split(" in the ")[1].split(" s since the last message received")[0])
    assert 0 < gap <= reconnected - last_message


def test_a_session_the_broker_kept_is_not_counted_as_lost(mosquitto, ingest_factory):
    handle, queue, metrics = pipeline(window=1)
    ingest = ingest_factory(handle, metrics, persistent_session=True)
    restart_broker(mosquitto, persistence=True)
    wait_until(lambda: connects(metrics) == 2 and ingest.subscribed, 15, "reconnect and resubscribe")
    assert sessions_lost(metrics) == 0


def test_a_clean_session_is_never_counted_as_lost(mosquitto, ingest_factory):
    handle, queue, metrics = pipeline(window=1)
    ingest = ingest_factory(handle, metrics, persistent_session=False)
    restart_broker(mosquitto, persistence=False)
    wait_until(lambda: connects(metrics) == 2 and ingest.subscribed, 15, "reconnect and resubscribe")
    assert sessions_lost(metrics) == 0
