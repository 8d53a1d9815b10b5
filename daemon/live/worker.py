"""The scoring side: a bounded window queue, the worker thread and the model thread.

Batching is what makes the model fast (a forward pass over many windows costs little more
than over one), so the worker waits briefly for a batch to fill, bounded by `max_wait_s` from
the oldest queued window so latency stays bounded under light load.

The worker is pipelined: while the model computes one batch on the model thread (without the
GIL), the worker thread finishes the batch before it (errors, threshold, hysteresis, events,
line protocol in the sink) and prepares the next, so the worker's own Python overlaps the
forward pass on a second core (bench/throughput.py measures the gain).

The queue drops the OLDEST window when full: under overload, fresh windows are worth more
than stale ones, and `put` must never block the MQTT network thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Mapping, Protocol

import numpy as np

from daemon.live.alerting import AlertTracker
from daemon.live.events import ScoreEvent, WindowJob
from daemon.live.telemetry.memory import release_free_memory
from daemon.live.telemetry.metrics import Metrics
from daemon.live.telemetry.ratelimit import RateLimitedLog
from daemon.core.runtime import model_batches
from daemon.core.scoring import ModelInput, Scorer, WindowScores
from daemon.core.thresholds import threshold_in_force

log = logging.getLogger(__name__)

# Windows scored between two returns of freed memory to the OS (daemon.live.telemetry.memory),
# done only when the queue is empty, so it never delays a waiting window.
TRIM_EVERY_WINDOWS = 10_000


class Sink(Protocol):
    """What the worker writes to: InfluxSink, FileSink, or anything with this shape."""

    @property
    def healthy(self) -> bool:
        """False while writes fail (drives /healthz)."""

    def submit(self, events: list[ScoreEvent]) -> None:
        """Accept scored windows without blocking (buffer and write elsewhere)."""

    def status(self) -> dict[str, object]:
        """Details for /healthz."""

    def close(self, timeout: float = 10.0) -> bool:
        """Flush what was accepted and stop; True when everything was flushed."""


class WindowQueue:
    """Bounded FIFO of windows between ingest and the worker. Thread-safe for any number of
    producers and one consumer (`take` is the worker's alone)."""

    def __init__(self, maxsize: int, metrics: Metrics) -> None:
        if maxsize < 1:
            raise ValueError(f"queue maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._metrics = metrics
        self._items: deque[tuple[float, WindowJob]] = deque()  # (monotonic enqueue time, job)
        self._cond = threading.Condition(threading.Lock())
        self._wanted = 1  # queue length at which a waiting `take` needs waking
        self._waiting = False  # a `take` is blocked in wait(): only then does `put` notify
        self._closed = False
        metrics.read_at_scrape(metrics.queue_depth, self.__len__)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, job: WindowJob) -> None:
        """Enqueue without blocking; when full, drop the oldest window. After `close`, the job
        itself is dropped. Drops are counted in windows_dropped."""
        with self._cond:
            if self._closed:
                self._metrics.windows_dropped.labels(reason="queue_full").inc()
                return
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self._metrics.windows_dropped.labels(reason="queue_full").inc()
            self._items.append((time.monotonic(), job))
            if self._waiting and len(self._items) >= self._wanted:
                self._cond.notify()

    def take(self, max_batch: int, max_wait_s: float, block: bool = True) -> list[WindowJob]:
        """Up to `max_batch` jobs, oldest first. Returns as soon as `max_batch` are queued, or
        `max_wait_s` after the oldest queued job arrived, or at once once closed. Blocks while
        the queue is empty and open; returns [] only when closed and empty. With `block=False`
        it returns at once: the batch if it is ready by those rules, else nothing."""
        if not block:
            with self._cond:
                ready = (len(self._items) >= max_batch or self._closed
                         or (self._items and time.monotonic() - self._items[0][0] >= max_wait_s))
                return [self._items.popleft()[1] for _ in range(min(max_batch, len(self._items)))] if ready else []
        with self._cond:
            self._wanted = 1
            self._waiting = True
            try:
                while not self._items and not self._closed:
                    self._cond.wait()
                if self._items:
                    deadline = self._items[0][0] + max_wait_s
                    self._wanted = max_batch
                    while len(self._items) < max_batch and not self._closed:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
            finally:
                self._waiting = False
            self._wanted = 1
            return [self._items.popleft()[1] for _ in range(min(max_batch, len(self._items)))]

    def close(self) -> None:
        """Stop accepting windows and wake the worker; queued windows can still be taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def discard(self) -> int:
        """Drop every queued window, counting them in windows_dropped. Returns how many."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
        self._metrics.windows_dropped.labels(reason="queue_full").inc(n)
        return n


@dataclass(frozen=True)
class ModelSlot:
    """What scores one route's windows: its bundle, its devices' alert states and the
    threshold override from the config (None = the bundle's threshold)."""

    scorer: Scorer
    alerts: AlertTracker
    threshold_override: float | None = None

    @property
    def threshold(self) -> float:
        """The threshold in force for this route (daemon.core.thresholds.threshold_in_force)."""
        return threshold_in_force(self.scorer.threshold, self.threshold_override)


@dataclass
class _InFlight:
    """One route's batch handed to the model thread, waiting for `Worker._finish`."""

    slot: ModelSlot
    jobs: list[WindowJob]
    model_input: ModelInput
    reconstruction: Future  # of (reconstruction, seconds in the model)


class Worker:
    """Take a batch, score it in one forward pass per model, apply the threshold and
    hysteresis, hand the events to the sink. Forward passes run on one model thread, in order.

    `models` maps a route key (`WindowJob.route`) to its `ModelSlot`; with one bundle for
    every device that is just `{"": slot}`. A batch holding windows of several routes is
    scored in one forward pass per route."""

    def __init__(self, queue: WindowQueue, models: Mapping[str, ModelSlot], sink: Sink, metrics: Metrics,
                 max_batch: int = 64, max_wait_s: float = 0.05) -> None:
        self._queue = queue
        self._models = dict(models)  # swapped as one reference, see swap_models
        self._sink = sink
        self._metrics = metrics
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._abandon = False
        self._errors = RateLimitedLog(log)
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="anomalyd-model")
        self._thread = threading.Thread(target=self._run, name="anomalyd-worker", daemon=True)
        metrics.read_at_scrape(metrics.alerts_active, self._active_alerts)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def swap_models(self, models: Mapping[str, ModelSlot]) -> None:
        """Use `models` from the next batch on, e.g. after a SIGHUP reload. Queued windows
        whose route is gone or whose shape does not fit the new model are dropped."""
        self._models = dict(models)

    def _active_alerts(self) -> int:
        return sum(slot.alerts.active_count() for slot in self._models.values())

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Close the queue and end the thread. With `drain`, queued windows are scored first;
        without, they are dropped and counted. Stop ingest before calling this."""
        if not drain:
            self._abandon = True
        self._queue.close()
        if not drain:
            self._queue.discard()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        since_trim = 0
        in_flight: list[_InFlight] = []
        try:
            while not self._abandon:
                # While a batch is in the model, take the next one only if it is ready (full,
                # or its oldest window has waited max_wait_s): the worker must be back to
                # finish the batch in flight, and small batches back to back would keep the
                # model busy at a fraction of its full-batch speed, costing more CPU for the
                # same windows.
                waiting = not in_flight
                jobs = self._queue.take(self.max_batch, self.max_wait_s, block=waiting)
                if not jobs and waiting:
                    return  # closed and drained
                started = self._start(jobs)
                for batch in in_flight:
                    self._finish(batch)
                in_flight = started
                since_trim += len(jobs)
                if since_trim >= TRIM_EVERY_WINDOWS and not in_flight and not len(self._queue):
                    release_free_memory()
                    since_trim = 0
        finally:
            for batch in in_flight:
                self._finish(batch)
            self._model_thread.shutdown(wait=False)

    def _start(self, jobs: list[WindowJob]) -> list[_InFlight]:
        """Prepare each route's windows and hand them to the model thread."""
        models = self._models
        by_route: dict[str, list[WindowJob]] = {}
        for job in jobs:
            by_route.setdefault(job.route, []).append(job)
        started = []
        for route, group in by_route.items():
            for part in model_batches(len(group)):
                batch = self._prepare(models.get(route), route, group[part])
                if batch is not None:
                    started.append(batch)
        return started

    def _prepare(self, slot: ModelSlot | None, route: str, jobs: list[WindowJob]) -> _InFlight | None:
        """Check and scale one route's windows and submit its forward pass. A failure loses
        these windows (counted and logged, rate-limited), never the thread."""
        if slot is None:
            self._metrics.windows_dropped.labels(reason="model_mismatch").inc(len(jobs))
            self._errors.warning("route:" + route, "dropped %d windows of route %r, which no longer has a model",
                                 len(jobs), route)
            return None
        scorer = slot.scorer
        expected = (scorer.window, len(scorer.features))
        fitting = [job for job in jobs if job.window.shape == expected]
        if len(fitting) < len(jobs):
            self._metrics.windows_dropped.labels(reason="model_mismatch").inc(len(jobs) - len(fitting))
            self._errors.warning("shape", "dropped %d windows that do not fit model %s (%d x %d)",
                                 len(jobs) - len(fitting), scorer.bundle.name, *expected)
        if not fitting:
            return None
        try:
            # One concatenate + reshape: cheaper than np.stack for many small windows.
            raw = np.concatenate([job.window for job in fitting]).reshape(len(fitting), *expected)
            model_input = scorer.model_input(raw)
        except Exception as exc:
            self._scoring_failed(len(fitting), exc)
            return None
        return _InFlight(slot, fitting, model_input,
                         self._model_thread.submit(_timed, scorer.backend, model_input.values))

    def _finish(self, batch: _InFlight) -> None:
        """Wait for a batch's reconstruction, score it and hand its events to the sink."""
        try:
            reconstruction, seconds = batch.reconstruction.result()
            result = batch.slot.scorer.finish(batch.model_input, reconstruction)
        except Exception as exc:  # a model bug must not end the worker
            self._scoring_failed(len(batch.jobs), exc)
            return
        self._metrics.inference_seconds.observe(seconds)
        events = self._events(batch.slot, batch.jobs, result)
        try:
            self._sink.submit(events)
        except Exception as exc:  # a sink bug likewise
            self._metrics.sink_points.labels(result="dropped").inc(len(events))
            self._errors.error("sink:" + type(exc).__name__, "sink rejected %d events, events lost: %s",
                               len(events), exc, exc_info=True)

    def _scoring_failed(self, windows: int, exc: Exception) -> None:
        self._metrics.windows_dropped.labels(reason="scoring_error").inc(windows)
        self._errors.error("score:" + type(exc).__name__, "scoring %d windows failed, windows lost: %s",
                           windows, exc, exc_info=True)

    def _events(self, slot: ModelSlot, jobs: list[WindowJob], result: WindowScores) -> list[ScoreEvent]:
        scorer = slot.scorer
        threshold = slot.threshold
        self._metrics.batch_size.observe(len(jobs))
        names = scorer.features
        model = scorer.bundle.name
        flags = result.flags(threshold).tolist()
        alerts = slot.alerts.update_batch([job.device for job in jobs], flags)
        reasons = result.reasons or [""] * len(jobs)
        events = [ScoreEvent(job.device, model, job.ts_end, score, threshold, anomaly, alert,
                             dict(zip(names, errors)), job.received, reason)
                  for job, score, errors, anomaly, (alert, _), reason in
                  zip(jobs, result.scores.tolist(), result.feature_errors.tolist(), flags, alerts, reasons)]
        if result.reasons is not None:
            self._count_unscorable(scorer, jobs, result.reasons)
        self._metrics.windows_scored.inc(len(jobs))
        self._metrics.anomalous_windows.inc(sum(flags))
        self._metrics.alerts_raised.inc(sum(raised for _, raised in alerts))
        return events


    def _count_unscorable(self, scorer: Scorer, jobs: list[WindowJob], reasons: list[str]) -> None:
        """Windows flagged for a reason rather than their score: counted by reason, and logged
        (rate-limited) with a device, so a sensor sending a fault code is found by name."""
        for reason in set(reasons) - {""}:
            windows = [job for job, r in zip(jobs, reasons) if r == reason]
            self._metrics.unscorable_windows.labels(reason=reason).inc(len(windows))
            self._errors.warning("unscorable:" + reason, "%d windows of model %s flagged %s (device %r, ...)",
                                 len(windows), scorer.bundle.name, reason, windows[0].device)


def _timed(backend, model_input: np.ndarray) -> tuple[np.ndarray, float]:
    """Runs on the model thread: the forward pass and its duration."""
    started = time.perf_counter()
    return backend(model_input), time.perf_counter() - started
