"""A consumer group of real anomalyd processes (`python -m daemon run`, source: kafka, each with
its own file sink and metrics port), a paced producer that kills and restarts one of them, and a
watcher over their sinks, for the Kafka group tests (which skip without confluent-kafka before
importing this)."""

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
from typing import Callable

from confluent_kafka import Producer
from servers import free_port

from daemon.core.postprocess import AlertSpec, Hysteresis
from daemon.live.sinks.line_protocol import decode
from daemon.offline import synthetic

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
COMMIT_INTERVAL_MS = 500


@dataclass
class Member:
    """One anomalyd process of the group."""

    name: str
    workdir: Path
    tansu: object
    session_timeout_s: float
    replay_s: float
    instance_id: str | None = None  # static membership (group.instance.id)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    def start(self, sink: str) -> None:
        config = {
            "source": "kafka",
            "kafka": {"bootstrap_servers": self.tansu.bootstrap_servers, "topics": "plant", "group_id": "fleet",
                      "session_timeout_ms": int(self.session_timeout_s * 1000),
                      "commit_interval_ms": COMMIT_INTERVAL_MS, "replay_seconds": self.replay_s,
                      "auto_offset_reset": "earliest",
                      **({"group_instance_id": self.instance_id} if self.instance_id else {})},
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


def keyed_readings(devices: list[str], steps: int, start: int, shift: tuple[int, int] = (30, 90),
                   spikes: tuple[int, int] = (20, 100)) -> list[list[tuple[bytes, bytes]]]:
    """Per step, every device's (key, JSON payload), data time 1 s per step from `start`. Every
    tenth device has a level shift (`shift`: first row, rows), every tenth from the fifth has
    spikes, so alerts happen while the group changes."""
    per_device = []
    for i, device in enumerate(devices):
        data = synthetic.normal(steps, seed=i, start=float(start))
        if i % 10 == 0:
            data = synthetic.inject(data, "level_shift", *shift, seed=i)
        elif i % 10 == 5:
            data = synthetic.inject(data, "spike", *spikes, seed=i)
        per_device.append([json.dumps({"ts": float(ts), **dict(zip(synthetic.FEATURES, map(float, row)))}).encode()
                           for ts, row in zip(data.timestamps, data.values)])
    return [[(device.encode(), per_device[i][step]) for i, device in enumerate(devices)] for step in range(steps)]


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


def episode_mismatches(points: list[tuple[str, str, int, int, int]], devices: list[str], spec: AlertSpec
                       ) -> tuple[int, int, list[str]]:
    """Alert episodes written by the group against one instance running hysteresis `spec` over
    the same window flags: (episodes written, reference episodes, devices whose differ). For a
    window written twice the later value counts (InfluxDB keeps the last write)."""
    last_value: dict[tuple[str, int], tuple[int, int]] = {}
    for _, device, ts, anomaly, alert in points:
        last_value[(device, ts)] = (anomaly, alert)
    by_device: dict[str, list[tuple[int, tuple[int, int]]]] = defaultdict(list)
    for (device, ts), value in last_value.items():
        by_device[device].append((ts, value))
    written = reference_count = 0
    differing = []
    for device in devices:
        series = sorted(by_device[device])
        state = Hysteresis(spec)
        reference = episodes([(ts, int(state.step(bool(anomaly)))) for ts, (anomaly, _) in series])
        live = episodes([(ts, alert) for ts, (_, alert) in series])
        written += len(live)
        reference_count += len(reference)
        if live != reference:
            differing.append(device)
    return written, reference_count, differing


def publish_with_restart(bootstrap_servers: str, topic: str, steps: list[list[tuple[bytes, bytes]]], rate_hz: float,
                         member: Member, kill_at: float, restart_at: float, restart_sink: str,
                         each_step: Callable[[], object] = lambda: None) -> None:
    """Produce `steps` (every device's record per step) at `rate_hz` steps a second; SIGKILL
    `member` `kill_at` seconds in and start it again, writing to `restart_sink`, at
    `restart_at`; call `each_step` after every step. Returns once every record is delivered."""
    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 20})
    began = time.monotonic()
    killed = restarted = False
    for step, records in enumerate(steps):
        for key, value in records:
            producer.produce(topic, key=key, value=value)
        producer.poll(0)
        elapsed = time.monotonic() - began
        if not killed and elapsed >= kill_at:
            member.kill()
            killed = True
        if not restarted and elapsed >= restart_at:
            member.start(restart_sink)
            restarted = True
        each_step()
        time.sleep(max(0.0, began + (step + 1) / rate_hz - time.monotonic()))
    assert producer.flush(10) == 0
    del producer  # its thread would keep dialling the broker after the test stops it
