"""The Kafka source against a real Kafka-protocol broker (Tansu, memory storage): records keyed
by device reach the message pipeline and become windows, bad records are counted by reason,
a broker that is down at start is waited for, a consumer group splits the partitions by
device, and a partition that moves is rewound so its devices' windows are full again on the
new owner, without skipping a record nobody has read.

Tansu answers `offsets_for_times` with offset 0, so the rewinds here also exercise the
timestamp filter that skips records older than the replay span."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from servers import Tansu, wait_until  # noqa: E402

from daemon.live.config import KafkaConfig, LimitsConfig, StreamConfig  # noqa: E402
from daemon.live.events import WindowJob  # noqa: E402
from daemon.live.ingest.buffers import DeviceBuffers  # noqa: E402
from daemon.live.ingest.kafka import KafkaSource, device_topic  # noqa: E402
from daemon.live.ingest.pipeline import MessagePipeline  # noqa: E402
from daemon.live.ingest.payload import PayloadParser  # noqa: E402
from daemon.live.telemetry.metrics import Metrics  # noqa: E402
from daemon.live.worker import WindowQueue  # noqa: E402

FEATURES = ["a", "b"]
WINDOW = 4
PARTITIONS = 3
DEVICES = [f"dev-{i:02d}" for i in range(20)]
MAX_PAYLOAD = 512
BUGGY_DEVICE = "dev-bug"  # the test pipeline's parser raises for this device


@dataclass
class Instance:
    """One anomalyd ingest stack (pipeline, buffers, queue, metrics) behind a KafkaSource."""

    source: KafkaSource
    buffers: DeviceBuffers
    queue: WindowQueue
    metrics: Metrics
    devices_seen: set[str] = field(default_factory=set)
    dropped: list[set[str]] = field(default_factory=list)

    def result(self, name: str) -> float:
        return self.metrics.messages.counts[name]

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels or None) or 0.0

    def windows(self) -> list[WindowJob]:
        """The queued windows, taken without settling their receipts (a sink yet to write them)."""
        return self.queue.take(100_000, 0, block=False)

    def windows_by_device(self) -> dict[str, int]:
        """The queued windows per device, taken and settled (a sink that wrote them)."""
        counts: dict[str, int] = defaultdict(int)
        for job in self.windows():
            job.receipt.settle()
            counts[job.device] += 1
        return dict(counts)


class BuggyParser(PayloadParser):
    """The production parser, with a bug for one device."""

    def parse_fields(self, topic: str, payload: bytes, now: float):
        if topic == f"sensors/{BUGGY_DEVICE}/data":
            raise RuntimeError("a bug in the pipeline")
        return super().parse_fields(topic, payload, now)


@dataclass
class SeenBy:
    """The pipeline, noting the devices whose records reached it."""

    pipeline: MessagePipeline
    seen: set[str]

    def __call__(self, topic: str, payload: bytes, received: float) -> str:
        self.seen.add(topic.split("/")[1])
        return self.pipeline(topic, payload, received)

    def handle_batch(self, records, received: float, claim=None) -> int:
        self.seen.update(topic.split("/")[1] for topic, _, _ in records)
        return self.pipeline.handle_batch(records, received, claim)


def instance(tansu: Tansu, topic: str, group: str, replay_seconds: float = 120.0, settle_seconds: float = 0.5,
             **settings) -> Instance:
    metrics = Metrics()
    queue = WindowQueue(100_000, metrics)
    buffers = DeviceBuffers(WINDOW, len(FEATURES), StreamConfig(stride=1), LimitsConfig(max_devices=1000), metrics)
    config = KafkaConfig(bootstrap_servers=tansu.bootstrap_servers, topics=topic, group_id=group,
                         session_timeout_ms=6000, commit_interval_ms=200, **settings)
    pipeline = MessagePipeline(BuggyParser(FEATURES, max_payload_bytes=MAX_PAYLOAD, device_field=config.device_field),
                               buffers, queue.put, metrics.messages)
    dropped: list[set[str]] = []

    def drop(devices: set[str]) -> None:
        dropped.append(set(devices))
        buffers.drop_devices(devices)

    seen: set[str] = set()
    source = KafkaSource(config, SeenBy(pipeline, seen), metrics, topic_of=device_topic("sensors/+/data", 1),
                         replay_seconds=replay_seconds, drop_devices=drop,
                         settle_seconds=settle_seconds)
    return Instance(source, buffers, queue, metrics, seen, dropped)


def produce(tansu: Tansu, topic: str, records: list[tuple[bytes | None, bytes | None, float]]) -> None:
    """(key, value, timestamp in epoch seconds) -> the topic, with the timestamp as record time."""
    producer = Producer({"bootstrap.servers": tansu.bootstrap_servers, "linger.ms": 5})
    for key, value, ts in records:
        producer.produce(topic, key=key, value=value, timestamp=int(ts * 1000))
    assert producer.flush(10) == 0


def readings(devices: list[str], stamps: list[float]) -> list[tuple[bytes, bytes, float]]:
    return [(d.encode(), json.dumps({"ts": ts, "a": ts % 7, "b": 1.0}).encode(), ts) for ts in stamps for d in devices]


def committed_offsets(tansu: Tansu, topic: str, group: str) -> list[int]:
    consumer = Consumer({"bootstrap.servers": tansu.bootstrap_servers, "group.id": group})
    try:
        return [p.offset for p in consumer.committed([TopicPartition(topic, i) for i in range(PARTITIONS)], 10)]
    finally:
        consumer.close()


@pytest.fixture
def stopper():
    """Stops every started source at teardown, in parallel (each close may take a while)."""
    started: list[KafkaSource] = []
    yield started.append
    threads = [threading.Thread(target=s.stop) for s in started]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def start(stopper, inst: Instance) -> Instance:
    inst.source.start()
    stopper(inst.source)
    return inst


# ---- one consumer ---------------------------------------------------------------------------

def test_keyed_records_reach_the_pipeline_become_windows_and_are_committed(tansu, stopper):
    tansu.create_topic("readings", PARTITIONS)
    now = time.time()
    records = readings(DEVICES, [now - 20 + i for i in range(10)])
    produce(tansu, "readings", records)
    one = start(stopper, instance(tansu, "readings", "g1"))

    wait_until(lambda: one.result("ok") == len(records), 20, "every record handed to the pipeline")
    assert one.source.subscribed
    assert one.sample("anomalyd_kafka_assigned_partitions") == PARTITIONS
    assert one.sample("anomalyd_kafka_rebalances_total", event="assigned") == 1
    assert one.windows_by_device() == {d: 10 - WINDOW + 1 for d in DEVICES}
    assert one.sample("anomalyd_kafka_replayed_total") == 0  # nothing was committed before: all new
    assert one.sample("anomalyd_kafka_connected") == 1

    def lag() -> list[float]:
        return [s.value for m in one.metrics.registry.collect() if m.name == "anomalyd_kafka_consumer_lag"
                for s in m.samples]
    wait_until(lambda: lag() == [0.0] * PARTITIONS, 10, "zero consumer lag exported for every partition")

    one.source.stop()
    assert sum(committed_offsets(tansu, "readings", "g1")) == len(records)
    assert one.dropped == [set(DEVICES)]  # close revokes every partition


def test_a_new_owner_replays_what_was_read_within_the_span_and_skips_nothing_unread(tansu, stopper):
    tansu.create_topic("restart", PARTITIONS)
    now = time.time()
    read = readings(DEVICES, [now - 20 + i for i in range(5)])
    produce(tansu, "restart", read)
    first = start(stopper, instance(tansu, "restart", "g4"))
    wait_until(lambda: first.result("ok") == len(read), 20, "the first owner read everything")
    first.windows_by_device()  # the sink holds every window
    first.source.stop()
    # Unread records whose record time is older than the replay span (a bridge forwarding a
    # backlog with the original times) are past the committed offset: they must all be read.
    produce(tansu, "restart", [(key, value, now - 5000) for key, value, _ in readings(DEVICES, [now - 1])])

    second = start(stopper, instance(tansu, "restart", "g4"))
    wait_until(lambda: second.result("ok") == len(read) + len(DEVICES), 20, "replay and unread records handled")
    assert second.sample("anomalyd_kafka_replayed_total") == len(read)
    assert second.sample("anomalyd_kafka_replay_skipped_total") == 0
    assert second.windows_by_device() == {d: 5 + 1 - WINDOW + 1 for d in DEVICES}


def test_bad_records_are_counted_by_reason_and_never_reach_a_window(tansu, stopper):
    tansu.create_topic("mixed", PARTITIONS)
    now = time.time()
    good = {"ts": now - 1, "a": 1.0, "b": 2.0}
    produce(tansu, "mixed", [
        (b"dev-01", b"not json", now),
        (b"dev-02", json.dumps({**good, "device": "dev-99"}).encode(), now),  # key_mismatch
        (b"dev-03", json.dumps({**good, "pad": "x" * MAX_PAYLOAD}).encode(), now),  # oversized
        (b"dev-04", None, now),  # tombstone
        (None, json.dumps(good).encode(), now),  # missing_key
        (b"dev/05", json.dumps(good).encode(), now),  # bad_device_id: would be a topic level of its own
        (b"dev-06", json.dumps({**good, "device": "dev-06"}).encode(), now),  # ok: the payload agrees
        (b"dev-07", json.dumps({"ts": now - 1, "a": 1.0}).encode(), now),  # missing_feature, as over MQTT
        (BUGGY_DEVICE.encode(), json.dumps(good).encode(), now),  # internal_error; the consumer goes on
        (b"dev-06", json.dumps({**good, "ts": now}).encode(), now),
    ])
    one = start(stopper, instance(tansu, "mixed", "g2"))

    wait_until(lambda: sum(one.metrics.messages.counts.values()) == 10, 20, "every record counted")
    assert {r: n for r, n in one.metrics.messages.counts.items() if n} == {
        "invalid_json": 1, "key_mismatch": 1, "oversized": 1, "tombstone": 1, "missing_key": 1, "bad_device_id": 1,
        "ok": 2, "missing_feature": 1, "internal_error": 1}
    assert len(one.buffers) == 1 and one.devices_seen <= {f"dev-0{i}" for i in (1, 2, 3, 6, 7)} | {BUGGY_DEVICE}


def test_a_broker_down_at_start_is_waited_for_and_then_consumed(tansu, stopper):
    tansu.stop()
    one = start(stopper, instance(tansu, "late", "g5"))
    time.sleep(0.5)
    assert not one.source.subscribed and one.sample("anomalyd_kafka_connected") == 0
    tansu.start()
    tansu.create_topic("late", PARTITIONS)
    records = readings(DEVICES[:3], [time.time() - 1])
    produce(tansu, "late", records)
    wait_until(lambda: one.result("ok") == len(records), 20, "records read once the broker is up")
    wait_until(lambda: one.source.subscribed, 5, "healthy again")
    assert one.sample("anomalyd_kafka_connected") == 1


# ---- a consumer group -----------------------------------------------------------------------

def test_a_group_splits_partitions_by_device_and_a_leaving_member_partitions_are_rewound(tansu, stopper):
    tansu.create_topic("plant", PARTITIONS)
    now = time.time()
    old = [now - 1000 + i for i in range(3)]  # older than the replay span: never replayed
    recent = [now - 30 + i for i in range(6)]
    produce(tansu, "plant", readings(DEVICES, old + recent))
    total = len(DEVICES) * len(old + recent)
    a, b = (start(stopper, instance(tansu, "plant", "g3", replay_seconds=120.0, auto_offset_reset="earliest"))
            for _ in range(2))

    def split() -> bool:
        return (len(a.source.assigned) + len(b.source.assigned) == PARTITIONS and a.source.assigned
                and b.source.assigned and a.result("ok") + b.result("ok") == total)

    wait_until(split, 25, "both members own partitions and every record is handled")
    assert a.source.assigned.isdisjoint(b.source.assigned)
    # Each device is on one member: the one that owns its partition.
    assert a.source.devices.isdisjoint(b.source.devices) and a.source.devices | b.source.devices == set(DEVICES)
    shared = a.devices_seen & b.devices_seen  # read by both only if a partition moved while the group formed
    assert shared <= set().union(*a.dropped, *b.dropped)
    a_devices = a.source.devices
    a.windows_by_device()  # the sink holds every window so far
    b.windows_by_device()
    replayed_before = b.sample("anomalyd_kafka_replayed_total")
    skipped_before = b.sample("anomalyd_kafka_replay_skipped_total")
    assigned_before = b.sample("anomalyd_kafka_rebalances_total", event="assigned")

    a.source.stop()  # commits, leaves the group: B gets A's partitions and rewinds them
    wait_until(lambda: len(b.source.assigned) == PARTITIONS, 20, "the remaining member owns every partition")
    replayed = len(a_devices) * len(recent)
    wait_until(lambda: b.sample("anomalyd_kafka_replayed_total") - replayed_before == replayed, 10,
               "A's recent records replayed")
    assert b.source.devices == set(DEVICES) and not a.source.devices and a.dropped[-1] == a_devices
    assert b.sample("anomalyd_kafka_replay_skipped_total") - skipped_before == len(a_devices) * len(old)
    assert b.sample("anomalyd_kafka_rebalances_total", event="assigned") == assigned_before + 1
    # The replay refilled A's devices' windows on B ...
    assert b.windows_by_device() == {d: len(recent) - WINDOW + 1 for d in a_devices}
    # ... so one new reading per device completes a window at once, on B, for every device.
    produce(tansu, "plant", readings(DEVICES, [now]))
    wait_until(lambda: len(b.queue) == len(DEVICES), 10, "one window per device from its next reading")
    assert b.windows_by_device() == dict.fromkeys(DEVICES, 1)
