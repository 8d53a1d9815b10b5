"""Detection metrics, defined exactly as the SKAB benchmark defines them.

Point-wise formulas follow SKAB `core/metrics.py` (https://github.com/waico/SKAB)
so our numbers are comparable with its leaderboard. Wherever a formula has a
zero denominator we return 0.0 instead of raising or returning nan: a file
without anomalies (or without alarms) is a normal case in a multi-file
benchmark and must not poison the summary.

Counts are summed over files before ratios are taken (micro-averaging),
as SKAB does; averaging per-file ratios would overweight short files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# One (predicted, actual, timestamps) triple per recording.
FileArrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


@dataclass
class Confusion:
    """Point-wise confusion counts; addable so files can be pooled."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(
            self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn
        )

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 0.0 when nothing was flagged."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 0.0 when there are no anomalous points."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        """SKAB's TP / (TP + (FP + FN) / 2), algebraically the usual F1; 0.0 if empty."""
        return _ratio(self.tp, self.tp + (self.fp + self.fn) / 2)

    @property
    def far(self) -> float:
        """False alarm rate in percent, FP / (FP + TN) * 100; 0.0 with no normal points."""
        return 100.0 * _ratio(self.fp, self.fp + self.tn)

    @property
    def mar(self) -> float:
        """Missing alarm rate in percent, FN / (FN + TP) * 100; 0.0 with no anomalous points."""
        return 100.0 * _ratio(self.fn, self.fn + self.tp)


