"""Write score events to InfluxDB (or anything speaking `/api/v2/write`), surviving outages.

The caller (the scoring worker) must never wait for the database, so `submit` only encodes
the events and queues their lines in the sink's `BufferedWriter`; its thread does the network
I/O. Encoding on the caller's thread is deliberate: Python running on a second thread beside
the model slows the model (GIL hand-offs at every torch op; bench/throughput.py measures it),
and the worker has to pay for the encoding either way.

    submit ─► queue (≤ max_queue lines) ─► writer ─► batch of ≤ batch_size lines
                │ queue full: the oldest queued lines spill to the spool
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

Ordering: at most one batch can be reordered: the one in flight while the queue spills, which
is spooled after the spilled points if its write then fails. Points carry their own
timestamps, so this changes the arrival order only, never the stored series.

`publish_to_sink_seconds` is observed for points written from memory; spooled points were
delayed by the outage, which the `spooled` counter and `healthy` already report.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from daemon.live.config import InfluxdbConfig
from daemon.live.events import Receipt, ScoreEvent, settle
from daemon.live.sinks.base import Backlog, BufferedWriter
from daemon.live.sinks.line_protocol import encode_each
from daemon.live.sinks.spool import Spool
from daemon.live.telemetry.metrics import Metrics
from daemon.live.telemetry.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from influxdb_client.rest import ApiException

log = logging.getLogger(__name__)

# 4xx answers that mean "fix the configuration" (token, org, bucket), not "bad data": the
# points are kept in the spool so they survive until an operator fixes the config.
CONFIG_STATUSES = (401, 403, 404)


_Item = tuple[str, float, "Receipt | None"]  # what the writer queues: (line, arrival time, receipt)


def _settle_items(items: list[_Item]) -> None:
    settle(receipt for _, _, receipt in items)


class _Outcome(enum.Enum):
    WRITTEN = "written"
    RETRY = "retry"  # the server did not take the batch; try again later
    REJECTED = "rejected"  # the server refused the data itself; retrying cannot help


@dataclass(frozen=True)
class Backoff:
    """Wait between attempts while the database fails: doubles from `initial_s` up to `max_s`."""

    initial_s: float = 0.5
    max_s: float = 30.0

    def after(self, current: float) -> float:
        return min(current * 2, self.max_s)


class InfluxSink:
    """Batched, retried, disk-spooled writer. Takes ownership of `spool` (closed by `close`).

    `max_queue` bounds the lines waiting in memory (default: 10 batches)."""

    def __init__(self, settings: InfluxdbConfig, spool: Spool, metrics: Metrics, *, max_queue: int | None = None,
                 backoff: Backoff = Backoff()) -> None:
        if settings.url is None or settings.bucket is None:
            raise ValueError("influx sink: influxdb.url and influxdb.bucket must be set")
        self._url = settings.url
        self._org = settings.org or ""
        self._bucket = settings.bucket
        self._batch_size = settings.batch_size
        self._max_queue = max_queue if max_queue is not None else 10 * settings.batch_size
        self._spool = spool
        self._metrics = metrics
        self._backoff_policy = backoff
        # Imported here, not at module level: influxdb-client and its dependencies cost memory
        # that a daemon writing to a local file (or only to metrics) need not pay.
        from influxdb_client import InfluxDBClient, WritePrecision
        from influxdb_client.client.write_api import SYNCHRONOUS
        from influxdb_client.rest import ApiException

        self._api_exception = ApiException
        self._precision = WritePrecision.MS
        self._client = InfluxDBClient(url=self._url, token=settings.token or "", org=self._org,
                                      timeout=settings.timeout_ms)  # the client takes milliseconds
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._counts = {result: metrics.sink_points.labels(result=result)
                        for result in ("written", "retried", "spooled", "dropped")}
        self._ratelog = RateLimitedLog(log, interval=30.0)

        self._backoff = backoff.initial_s
        self._retry_at = 0.0  # monotonic time before which the database is not tried again
        self._writer: BufferedWriter[_Item] = BufferedWriter(
            "influx sink", self._deliver, self._spill, max_queued=self._max_queue, batch_size=settings.batch_size,
            max_wait_s=settings.flush_interval_s, backlog=Backlog(self._retry_due_in, self._replay_one),
            settled=_settle_items, start=False)
        self._writer.start()  # a spool left by an earlier run is replayed at once, through self._writer

    # -- caller side ------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False from a failed write until the next successful one."""
        return self._writer.healthy

    def status(self) -> dict[str, object]:
        """Details for /healthz."""
        return {"healthy": self._writer.healthy, "url": self._url, "queued_points": self._writer.queued,
                "spool_bytes": self._spool.pending_bytes, "last_error": self._writer.last_error}

    def submit(self, events: Iterable[ScoreEvent]) -> None:
        """Encode events and queue their lines for writing. Never waits for the database: when
        the queue is full, its oldest lines go to the spool (local disk I/O only)."""
        self._writer.submit(self._encode_received(events))

    def close(self, timeout: float = 10.0) -> bool:
        """Write or spool what is queued, then stop. Returns False if the writer was still busy
        after `timeout` (a hanging write); the queue is then spooled from here, and the batch
        in flight is spooled if its write fails."""
        if not self._writer.close(timeout):
            return False
        self._client.close()
        self._spool.close()
        return True

    def _encode_received(self, events: Iterable[ScoreEvent]) -> list[_Item]:
        """(line, arrival time, receipt) of the events that can be encoded; the others are
        counted as dropped (and their receipts settled)."""
        events = list(events)
        pairs = encode_each(events, self._ratelog, "influx sink")
        if len(pairs) < len(events):
            self._counts["dropped"].inc(len(events) - len(pairs))
            kept = {id(event) for _, event in pairs}
            settle(event.receipt for event in events if id(event) not in kept)
        return [(line, event.received, event.receipt) for line, event in pairs]

    # -- writer thread ----------------------------------------------------------------------

    def _retry_due_in(self) -> float | None:
        """Seconds until the spool's next replay is due; None while the spool is empty."""
        return None if self._spool.empty else self._retry_at - time.monotonic()

    def _deliver(self, encoded: list[_Item]) -> None:
        """A live batch: to the database if nothing older waits and the back-off allows, else
        to the spool; its first failed attempt also sends it to the spool."""
        lines = [line for line, _, _ in encoded]
        if not self._spool.empty or time.monotonic() < self._retry_at:
            self._to_spool(lines)
            return
        outcome = self._write(lines)
        if outcome is _Outcome.WRITTEN:
            now = time.time()
            for _, received, _ in encoded:
                self._metrics.publish_to_sink_seconds.observe(now - received)
        elif outcome is _Outcome.RETRY:
            self._to_spool(lines)

    def _spill(self, encoded: list[_Item]) -> None:
        """Lines the writer cannot send from memory (the queue overflowed, its write failed
        unexpectedly, or `close` timed out) go to the spool, oldest first."""
        self._ratelog.warning("spill", "influx sink: %d points could not wait in memory (queue of %d full, or the "
                              "writer is stuck or stopped); spooled them", len(encoded), self._max_queue)
        self._to_spool([line for line, _, _ in encoded])

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
        self._writer.record_success()
        self._backoff = self._backoff_policy.initial_s
        self._retry_at = 0.0
        return _Outcome.WRITTEN

    def _failed(self, error: str, retry_after: float | None) -> None:
        self._writer.record_failure(f"write to {self._url} failed ({error}); spooling to disk and retrying "
                                    f"with back-off")
        self._retry_at = time.monotonic() + max(self._backoff, retry_after or 0.0)
        self._backoff = self._backoff_policy.after(self._backoff)


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
