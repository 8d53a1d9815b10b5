"""Label-free self-check: synthetic faults injected into held-out normal stretches, detected
(or not) by the bundle exactly as `evaluate` would, reported by kind.

An operator has no labels for their plant, but they can ask what the trained bundle catches:
each kind of fault below is written into a copy of each held-out run, on each feature in turn,
and scored through the serving `Scorer` with the bundle's threshold and hysteresis
(`daemon.offline.detection.detect`). Magnitudes are in units of the feature's standard
deviation over the training rows, so the table says "a 3-sigma step on one sensor is caught in
x of y cases" whatever the units. Nothing here feeds back into the threshold or the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from daemon.core.scoring import Scorer
from daemon.offline.detection import detect
from daemon.offline.frames import Frame

KINDS = ("spike", "step", "stuck", "drift", "noise_burst", "broken_correlation", "dropout")
# Size of each kind in training standard deviations of the feature it is written into.
SPIKE_SIGMA, STEP_SIGMA, DRIFT_SIGMA, NOISE_SIGMA = 6.0, 3.0, 4.0, 3.0


@dataclass
class KindFigures:
    """How one kind of injected fault fared: cases tried, cases with an alert inside the fault
    (or within one window after it: a window still holds faulty rows), and the mean share of
    the faulty rows in alert."""

    injected: int = 0
    detected: int = 0
    share_flagged: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {"injected": self.injected, "detected": self.detected,
                "detection_rate": self.detected / self.injected if self.injected else 0.0,
                "share_flagged": self.share_flagged}


def inject(values: np.ndarray, kind: str, feature: int, start: int, length: int, sigma: float,
           rng: np.random.Generator) -> np.ndarray:
    """A copy of `values` [rows, features] with one `kind` fault on `feature` in rows
    [start, start + length)."""
    out = values.copy()
    rows = slice(start, start + length)
    column = out[rows, feature]
    if kind == "spike":
        hits = rng.choice(length, size=max(2, length // 8), replace=False)
        column[hits] += SPIKE_SIGMA * sigma
    elif kind == "step":
        column += STEP_SIGMA * sigma
    elif kind == "stuck":
        column[:] = values[start, feature]
    elif kind == "drift":
        column += np.linspace(0.0, DRIFT_SIGMA * sigma, length)
    elif kind == "noise_burst":
        column += rng.normal(0.0, NOISE_SIGMA * sigma, length)
    elif kind == "broken_correlation":  # its own values, in reverse order: same levels, wrong relations
        column[:] = values[rows, feature][::-1]
    elif kind == "dropout":
        column[:] = 0.0
    else:
        raise ValueError(f"injected fault kind {kind!r} unknown (use one of: {', '.join(KINDS)})")
    out[rows, feature] = column
    return out


def injected_fault_table(scorer: Scorer, runs: list[Frame], sigma: np.ndarray, seed: int = 0) -> dict[str, KindFigures]:
    """Every kind on every feature of every held-out run at least two windows long: the fault
    starts one window in (so the first windows are clean history) and lasts one window, or to
    the run's end when shorter."""
    window = scorer.window
    rng = np.random.default_rng(seed)
    table = {kind: KindFigures() for kind in KINDS}
    for run in (r for r in runs if len(r) >= 2 * window):
        start, length = window, min(window, len(run) - window)
        run = run.head(min(len(run), start + length + window - 1))  # rows past the last faulty window cannot count
        for kind in KINDS:
            figures = table[kind]
            shares = figures.share_flagged * figures.injected
            for feature in range(len(run.features)):
                faulty = replace(run, values=inject(run.values, kind, feature, start, length,
                                                    float(sigma[feature]), rng).astype(np.float32))
                alerts = detect(scorer, faulty, scorer.threshold).predicted
                figures.injected += 1
                figures.detected += int(alerts[start:start + length + window - 1].any())
                shares += float(alerts[start:start + length].mean())
            figures.share_flagged = shares / figures.injected if figures.injected else 0.0
    return table
