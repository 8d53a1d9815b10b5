"""How the child processes time what they measure: rates, sink writes and a sink that only counts."""

from __future__ import annotations

import threading
import time
from array import array
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Speed:
    """Windows per second by the wall clock and per CPU-second of this process."""

    wall: float
    cpu: float

    def mean(self, other: Speed) -> Speed:
        return Speed((self.wall + other.wall) / 2, (self.cpu + other.cpu) / 2)


def timed(loop: Callable[[], int]) -> Speed:
    """Run `loop` (which returns how many windows it handled) and time it both ways."""
    wall, cpu = time.perf_counter(), time.process_time()
    n = loop()
    return Speed(n / (time.perf_counter() - wall), n / (time.process_time() - cpu))


class WriteTiming:
    """The FileSink's `on_written` hook, on its writer thread: when each batch of lines was
    written and flushed. With the publisher's send time in each reading's `ts`,
    now - event.ts is the publish-to-sink latency of that window; latencies are kept only while
    `recording`. `reached` is set once `target` events are written, so nobody has to poll (a
    polling thread would take the GIL from the worker being measured)."""

    MAX_KEPT = 2_000_000

    def __init__(self, target: int = 0) -> None:
        self.target = target
        self.count = 0
        self.last_write = 0.0
        self.recording = False
        self.latencies = array("d")
        self.reached = threading.Event()

    def __call__(self, events) -> None:
        now = time.time()
        self.count += len(events)
        self.last_write = now
        if self.target and self.count >= self.target:
            self.reached.set()
        if self.recording and len(self.latencies) < self.MAX_KEPT:
            self.latencies.extend([now - e.ts for e in events])


class MetricTiming:
    """For the InfluxSink: events written, from `anomalyd_sink_points_total{result="written"}`,
    and when that count last grew (as seen by the stats polls, every ~20 ms). No per-event
    latencies: the sink's own histogram (`anomalyd_publish_to_sink_seconds`) has them."""

    def __init__(self) -> None:
        self.count = 0
        self.last_write = 0.0
        self.recording = False
        self.latencies = array("d")

    def saw(self, written: float) -> None:
        if written > self.count:
            self.count, self.last_write = int(written), time.time()


class CountingSink:
    """A sink that only counts: the worker without any sink cost."""

    healthy = True

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.reached = threading.Event()

    def submit(self, events) -> None:
        self.count += len(events)
        if self.count >= self.target:
            self.reached.set()

    def status(self) -> dict:
        return {}

    def close(self, timeout: float = 10.0) -> bool:
        return True
