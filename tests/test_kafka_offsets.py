"""At-least-once up to the sink: a Kafka partition commits only past records whose windows the
sink has settled (written, spooled, or dropped and counted), so a crash re-delivers and never
skips. The rule (daemon/live/ingest/kafka.py): a partition commits the offset of its oldest
window not yet settled, or the offset after the last record handed over when none is in flight.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import Producer  # noqa: E402
from servers import wait_until  # noqa: E402
from test_kafka_source import (DEVICES, PARTITIONS, WINDOW, committed_offsets, instance,  # noqa: E402
                               start, stopper)  # noqa: E402,F401  (stopper is a fixture)

from daemon.live.events import ScoreEvent, WindowJob  # noqa: E402
from daemon.live.ingest.kafka import PartitionLedger  # noqa: E402
from daemon.live.sinks.file import FileSink  # noqa: E402
from daemon.live.telemetry.metrics import Metrics  # noqa: E402
from daemon.live.worker import WindowQueue  # noqa: E402


# ---- the rule ---------------------------------------------------------------------------------

def test_a_partition_commits_its_oldest_unsettled_window_else_everything_handed():
    ledger = PartitionLedger()
    assert ledger.committable() == -1  # nothing read: nothing to commit
    first, second, third = ledger.claim(3), ledger.claim(7), ledger.claim(9)
    ledger.handed = 12  # records 10 and 11 complete no window
    assert ledger.committable() == 3
    second.settle()  # settled out of order: the oldest still holds the partition back
    assert ledger.committable() == 3 and ledger.in_flight == 2
    first.settle()
    assert ledger.committable() == 9
    third.settle()
    assert ledger.committable() == 12 and ledger.in_flight == 0


def test_a_restarted_owner_commits_from_its_committed_offset_until_it_reads_further():
    ledger = PartitionLedger(handed=40)  # committed before; replayed records below it claim lower offsets
    replayed = ledger.claim(35)
    assert ledger.committable() == 35  # below what is committed: the source does not commit it
    replayed.settle()
    assert ledger.committable() == 40


# ---- every way a window leaves the service settles it -------------------------------------------

class Receipt:
    def __init__(self) -> None:
        self.settled = 0

    def settle(self) -> None:
        self.settled += 1


def event(receipt: Receipt, device: str = "pump-1", ts: float = 1.75e9) -> ScoreEvent:
    return ScoreEvent(device, "demo", ts, 0.1, 1.0, False, False, {"a": 0.1}, ts, receipt=receipt)


def test_the_file_sink_settles_events_once_written_and_unencodable_ones_at_once(tmp_path):
    sink = FileSink(tmp_path / "scores.lp", Metrics())
    written, unencodable = Receipt(), Receipt()
    sink.submit([event(written)])
    sink.submit([event(unencodable, device="bad\ndevice")])
    assert unencodable.settled == 1
    wait_until(lambda: written.settled == 1, 5, "the written event settled")
    assert sink.close()


def test_the_file_sink_settles_events_it_drops_when_its_queue_overflows(tmp_path):
    sink = FileSink(tmp_path / "scores.lp", Metrics(), max_queue=1)
    receipts = [Receipt() for _ in range(200)]
    for i, receipt in enumerate(receipts):
        sink.submit([event(receipt, ts=1.75e9 + i)])
    assert sink.close()
    assert [r.settled for r in receipts] == [1] * len(receipts)  # written or dropped, each once


def test_windows_dropped_by_a_full_window_queue_are_settled():
    queue = WindowQueue(2, Metrics())
    receipts = [Receipt() for _ in range(5)]
    for receipt in receipts:
        queue.put(WindowJob("pump-1", 0.0, np.zeros((WINDOW, 2), np.float32), 0.0, receipt=receipt))
    assert [r.settled for r in receipts] == [1, 1, 1, 0, 0]


# ---- against the broker -------------------------------------------------------------------------

def partition_of(device: str) -> int:
    return DEVICES.index(device) % PARTITIONS


def produce_by_partition(tansu, topic: str, stamps: list[float]) -> int:
    """Every device's readings at `stamps`, device i on partition i % PARTITIONS."""
    producer = Producer({"bootstrap.servers": tansu.bootstrap_servers, "linger.ms": 5})
    for ts in stamps:
        for device in DEVICES:
            producer.produce(topic, key=device.encode(), value=json.dumps({"ts": ts, "a": ts % 5, "b": 1.0}).encode(),
                             partition=partition_of(device), timestamp=int(ts * 1000))
    assert producer.flush(10) == 0
    return len(stamps) * len(DEVICES)


