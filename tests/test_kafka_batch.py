"""The Kafka source's hand-over of one consume call, without a broker: the records that pass the
Kafka checks reach the pipeline as one batch, in record order, each tagged so that a window's
receipt names its record; the records refused by those checks are counted; every partition
moves its handed offset past its last record; and a bug outside the pipeline's own guard costs
the batch's uncounted records, counted, not the consumer thread."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import Message  # noqa: E402

from daemon.live.config import KafkaConfig, LimitsConfig, StreamConfig  # noqa: E402
from daemon.live.events import WindowJob  # noqa: E402
from daemon.live.ingest.buffers import DeviceBuffers  # noqa: E402
from daemon.live.ingest.kafka import KafkaSource, PartitionLedger, device_topic  # noqa: E402
from daemon.live.ingest.payload import PayloadParser  # noqa: E402
from daemon.live.ingest.pipeline import MessagePipeline  # noqa: E402
from daemon.live.telemetry.metrics import Metrics  # noqa: E402

NOW = 1_700_000_000.0
TOPIC = "plant"


def reading(ts: float, **extra: object) -> bytes:
    return json.dumps({"ts": ts, "a": 1.0, "b": 2.0, **extra}).encode()


def record(partition: int, offset: int, key: bytes | None, value: bytes | None) -> Message:
    return Message(topic=TOPIC, partition=partition, offset=offset, key=key, value=value)


class Recorder:
    """A handler that keeps the batches it was handed."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, bytes, object]]] = []

    def __call__(self, topic: str, payload: bytes, received: float) -> str:
        raise AssertionError("the Kafka source hands over batches")

    def handle_batch(self, records, received: float, claim=None) -> int:
        self.batches.append(list(records))
        return len(records)


def source(handler, metrics: Metrics) -> KafkaSource:
    settings = KafkaConfig(bootstrap_servers="127.0.0.1:9", topics=TOPIC, group_id="batch")
    made = KafkaSource(settings, handler, metrics, topic_of=device_topic("sensors/+/data", 1), replay_seconds=0,
                       drop_devices=lambda devices: None)
    for partition in (0, 1):
        made._ledgers[(TOPIC, partition)] = PartitionLedger(source=(TOPIC, partition))
    return made


@pytest.fixture
def metrics():
    return Metrics()


@pytest.fixture
def closing():
    made: list[KafkaSource] = []
    yield made.append
    for one in made:
        one._consumer.close()


def test_a_consume_call_reaches_the_pipeline_as_one_batch_of_the_records_that_pass_the_kafka_checks(metrics, closing):
    handler = Recorder()
    kafka = source(handler, metrics)
    closing(kafka)
    batch = [
        record(0, 10, b"d1", reading(NOW - 2)),
        record(0, 11, b"d1", None),  # tombstone
        record(0, 12, None, reading(NOW - 1)),  # missing_key
        record(1, 40, b"d2", reading(NOW - 2)),
        record(1, 41, b"d/2", reading(NOW - 2)),  # bad_device_id
        record(1, 42, b"d2", reading(NOW - 1, device="d9")),  # the parser's key_mismatch, on its one decode
        record(1, 43, b"d2", reading(NOW - 1, device="d2")),
        record(0, 13, b"d1", reading(NOW)),
    ]
    kafka._hand_over(batch, NOW)

    assert len(handler.batches) == 1
    assert [(t, p) for t, p, _ in handler.batches[0]] == [
        ("sensors/d1/data", batch[0].value()), ("sensors/d2/data", batch[3].value()),
        ("sensors/d2/data", batch[5].value()), ("sensors/d2/data", batch[6].value()),
        ("sensors/d1/data", batch[7].value())]
    assert [tag.offset() for _, _, tag in handler.batches[0]] == [10, 40, 42, 43, 13]
    counts = {r: n for r, n in metrics.messages.counts.items() if n}
    assert counts == {"tombstone": 1, "missing_key": 1, "bad_device_id": 1}
    assert kafka._ledgers[(TOPIC, 0)].handed == 14 and kafka._ledgers[(TOPIC, 1)].handed == 44
    assert kafka.devices == {"d1", "d2"}


def test_windows_completed_in_a_batch_claim_receipts_naming_their_records_in_offset_order(metrics, closing):
    jobs: list[WindowJob] = []
    buffers = DeviceBuffers(2, 2, StreamConfig(stride=1), LimitsConfig(), metrics)
    pipeline = MessagePipeline(PayloadParser(["a", "b"]), buffers, jobs.append, metrics.messages)
    kafka = source(pipeline, metrics)
    closing(kafka)
    kafka._hand_over([record(0, 0, b"d1", reading(NOW - 3)), record(0, 1, b"d1", b"not json"),
                      record(0, 2, b"d1", reading(NOW - 2)), record(0, 3, b"d1", reading(NOW - 1)),
                      record(1, 7, b"d2", reading(NOW - 2)), record(1, 8, b"d2", reading(NOW - 1))], NOW)

    assert [(job.device, job.receipt.source, job.receipt.offset) for job in jobs] == [
        ("d1", (TOPIC, 0), 2), ("d1", (TOPIC, 0), 3), ("d2", (TOPIC, 1), 8)]
    ledger = kafka._ledgers[(TOPIC, 0)]
    assert ledger.committable() == 2  # the oldest window not settled
    jobs[1].receipt.settle()
    assert ledger.committable() == 2
    jobs[0].receipt.settle()
    assert ledger.committable() == 4  # everything handed over
    assert metrics.messages.counts["ok"] == 5 and metrics.messages.counts["invalid_json"] == 1


class BrokenAfterTwo(Recorder):
    """Counts two records as the pipeline would, then fails outside any per-record guard."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.counts = metrics.messages.counts

    def handle_batch(self, records, received: float, claim=None) -> int:
        self.counts["ok"] += 2
        raise RuntimeError("a bug in the batch machinery")


def test_a_bug_outside_the_pipelines_guard_costs_the_uncounted_records_of_the_batch(metrics, closing):
    kafka = source(BrokenAfterTwo(metrics), metrics)
    closing(kafka)
    kafka._hand_over([record(0, i, b"d1", reading(NOW - 10 + i)) for i in range(5)] + [record(0, 5, b"d1", None)],
                     NOW)
    counts = {r: n for r, n in metrics.messages.counts.items() if n}
    assert counts == {"ok": 2, "internal_error": 3, "tombstone": 1}  # each record counted once
    assert kafka._ledgers[(TOPIC, 0)].handed == 6
