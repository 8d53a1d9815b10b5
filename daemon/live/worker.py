"""The scoring side: a bounded window queue, the worker thread and the model thread.

Batching is what makes the model fast (a forward pass over many windows costs little more
than over one), so the worker waits briefly for a batch to fill, bounded by `max_wait_s` from
the oldest queued window so latency stays bounded under light load.

The worker is pipelined: while the model computes one batch on the model thread (without the
GIL), the worker thread finishes the batch before it (errors, threshold, hysteresis, events,
line protocol in the sink) and prepares the next, so the worker's own Python overlaps the
forward pass on a second core (bench/throughput.py measures the gain).

The queue drops the OLDEST window when full (see `WindowQueue`). A window's receipt (Kafka)
goes with its event to the sink, which settles it; a window dropped on the way settles its
receipt where it is dropped, so its source never waits for it.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Mapping, Protocol

import numpy as np

from daemon.live.alerting import AlertTracker
from daemon.live.bounded_queue import BoundedQueue
from daemon.live.budget_watch import BudgetWatch
from daemon.live.events import ScoreEvent, WindowJob, settle
from daemon.live.sinks.base import Sink
from daemon.live.telemetry.memory import release_free_memory
from daemon.live.telemetry.metrics import Metrics
from daemon.live.telemetry.ratelimit import RateLimitedLog
from daemon.core.runtime import model_batches
from daemon.core.scoring import ModelInput, Scorer, WindowScores
from daemon.core.sensor_health import check_of
from daemon.core.thresholds import threshold_in_force

log = logging.getLogger(__name__)

# Windows scored between two returns of freed memory to the OS (daemon.live.telemetry.memory),
# done only when the queue is empty, so it never delays a waiting window.
TRIM_EVERY_WINDOWS = 10_000


class WindowQueue(BoundedQueue[WindowJob]):
    """Windows between ingest and the worker. When full, the OLDEST window is dropped: under
    overload fresh windows are worth more than stale ones, and `put` must never block the MQTT
    network thread. Every drop, and every window put after `close`, is counted in
    windows_dropped{reason="queue_full"} and logged, rate-limited. `take` is the worker's alone."""

    def __init__(self, maxsize: int, metrics: Metrics) -> None:
        super().__init__(maxsize, self._dropped)
        self._drops = metrics.windows_dropped.labels(reason="queue_full")
        self._ratelog = RateLimitedLog(log, interval=30.0)

    def _dropped(self, jobs: list[WindowJob]) -> None:
        settle(job.receipt for job in jobs)
        self._drops.inc(len(jobs))
        self._ratelog.warning("queue_full", "window queue: dropped %d windows, oldest first (queue of %d full: "
                              "the model is not keeping up; or stopping without draining)", len(jobs), self.maxsize)


class AlertChanges(Protocol):
    """Where the served model's alert changes are recorded so they survive a partition move
    (daemon.live.ingest.alert_state.AlertStateTopic)."""

    def publish(self, device: str, alert: bool, ts: float, source: tuple[str, int] | None) -> None: ...


@dataclass(frozen=True)
class ModelSlot:
    """What scores one route's windows: its bundle, its devices' alert states, the
    threshold override from the config (None = the bundle's threshold), the bundle's
    per-device thresholds (`threshold.devices`, empty for most bundles) and the watch of its
    devices' false-alarm budget (None: not watched, as for a candidate)."""

    scorer: Scorer
    alerts: AlertTracker
    threshold_override: float | None = None
    device_thresholds: Mapping[str, float] = field(default_factory=dict)
    budget: BudgetWatch | None = None

    @property
    def threshold(self) -> float:
        """The threshold in force for this route's devices without one of their own
        (daemon.core.thresholds.threshold_in_force)."""
        return threshold_in_force(self.scorer.threshold, self.threshold_override)

    def thresholds(self, devices: list[str]) -> list[float]:
        """The threshold in force for each window's device."""
        if not self.device_thresholds or self.threshold_override is not None:
            return [self.threshold] * len(devices)
        return [threshold_in_force(self.scorer.threshold, None, device, self.device_thresholds)
                for device in devices]


