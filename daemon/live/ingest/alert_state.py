"""The alert-state topic: how a device's alert state follows it when its Kafka partition moves.

Each change of a device's alert state (raised or cleared) on a window the served model scored
for the first time is produced to a compacted topic (`kafka.alert_state_topic`), key = device,
value `{"alert": bool, "ts": window end time, "topic": data topic, "partition": n}`, to the
partition with the same number as the data record's, so no partitioner has to agree with the
bridge's. Compaction keeps the last record per device, so the topic stays about one record per
device that ever alerted.

A new owner of data partitions reads the same partition numbers of this topic from the start to
their end before it resumes, keeps each device's last record naming one of the partitions it
took over, and seeds that device's hysteresis with it (`AlertTracker.seed`): an alert that began
before the replayed span goes on without a second raise, and one that cleared is not raised
again from the replayed readings.

Ordering: a record is produced (handed to librdkafka) by the worker before the window's events
go to the sink, and the sink settles the window's receipt only after that, so every window a
commit covers had its record handed over first. The Kafka source flushes this producer before
each commit (`flush`) and commits only when nothing is left undelivered: a record of a window
whose offset is committed is in the topic, or counted as failed. Producing before the sink, not
settling the receipt on delivery, keeps the receipt's one job (the sink's write) as it is.

A record of a partition this instance no longer owns is not produced: the worker may still
score windows queued before a revocation, after the new owner has read the topic.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from daemon.live.telemetry.metrics import Metrics
from daemon.live.telemetry.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

LINGER_MS = 5  # transitions are rare; a short linger still batches a burst of them
LOAD_TIMEOUT_S = 10.0  # longest read of the topic on assignment
ADMIN_TIMEOUT_S = 10.0

TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """A device's alert state as of the end of one window, and the data partition it came from."""

    alert: bool
    ts: float  # end time of the window whose score changed the state
    topic: str
    partition: int

    def encode(self) -> bytes:
        return json.dumps({"alert": self.alert, "ts": self.ts, "topic": self.topic,
                           "partition": self.partition}).encode()

    @classmethod
    def decode(cls, value: bytes) -> AlertRecord:
        """Raises ValueError naming what is wrong."""
        doc = json.loads(value)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        alert, ts, topic, partition = (doc.get(k) for k in ("alert", "ts", "topic", "partition"))
        if (type(alert) is not bool or type(ts) not in (int, float) or not math.isfinite(ts)
                or type(topic) is not str or type(partition) is not int):
            raise ValueError("needs alert (bool), ts (number), topic (string) and partition (integer)")
        return cls(alert, float(ts), topic, partition)


