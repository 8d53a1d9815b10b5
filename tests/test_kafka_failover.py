"""Failover of a consumer group of real anomalyd processes (`python -m daemon run`, source: kafka,
each with its own file sink and metrics port) against a real Kafka-protocol broker (Tansu).

A publisher produces keyed readings for 300 devices (some with faults, so alerts happen); one
instance is killed with SIGKILL mid-stream and started again later. The union of the sinks must
hold every window of every device (stride 1: one per reading from the window-th on), each device
must be scored by one instance at a time (two only for the windows in flight when it moved), no device may be silent longer than the session timeout plus the replay, and the
alert episodes must equal those of one instance running hysteresis over the same window flags
(the new owners take the alert states over from the alert-state topic). The counts are printed (`-s`) for the record.

Membership is dynamic: Tansu did not expire a SIGKILLed static member (`group.instance.id`)
after its session timeout, so its partitions stayed unassigned until it came back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import Producer  # noqa: E402
from servers import free_port, wait_until  # noqa: E402

from daemon.core.postprocess import AlertSpec, Hysteresis  # noqa: E402
from daemon.live.sinks.line_protocol import decode  # noqa: E402
from daemon.offline import synthetic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
WINDOW = 20  # the demo bundle's window; stride 1
ALERT = AlertSpec(3, 5)  # the demo bundle's hysteresis
DEVICES = [f"pump-{i:03d}" for i in range(300)]
PARTITIONS = 6
RATE_HZ = 4.0  # readings per device per second of wall time (data time advances 1 s per reading)
STEPS = 160  # readings per device: 40 s of publishing
KILL_AT, RESTART_AT = 12.0, 26.0  # seconds after publishing starts
SESSION_TIMEOUT_S = 6.0
COMMIT_INTERVAL_S = 0.5
# Record time a partition is rewound behind its last committed record: the window (WINDOW
# readings at RATE_HZ) and a margin.
REPLAY_S = WINDOW / RATE_HZ + 5.0


def readings(start: int) -> list[list[tuple[bytes, bytes]]]:
    """Per step, every device's (key, payload). Every tenth device has a level shift over the
    kill and the move; every tenth from the fifth has spikes."""
    per_device = []
    for i, device in enumerate(DEVICES):
        data = synthetic.normal(STEPS, seed=i, start=float(start))
        if i % 10 == 0:
            data = synthetic.inject(data, "level_shift", 30, 90, seed=i)
        elif i % 10 == 5:
            data = synthetic.inject(data, "spike", 20, 100, seed=i)
        per_device.append([json.dumps({"ts": float(ts), **dict(zip(synthetic.FEATURES, map(float, row)))}).encode()
                           for ts, row in zip(data.timestamps, data.values)])
    return [[(device.encode(), per_device[i][step]) for i, device in enumerate(DEVICES)] for step in range(STEPS)]


@dataclass
class Member:
    """One anomalyd process of the group."""

    name: str
    workdir: Path
    tansu: object
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    def start(self, sink: str) -> None:
        config = {
            "source": "kafka",
            "kafka": {"bootstrap_servers": self.tansu.bootstrap_servers, "topics": "plant", "group_id": "fleet",
                      "session_timeout_ms": int(SESSION_TIMEOUT_S * 1000),
                      "commit_interval_ms": int(COMMIT_INTERVAL_S * 1000), "replay_seconds": REPLAY_S,
                      "auto_offset_reset": "earliest"},
            "model": {"path": str(DEMO)},
            "batching": {"max_wait_ms": 20, "torch_threads": 1},
            "local_store": {"path": str(self.workdir / f"{sink}.lp")},
            "metrics": {"port": self.port},
            "logging": {"level": "INFO"},
        }
        path = self.workdir / f"{self.name}.yaml"
        path.write_text(json.dumps(config))
        log = open(self.workdir / f"{sink}.log", "ab")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(path)], cwd=ROOT,
                                        env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return False

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith(name + " ") or line.startswith(name + "{"))

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class SinkWatcher:
    """Tails every sink file, noting each point's writer and when its window first appeared."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.points: list[tuple[str, str, int, int, int]] = []  # (writer, device, ts_ms, anomaly, alert)
        self.first_seen: dict[tuple[str, int], float] = {}  # (device, ts_ms) -> wall time
        self.torn = 0  # lines cut by a SIGKILL mid-write
        self._offsets = dict.fromkeys(files, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SinkWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.poll()

    def poll(self) -> None:
        now = time.time()
        for writer, path in self.files.items():
            if not path.exists():
                continue
            with open(path, "rb") as f:
                f.seek(self._offsets[writer])
                data = f.read()
            end = data.rfind(b"\n") + 1
            self._offsets[writer] += end
            for line in data[:end].decode().splitlines():
                try:
                    point = decode(line)
                except ValueError:
                    self.torn += 1
                    continue
                device = point.tags["device"]
                self.points.append((writer, device, point.time_ms, point.fields["anomaly"], point.fields["alert"]))
                self.first_seen.setdefault((device, point.time_ms), now)

    def has(self, device: str, ts_ms: int) -> bool:
        return (device, ts_ms) in self.first_seen


def longest_silence(first_seen: dict[tuple[str, int], float], until: float) -> tuple[float, str]:
    """The longest wall-time wait for a device's next new window, and the device."""
    by_device: dict[str, list[float]] = defaultdict(list)
    for (device, _), seen in first_seen.items():
        by_device[device].append(seen)
    worst = (0.0, "")
    for device, seen in by_device.items():
        seen = sorted(s for s in seen if s <= until)
        gaps = [b - a for a, b in zip(seen, seen[1:])]
        if gaps and max(gaps) > worst[0]:
            worst = (max(gaps), device)
    return worst


def owner_runs(writers_by_ts: dict[int, list[str]]) -> tuple[list[str], list[tuple[int, set[str]]]]:
    """A device's exclusive owners in time order (consecutive repeats collapsed) and the
    timestamps written by more than one instance."""
    runs: list[str] = []
    shared = []
    for ts in sorted(writers_by_ts):
        writers = set(writers_by_ts[ts])
        if len(writers) > 1:
            shared.append((ts, writers))
        elif not runs or runs[-1] != next(iter(writers)):
            runs.append(next(iter(writers)))
    return runs, shared


def episodes(alerts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(first, last) timestamps of each run of alert=1 in (ts, alert) pairs sorted by ts."""
    found, start, last = [], None, None
    for ts, alert in alerts:
        if alert and start is None:
            start = ts
        if not alert and start is not None:
            found.append((start, last))
            start = None
        last = ts
    if start is not None:
        found.append((start, last))
    return found


def test_a_killed_member_devices_continue_on_the_others_without_losing_a_window(tansu, tmp_path):
    tansu.create_topic("plant", PARTITIONS)
    start = int(time.time()) - 600  # data time: in the past, 1 s per reading
    steps = readings(start)
    members = {name: Member(name, tmp_path, tansu) for name in "abc"}
    sinks = {"a": tmp_path / "a.lp", "b1": tmp_path / "b1.lp", "b2": tmp_path / "b2.lp", "c": tmp_path / "c.lp"}
    for name, member in members.items():
        member.start("b1" if name == "b" else name)
    try:
        with SinkWatcher(sinks) as sinks_seen:
            wait_until(lambda: all(m.healthy() for m in members.values()), 90, "three healthy members")
            wait_until(lambda: sum(m.metric("anomalyd_kafka_assigned_partitions") for m in members.values())
                       == PARTITIONS, 30, "the partitions split over the group")
            producer = Producer({"bootstrap.servers": tansu.bootstrap_servers, "linger.ms": 20})
            began = time.monotonic()
            killed = restarted = False
            for step, records in enumerate(steps):
                for key, value in records:
                    producer.produce("plant", key=key, value=value)
                producer.poll(0)
                elapsed = time.monotonic() - began
                if not killed and elapsed >= KILL_AT:
                    members["b"].kill()
                    killed = True
                if not restarted and elapsed >= RESTART_AT:
                    members["b"].start("b2")
                    restarted = True
                time.sleep(max(0.0, began + (step + 1) / RATE_HZ - time.monotonic()))
            assert producer.flush(10) == 0
            del producer  # its thread would keep dialling the broker after the test stops it
            published = time.time()
            last_ts = (start + STEPS - 1) * 1000
            wait_until(lambda: all(sinks_seen.has(d, last_ts) for d in DEVICES), 60, "every device's last window")
            replayed = sum(m.metric("anomalyd_kafka_replayed_total") for m in members.values())
            seeded = sum(m.metric('anomalyd_alert_state_records_total{result="loaded"}') for m in members.values())
        for member in members.values():
            member.stop()
    finally:
        for member in members.values():
            if member.process is not None and member.process.poll() is None:
                member.process.kill()

    points = sinks_seen.points
    expected = {(d, (start + k) * 1000) for d in DEVICES for k in range(WINDOW - 1, STEPS)}
    union = {(device, ts) for _, device, ts, _, _ in points}
    lost = expected - union
    assert not lost, f"{len(lost)} windows missing, e.g. {sorted(lost)[:5]}"
    assert union == expected  # and nothing that is not a window of a reading

    # One instance at a time per device; two only for the windows in flight at a move.
    writers: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for writer, device, ts, _, _ in points:
        writers[device][ts].append(writer)
    moved = shared_windows = 0
    for device, by_ts in writers.items():
        runs, shared = owner_runs(by_ts)
        assert len(runs) <= 3, f"{device}: owners {runs}"  # b1 -> a or c -> b2 at most
        assert len(set(runs)) == len(runs), f"{device} came back to an earlier owner: {runs}"
        for ts, both in shared:
            later = [r for r in runs if r in both]
            assert len(both) == 2 and len(later) == 2 and runs.index(later[1]) == runs.index(later[0]) + 1, \
                f"{device} at {ts}: scored by {both}, owners {runs}"
        moved += len(runs) > 1
        shared_windows += len(shared)
    duplicates = len(points) - len(union)

    silence, device = longest_silence(sinks_seen.first_seen, published)
    assert silence < SESSION_TIMEOUT_S + REPLAY_S, f"{device} silent for {silence:.1f} s"

    # Alert episodes: those of one instance running hysteresis over the same window flags. For a
    # window written twice, the value kept is the later one (InfluxDB keeps the last write).
    last_value: dict[tuple[str, int], tuple[int, int]] = {}
    for _, device, ts, anomaly, alert in points:
        last_value[(device, ts)] = (anomaly, alert)
    live_episodes = reference_episodes = 0
    differing = []
    for device in DEVICES:
        series = sorted((ts, value) for (d, ts), value in last_value.items() if d == device)
        state = Hysteresis(ALERT)
        reference = [(ts, int(state.step(bool(anomaly)))) for ts, (anomaly, _) in series]
        live = [(ts, alert) for ts, (_, alert) in series]
        live_episodes += len(episodes(live))
        reference_episodes += len(episodes(reference))
        if episodes(live) != episodes(reference):
            differing.append(device)
    print(f"\nfailover: devices {len(DEVICES)}, readings {len(DEVICES) * STEPS}, windows {len(expected)}, "
          f"points written {len(points)}, duplicates {duplicates} ({shared_windows} windows), "
          f"replayed {replayed:.0f} (after the restart; the killed member's count died with it), "
          f"alert states taken over {seeded:.0f}, "
          f"lost {len(lost)}, devices moved {moved}, longest silence {silence:.1f} s ({device}), "
          f"torn lines {sinks_seen.torn}, alert episodes {live_episodes} (single-instance reference "
          f"{reference_episodes}), devices whose episodes differ {len(differing)} {differing[:5]}")
    assert moved > 0 and replayed > 0  # the kill moved devices and their new owners replayed
    assert seeded > 0  # and took over the alert states of those in alert
    assert reference_episodes > 0
    assert not differing