@dataclass
class _InFlight:
    """One route's batch handed to the model thread, waiting for `Worker._finish`."""

    slot: ModelSlot
    jobs: list[WindowJob]
    model_input: ModelInput
    reconstruction: Future  # of (reconstruction, seconds in the model)
    shadow: bool = False  # the candidate's pass over windows the served model scores too


class Worker:
    """Take a batch, score it in one forward pass per model, apply the threshold and
    hysteresis, hand the events to the sink. Forward passes run on one model thread, in order.

    `models` maps a route key (`WindowJob.route`) to its `ModelSlot`; with one bundle for
    every device that is just `{"": slot}`. A batch holding windows of several routes is
    scored in one forward pass per route.

    `shadow` (model.candidate) scores the windows of the default route ("") a second time;
    its events go to the sink marked `shadow`, and it moves no metric, alert or receipt: the
    served model's pass owns those, so the service behaves as it does without a candidate.

    `alert_changes` gets every change of the served model's alert states on a window scored
    for the first time (not replayed), before the window goes to the sink."""

    def __init__(self, queue: WindowQueue, models: Mapping[str, ModelSlot], sink: Sink, metrics: Metrics,
                 max_batch: int = 64, max_wait_s: float = 0.05, shadow: ModelSlot | None = None,
                 alert_changes: AlertChanges | None = None) -> None:
        self._queue = queue
        self._models = dict(models)  # swapped as one reference, see swap_models
        self.shadow = shadow
        self._alert_changes = alert_changes
        self._sink = sink
        self._metrics = metrics
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._abandon = False
        self._errors = RateLimitedLog(log)
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="anomalyd-model")
        self._thread = threading.Thread(target=self._run, name="anomalyd-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def swap_models(self, models: Mapping[str, ModelSlot], shadow: ModelSlot | None = None) -> None:
        """Use `models` (and `shadow`) from the next batch on, e.g. after a SIGHUP reload. Queued
        windows whose route is gone or whose shape does not fit the new model are dropped."""
        self._models = dict(models)
        self.shadow = shadow

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
        models, shadow = self._models, self.shadow
        by_route: dict[str, list[WindowJob]] = {}
        for job in jobs:
            by_route.setdefault(job.route, []).append(job)
        started = []
        for route, group in by_route.items():
            for part in model_batches(len(group)):
                batch = self._prepare(models.get(route), route, group[part])
                if batch is not None:
                    started.append(batch)
                    if shadow is not None and route == "":
                        started += self._prepare_shadow(shadow, batch.jobs)
        return started

    def _prepare_shadow(self, slot: ModelSlot, jobs: list[WindowJob]) -> list[_InFlight]:
        """Submit the candidate's pass over windows the served model took. Its failures are
        counted and logged apart: the windows themselves are scored by the served model."""
        scorer = slot.scorer
        expected = (scorer.window, len(scorer.features))
        fitting = [job for job in jobs if job.window.shape == expected]
        if not fitting:
            return []
        try:
            raw = np.concatenate([job.window for job in fitting]).reshape(len(fitting), *expected)
            model_input = scorer.model_input(raw, slot.alerts.health_states([job.device for job in fitting]))
        except Exception as exc:
            self._shadow_failed(scorer, len(fitting), exc)
            return []
        return [_InFlight(slot, fitting, model_input,
                          self._model_thread.submit(_timed, scorer.backend, model_input.values), shadow=True)]

    def _prepare(self, slot: ModelSlot | None, route: str, jobs: list[WindowJob]) -> _InFlight | None:
        """Check and scale one route's windows and submit its forward pass. A failure loses
        these windows (counted and logged, rate-limited), never the thread."""
        if slot is None:
            settle(job.receipt for job in jobs)
            self._metrics.windows_dropped.labels(reason="model_mismatch").inc(len(jobs))
            self._errors.warning("route:" + route, "dropped %d windows of route %r, which no longer has a model",
                                 len(jobs), route)
            return None
        scorer = slot.scorer
        expected = (scorer.window, len(scorer.features))
        fitting = [job for job in jobs if job.window.shape == expected]
        if len(fitting) < len(jobs):
            settle(job.receipt for job in jobs if job.window.shape != expected)
            self._metrics.windows_dropped.labels(reason="model_mismatch").inc(len(jobs) - len(fitting))
            self._errors.warning("shape", "dropped %d windows that do not fit model %s (%d x %d)",
                                 len(jobs) - len(fitting), scorer.bundle.name, *expected)
        if not fitting:
            return None
        try:
            # One concatenate + reshape: cheaper than np.stack for many small windows.
            raw = np.concatenate([job.window for job in fitting]).reshape(len(fitting), *expected)
            health = slot.alerts.health_states([job.device for job in fitting])
            model_input = scorer.model_input(raw, health)
        except Exception as exc:
            self._scoring_failed(fitting, exc)
            return None
        return _InFlight(slot, fitting, model_input,
                         self._model_thread.submit(_timed, scorer.backend, model_input.values))

    def _finish(self, batch: _InFlight) -> None:
        """Wait for a batch's reconstruction, score it and hand its events to the sink."""
        if batch.shadow:
            self._finish_shadow(batch)
            return
        try:
            reconstruction, seconds = batch.reconstruction.result()
            result = batch.slot.scorer.finish(batch.model_input, reconstruction)
        except Exception as exc:  # a model bug must not end the worker
            self._scoring_failed(batch.jobs, exc)
            return
        self._metrics.inference_seconds.observe(seconds)
        self._metrics.staleness.observe(batch.slot.scorer.bundle, [job.device for job in batch.jobs], result.scores)
        events = self._events(batch.slot, batch.jobs, result)
        try:
            self._sink.submit(events)
        except Exception as exc:  # a sink bug likewise
            settle(event.receipt for event in events)
            self._metrics.sink_points.labels(result="dropped").inc(len(events))
            self._errors.error("sink:" + type(exc).__name__, "sink rejected %d events, events lost: %s",
                               len(events), exc, exc_info=True)

    def _finish_shadow(self, batch: _InFlight) -> None:
        """The candidate's events, written beside the served model's; no metric, no receipt."""
        try:
            reconstruction, _ = batch.reconstruction.result()
            result = batch.slot.scorer.finish(batch.model_input, reconstruction)
            events, _, _ = self._score_events(batch.slot, batch.jobs, result, shadow=True)
            self._sink.submit(_written(events, batch.jobs))
        except Exception as exc:
            self._shadow_failed(batch.slot.scorer, len(batch.jobs), exc)

    def _shadow_failed(self, scorer: Scorer, windows: int, exc: Exception) -> None:
        self._metrics.shadow_windows_lost.inc(windows)
        self._errors.error("shadow:" + type(exc).__name__, "candidate %s: scoring or writing in shadow failed, "
                           "its events lost (the served model's are not): %s", scorer.bundle.name, exc,
                           exc_info=True)

    def _scoring_failed(self, jobs: list[WindowJob], exc: Exception) -> None:
        settle(job.receipt for job in jobs)
        self._metrics.windows_dropped.labels(reason="scoring_error").inc(len(jobs))
        self._errors.error("score:" + type(exc).__name__, "scoring %d windows failed, windows lost: %s",
                           len(jobs), exc, exc_info=True)

    def _events(self, slot: ModelSlot, jobs: list[WindowJob], result: WindowScores) -> list[ScoreEvent]:
        self._metrics.batch_size.observe(len(jobs))
        events, flags, alerts = self._score_events(slot, jobs, result)
        if jobs[0].receipt is not None:  # a source that commits only what the sink holds (Kafka)
            for event, job in zip(events, jobs):
                event.receipt = job.receipt
            events = _written(events, jobs)
        if result.reasons is not None:
            self._count_reasons(slot.scorer, jobs, result.reasons)
        self._metrics.windows_scored.inc(len(jobs))
        self._metrics.anomalous_windows.inc(sum(flags))
        self._alert_changed(slot, jobs, alerts)
        return events

    def _alert_changed(self, slot: ModelSlot, jobs: list[WindowJob], alerts: list[tuple[bool, bool]]) -> None:
        """Count the raises, record the changes and show the budget watch the windows scored
        for the first time: a replayed window's change happened on the previous owner, which
        counted and recorded it."""
        changed = [i for i, (_, change) in enumerate(alerts) if change]
        raised = []
        for i in changed:
            job, alert = jobs[i], alerts[i][0]
            receipt = job.receipt
            if receipt is not None and receipt.replay:
                continue
            if alert:
                raised.append(job)
            if self._alert_changes is not None and receipt is not None:
                self._alert_changes.publish(job.device, alert, job.ts_end, receipt.source)
        if raised:
            self._metrics.alerts_raised.inc(len(raised))
        if slot.budget is not None:
            slot.budget.record(_first_scored(jobs), raised)

    def _score_events(self, slot: ModelSlot, jobs: list[WindowJob], result: WindowScores, shadow: bool = False
                      ) -> tuple[list[ScoreEvent], list[bool], list[tuple[bool, bool]]]:
        """Threshold and hysteresis over a scored batch: its events (a replayed window's
        included, for the caller to leave out), raw flags and (alert, changed) per window."""
        scorer = slot.scorer
        devices = [job.device for job in jobs]
        thresholds = slot.thresholds(devices)
        names = scorer.features
        model = scorer.bundle.name
        # float32 like the scores, so a per-device threshold compares exactly as a single one does
        flags = result.flags(np.asarray(thresholds, dtype=np.float32) if slot.device_thresholds
                             else slot.threshold).tolist()
        alerts = slot.alerts.update_batch(devices, flags, [job.ts_end for job in jobs])
        reasons = result.reasons or [""] * len(jobs)
        events = [ScoreEvent(job.device, model, job.ts_end, score, threshold, anomaly, alert,
                             dict(zip(names, errors)), job.received, reason, shadow=shadow)
                  for job, score, errors, anomaly, (alert, _), reason, threshold in
                  zip(jobs, result.scores.tolist(), result.feature_errors.tolist(), flags, alerts, reasons,
                      thresholds)]
        return events, flags, alerts

    def _count_reasons(self, scorer: Scorer, jobs: list[WindowJob], reasons: list[str]) -> None:
        """Windows flagged for a reason rather than their score: unscorable ones counted by
        reason, sensor-health flags by check; each kind logged (rate-limited) with a device and
        the reason, so a sensor sending a fault code or stuck on a value is found by name."""
        for reason in set(reasons) - {""}:
            windows = [job for job, r in zip(jobs, reasons) if r == reason]
            check = check_of(reason)
            if check is None:
                self._metrics.unscorable_windows.labels(reason=reason).inc(len(windows))
                self._errors.warning("unscorable:" + reason, "%d windows of model %s flagged %s (device %r, ...)",
                                     len(windows), scorer.bundle.name, reason, windows[0].device)
            else:
                self._metrics.sensor_health_flags.labels(check=check).inc(len(windows))
                self._errors.warning("health:" + check, "%d windows of model %s flagged by sensor health, "
                                     "e.g. device %r: %s", len(windows), scorer.bundle.name, windows[0].device,
                                     reason)


def _written(events: list[ScoreEvent], jobs: list[WindowJob]) -> list[ScoreEvent]:
    """The events the sink gets: a replayed window (a Kafka partition's new owner refilling its
    devices' windows) only rebuilds the alert state, its point is already written."""
    return [event for event, job in zip(events, jobs) if job.receipt is None or not job.receipt.replay]


def _first_scored(jobs: list[WindowJob]) -> list[WindowJob]:
    """The windows scored here for the first time: all but the replayed ones (a batch comes
    from one source, so one without receipts has no replays)."""
    if jobs[0].receipt is None:
        return jobs
    return [job for job in jobs if not job.receipt.replay]


def _timed(backend, model_input: np.ndarray) -> tuple[np.ndarray, float]:
    """Runs on the model thread: the forward pass and its duration."""
    started = time.perf_counter()
    return backend(model_input), time.perf_counter() - started