def records_per_partition(readings_per_device: int) -> list[int]:
    return [readings_per_device * sum(partition_of(d) == p for d in DEVICES) for p in range(PARTITIONS)]


def test_offsets_advance_only_past_windows_the_sink_settled(tansu, stopper):
    tansu.create_topic("acks", PARTITIONS)
    readings = 8
    total = produce_by_partition(tansu, "acks", [time.time() - 30 + i for i in range(readings)])
    one = start(stopper, instance(tansu, "acks", "a1"))
    wait_until(lambda: one.result("ok") == total, 20, "every record handed over")
    jobs = one.windows()
    assert len(jobs) == len(DEVICES) * (readings - WINDOW + 1)

    def oldest_window(p: int, among: list[WindowJob]) -> int:
        return min(job.receipt.offset for job in among if partition_of(job.device) == p)

    # Nothing settled: each partition commits the offset of its first window's record.
    expected = [oldest_window(p, jobs) for p in range(PARTITIONS)]
    wait_until(lambda: committed_offsets(tansu, "acks", "a1") == expected, 10, f"commits at {expected}")

    # All but dev-00's last window settled: its partition waits for it, the others commit everything.
    held = max((job for job in jobs if job.device == "dev-00"), key=lambda job: job.receipt.offset)
    for job in jobs:
        if job is not held:
            job.receipt.settle()
    expected = records_per_partition(readings)
    expected[partition_of("dev-00")] = held.receipt.offset
    wait_until(lambda: committed_offsets(tansu, "acks", "a1") == expected, 10, f"commits at {expected}")
    assert one.source.in_flight == 1

    held.receipt.settle()
    expected = records_per_partition(readings)
    wait_until(lambda: committed_offsets(tansu, "acks", "a1") == expected, 10, f"commits at {expected}")


def test_a_window_the_sink_never_held_is_read_again_by_the_next_owner(tansu, stopper):
    tansu.create_topic("crash", PARTITIONS)
    readings = 6
    # Record times long before now: the replay reaches behind the last committed record's time,
    # not behind now, so it refills the windows however long ago the previous owner stopped.
    total = produce_by_partition(tansu, "crash", [time.time() - 5000 + i for i in range(readings)])
    first = start(stopper, instance(tansu, "crash", "a2", auto_offset_reset="earliest", settle_seconds=0.2))
    wait_until(lambda: first.result("ok") == total, 20, "every record handed over")
    jobs = first.windows()
    held = max((job for job in jobs if job.device == "dev-00"), key=lambda job: job.receipt.offset)
    for job in jobs:
        if job is not held:
            job.receipt.settle()
    first.source.stop()  # the sink never wrote dev-00's last window: as if the process died now
    expected = records_per_partition(readings)
    expected[partition_of("dev-00")] = held.receipt.offset
    assert committed_offsets(tansu, "crash", "a2") == expected

    second = start(stopper, instance(tansu, "crash", "a2"))
    # The replay counter moves once per consumed batch, after its records' results: wait for both.
    wait_until(lambda: second.result("ok") == total
               and second.sample("anomalyd_kafka_replayed_total") == sum(expected), 20,
               f"the committed records replayed ({sum(expected)}), the others read again")
    assert second.sample("anomalyd_kafka_replay_skipped_total") == 0
    again = [job for job in second.windows() if job.device == "dev-00"]
    assert held.ts_end in {job.ts_end for job in again}  # the window the sink never held is scored again
    for job in again:
        job.receipt.settle()
