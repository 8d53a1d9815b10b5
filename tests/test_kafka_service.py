"""The service with `source: kafka` against a real Kafka-protocol broker (Tansu): records keyed by
device are scored by the same routes, worker and sink as MQTT messages, /healthz follows the
consumer's subscription, and offsets are committed once the sink has written the windows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from servers import wait_until  # noqa: E402

from daemon.core.errors import ConfigError  # noqa: E402
from daemon.live.config import build  # noqa: E402
from daemon.live.ingest.kafka import KafkaSource, build_kafka_source  # noqa: E402
from daemon.live.service import Service  # noqa: E402
from daemon.live.sinks.file import read_points  # noqa: E402
from daemon.live.telemetry.metrics import Metrics  # noqa: E402
from daemon.offline import synthetic  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"
DEVICES = ["pump-1", "pump-2", "pump-3"]
ROWS = 60


def kafka_config(tansu, topic: str, tmp_path: Path, **kafka) -> dict:
    return {"source": "kafka",
            "kafka": {"bootstrap_servers": tansu.bootstrap_servers, "topics": topic, "group_id": "svc",
                      "session_timeout_ms": 6000, "commit_interval_ms": 200, "auto_offset_reset": "earliest",
                      "replay_seconds": 60, **kafka},
            "model": {"path": str(DEMO)},
            "metrics": {"port": 0},
            "batching": {"max_wait_ms": 10},
            "local_store": {"path": str(tmp_path / "scores.lp")},
            "logging": {"level": "WARNING"}}


def test_a_kafka_fed_service_scores_every_device_through_the_same_pipeline(tansu, tmp_path):
    tansu.create_topic("readings", 3)
    service = Service(build(kafka_config(tansu, "readings", tmp_path)))
    assert isinstance(service.ingest, KafkaSource)
    service.start()
    try:
        wait_until(lambda: service.ingest.subscribed, 20, "consumer subscribed")
        producer = Producer({"bootstrap.servers": tansu.bootstrap_servers, "linger.ms": 5})
        for i, device in enumerate(DEVICES):
            run = synthetic.normal(ROWS, seed=i, start=1_750_000_000.0)
            for ts, row in zip(run.timestamps, run.values):
                doc = {"ts": float(ts), **{f: float(v) for f, v in zip(synthetic.FEATURES, row)}}
                if device == "pump-1":
                    doc["device"] = device  # kafka.device_field: the payload may name its device
                producer.produce("readings", key=device.encode(), value=json.dumps(doc).encode())
        producer.produce("readings", key=b"pump-1", value=None)  # a tombstone is counted, never scored
        producer.produce("readings", key=b"pump-2", value=b'{"device": "pump-9"}')  # key_mismatch, counted
        assert producer.flush(10) == 0
        del producer  # its thread would keep dialling the broker after the test stops it
        window = service.scorer.window
        expected = len(DEVICES) * (ROWS - window + 1)
        wait_until(lambda: (service.metrics.registry.get_sample_value("anomalyd_windows_scored_total") or 0)
                   >= expected, 30, f"{expected} windows scored")
        assert service.metrics.messages.counts["ok"] == len(DEVICES) * ROWS
        assert service.metrics.messages.counts["tombstone"] == 1
        wait_until(lambda: service.metrics.messages.counts["key_mismatch"] == 1, 5, "the mismatch counted")
        healthy, details = service.health()
        assert healthy, details
    finally:
        service.shutdown()
    points = read_points(tmp_path / "scores.lp")
    assert {p["device"] for p in points} == set(DEVICES)
    # The file sink settled every window before the consumer left: every record is committed.
    consumer = Consumer({"bootstrap.servers": tansu.bootstrap_servers, "group.id": "svc"})
    committed = consumer.committed([TopicPartition("readings", p) for p in range(3)], 10)
    consumer.close()
    assert sum(max(p.offset, 0) for p in committed) == len(DEVICES) * ROWS + 2  # (-1001: a partition unused)


def test_kafka_without_a_sample_period_or_replay_span_is_a_config_error(tmp_path):
    raw = kafka_config(type("Broker", (), {"bootstrap_servers": "127.0.0.1:1"})(), "readings", tmp_path)
    raw["kafka"].pop("replay_seconds")
    config = build(raw)
    with pytest.raises(ConfigError, match="kafka.replay_seconds"):
        build_kafka_source(config, lambda *_: None, Metrics(), [(20, None)], lambda devices: None)
    source = build_kafka_source(config, lambda *_: None, Metrics(), [(20, 1.0), (60, 0.5)], lambda devices: None)
    assert source.replay_seconds == 60 * 0.5 + config.kafka.replay_margin_seconds  # the longest span
