"""Offline detection on labelled runs: score each file through the serving `Scorer`, turn
window flags into alert states with the bundle's hysteresis (`daemon.core.postprocess`, the same
state machine the live daemon runs per device) and into per-row predictions the way the daemon
would have produced them, and pool the metrics. `anomalyd evaluate` and the benchmarks both
call `detect` / `evaluate_frames`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from daemon.core.errors import DataError
from daemon.core.postprocess import alert_flags
from daemon.core.bundle import Bundle
from daemon.core.scoring import Scorer, alarm_names
from daemon.core.thresholds import threshold_in_force
from daemon.offline.evaluation import Report, report, segments
from daemon.offline.frame_scoring import FrameScores, row_flags, score_frame
from daemon.offline.frames import Frame


@dataclass
class FileResult:
    frame: Frame
    scores: FrameScores
    flags: np.ndarray  # bool [windows]: anomalous windows (FrameScores.flags at the threshold in force)
    predicted: np.ndarray  # int8 [rows]: the streaming-causal prediction (alert state) per row

    def row_scores(self) -> np.ndarray:
        """Score per row (NaN where no window has ended yet), for plots and CSV output."""
        out = np.full(len(self.frame), np.nan, dtype=np.float32)
        out[self.scores.ends] = self.scores.scores
        return out

    def alarm_names(self, bundle: Bundle) -> list[str]:
        """Per row in alert, what the alarm names: the reason of the last window scored by then
        (a sensor-health flag such as `stuck:flow`, or why it could not be scored), else
        `model:<sensor>`, the sensor whose error weighs most in that window's score (what the
        service's per-sensor errors show); "" for rows not in alert."""
        scores = self.scores
        by_window = alarm_names(scores.reasons, scores.feature_errors, bundle.score, bundle.features)
        names = [""] * len(self.frame)
        rows = np.flatnonzero(self.predicted)
        for row, k in zip(rows.tolist(), (np.searchsorted(scores.ends, rows, side="right") - 1).tolist()):
            if k >= 0:
                names[row] = by_window[k]
        return names

    def events(self, bundle: Bundle) -> list[EventOutcome]:
        """Every labelled segment of the run: caught or not, how soon, and what its alarms named."""
        if self.frame.labels is None:
            return []
        return event_outcomes(self.frame.device or self.frame.name, self.predicted, self.frame.labels,
                              self.frame.timestamps, self.alarm_names(bundle))


@dataclass
class EventOutcome:
    """One labelled segment as `evaluate` reports it."""

    run: str  # the file, or the device of a fleet's file
    start: float  # epoch seconds of its first row
    rows: int
    delay_seconds: float | None  # from its first row to its first row in alert; None: missed
    share_in_alert: float  # of its rows
    named: dict[str, int]  # what its rows in alert name (FileResult.alarm_names), most first

    def to_dict(self) -> dict:
        return dict(vars(self))


def event_outcomes(run: str, predicted: np.ndarray, labels: np.ndarray, timestamps: np.ndarray,
                   names: list[str] | None = None) -> list[EventOutcome]:
    """Every labelled segment of one run, in order: how much of it was in alert (`predicted`, per
    row), how soon, and what `names` (per row, "" when not in alert) its alarms gave."""
    out = []
    for start, end in segments(labels):
        hits = np.flatnonzero(predicted[start:end])
        named = Counter(n for n in names[start:end] if n) if names is not None else Counter()
        out.append(EventOutcome(run, float(timestamps[start]), end - start,
                                float(timestamps[start + hits[0]] - timestamps[start]) if len(hits) else None,
                                float(len(hits) / (end - start)), dict(named.most_common())))
    return out


def detect(scorer: Scorer, frame: Frame, threshold: float, stride: int | None = None) -> FileResult:
    if len(frame) < scorer.window:
        raise DataError(f"{frame.source}: {len(frame)} rows, fewer than one window ({scorer.window} rows)")
    scores = score_frame(scorer, frame, stride)
    flags = scores.flags(threshold)
    alerts = alert_flags(flags.astype(np.int8), scorer.bundle.alert)
    return FileResult(frame, scores, flags, row_flags(len(frame), scores.ends, alerts))


def evaluate_frames(scorer: Scorer, frames: list[Frame], threshold: float | None = None,
                    stride: int | None = None) -> tuple[Report, list[FileResult]]:
    """Detect on every labelled frame at the threshold in force for its device (`threshold`
    overrides the bundle's) and pool the metrics; the pooled report names the bundle's threshold."""
    per_device = scorer.bundle.threshold.devices
    results = []
    for frame in frames:
        if frame.labels is None:
            raise DataError(f"{frame.source}: no label column (pass --label-column NAME)")
        results.append(detect(scorer, frame, threshold_in_force(scorer.threshold, threshold, frame.device, per_device),
                              stride))
    pooled = report([(r.predicted, r.frame.labels, r.frame.timestamps) for r in results],
                    threshold_in_force(scorer.threshold, threshold))
    return pooled, results
