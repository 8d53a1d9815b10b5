"""The embedded store for the demo and for runs without InfluxDB: line protocol appended to a
local file, in the same format the InfluxDB sink sends, so the file can later be replayed into a
real database (`influx write -p ms`, or curl to `/api/v2/write?precision=ms`).

Same interface as `InfluxSink` (`submit`, `close`, `healthy`, `status`). Appending to a local
file is quick, so `submit` writes directly and flushes per call: a crash loses nothing
submitted before it.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Iterable

from daemon.live.events import ScoreEvent
from daemon.live.line_protocol import decode, encode
from daemon.live.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)


class FileSink:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self._ratelog = RateLimitedLog(log, interval=30.0)
        self._healthy = True
        self._last_error: str | None = None

    @property
    def healthy(self) -> bool:
        """False after a failed append (disk full, permissions...) until the next success."""
        return self._healthy

    def status(self) -> dict[str, object]:
        return {"healthy": self._healthy, "path": str(self.path), "last_error": self._last_error}

    def submit(self, events: Iterable[ScoreEvent]) -> None:
        lines = []
        for event in events:
            try:
                lines.append(encode(event) + "\n")
            except (ValueError, TypeError) as err:  # e.g. a newline in a device id, a None score
                self._ratelog.error("encode", "file sink: dropped a score event of device %r: %s", event.device, err)
        with self._lock:
            if self._file.closed:
                raise RuntimeError(f"file sink {self.path} is closed: submit after close()")
            try:
                self._file.writelines(lines)
                self._file.flush()
            except OSError as err:
                self._healthy = False
                self._last_error = str(err)
                self._ratelog.error("write", "file sink: cannot append %d points to %s: %s", len(lines), self.path, err)
                return
            self._healthy = True

    def close(self, timeout: float = 10.0) -> bool:
        """Close the file; `timeout` is accepted for parity with `InfluxSink.close`."""
        with self._lock:
            self._file.close()
        return True


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
