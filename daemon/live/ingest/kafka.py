"""Kafka input: one confluent-kafka consumer in a consumer group, feeding the message pipeline
from its own thread.

Records: the key is the device id, the value the JSON payload the MQTT source takes. Each
record goes to the same `MessagePipeline` as an MQTT message, under a topic built from its key
that the pipeline's topic rule (mqtt.topic, mqtt.device_level) maps back to the key, so both
sources share one parser, one set of input rules and one `anomalyd_messages_total`. What only
Kafka has is checked here and counted under its own result: `missing_key` and `tombstone`
(value None). `key_mismatch` (the payload's `device_field` names another device) is the
parser's, built with `kafka.device_field`, so a payload is decoded once.

Group semantics that keep windows whole:
- `cooperative-sticky` assignment: a rebalance moves only the partitions that must move, so
  the other devices' windows keep running; `group.instance.id` (static membership) lets a
  restarted instance get its partitions back without a rebalance.
- On assignment each new partition is rewound by `replay_seconds` (`offsets_for_times`), so
  its devices' windows are full again by the time its first unread record arrives. With a
  committed offset, the span ends at the last committed record's time, not at now: the
  partition starts at that record, read only for its time, then seeks back (`_seek_back`).
  A crashed member's partitions move only once its session expired, and the windows of the
  records it had not committed need the readings before them. Records below the committed
  offset are counted as replayed; their windows only rebuild the alert states (the previous
  owner wrote them: their offsets were committed only once its sink held them). Records older than the span are skipped
  (counted) in case the broker's time lookup returns an earlier offset than asked for (Tansu
  answers 0).
- With `kafka.alert_state_topic`, each new partition's devices are first seeded with the alert
  states their previous owner recorded (`daemon.live.ingest.alert_state`: read before the
  partition is consumed, so before its replay is scored), and each commit waits for the
  alert-state records produced so far to be delivered.
- On revocation (or loss) the partitions' devices are handed to `drop_devices`, which forgets
  their buffers and alert states: another instance scores them from now on.

Offsets, at-least-once up to the sink: auto-commit is off. Each window a record completes
carries a receipt naming the record's offset (`PartitionLedger.claim`, through the pipeline's
`claim`); the sink settles it once the window is written or spooled, and so does any stage that
drops the window (a counted loss: holding the offset back would not bring the window back while
the instance runs, and would make every restart re-read everything since). What a partition
commits (`PartitionLedger.committable`) is the offset of its oldest window not yet settled, or,
when none is in flight, the offset after the last record handed over: a record that completes
no window is committable once every earlier window of its partition is settled. Commits run
every `commit_interval_ms`, on revocation and at stop (after waiting up to `settle_seconds`
for the windows in flight). After a crash the next owner starts at the committed offset, so it
reads again every record whose window the sink may not hold, never skips one; the rewind
before it refills the windows, reaching `replay_seconds` behind the time of the last committed
record however long ago that was (`_seek_back`). The windows in flight at a move can thus be
written by both owners, with the same series key and timestamp: InfluxDB keeps one.

Everything (consume, rebalance callbacks, statistics, commits) runs on the consumer thread,
which is the only thread that touches the pipeline, so the pipeline needs no locks.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Callable, Iterable

from confluent_kafka import (OFFSET_INVALID, TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, Message,
                             TopicPartition)

from daemon.core.errors import ConfigError
from daemon.live.config import Config, KafkaConfig
from daemon.live.ingest.alert_state import AlertRecord, AlertStateTopic
from daemon.live.ingest.payload import DEVICE_ID
from daemon.live.ingest.pipeline import MessageHandler, Record
from daemon.live.telemetry.metrics import Metrics
from daemon.live.telemetry.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.2  # longest wait in consume(): bounds how long stop() takes
OFFSETS_TIMEOUT_S = 10.0  # committed() and offsets_for_times() on assignment
STATS_INTERVAL_MS = 2000  # librdkafka statistics: consumer lag and broker state
_KEY_CACHE = 16384  # record keys of a partition whose device and topic are remembered; emptied when full
_NEW, _REPLAY, _SKIP = "new", "replay", "skip"  # what a record of a partition being rewound is
SETTLE_SECONDS = 10.0  # at stop: longest wait for windows in flight before the last commit
ALERT_STATE_FLUSH_S = 2.0  # before a commit: longest wait for alert-state records (else the commit waits)

TopicPartitionKey = tuple[str, int]


def replay_span(window: int, sample_period: float, margin: float) -> float:
    """Seconds to rewind a newly assigned partition behind its last committed record: `window`
    samples refill a device's ring, so its first window is complete again where the previous
    owner's commits stopped; the margin covers late and jittery readings."""
    return window * sample_period + margin


