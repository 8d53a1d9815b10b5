"""The embedded store for the demo and for runs without InfluxDB: line protocol appended to a
local file, in the same format the InfluxDB sink sends, so the file can later be replayed into a
real database (`influx write -p ms`, or curl to `/api/v2/write?precision=ms`).

`submit` encodes the events into one UTF-8 block on the caller's thread and queues it; the
`BufferedWriter`'s thread appends and flushes every queued block in one write, so a slow disk
(an SD card can stall a flush) does not stall scoring. The encoding stays on the caller's
thread because a file write releases the GIL while Python on a second thread does not: encoding
on the writer would compete with the worker's own Python instead of running during the forward
pass (docs/performance.md). One write per wake-up keeps the writer's time under the GIL short.

The queue is bounded in lines: past `max_queue` (the disk stopped) the oldest blocks are dropped,
counted in `anomalyd_sink_points_total{result="dropped"}` and logged; the newest block is always
kept. `close` writes everything queued before it returns.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from daemon.live.events import ScoreEvent, settle
from daemon.live.sinks.base import BufferedWriter
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
        self._on_written = on_written
        self._ratelog = RateLimitedLog(log, interval=30.0)
        self._written = self._dropped = None
        if metrics is not None:
            self._written = metrics.sink_points.labels(result="written")
            self._dropped = metrics.sink_points.labels(result="dropped")
        # batch_size = max_queue: one take gets every queued block (each holds at least one line).
        self._writer: BufferedWriter[_Block] = BufferedWriter(
            "file sink", self._append, self._drop, max_queued=max_queue, batch_size=max_queue, max_wait_s=0.0,
            size_of=_lines, settled=_settle_blocks)

    @property
    def healthy(self) -> bool:
        """False after a failed append (disk full, permissions...) until the next success."""
        return self._writer.healthy

    def status(self) -> dict[str, object]:
        return {"healthy": self._writer.healthy, "path": str(self.path), "last_error": self._writer.last_error,
                "queued": self._writer.queued}

    def submit(self, events: Iterable[ScoreEvent]) -> None:
        """Encode the events and queue them for the writer thread; never waits for the disk."""
        events = list(events)
        lines = [line for line, _ in encode_each(events, self._ratelog, "file sink")]
        self._count(self._dropped, len(events) - len(lines))
        blocks = [_Block(events, ("\n".join(lines) + "\n").encode(), len(lines))] if lines else []
        if not blocks:
            settle(event.receipt for event in events)
        self._writer.submit(blocks)

    def close(self, timeout: float = 10.0) -> bool:
        """Write what is queued and close the file. Returns False if the writer was still busy
        after `timeout` seconds: what was still queued is counted as dropped, and the file is
        left to the process exit."""
        if not self._writer.close(timeout):
            return False
        self._file.close()
        return True

    # -- writer thread ----------------------------------------------------------------------

    def _append(self, blocks: list[_Block]) -> None:
        n = sum(block.lines for block in blocks)
        try:
            self._file.write(b"".join(block.data for block in blocks))
            self._file.flush()
        except OSError as err:
            self._count(self._dropped, n)
            self._writer.record_failure(f"cannot append {n} points to {self.path}, dropped them: {err}")
            return
        self._writer.record_success()
        self._count(self._written, n)
        if self._on_written is not None:
            for block in blocks:
                self._on_written(block.events)

    def _drop(self, blocks: list[_Block]) -> None:
        """Blocks the writer cannot take: the queue overflowed (the oldest go), or a write failed
        unexpectedly, or `close` timed out."""
        n = sum(block.lines for block in blocks)
        self._count(self._dropped, n)
        self._ratelog.error("dropped", "file sink: %s is not keeping up; dropped %d points not yet written",
                            self.path, n)

    @staticmethod
    def _count(counter, n: int) -> None:
        if counter is not None and n > 0:
            counter.inc(n)


def _lines(block: _Block) -> int:
    return block.lines


def _settle_blocks(blocks: list[_Block]) -> None:
    settle(event.receipt for block in blocks for event in block.events)


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