class AlertStateTopic:
    """The producer and reader of `name`. `prepare` (on the first assignment) makes sure the topic
    is there; `publish` runs on the worker thread, everything else on the consumer thread."""

    def __init__(self, name: str, connection: dict[str, object], metrics: Metrics) -> None:
        """`connection`: librdkafka settings reaching the cluster (servers, security)."""
        self.name = name
        self._connection = connection
        self._records = metrics.alert_state_records
        self._failures = RateLimitedLog(log, interval=30.0)
        # One request in flight: a retried record cannot overtake the next change of its device.
        self._producer = Producer({**connection, "linger.ms": LINGER_MS, "acks": "all",
                                   "max.in.flight.requests.per.connection": 1, "log.connection.close": False})
        self._reader: Consumer | None = None
        self._ready = False
        self._owned: frozenset[TopicPartitionKey] = frozenset()  # replaced whole: read on the worker thread

    def prepare(self, data_topics: list[str]) -> bool:
        """Make sure the topic exists with at least as many partitions as the data topics: create
        it (compacted) if missing. False, logged, if it cannot be checked or has too few."""
        if self._ready:
            return True
        admin = AdminClient(self._connection)
        try:
            topics = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics  # all topics: asking for one may create it
            needed = max((len(topics[t].partitions) for t in data_topics if t in topics), default=0)
            if self.name not in topics:
                self._create(admin, max(needed, 1))
                self._ready = True
                return True
        except (KafkaException, TimeoutError) as exc:
            log.error("alert-state topic %r: cannot check or create it (alert states restart empty on the devices "
                      "this instance takes over): %s", self.name, exc)
            return False
        have = len(topics[self.name].partitions)
        if have < needed:
            log.error("alert-state topic %r has %d partitions, fewer than the %d of %s: alert states are not "
                      "recorded nor read (add partitions to it, or name another kafka.alert_state_topic)",
                      self.name, have, needed, ", ".join(data_topics))
            return False
        self._ready = True
        return True

    def _create(self, admin: AdminClient, partitions: int) -> None:
        """A compacted topic, every config explicit (some brokers leave unset ones out)."""
        config = {"cleanup.policy": "compact", "retention.ms": "-1"}
        future = admin.create_topics([NewTopic(self.name, partitions, config=config)],
                                     request_timeout=ADMIN_TIMEOUT_S)[self.name]
        try:
            future.result(ADMIN_TIMEOUT_S)
            log.info("created alert-state topic %r (%d partitions, compacted)", self.name, partitions)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another instance was first
                raise

    def own(self, partitions: Iterable[TopicPartitionKey]) -> None:
        self._owned = self._owned | frozenset(partitions)

    def disown(self, partitions: Iterable[TopicPartitionKey]) -> None:
        self._owned = self._owned - frozenset(partitions)

    # ---- worker thread ------------------------------------------------------------------------

    def publish(self, device: str, alert: bool, ts: float, source: TopicPartitionKey | None) -> None:
        """Record that `device` entered (`alert`) or left alert at the window ending at `ts`, read
        from data partition `source`. Nothing is produced for a partition no longer owned."""
        if source is None or source not in self._owned:
            return
        if not self._ready:
            self._failed(device, "the topic is not ready (see the error logged at assignment)")
            return
        try:
            self._producer.produce(self.name, AlertRecord(alert, ts, *source).encode(), device.encode(),
                                   partition=source[1], on_delivery=self._delivered)
        except (BufferError, KafkaException) as exc:
            self._failed(device, exc)
        self._producer.poll(0)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._records.labels(result="produced").inc()
        else:
            self._failed(msg.key().decode(errors="replace"), err)

    def _failed(self, device: str, why: object) -> None:
        self._records.labels(result="failed").inc()
        self._failures.warning("produce", "alert-state record of device %r to %r lost (its next owner may raise "
                               "or clear its alert again): %s", device, self.name, why)

    # ---- consumer thread ----------------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` s for every record produced to be delivered or failed; True when
        none is left."""
        return len(self._producer) == 0 or self._producer.flush(timeout) == 0

    def load(self, partitions: Iterable[TopicPartitionKey]) -> dict[str, AlertRecord]:
        """Each device's last record naming one of `partitions` (data topic, partition), read from
        the same partition numbers of this topic, from the start to their end."""
        wanted = set(partitions)
        numbers = sorted({partition for _, partition in wanted})
        if not self._ready or not numbers:
            return {}
        reader = self._reader
        if reader is None:
            # No group membership (assign only; the group id is required, never joined) and a short
            # fetch wait: the broker answers a fetch at the end of a partition at once.
            reader = self._reader = Consumer({**self._connection, "group.id": self.name + "-reader",
                                              "enable.auto.commit": False, "enable.partition.eof": True,
                                              "fetch.wait.max.ms": 10, "log.connection.close": False})
        latest: dict[str, AlertRecord] = {}
        at_end: set[int] = set()
        unreadable = 0
        began = time.monotonic()
        deadline = began + LOAD_TIMEOUT_S
        reader.assign([TopicPartition(self.name, n, OFFSET_BEGINNING) for n in numbers])
        try:
            while len(at_end) < len(numbers) and time.monotonic() < deadline:
                for msg in reader.consume(num_messages=1000, timeout=0.02):  # returns when full or timed out
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            at_end.add(msg.partition())
                        else:
                            self._failures.warning("read", "reading alert-state topic %r: %s", self.name, err)
                        continue
                    key, value = msg.key(), msg.value()
                    if not key:
                        unreadable += 1
                        continue
                    device = key.decode("utf-8", errors="replace")
                    if value is None:  # a delete marker: the device's state is gone
                        latest.pop(device, None)
                        continue
                    try:
                        record = AlertRecord.decode(value)
                    except ValueError:
                        unreadable += 1
                        continue
                    if (record.topic, record.partition) in wanted:
                        latest[device] = record
        finally:
            reader.unassign()
        if len(at_end) < len(numbers):
            log.error("alert-state topic %r: partitions %s not read to their end within %.0f s; the devices whose "
                      "records were not reached restart with no alert state", self.name,
                      sorted(set(numbers) - at_end), LOAD_TIMEOUT_S)
        if unreadable:
            log.warning("alert-state topic %r: %d records without a device key or with an unreadable value "
                        "skipped", self.name, unreadable)
        self._records.labels(result="loaded").inc(len(latest))
        log.info("alert-state topic %r: %d alert states read for %s in %.2f s", self.name, len(latest),
                 ", ".join(f"{t}[{p}]" for t, p in sorted(wanted)), time.monotonic() - began)
        return latest

    def close(self, timeout: float) -> None:
        """Deliver what is produced (up to `timeout` s) and close the reader."""
        if not self.flush(timeout):
            log.warning("alert-state topic %r: %d records not delivered at stop", self.name, len(self._producer))
        if self._reader is not None:
            self._reader.close()
            self._reader = None