def device_topic(pattern: str, device_level: int) -> Callable[[str], str]:
    """A function device id -> a topic that `PayloadParser(topic=pattern, device_level=...)`
    maps back to that device: the pattern with the device at its level, '+' levels filled
    with '_' and a trailing '#' dropped (or padded up to the device level)."""
    levels = pattern.split("/")
    if levels[-1] == "#":
        levels = levels[:-1]
    levels += ["_"] * (device_level + 1 - len(levels))
    levels = ["_" if level == "+" else level for level in levels]
    prefix = "".join(level + "/" for level in levels[:device_level])
    suffix = "".join("/" + level for level in levels[device_level + 1:])
    return lambda device: prefix + device + suffix


def consumer_settings(settings: KafkaConfig) -> dict[str, object]:
    """librdkafka configuration from the `kafka` section (callbacks are added by KafkaSource)."""
    conf: dict[str, object] = {
        **connection_settings(settings),
        "group.id": settings.group_id,
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": settings.auto_offset_reset,
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": min(3000, settings.session_timeout_ms // 3),
        "statistics.interval.ms": STATS_INTERVAL_MS,
        "log.connection.close": False,  # idle connections closed by the broker are routine
    }
    if settings.group_instance_id:
        conf["group.instance.id"] = settings.group_instance_id
    return conf


def connection_settings(settings: KafkaConfig) -> dict[str, object]:
    """What every client of the `kafka` section needs to reach the cluster: servers, client id,
    security."""
    conf: dict[str, object] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        "security.protocol": settings.security_protocol,
    }
    if settings.security_protocol.startswith("sasl_"):
        conf["sasl.mechanism"] = settings.sasl_mechanism
        conf["sasl.username"] = settings.username
        conf["sasl.password"] = settings.password or ""
    if settings.security_protocol.endswith("ssl"):
        tls = settings.tls
        for key, path in (("ssl.ca.location", tls.ca_file), ("ssl.certificate.location", tls.cert_file),
                          ("ssl.key.location", tls.key_file)):
            if path is not None:
                conf[key] = path
    return conf


class _LibrdkafkaLog:
    """librdkafka's own log lines, rate-limited per facility: while a broker is down it reports
    every reconnect attempt, many a second. confluent-kafka calls `log(level, fmt, *args)`."""

    def __init__(self) -> None:
        self._limited = RateLimitedLog(logging.getLogger(__name__ + ".librdkafka"), interval=30.0)

    def log(self, level: int, msg: str, facility: str, *args: object) -> None:
        self._limited.log(level, "librdkafka:" + facility, msg, facility, *args)


class _Claim:
    """A receipt (`daemon.live.events.Receipt`) for the window completed by the record at `offset`."""

    __slots__ = ("offset", "settled", "source")
    replay = False

    def __init__(self, offset: int, source: TopicPartitionKey | None = None) -> None:
        self.offset = offset
        self.settled = False
        self.source = source  # the record's (topic, partition)

    def settle(self) -> None:  # any thread; a bool store needs no lock
        self.settled = True


class _Replayed:
    """The receipt of a window completed by a replayed record: scored for the alert state only."""

    replay = True
    source = None

    def settle(self) -> None:
        pass


_REPLAYED = _Replayed()


