"""The embedded store for the demo and for runs without InfluxDB: line protocol appended to a
local file, in the same format the InfluxDB sink sends, so the file can later be replayed into a
real database (`influx write -p ms`, or curl to `/api/v2/write?precision=ms`).

Same interface as `InfluxSink` (`submit`, `close`, `healthy`, `status`), and the same rule: the
sink never blocks the worker. `submit` encodes the events into one UTF-8 block and queues it;
a writer thread appends and flushes the blocks, so a slow disk (an SD card can stall a flush
for a second) does not stall scoring. The encoding stays on the caller's thread on purpose: a
file write releases the GIL, Python on a second thread does not. Encoding on the writer thread
was measured (LSTM, traced model, 10 interleaved pairs): the worker's rate fell from 0.80 to
0.77 of the raw model, because the writer's Python competes with the worker's own Python
instead of running during the forward pass. One write per wake-up keeps the writer's own time
under the GIL short. `close` writes
everything queued before it returns. The queue is bounded: past `max_queue` lines (the disk
stopped) the oldest batches are dropped, counted in `anomalyd_sink_points_total{result="dropped"}`
and logged; the newest batch is always kept.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from daemon.live.events import ScoreEvent
from daemon.live.sinks.line_protocol import decode, encode_each
from daemon.live.telemetry.metrics import Metrics
from daemon.live.telemetry.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Block:
    """One submitted batch, encoded: what the writer appends and what `on_written` gets back."""

    events: list[ScoreEvent]
    data: bytes  # the batch's lines, UTF-8, newline-terminated
    lines: int


class FileSink:
    def __init__(self, path: str | os.PathLike[str], metrics: Metrics | None = None, max_queue: int = 100_000,
                 on_written: Callable[[list[ScoreEvent]], None] | None = None) -> None:
        """`on_written(events)` runs on the writer thread once those events are flushed to the
        file (the benchmark times publish-to-sink latency with it)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")
        self._max_queue = max_queue
        self._batches: deque[_Block] = deque()
        self._queued = 0  # lines in _batches
        self._cond = threading.Condition()
        self._closing = False
        self._on_written = on_written
        self._ratelog = RateLimitedLog(log, interval=30.0)
        self._healthy = True
        self._last_error: str | None = None
        self._written = self._dropped = None
        if metrics is not None:
            self._written = metrics.sink_points.labels(result="written")
            self._dropped = metrics.sink_points.labels(result="dropped")
        self._thread = threading.Thread(target=self._run, name="anomalyd-file-sink", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        """False after a failed append (disk full, permissions...) until the next success."""
        return self._healthy

    def status(self) -> dict[str, object]:
        return {"healthy": self._healthy, "path": str(self.path), "last_error": self._last_error,
                "queued": self._queued}

    def submit(self, events: Iterable[ScoreEvent]) -> None:
        """Encode the events and queue them for the writer thread; never waits for the disk."""
        events = list(events)
        lines = [line for line, _ in encode_each(events, self._ratelog, "file sink")]
        self._count(self._dropped, len(events) - len(lines))
        block = _Block(events, ("\n".join(lines) + "\n").encode() if lines else b"", len(lines))
        dropped = 0
        with self._cond:
            if self._closing:
                raise RuntimeError(f"file sink {self.path} is closed: submit after close()")
            self._batches.append(block)
            self._queued += block.lines
            while self._queued > self._max_queue and len(self._batches) > 1:
                oldest = self._batches.popleft()
                self._queued -= oldest.lines
                dropped += oldest.lines
            self._cond.notify()
        if dropped:
            self._count(self._dropped, dropped)
            self._ratelog.error("queue", "file sink: %s is not keeping up; dropped the %d oldest points",
                                self.path, dropped)

    def close(self, timeout: float = 10.0) -> bool:
        """Write what is queued and close the file. Returns False if the writer was still busy
        after `timeout` seconds (the file is then left to the process exit)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        self._file.close()
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._batches and not self._closing:
                    self._cond.wait()
                if not self._batches:
                    return
                batches, self._batches = self._batches, deque()
                self._queued = 0
            try:
                self._append(batches)
            except Exception as exc:  # a bug here must not end the writer: later points still land
                self._count(self._dropped, sum(block.lines for block in batches))
                self._ratelog.error("bug:" + type(exc).__name__, "file sink: lost points: %r", exc, exc_info=True)

    def _append(self, batches: deque[_Block]) -> None:
        n = sum(block.lines for block in batches)
        try:
            self._file.write(b"".join(block.data for block in batches))
            self._file.flush()
        except OSError as err:
            self._healthy = False
            self._last_error = str(err)
            self._count(self._dropped, n)
            self._ratelog.error("write", "file sink: cannot append %d points to %s: %s", n, self.path, err)
            return
        self._healthy = True
        self._count(self._written, n)
        if self._on_written is not None:
            for block in batches:
                self._on_written(block.events)

    @staticmethod
    def _count(counter, n: int) -> None:
        if counter is not None and n > 0:
            counter.inc(n)


def read_points(path: str | os.PathLike[str]) -> list[dict[str, object]]:
    """Every point of a line-protocol file as a flat dict: `measurement`, the tags, the fields
    and `ts` (epoch seconds), in file order. A malformed line raises `ValueError` naming its
    file and line number."""
    points = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                point = decode(line)
            except ValueError as err:
                raise ValueError(f"{path}:{number}: {err}") from None
            points.append({"measurement": point.measurement, **point.tags, **point.fields,
                           "ts": point.time_ms / 1000})
    return points
