"""See a model go stale: how often recent windows score above the calibration's reference.

Training and `calibrate` store, next to the threshold, the *score reference*: the 99th
percentile of the very windows the threshold was calibrated on (bundle.json
`calibration.score_reference`, else `training.score_reference`). While the data looks like
that sample, about 1 % of windows score above it. When a plant's normal drifts (a season, a
retooled line, a replaced pump), that share climbs well before the threshold alarms on every
window, and says "recalibrate or retrain" rather than "fault". Bundles written without a
reference are not tracked (staleness off).

Windows are counted per model (bundle name, the `model` tag of the points written) and per
device in ten-minute buckets over a sliding hour (the hour moves on a bucket at a time, so the
share covers the last 50 to 60 minutes), so memory per device is small and fixed whatever the
message rate, and a device that goes quiet ages out. A share that moves over hours needs no
finer steps, and each device of a fleet holds its own ring. A new bundle version or reference under
a model's name (a reload after `calibrate`) starts a fresh count: it is a new calibration; a
model the service no longer serves (`serve`, told on every start and reload) is forgotten, and
a served one is reported from the start (share NaN until enough windows are in).

The export is per model, not per device (10k devices would be 10k series per metric): the
fleet's share, the share expected (1 - the quantile) and the number of devices whose own share
is above `STALE_RATIO` times the expected one. A drifted device is found by name with
`anomalyd score --device` or in the dashboard's per-device scores.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from array import array
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from daemon.core.bundle import Bundle
from daemon.core.score_reference import ScoreReference
from daemon.live.telemetry.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

STALE_RATIO = 5.0  # a device is counted as drifted when its share is this many times the expected one
MIN_WINDOWS = 60  # a share over fewer windows says little (1 window above out of 10 reads as 10 %)
WINDOW_SECONDS = 3600.0
BUCKET_SECONDS = 600.0


class _DeviceCounts:
    """Windows and windows above the reference in a ring of time buckets: for slot i,
    `counts[3i:3i + 3]` = (its bucket's number since the epoch, windows, windows above). One
    int32 array, not lists of Python ints: every device of a fleet holds one, and a list entry
    costs a pointer and an int object where the array stores 4 bytes."""

    __slots__ = ("counts",)

    def __init__(self, buckets: int) -> None:
        self.counts = array("i", [-1, 0, 0]) * buckets

    def add(self, bucket: int, total: int, above: int) -> None:
        counts = self.counts
        slot = 3 * (bucket % (len(counts) // 3))
        if counts[slot] != bucket:
            counts[slot:slot + 3] = array("i", (bucket, 0, 0))
        counts[slot + 1] += total
        counts[slot + 2] += above

    def sums(self, now_bucket: int) -> tuple[int, int]:
        counts = self.counts
        oldest = now_bucket - len(counts) // 3
        live = [i for i in range(0, len(counts), 3) if oldest < counts[i] <= now_bucket]
        return sum(counts[i + 1] for i in live), sum(counts[i + 2] for i in live)


@dataclass
class _ModelCounts:
    version: str
    reference: ScoreReference
    devices: dict[str, _DeviceCounts] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelStaleness:
    """One model's state over the sliding window, as exported."""

    model: str
    expected_share: float
    share: float  # of every device's windows above the reference; NaN with fewer than MIN_WINDOWS
    windows: int
    drifted_devices: int  # devices whose own share is above STALE_RATIO x expected_share


class StalenessTracker:
    """Counts each scored window against its bundle's score reference (`observe`, on the worker
    thread) and summarises the sliding window on demand (`snapshot`, at scrape time). `clock`
    is injectable so a test can move an hour on without waiting for it."""

    def __init__(self, window_seconds: float = WINDOW_SECONDS, bucket_seconds: float = BUCKET_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.buckets = max(1, round(window_seconds / bucket_seconds))
        self.bucket_seconds = bucket_seconds
        self.clock = clock
        self._models: dict[str, _ModelCounts] = {}
        self._served: frozenset[str] | None = None  # None (no service): every model observed
        self._references: dict[int, tuple[Bundle, ScoreReference | None]] = {}  # by id(bundle), see _reference
        self._lock = threading.Lock()
        self._errors = RateLimitedLog(log)

    def serve(self, bundles: Sequence[Bundle]) -> None:
        """Track these bundles from now on (the service's, on start and on every reload): each
        is reported from the next scrape on, a model no longer served is forgotten (a batch of
        its still in flight is ignored), and an unchanged bundle keeps its counts."""
        references = {b.name: (b.version, self._reference(b)) for b in bundles}
        with self._lock:
            self._served = frozenset(references)
            for name in list(self._models):
                if name not in references:
                    del self._models[name]
            for name, (version, reference) in references.items():
                model = self._models.get(name)
                if reference is not None and (model is None or (model.version, model.reference) != (version, reference)):
                    self._models[name] = _ModelCounts(version, reference)

    def observe(self, bundle: Bundle, devices: Sequence[str], scores: np.ndarray) -> None:
        """Count one scored batch: window i of `devices[i]` scored `scores[i]`. Non-finite
        scores are not counted (they are unscorable windows, counted as such). Called on the
        worker's path, so a failure here is logged (rate-limited) and never reaches the worker:
        a gauge is not worth a scored window."""
        try:
            self._observe(bundle, devices, scores)
        except Exception as exc:
            self._errors.error("observe:" + type(exc).__name__, "staleness of model %s not counted: %s",
                               getattr(bundle, "name", "?"), exc, exc_info=True)

    def _observe(self, bundle: Bundle, devices: Sequence[str], scores: np.ndarray) -> None:
        reference = self._reference(bundle)
        if reference is None or not len(devices):
            return
        limits = (np.array([reference.devices.get(d, reference.value) for d in devices], dtype=np.float64)
                  if reference.devices else reference.value)
        values = np.asarray(scores, dtype=np.float64)
        counted = np.isfinite(values)
        above = (values > limits) & counted
        bucket = self._bucket()
        per_device: dict[str, list[int]] = {}
        for device, c, a in zip(devices, counted.tolist(), above.tolist()):
            entry = per_device.setdefault(device, [0, 0])
            entry[0] += c
            entry[1] += a
        with self._lock:
            if self._served is not None and bundle.name not in self._served:
                return
            model = self._models.get(bundle.name)
            if model is None or model.version != bundle.version or model.reference != reference:
                model = self._models[bundle.name] = _ModelCounts(bundle.version, reference)
            for device, (total, above_count) in per_device.items():
                if total:
                    counts = model.devices.get(device)
                    if counts is None:
                        counts = model.devices[device] = _DeviceCounts(self.buckets)
                    counts.add(bucket, total, above_count)

    def snapshot(self) -> list[ModelStaleness]:
        """Every tracked model over the sliding window; devices (and models) without a window
        in it are forgotten."""
        bucket = self._bucket()
        result = []
        with self._lock:
            for name in list(self._models):
                model = self._models[name]
                total = above = drifted = 0
                limit = STALE_RATIO * model.reference.expected_share
                for device in list(model.devices):
                    n, k = model.devices[device].sums(bucket)
                    if not n:
                        del model.devices[device]
                        continue
                    total, above = total + n, above + k
                    drifted += n >= MIN_WINDOWS and k / n > limit
                if not model.devices and self._served is None:
                    del self._models[name]
                    continue
                result.append(ModelStaleness(name, model.reference.expected_share,
                                             above / total if total >= MIN_WINDOWS else math.nan, total, drifted))
        return result

    def _bucket(self) -> int:
        return int(self.clock() // self.bucket_seconds)

    def _reference(self, bundle: Bundle) -> ScoreReference | None:
        """Parsed once per loaded bundle (keyed by identity; the bundle is kept alive with its
        entry so an id is never reused while cached)."""
        cached = self._references.get(id(bundle))
        if cached is None or cached[0] is not bundle:
            if len(self._references) > 64:  # reloads replace bundles; drop the ones no longer served
                self._references.clear()
            cached = self._references[id(bundle)] = (bundle, ScoreReference.of_bundle(bundle))
        return cached[1]