class PartitionLedger:
    """What one assigned partition may commit (module docstring: the rule). `claim` and
    `committable` run on the consumer thread; a claim's `settle` on any thread."""

    def __init__(self, handed: int = -1, source: TopicPartitionKey | None = None) -> None:
        self.handed = handed  # the offset after the last record handed to the pipeline (-1: none yet)
        self.source = source  # the partition's (topic, partition), named by its receipts
        self._open: deque[_Claim] = deque()  # windows not known to be settled, in offset order

    def claim(self, offset: int) -> _Claim:
        """The receipt of a window completed by the record at `offset` (records are handed in
        offset order, so claims are too)."""
        claim = _Claim(offset, self.source)
        self._open.append(claim)
        return claim

    def committable(self) -> int:
        """The offset of the oldest window not settled, else `handed`."""
        open_ = self._open
        while open_ and open_[0].settled:
            open_.popleft()
        return open_[0].offset if open_ else self.handed

    @property
    def in_flight(self) -> int:
        """Windows claimed and not settled (any thread)."""
        return sum(not claim.settled for claim in list(self._open))


@dataclass(slots=True)
class _Rewind:
    """A partition being re-read after assignment."""

    replay_end: int  # the committed offset: records below it were consumed before (-1: none committed)
    not_before_ms: int  # record timestamps before this are older than the replay span