def _binary(x: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {a.shape}")
    if not np.isin(a, (0, 1)).all():
        raise ValueError(f"{what} must contain only 0/1 values")
    return a.astype(bool)


def _pair(predicted: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = _binary(predicted, "predicted")
    a = _binary(actual, "actual")
    if p.size != a.size:
        raise ValueError(f"predicted has {p.size} points but actual has {a.size}")
    return p, a


def confusion(predicted: np.ndarray, actual: np.ndarray) -> Confusion:
    """Point-wise confusion of 0/1 predictions against 0/1 labels."""
    p, a = _pair(predicted, actual)
    return Confusion(
        tp=int(np.count_nonzero(p & a)),
        fp=int(np.count_nonzero(p & ~a)),
        tn=int(np.count_nonzero(~p & ~a)),
        fn=int(np.count_nonzero(~p & a)),
    )


def segments(labels: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs of 1 as half-open [start, end) index pairs."""
    x = _binary(labels, "labels").astype(np.int8)
    edges = np.diff(np.concatenate(([0], x, [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


def duration_text(seconds: float) -> str:
    """A delay for people: seconds under two minutes, minutes under two hours, else hours."""
    for unit, size in (("h", 3600.0), ("min", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _timestamps(timestamps: np.ndarray, n: int) -> np.ndarray:
    """Epoch seconds, checked: NAB windows and sample spacing assume time only moves forward."""
    t = np.asarray(timestamps, dtype=float)
    if t.shape != (n,):
        raise ValueError(f"timestamps must have shape ({n},) like the labels, got {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("timestamps contain non-finite values")
    if np.any(np.diff(t) < 0):
        raise ValueError("timestamps must be sorted in ascending order")
    return t


@dataclass
class EventStats:
    """Segment-level view: did we catch each incident, and how often did we cry wolf."""

    events: int = 0
    detected: int = 0
    false_alarm_events: int = 0
    normal_hours: float = 0.0

    def __add__(self, other: EventStats) -> EventStats:
        return EventStats(
            self.events + other.events,
            self.detected + other.detected,
            self.false_alarm_events + other.false_alarm_events,
            self.normal_hours + other.normal_hours,
        )

    @property
    def event_recall(self) -> float:
        """Fraction of labelled segments with at least one alarm; nan when there are none,
        because "0 of 0 detected" is neither good nor bad."""
        return self.detected / self.events if self.events else math.nan

    @property
    def false_alarms_per_hour(self) -> float:
        """Alarm runs on normal data per hour of normal data; nan with no normal data."""
        return self.false_alarm_events / self.normal_hours if self.normal_hours else math.nan


def event_stats(predicted: np.ndarray, actual: np.ndarray, timestamps: np.ndarray) -> EventStats:
    """Event recall and false-alarm runs for one file.

    Operators experience alarms as runs, not points, so a 10-point false alarm
    counts once. Normal time uses the file's median sample spacing so gaps in
    logging do not inflate it.
    """
    p, a = _pair(predicted, actual)
    t = _timestamps(timestamps, p.size)
    if t.size < 2:
        raise ValueError(
            f"event_stats: need at least 2 timestamps to infer the sample spacing, got {t.size}"
        )
    labelled = segments(a)
    detected = sum(1 for s, e in labelled if p[s:e].any())
    false_runs = sum(1 for s, e in segments(p) if not a[s:e].any())
    spacing = float(np.median(np.diff(t)))
    return EventStats(
        events=len(labelled),
        detected=detected,
        false_alarm_events=false_runs,
        normal_hours=int(np.count_nonzero(~a)) * spacing / 3600.0,
    )


@dataclass
class Report:
    """Everything a benchmark run prints, pooled over files."""

    confusion: Confusion
    events: EventStats
    points: int
    threshold: float | None

    def to_dict(self) -> dict[str, Any]:
        """Flat dict for JSON / tables; nan marks undefined event metrics."""
        c, e = self.confusion, self.events
        return {
            "precision": c.precision,
            "recall": c.recall,
            "f1": c.f1,
            "far": c.far,
            "mar": c.mar,
            "event_recall": e.event_recall,
            "false_alarms_per_hour": e.false_alarms_per_hour,
            "threshold": self.threshold,
            "points": self.points,
            "tp": c.tp,
            "fp": c.fp,
            "tn": c.tn,
            "fn": c.fn,
            "events": e.events,
            "events_detected": e.detected,
            "false_alarm_events": e.false_alarm_events,
            "normal_hours": e.normal_hours,
        }


def report(files: list[FileArrays], threshold: float | None) -> Report:
    """Pool point and event metrics over files, each (predicted, actual, timestamps)."""
    total_c, total_e, points = Confusion(), EventStats(), 0
    for predicted, actual, timestamps in files:
        total_c += confusion(predicted, actual)
        total_e += event_stats(predicted, actual, timestamps)
        points += len(predicted)
    return Report(confusion=total_c, events=total_e, points=points, threshold=threshold)


# --- SKAB changepoint (NAB) score -------------------------------------------

# (A_tp, A_fp, A_fn) per application profile, SKAB's default `table_of_coef`.
NAB_PROFILES: dict[str, tuple[float, float, float]] = {
    "standard": (1.0, -0.11, -1.0),
    "low_fp": (1.0, -0.22, -1.0),
    "low_fn": (1.0, -0.11, -2.0),
}
# SKAB's `my_scale` evaluates its curve on a 1000-point grid; we reproduce the
# grid so scores match SKAB to the last digit rather than only approximately.
_NAB_GRID = 1000


@dataclass(frozen=True)
class _NabTally:
    """Per-file outcome, profile-independent so profiles can share one pass."""

    windows: int
    positions: tuple[float, ...]  # relative position in [0, 1] of each detected window's first hit
    false_positives: int


def _nab_sigmoid(position: float, a_tp: float, a_fp: float) -> float:
    """SKAB's 'improved' NAB curve (`my_scale`, koef=1): A_tp at the window start,
    falling along tanh to A_fp at its end, so early detection earns more."""
    idx = min(int(position * _NAB_GRID), _NAB_GRID - 1)
    x = -math.pi / 2 + math.pi * idx / (_NAB_GRID - 1)
    half = (a_tp - a_fp) / 2
    return -half * math.tanh(x) / math.tanh(math.pi / 2) + half + a_fp


def _nab_tally(
    predicted: np.ndarray, actual_cp: np.ndarray, timestamps: np.ndarray, window: float
) -> _NabTally:
    p, a = _pair(predicted, actual_cp)
    t = _timestamps(timestamps, p.size)
    # Predicted changepoints are both edges of every alarm run; the first
    # sample has no predecessor, so it is never an edge.
    pred_times = t[1:][p[1:] != p[:-1]]
    starts = t[a]
    # Overlapping windows: cut the earlier one at the next start ('cut left window').
    ends = np.minimum(starts + window, np.append(starts[1:], np.inf))

    # Both window ends are inclusive, as in SKAB, so a changepoint exactly on a
    # cut boundary is the first hit of both windows; we keep that quirk to
    # reproduce SKAB's numbers.
    first = np.searchsorted(pred_times, starts, side="left")
    hit = first < pred_times.size
    hit[hit] = pred_times[first[hit]] <= ends[hit]
    lengths = ends[hit] - starts[hit]
    offsets = pred_times[first[hit]] - starts[hit]
    positions = np.divide(offsets, lengths, out=np.zeros_like(offsets), where=lengths > 0)

    owner = np.searchsorted(starts, pred_times, side="right") - 1
    in_window = owner >= 0
    in_window[in_window] = pred_times[in_window] <= ends[owner[in_window]]
    return _NabTally(
        windows=starts.size,
        positions=tuple(positions.tolist()),
        false_positives=int(np.count_nonzero(~in_window)),
    )


def _nab_profile_score(tallies: list[_NabTally], a_tp: float, a_fp: float, a_fn: float) -> float:
    score = null = perfect = 0.0
    for tally in tallies:
        missed = tally.windows - len(tally.positions)
        score += sum(_nab_sigmoid(pos, a_tp, a_fp) for pos in tally.positions)
        score += a_fn * missed + a_fp * tally.false_positives
        null += a_fn * tally.windows
        perfect += a_tp * tally.windows
    return 100.0 * (score - null) / (perfect - null) if perfect != null else math.nan


def nab_scores(files: list[FileArrays], window_seconds: float = 60.0) -> dict[str, float]:
    """SKAB's NAB changepoint score (`chp_score(metric='nab')` in SKAB core/metrics.py).

    Each file is (predicted 0/1, true changepoint 0/1, timestamps in epoch
    seconds). Every true changepoint at time t opens a detection window
    [t, t + window_seconds]; the first predicted changepoint inside a window
    scores on SKAB's tanh curve, later ones in the same window are ignored,
    predicted changepoints outside all windows cost A_fp each and each empty
    window costs A_fn. Raw scores are summed over files and normalised to
    100 * (S - S_null) / (S_perfect - S_null): 100 = every window hit at its
    first instant with no false positives, 0 = same as never alarming, and
    negative when false positives outweigh hits. nan when no file has a true
    changepoint. Unlike SKAB we do not round to 2 decimals.

    Window placement is fixed to SKAB's anomaly_window_destination='righter'
    with intersection_mode='cut left window', because a window should start
    at the changepoint it rewards. Alarm edges are abs(diff(predicted)) with
    the first sample never an edge, so a file that starts in alarm is not
    credited with a changepoint at its first timestamp.
    """
    if not (math.isfinite(window_seconds) and window_seconds > 0):
        raise ValueError(f"nab_scores: window_seconds must be > 0, got {window_seconds}")
    tallies = [_nab_tally(p, a, t, window_seconds) for p, a, t in files]
    return {name: _nab_profile_score(tallies, *coef) for name, coef in NAB_PROFILES.items()}
