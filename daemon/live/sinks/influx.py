"""Write score events to InfluxDB (or anything speaking `/api/v2/write`), surviving outages.

The caller (the scoring worker) must never wait for the database, so `submit` only encodes
the events and appends the lines to a bounded in-memory queue; one writer thread does the
network I/O. Encoding on the caller's thread is deliberate: Python running on a second thread
beside the model slows the model several times over (GIL hand-offs at every torch op; see
bench/throughput.py), and the worker has to pay for the encoding either way.

    submit ─► queue (≤ max_queue lines) ─► writer ─► batch of ≤ batch_size lines
                │ queue full: spill queue + new lines to the spool, oldest first
                │ (the caller pays for local disk I/O then, never for the network)
                ▼
    spool (disk, bounded) ◄── first failed attempt of a batch, and every batch after it while
                              the spool holds data, so points reach the database in order
    writer: when the back-off allows, replay the spool oldest batch first; live data resumes
            from memory once it is empty.

Counters (`anomalyd_sink_points_total{result}`): `written` on success, `spooled` when points
go to disk, `retried` for each failed attempt at a spooled batch, `dropped` when the spool
overflows (oldest first), when the server rejects a batch with a 4xx status (bad data; 401,
403 and 404 excepted, see `_classify`) or when an event cannot be encoded.

Delivery: a batch that failed cleanly (connection refused, 5xx, 429) was not stored and is
written exactly once later, from the spool. A timeout is different: the server may have
stored the batch before the client gave up, and the replay then writes it a second time. That
is the at-least-once edge, shared with a crash between a write and the spool's ack. Every
point is keyed by measurement, tags and millisecond timestamp, so InfluxDB overwrites the
duplicate with identical values; VictoriaMetrics keeps both samples unless it runs with
`-dedup.minScrapeInterval=1ms`.

Ordering: at most one batch can be reordered: the one in flight while `submit` spills the
queue, which is spooled after the spilled points if its write then fails. Points carry their
own timestamps, so this changes the arrival order only, never the stored series.

`publish_to_sink_seconds` is observed for points written from memory; spooled points were
delayed by the outage, which the `spooled` counter and `healthy` already report.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Iterable

from daemon.live.events import ScoreEvent
from daemon.live.sinks.line_protocol import encode_each
from daemon.live.telemetry.metrics import Metrics
from daemon.live.telemetry.ratelimit import RateLimitedLog
from daemon.live.sinks.spool import Spool

if TYPE_CHECKING:
    from influxdb_client.rest import ApiException

log = logging.getLogger(__name__)

# 4xx answers that mean "fix the configuration" (token, org, bucket), not "bad data": the
# points are kept in the spool so they survive until an operator fixes the config.
CONFIG_STATUSES = (401, 403, 404)


class _Outcome(enum.Enum):
    WRITTEN = "written"
    RETRY = "retry"  # the server did not take the batch; try again later
    REJECTED = "rejected"  # the server refused the data itself; retrying cannot help


class InfluxSink:
    """Batched, retried, disk-spooled writer. Takes ownership of `spool` (closed by `close`)."""

    def __init__(self, url: str, org: str, bucket: str, token: str, batch_size: int, flush_interval_s: float,
                 spool: Spool, metrics: Metrics, timeout_ms: int = 10_000, *, max_queue: int | None = None,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0) -> None:
        if batch_size <= 0 or flush_interval_s <= 0:
            raise ValueError(f"influx sink: batch_size and flush_interval_s must be > 0, "
                             f"got {batch_size} and {flush_interval_s}")
        self._url = url
        self._org = org
        self._bucket = bucket
        self._batch_size = batch_size
        self._flush_interval = flush_interval_s
        self._max_queue = max_queue if max_queue is not None else 10 * batch_size
        self._spool = spool
        self._metrics = metrics
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        # Imported here, not at module level: influxdb-client and its dependencies cost ~20 MB
        # of RSS, which a daemon writing to a local file (or only to metrics) need not pay.
        from influxdb_client import InfluxDBClient, WritePrecision
        from influxdb_client.client.write_api import SYNCHRONOUS
        from influxdb_client.rest import ApiException

        self._api_exception = ApiException
        self._precision = WritePrecision.MS
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=timeout_ms)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._counts = {result: metrics.sink_points.labels(result=result)
                        for result in ("written", "retried", "spooled", "dropped")}
        self._ratelog = RateLimitedLog(log, interval=30.0)

        self._cond = threading.Condition()
        self._queue: deque[tuple[str, float]] = deque()  # (line, arrival time), oldest first
        self._first_queued_at: float | None = None  # monotonic time the oldest queued point arrived
        self._stopping = False
        self._healthy = True
        self._last_error: str | None = None
        self._failures = 0  # consecutive failed attempts
        self._backoff = backoff_initial_s
        self._retry_at = 0.0  # monotonic time before which the database is not tried again
        self._thread = threading.Thread(target=self._run, name="influx-sink", daemon=True)
        self._thread.start()

    # -- caller side ------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False from a failed write until the next successful one."""
        return self._healthy

    def status(self) -> dict[str, object]:
        """Details for /healthz."""
        return {"healthy": self._healthy, "url": self._url, "queued_points": len(self._queue),
                "spool_bytes": self._spool.pending_bytes, "last_error": self._last_error}

    def submit(self, events: Iterable[ScoreEvent]) -> None:
        """Encode events and queue their lines for writing. Never waits for the database: when
        the queue is full, the queue and these lines go to the spool instead (local disk I/O only)."""
        encoded = self._encode_received(events)
        with self._cond:
            if self._stopping:
                raise RuntimeError("influx sink is closed: submit after close()")
            if not encoded:
                return
            if len(self._queue) + len(encoded) <= self._max_queue:
                if not self._queue:
                    self._first_queued_at = time.monotonic()
                    self._cond.notify()
                self._queue.extend(encoded)
                if len(self._queue) >= self._batch_size:
                    self._cond.notify()
                return
            spill = self._take_all()
        self._ratelog.warning("queue-full", "influx sink: in-memory queue full (%d points, writer behind); "
                              "spilled %d points to the spool", self._max_queue, len(spill) + len(encoded))
        self._to_spool([line for line, _ in spill + encoded])

    def close(self, timeout: float = 10.0) -> bool:
        """Write or spool what is queued, then stop. Returns False if the writer was still busy
        after `timeout` (a hanging write); the queue is then spooled from here."""
        with self._cond:
            if self._stopping:
                return not self._thread.is_alive()
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cond:
                leftover = self._take_all()
            self._to_spool([line for line, _ in leftover])
            log.warning("influx sink: writer still busy after %.1f s (a write to %s is hanging); spooled %d queued "
                        "points, the batch in flight is spooled if its write fails", timeout, self._url, len(leftover))
            return False
        self._client.close()
        self._spool.close()
        return True

    # -- writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except Exception as err:  # a bug or a broken disk: the writer must not die silently
                self._healthy = False
                self._last_error = f"writer: {type(err).__name__}: {err}"
                self._ratelog.error("writer", "influx sink: writer step failed, retrying in %.1f s", self._backoff,
                                    exc_info=True)
                time.sleep(self._backoff)

    def _step(self) -> bool:
        """Wait for work, then deliver one due batch and/or replay one spooled batch. Returns
        True once stopping and nothing is queued."""
        with self._cond:
            while not self._stopping:
                timeout = self._time_to_next_action()
                if timeout is not None and timeout <= 0:
                    break
                self._cond.wait(timeout)
            stopping = self._stopping
            batch = self._take_due(force=stopping)
        if batch:
            self._deliver(batch)
        if not stopping and self._retry_due():
            self._replay_one()
        return stopping and not batch

    def _time_to_next_action(self) -> float | None:
        """Seconds until a batch is due or a retry of the spool is; None waits for `submit`."""
        now = time.monotonic()
        waits = []
        if self._queue:
            if len(self._queue) >= self._batch_size:
                return 0.0
            waits.append(self._first_queued_at + self._flush_interval - now)
        if not self._spool.empty:
            waits.append(self._retry_at - now)
        return min(waits) if waits else None

    def _take_all(self) -> list[tuple[str, float]]:
        taken = list(self._queue)
        self._queue.clear()
        self._first_queued_at = None
        return taken

    def _take_due(self, force: bool) -> list[tuple[str, float]]:
        """Up to `batch_size` queued lines if a batch is full or the oldest waited long enough."""
        if not self._queue:
            return []
        due = force or len(self._queue) >= self._batch_size
        if not due and time.monotonic() < self._first_queued_at + self._flush_interval:
            return []
        taken = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
        if not self._queue:
            self._first_queued_at = None
        return taken

    def _retry_due(self) -> bool:
        return not self._spool.empty and time.monotonic() >= self._retry_at

    def _encode_received(self, events: Iterable[ScoreEvent]) -> list[tuple[str, float]]:
        """(line, arrival time) of the events that can be encoded; the others are counted as dropped."""
        events = list(events)
        encoded = [(line, event.received) for line, event in encode_each(events, self._ratelog, "influx sink")]
        if len(encoded) < len(events):
            self._counts["dropped"].inc(len(events) - len(encoded))
        return encoded

    def _deliver(self, encoded: list[tuple[str, float]]) -> None:
        """A live batch: to the database if nothing older waits and the back-off allows, else
        to the spool; its first failed attempt also sends it to the spool."""
        lines = [line for line, _ in encoded]
        if not self._spool.empty or time.monotonic() < self._retry_at:
            self._to_spool(lines)
            return
        outcome = self._write(lines)
        if outcome is _Outcome.WRITTEN:
            now = time.time()
            for _, received in encoded:
                self._metrics.publish_to_sink_seconds.observe(now - received)
        elif outcome is _Outcome.RETRY:
            self._to_spool(lines)

    def _replay_one(self) -> None:
        """Write the spool's oldest batch; ack it on success, keep it for the next try otherwise."""
        batch = self._spool.read_oldest(self._batch_size)
        if batch is None:
            return
        outcome = self._write(batch.lines)
        if outcome is _Outcome.RETRY:
            self._counts["retried"].inc(len(batch.lines))
            self._count_dropped(self._spool.release(batch))
        else:
            self._count_dropped(self._spool.ack(batch))
            if self._spool.empty:
                log.info("influx sink: spool replayed, writing live data again")

    def _to_spool(self, lines: list[str]) -> None:
        if not lines:
            return
        try:
            dropped = self._spool.append(lines)
        except OSError as err:
            self._counts["dropped"].inc(len(lines))
            self._ratelog.error("spool-error", "influx sink: cannot spool %d points, dropped them: %s", len(lines), err)
            return
        self._counts["spooled"].inc(len(lines))
        self._count_dropped(dropped)

    def _count_dropped(self, dropped: int) -> None:
        if dropped:
            self._counts["dropped"].inc(dropped)
            self._ratelog.warning("spool-full", "influx sink: spool full, dropped the %d oldest points", dropped)

    def _write(self, lines: list[str]) -> _Outcome:
        """One attempt; counts `written` or `dropped` (rejected) and manages health and back-off."""
        try:
            # One bytes body: given a list, the client serialises line by line in Python (an import,
            # type checks and an encode per line) on this thread, beside the model.
            body = "\n".join(lines).encode()
            self._write_api.write(self._bucket, self._org, record=body, write_precision=self._precision)
        except self._api_exception as err:
            if _classify(err.status) is _Outcome.REJECTED:
                self._counts["dropped"].inc(len(lines))
                self._ratelog.error(f"http-{err.status}", "influx sink: %s rejected a batch of %d points with HTTP "
                                    "%s %s, dropped it (bad data is not retried): %s", self._url, len(lines),
                                    err.status, err.reason, _body(err))
                return _Outcome.REJECTED
            hint = " (check token, org and bucket)" if err.status in CONFIG_STATUSES else ""
            self._failed(f"HTTP {err.status} {err.reason}{hint}: {_body(err)}", _retry_after(err))
            return _Outcome.RETRY
        except Exception as err:  # connection refused, timeouts, DNS...: the transport failed
            self._failed(f"{type(err).__name__}: {err}", None)
            return _Outcome.RETRY
        self._counts["written"].inc(len(lines))
        if not self._healthy:
            log.info("influx sink: writes to %s succeed again after %d failed attempts", self._url, self._failures)
        self._healthy = True
        self._failures = 0
        self._backoff = self._backoff_initial
        self._retry_at = 0.0
        return _Outcome.WRITTEN

    def _failed(self, error: str, retry_after: float | None) -> None:
        if self._healthy:
            log.warning("influx sink: write to %s failed (%s); spooling to disk and retrying with back-off",
                        self._url, error)
        else:
            self._ratelog.warning("write-failed", "influx sink: write to %s still failing (%s)", self._url, error)
        self._healthy = False
        self._last_error = error
        self._failures += 1
        self._retry_at = time.monotonic() + max(self._backoff, retry_after or 0.0)
        self._backoff = min(self._backoff * 2, self._backoff_max)


def _classify(status: int | None) -> _Outcome:
    """Retry server errors, 429 and configuration errors; reject other 4xx (the data is bad)."""
    if status is not None and 400 <= status < 500 and status != 429 and status not in CONFIG_STATUSES:
        return _Outcome.REJECTED
    return _Outcome.RETRY


def _retry_after(err: ApiException) -> float | None:
    try:
        return float(err.retry_after) if err.retry_after else None
    except ValueError:  # an HTTP date: fall back to our own back-off
        return None


def _body(err: ApiException) -> str:
    body = err.body.decode(errors="replace") if isinstance(err.body, bytes) else str(err.body or "")
    return body[:200]