class KafkaSource:
    """Consumes `settings.topics` in group `settings.group_id` on its own thread and hands the
    records of each consume call to `handler.handle_batch` as (topic_of(key), value, tag). `start`, `stop`, `connected`,
    `subscribed` and `swap_handler` work as on `MqttIngest`."""

    def __init__(self, settings: KafkaConfig, handler: MessageHandler, metrics: Metrics, *,
                 topic_of: Callable[[str], str], replay_seconds: float,
                 drop_devices: Callable[[set[str]], object], settle_seconds: float = SETTLE_SECONDS,
                 alert_state: AlertStateTopic | None = None,
                 seed_alerts: Callable[[dict[str, AlertRecord]], object] | None = None) -> None:
        """`topic_of(device)` makes a topic the pipeline's topic rule maps back to `device`;
        `drop_devices(devices)` forgets the state of devices whose partitions moved away;
        `settle_seconds` bounds the wait at stop for windows the sink has not settled;
        `seed_alerts(records)` sets the alert states of devices taken over, as read from
        `alert_state` (None: alert states restart empty on a move)."""
        self.settings = settings
        self.replay_seconds = replay_seconds
        self.settle_seconds = settle_seconds
        self._handler = handler
        self._metrics = metrics
        self._topic_of = topic_of
        self._drop_devices = drop_devices
        self._alert_state = alert_state if seed_alerts is not None else None
        self._seed_alerts = seed_alerts
        self._counts = metrics.messages.counts
        self._rejects = RateLimitedLog(log)
        self._log = RateLimitedLog(log, interval=30.0)
        # Per partition, record key -> (device, pipeline topic): a key is learnt once in each
        # partition it is read from, and that is when its device joins the partition's devices.
        self._keys_of: defaultdict[TopicPartitionKey, dict[bytes, tuple[str, str]]] = defaultdict(dict)
        self._assigned: set[TopicPartitionKey] = set()
        self._devices_of: defaultdict[TopicPartitionKey, set[str]] = defaultdict(set)
        self._rewinds: dict[TopicPartitionKey, _Rewind] = {}
        self._unprobed: dict[TopicPartitionKey, int] = {}  # committed offset, until its record is read
        self._ledgers: dict[TopicPartitionKey, PartitionLedger] = {}  # of the assigned partitions
        self._committed: dict[TopicPartitionKey, int] = {}  # offsets committed (or being committed)
        self._connected = False
        self._joined = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer = Consumer({**consumer_settings(settings), "logger": _LibrdkafkaLog(),
                                   "error_cb": self._guard(self._on_error), "stats_cb": self._guard(self._on_stats),
                                   "on_commit": self._guard(self._on_commit)})

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def subscribed(self) -> bool:
        """Connected and a member of the group (what /healthz should check)."""
        return self._connected and self._joined

    @property
    def assigned(self) -> set[TopicPartitionKey]:
        """(topic, partition) pairs this instance consumes."""
        return set(self._assigned)

    @property
    def devices(self) -> set[str]:
        """Devices read from the partitions this instance consumes."""
        return set().union(*list(self._devices_of.values()))

    def swap_handler(self, handler: MessageHandler) -> None:
        """Route records to `handler` from the next batch on (config/model reload)."""
        self._handler = handler

    def start(self) -> None:
        log.info("consuming %s from %s in group %r (%s membership), replaying %.0f s on assignment",
                 self.settings.topics, self.settings.bootstrap_servers, self.settings.group_id,
                 f"static as {self.settings.group_instance_id!r}" if self.settings.group_instance_id else "dynamic",
                 self.replay_seconds)
        self._thread = threading.Thread(target=self._run, name="kafka-consumer", daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> int:
        """Windows handed on and not yet settled (written, spooled or dropped)."""
        return sum(ledger.in_flight for ledger in list(self._ledgers.values()))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop consuming, wait up to `settle_seconds` for the windows in flight, commit what is
        settled, leave the group and end the thread. The pipeline's downstream (worker, sink)
        must still run meanwhile."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("kafka consumer thread did not end within %.0f s", timeout)

    # ---- consumer thread --------------------------------------------------------------------

    def _run(self) -> None:
        consumer = self._consumer
        consumer.subscribe(self.settings.topic_list, on_assign=self._guard(self._on_assign),
                           on_revoke=self._guard(self._on_revoke), on_lost=self._guard(self._on_lost))
        commit_every = self.settings.commit_interval_ms / 1000
        next_commit = time.monotonic() + commit_every
        batch_size = self.settings.batch_size
        try:
            while not self._stopping.is_set():
                try:
                    messages = consumer.consume(num_messages=batch_size, timeout=POLL_TIMEOUT_S)
                except KafkaException as exc:
                    self._log.error("consume", "kafka consume failed: %s", exc)
                    time.sleep(POLL_TIMEOUT_S)
                    continue
                if messages:
                    self._hand_over(messages, time.time())
                if time.monotonic() >= next_commit:
                    next_commit = time.monotonic() + commit_every
                    self._commit(self._assigned, asynchronous=True)
        finally:
            self._await_settled()
            self._commit(self._assigned, asynchronous=False)
            consumer.close()  # revokes (and commits) what is left, leaves the group unless static
            if self._alert_state is not None:
                self._alert_state.close(ALERT_STATE_FLUSH_S)
            self._connected = False
            self._metrics.kafka_connected.set(0)

    def _await_settled(self) -> None:
        deadline = time.monotonic() + self.settle_seconds
        while (left := self.in_flight) and time.monotonic() < deadline:
            time.sleep(0.02)
        if left:
            log.warning("stopping with %d windows not yet settled by the sink: their records are read again by "
                        "the next owner", left)

    def _claim(self, tag: Message | _Replayed) -> _Claim | _Replayed:
        """`claim` for the pipeline: the receipt of a window completed by the record `tag` names
        (`_hand_over`). A replayed record's window was written by the previous owner (its record
        is below the committed offset): it rebuilds the alert state and is not written again."""
        if tag is _REPLAYED:
            return _REPLAYED
        offset = tag.offset()
        ledger = self._ledgers.get((tag.topic(), tag.partition()))
        return _Claim(offset) if ledger is None else ledger.claim(offset)

    def _guard(self, callback: Callable[..., None]) -> Callable[..., None]:
        """`callback` for librdkafka: an exception escaping it would surface from consume() and
        end the consumer thread, so it is counted as internal_error and logged instead. A
        failed on_assign still gets its partitions assigned: confluent-kafka assigns them when
        the callback did not."""
        def guarded(*args: object) -> None:
            try:
                callback(*args)
            except Exception as exc:
                self._counts["internal_error"] += 1
                self._log.error("internal:" + callback.__name__, "bug in kafka callback %s: %r", callback.__name__,
                                exc, exc_info=True)
        return guarded

    def _hand_over(self, messages: list[Message], now: float) -> None:
        """Check each record's key and value, hand the records that pass to the pipeline as one
        batch, then note the offsets. A batch holds runs of records of one partition: what
        depends only on the partition (skipped after a seek, its key cache, its last offset)
        is looked up once a run. Each record handed on is tagged with itself (its receipt is
        claimed only if it completes a window) or, when replayed, with the replay receipt."""
        keys: dict[bytes, tuple[str, str]] = {}
        rewinds = self._rewinds
        unprobed = self._unprobed
        records: list[Record] = []
        hand = records.append
        last: dict[TopicPartitionKey, int] = {}
        seeked: set[TopicPartitionKey] = set()  # their records left in this batch come again after the seek
        replayed = skipped = 0
        run_topic, run_partition = None, -1
        tp: TopicPartitionKey = ("", -1)
        run_seeked = False
        run_last: Message | None = None  # the run's last record not skipped by a seek
        for msg in messages:
            if msg.error() is not None:
                self._message_error(msg)
                continue
            partition, topic_name = msg.partition(), msg.topic()
            if partition != run_partition or topic_name != run_topic:
                if run_last is not None:
                    last[tp] = run_last.offset()
                    run_last = None
                run_topic, run_partition = topic_name, partition
                tp = (topic_name, partition)
                run_seeked = tp in seeked
                keys = self._keys_of[tp]
            if run_seeked or (unprobed and tp in unprobed and self._seek_back(tp, msg)):
                seeked.add(tp)
                run_seeked = True
                continue
            run_last = msg
            try:
                tag: Message | _Replayed = msg
                if rewinds and tp in rewinds:
                    step = self._replay_step(tp, msg.offset(), msg)
                    if step is _SKIP:
                        skipped += 1
                        continue
                    if step is _REPLAY:
                        tag = _REPLAYED
                        replayed += 1
                value = msg.value()
                if value is None:
                    self._reject("tombstone", "record at %s[%d]@%d has no value (tombstone)", *tp, msg.offset())
                    continue
                entry = keys.get(msg.key())
                if entry is None:
                    entry = self._learn_key(msg.key(), tp)
                    if entry is None:
                        continue
                hand((entry[1], value, tag))
            except Exception as exc:  # a bug must cost one counted record, not the consumer thread
                self._counts["internal_error"] += 1
                self._log.error("internal:record", "bug handling a kafka record: %r", exc, exc_info=True)
        if run_last is not None:
            last[tp] = run_last.offset()
        if records:
            self._handle(records, now)
        ledgers = self._ledgers
        for tp, offset in last.items():
            ledger = ledgers.get(tp)
            if ledger is not None and offset + 1 > ledger.handed:
                ledger.handed = offset + 1
        if replayed:
            self._metrics.kafka_replayed.inc(replayed)
        if skipped:
            self._metrics.kafka_replay_skipped.inc(skipped)

    def _handle(self, records: list[Record], now: float) -> None:
        """The pipeline's batch entry. It counts a bug per record; one outside them costs the
        records of the batch it had not counted yet, as internal_error."""
        counts = self._counts
        before = sum(counts.values())
        try:
            self._handler.handle_batch(records, now, self._claim)
        except Exception as exc:
            counts["internal_error"] += max(0, len(records) - (sum(counts.values()) - before))
            self._log.error("internal:batch", "bug handling a batch of %d kafka records: %r", len(records), exc,
                            exc_info=True)

    def _seek_back(self, tp: TopicPartitionKey, msg: Message) -> bool:
        """The record before a newly assigned partition's committed offset, the last one its
        previous owner committed: seek back to `replay_seconds` before its time, so the windows
        of the records from the committed offset on are full again however long ago the
        previous owner stopped (a crashed member's partitions move only once its session
        expired). True: the partition was re-positioned, its other records in this batch come
        again; False: hand this record on as it is."""
        stored = self._unprobed.pop(tp)
        if msg.offset() != stored - 1:  # that record is gone (retention, compaction): start unrewound
            log.warning("cannot rewind %s[%d]: the record before its committed offset %d is gone; its devices' "
                        "windows restart empty", *tp, stored)
            return self._seek(tp, stored)
        kind, ts = msg.timestamp()
        last_ms = int(time.time() * 1000) if kind == TIMESTAMP_NOT_AVAILABLE else ts
        not_before_ms = last_ms - int(self.replay_seconds * 1000)
        try:
            found = self._consumer.offsets_for_times([TopicPartition(*tp, not_before_ms)], timeout=OFFSETS_TIMEOUT_S)
            start = found[0].offset if found[0].error is None else -1
            if 0 <= start < stored:
                self._consumer.seek(TopicPartition(*tp, start))
                self._rewinds[tp] = _Rewind(stored, not_before_ms)
            else:  # the broker knows no earlier record in the span: no replay
                self._consumer.seek(TopicPartition(*tp, stored))
        except KafkaException as exc:
            log.error("cannot rewind %s[%d] (its devices' windows restart empty): %s", *tp, exc)
            return self._seek(tp, stored)
        return True

    def _seek(self, tp: TopicPartitionKey, offset: int) -> bool:
        """Position `tp` at `offset`. False if that fails too: the records are then handed on
        from where they are (the one before the committed offset a second time: a duplicate,
        never a gap)."""
        try:
            self._consumer.seek(TopicPartition(*tp, offset))
            return True
        except KafkaException as exc:
            log.error("cannot seek %s[%d] to %d: %s", *tp, offset, exc)
            return False

    def _replay_step(self, tp: TopicPartitionKey, offset: int, msg: Message) -> str:
        """What a record of a partition being rewound is: replayed (read before, inside the
        replay span), skipped (older than the span) or new (the rewind is over)."""
        rewind = self._rewinds[tp]
        kind, ts = msg.timestamp()
        recent = kind == TIMESTAMP_NOT_AVAILABLE or ts >= rewind.not_before_ms
        if offset >= rewind.replay_end and (rewind.replay_end >= 0 or recent):
            del self._rewinds[tp]  # caught up: this and every later record is new
            return _NEW
        if not recent:
            return _SKIP
        return _REPLAY if offset < rewind.replay_end else _NEW

    def _learn_key(self, key: bytes | None, tp: TopicPartitionKey) -> tuple[str, str] | None:
        """The device and pipeline topic of a key not seen before in partition `tp`, or None
        (counted) if the key cannot name a device."""
        if not key:
            self._reject("missing_key", "record without a key (the key must be the device id)")
            return None
        try:
            device = key.decode("utf-8")
        except UnicodeDecodeError:
            self._reject("bad_device_id", "record key %r is not UTF-8", key[:80])
            return None
        if DEVICE_ID.fullmatch(device) is None:
            self._reject("bad_device_id", "record key %r is not a device id [A-Za-z0-9][A-Za-z0-9_.:-]{0,63}",
                         device[:80])
            return None
        keys = self._keys_of[tp]
        if len(keys) >= _KEY_CACHE:
            keys.clear()
        entry = keys[key] = (device, self._topic_of(device))
        self._devices_of[tp].add(device)
        return entry

    def _reject(self, reason: str, msg: str, *args: object) -> None:
        self._counts[reason] += 1
        self._rejects.warning(reason, "record rejected (" + reason + "): " + msg, *args)

    def _message_error(self, msg: Message) -> None:
        err = msg.error()
        self._log.warning("message:" + err.name(), "kafka error on %s[%s]: %s", msg.topic(), msg.partition(), err)

    # ---- rebalance callbacks (consumer thread, inside consume) ----------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._joined = True
        try:
            if partitions:
                self._metrics.kafka_rebalances.labels(event="assigned").inc()
                self._rewind(consumer, partitions)
        except KafkaException as exc:  # assign anyway: unrewound windows beat no consumption at all
            log.error("cannot rewind %s (their devices' windows restart empty): %s", _names(partitions), exc)
            for p in partitions:
                p.offset = OFFSET_INVALID
        for p in partitions:
            self._ledgers.setdefault((p.topic, p.partition), PartitionLedger(source=(p.topic, p.partition)))
        if partitions and self._alert_state is not None:
            self._take_over_alerts([(p.topic, p.partition) for p in partitions])
        consumer.incremental_assign(partitions)
        self._assigned.update((p.topic, p.partition) for p in partitions)
        self._metrics.kafka_assigned_partitions.set(len(self._assigned))
        if partitions:
            log.info("assigned %s; now consuming %d partitions", _names(partitions), len(self._assigned))

    def _rewind(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Start each partition with a committed offset at the record before it, read only for
        its time: the replay reaches `replay_seconds` behind it (`_seek_back`). Start the others
        `replay_seconds` before now."""
        not_before_ms = int((time.time() - self.replay_seconds) * 1000)
        committed = {(p.topic, p.partition): p.offset if p.error is None else -1
                     for p in consumer.committed(partitions, timeout=OFFSETS_TIMEOUT_S)}
        fresh = [p for p in partitions if committed.get((p.topic, p.partition), -1) < 0]
        asked = [TopicPartition(p.topic, p.partition, not_before_ms) for p in fresh]
        found = {(p.topic, p.partition): p.offset if p.error is None else -1
                 for p in (consumer.offsets_for_times(asked, timeout=OFFSETS_TIMEOUT_S) if asked else [])}
        for p in partitions:
            tp = (p.topic, p.partition)
            stored, start = max(committed.get(tp, -1), -1), found.get(tp, -1)
            if stored >= 0:
                self._ledgers[tp] = PartitionLedger(stored, tp)
                self._committed[tp] = stored
                if stored > 0:
                    self._unprobed[tp] = stored
                    p.offset = stored - 1
                else:
                    p.offset = stored
            elif start >= 0 and self.settings.auto_offset_reset == "latest":
                p.offset = start
                self._rewinds[tp] = _Rewind(-1, not_before_ms)
            # else: nothing committed and nothing recent (or earliest): librdkafka's auto.offset.reset

    def _take_over_alerts(self, partitions: list[TopicPartitionKey]) -> None:
        """Seed the devices of newly assigned partitions with the alert states recorded by their
        previous owner. Runs before the partitions are consumed, so before their replay is
        scored. A failure leaves those devices' alert states to be rebuilt by the replay."""
        state = self._alert_state
        state.own(partitions)  # their changes are recorded (or counted as failed) from now on
        try:
            if not state.prepare(self.settings.topic_list):
                return
            records = state.load(partitions)
            for device, record in records.items():
                self._devices_of[(record.topic, record.partition)].add(device)  # forgotten on revoke too
            self._seed_alerts(records)
        except KafkaException as exc:
            log.error("cannot read the alert states of %s from %r (rebuilt from the replay only): %s",
                      ", ".join(f"{t}[{p}]" for t, p in partitions), state.name, exc)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not partitions:
            return
        self._metrics.kafka_rebalances.labels(event="revoked").inc()
        self._commit([(p.topic, p.partition) for p in partitions], asynchronous=False)
        self._release(partitions)
        log.info("revoked %s; now consuming %d partitions", _names(partitions), len(self._assigned))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._joined = False  # out of the group (unhealthy) until it is assigned partitions again
        if not partitions:
            return
        self._metrics.kafka_rebalances.labels(event="lost").inc()
        self._release(partitions)  # no commit: another member may own them already
        log.warning("lost %s (session expired?); now consuming %d partitions", _names(partitions),
                    len(self._assigned))

    def _release(self, partitions: list[TopicPartition]) -> None:
        """Forget the partitions and the state of their devices."""
        devices: set[str] = set()
        for p in partitions:
            tp = (p.topic, p.partition)
            devices |= self._devices_of.pop(tp, set())
            for table in (self._keys_of, self._ledgers, self._committed, self._rewinds, self._unprobed):
                table.pop(tp, None)
            if self._alert_state is not None:
                self._alert_state.disown([tp])
            self._assigned.discard(tp)
            self._metrics.kafka_assigned_partitions.set(len(self._assigned))
            try:
                self._metrics.kafka_consumer_lag.remove(p.topic, str(p.partition))
            except KeyError:
                pass
        try:
            self._drop_devices(devices)
        except Exception:  # a bug; the devices' stale state is then forgotten by idle eviction
            log.exception("cannot drop the state of %d devices of %s", len(devices), _names(partitions))

    # ---- offsets ------------------------------------------------------------------------------

    def _committable(self, partitions: Iterable[TopicPartitionKey]) -> list[TopicPartition]:
        """Offsets that may be committed and move a partition forward (module docstring: the rule)."""
        offsets = []
        for tp in partitions:
            ledger = self._ledgers.get(tp)
            offset = -1 if ledger is None else ledger.committable()
            if offset > self._committed.get(tp, -1):
                offsets.append(TopicPartition(*tp, offset))
        return offsets

    def _commit(self, partitions: Iterable[TopicPartitionKey], asynchronous: bool) -> None:
        offsets = self._committable(partitions)
        if not offsets:
            return
        # Every window now committable had its alert-state record handed to the producer before
        # its receipt settled (daemon.live.ingest.alert_state): delivered first, then committed.
        if self._alert_state is not None and not self._alert_state.flush(ALERT_STATE_FLUSH_S):
            self._log.warning("commit", "alert-state records to %r not delivered within %.0f s: commit of %s "
                              "deferred", self._alert_state.name, ALERT_STATE_FLUSH_S, _names(offsets))
            return
        try:
            result = self._consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                self._log.warning("commit", "kafka commit of %s failed: %s", _names(offsets), exc)
            return
        for p in offsets:
            self._committed[(p.topic, p.partition)] = p.offset
        if result:
            self._on_commit(None, result)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [p for p in partitions if err is not None or p.error is not None]
        for p in failed:  # committed again at the next interval
            self._committed.pop((p.topic, p.partition), None)
        if failed:
            self._log.warning("commit", "kafka commit of %s failed: %s", _names(failed),
                              err if err is not None else failed[0].error)

    # ---- librdkafka callbacks (consumer thread) --------------------------------------------------

    def _on_error(self, err: KafkaError) -> None:
        code = err.code()
        if code == KafkaError._ALL_BROKERS_DOWN:
            self._set_connected(False)  # which logs the outage, once
        elif err.fatal():
            log.error("kafka fatal error: %s", err)
        elif code == KafkaError._TRANSPORT:  # librdkafka's own log line (facility FAIL) says the same
            log.debug("kafka: %s", err)
        else:
            self._log.warning("error:" + err.name(), "kafka: %s", err)

    def _on_stats(self, text: str) -> None:
        stats = json.loads(text)
        self._set_connected(any(b.get("state") == "UP" for b in stats.get("brokers", {}).values()))
        lag = self._metrics.kafka_consumer_lag
        for topic, topic_stats in stats.get("topics", {}).items():
            for partition, partition_stats in topic_stats.get("partitions", {}).items():
                records = partition_stats.get("consumer_lag", -1)
                if records >= 0 and (topic, int(partition)) in self._assigned:
                    lag.labels(topic=topic, partition=partition).set(records)

    def _set_connected(self, connected: bool) -> None:
        if connected != self._connected:
            (log.info if connected else log.warning)("kafka brokers %s: %s", self.settings.bootstrap_servers,
                                                     "connected" if connected else "unreachable")
        self._connected = connected
        self._metrics.kafka_connected.set(1 if connected else 0)


def _names(partitions: Iterable[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions)


def build_kafka_source(config: Config, handler: MessageHandler, metrics: Metrics,
                       windows: Iterable[tuple[int, float | None]],
                       drop_devices: Callable[[set[str]], object], alert_state: AlertStateTopic | None = None,
                       seed_alerts: Callable[[dict[str, AlertRecord]], object] | None = None) -> KafkaSource:
    """The Kafka source for a service config. `windows` are the (window length, sample period)
    of the routes in use: the replay refills the longest span unless `kafka.replay_seconds` is
    set. `drop_devices(devices)` must forget those devices' buffers and alert states
    (`DeviceBuffers.drop_devices` of every route); `seed_alerts(records)` must set the alert
    states read from `alert_state` (`build_alert_state`)."""
    kafka = config.kafka
    replay = kafka.replay_seconds
    if replay is None:
        spans = list(windows)
        if any(period is None for _, period in spans):
            raise ConfigError("kafka.replay_seconds: required when neither stream.sample_period_seconds nor the "
                              "bundle names a sample period")
        replay = max(replay_span(window, period, kafka.replay_margin_seconds) for window, period in spans)
    return KafkaSource(kafka, handler, metrics, topic_of=device_topic(config.mqtt.topic, config.mqtt.device_level),
                       replay_seconds=replay, drop_devices=drop_devices, alert_state=alert_state,
                       seed_alerts=seed_alerts)


def build_alert_state(config: Config, metrics: Metrics) -> AlertStateTopic | None:
    """The alert-state topic of a `source: kafka` config, or None when `kafka.alert_state_topic`
    is empty or null."""
    name = config.kafka.alert_state_topic
    if not name:
        return None
    return AlertStateTopic(name, {**connection_settings(config.kafka), "logger": _LibrdkafkaLog()}, metrics)
