"""Scoring a CSV run (a `Frame`) through the serving `Scorer`: cut it into windows, score them
with `Scorer.score_windows` (the path the live worker runs) and keep, for every score, the row
and the time it belongs to. Training calibrates on these scores and `score` / `evaluate` report
them, so offline numbers are the daemon's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daemon.core.scoring import Scorer, WindowScores
from daemon.core.sensor_health import HealthState
from daemon.core.windowing import window_ends, windows
from daemon.offline.frames import Frame


@dataclass(kw_only=True)
class FrameScores(WindowScores):
    ends: np.ndarray  # int64 [B]: row index in the frame where each window ends
    timestamps: np.ndarray  # float64 [B]: the data time a score belongs to


def score_frame(scorer: Scorer, frame: Frame, stride: int | None = None) -> FrameScores:
    """Score every window of one run; frame columns must already be in model order. The run
    is one device's stream: its windows share one sensor-health state, in time order, as the
    live worker's windows of a device share that device's."""
    stride = stride or scorer.bundle.stride
    ends = window_ends(len(frame), scorer.window, stride)
    state = HealthState()
    result = scorer.score_windows(windows(frame.values, scorer.window, stride), [state] * len(ends))
    return FrameScores(result.scores, result.feature_errors, result.reasons, ends=ends,
                       timestamps=frame.timestamps[ends])


def score_frames(scorer: Scorer, frames: list[Frame], stride: int = 1) -> list[FrameScores]:
    """`score_frame` for every run at least one window long (shorter runs have no window)."""
    return [score_frame(scorer, f, stride) for f in frames if len(f) >= scorer.window]


def row_flags(n_rows: int, ends: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Per-row 0/1 predictions from per-window flags, as the daemon would have known them:
    a row takes the flag of the latest window ending at or before it (rows before the first
    window are normal). With stride 1 that is exactly the window ending on the row."""
    out = np.zeros(n_rows, dtype=np.int8)
    if len(ends) == 0:
        return out
    latest = np.searchsorted(ends, np.arange(n_rows), side="right") - 1
    known = latest >= 0
    out[known] = flags[latest[known]]
    return out
