"""Label-free self-tuning: the scoring knobs that need no retraining, chosen by what the trained
model catches of synthetic faults written into held-out normal data.

An operator has no labels for their plant, so nothing here reads one. Each candidate setting
(`Candidate`: how per-feature errors become the window score, whether each feature's error is
first divided by its typical held-out error, and after how many anomalous windows an alert
opens) is one bundle on the same trained model: its threshold is set by the training's own
threshold rule on its own scores, a score rule applied to the scores that open an alert under
its hysteresis (`alert_opening_scores`), so every candidate is compared at equal calibration; its
false alarms are counted on the held-out validation tail, and the faults of
daemon.offline.injection are written into that tail and scored through the serving `Scorer`
and hysteresis (`detect`). The candidate chosen detects the most kinds of injected fault (mean
detection rate over kinds, then the mean share of faulty rows in alert) among those whose
false alarms on the held-out tail stay within what the threshold rule allows; ties keep the
configured setting. Window length is not a candidate: it changes the model, so it would need
one training per value.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from daemon.core.bundle import SCORE_REDUCTIONS, Bundle
from daemon.core.postprocess import AlertSpec
from daemon.core.runtime import Backend
from daemon.core.scoring import Scorer
from daemon.core.thresholds import FalseAlarmBudget, Threshold, parse_method
from daemon.offline.detection import detect
from daemon.offline.evaluation import segments
from daemon.offline.frame_scoring import score_frames
from daemon.offline.frames import Frame
from daemon.offline.injection import KindFigures, injected_fault_table

log = logging.getLogger(__name__)

# A feature's typical error: this quantile of its per-window error on the held-out windows...
TYPICAL_ERROR_QUANTILE = 0.99
# ... but at least this share of the median feature's, so that a sensor the model reconstructs
# almost perfectly (a constant, or one the others predict exactly) does not turn its noise into
# the largest normalised error of every window.
TYPICAL_ERROR_FLOOR = 0.1
ENTER_AFTER = (1, 3, 5)
NORMALISED = (False, True)
# Exceedance the "sigma" rule names for the false-alarm check (about that of 3 sigma).
SIGMA_EXCEEDANCE = 1e-3
NOT_TUNED = "window length (it changes the model: one training per value)"


@dataclass
class Calibration:
    """A threshold set by the training's threshold rule, with the scores it was set on."""

    threshold: Threshold
    budget: FalseAlarmBudget | None
    scores: np.ndarray
    calibrated_on: str


@dataclass(frozen=True)
class Candidate:
    """One setting of the knobs that need no retraining."""

    reduction: str
    normalised: bool
    enter_after: int

    def describe(self) -> str:
        return (f"{self.reduction} over {'normalised ' if self.normalised else ''}feature errors, "
                f"alert after {self.enter_after}")

    def to_dict(self) -> dict:
        return {"score_reduction": self.reduction, "normalised": self.normalised, "enter_after": self.enter_after}

    def bundle(self, base: Bundle, feature_scale: tuple[float, ...]) -> Bundle:
        """`base` scoring and alerting as this candidate says (threshold still to be set)."""
        score = replace(base.score, reduction=self.reduction, feature_scale=feature_scale if self.normalised else None)
        return replace(base, score=score, alert=AlertSpec(self.enter_after, base.alert.leave_after))


@dataclass
class Trial:
    """A candidate's bundle, threshold, false alarms on the held-out tail and injected-fault table."""

    candidate: Candidate
    scorer: Scorer
    calibration: Calibration
    held_out_false_alarms: int  # alert episodes on the held-out validation tail
    allowed_false_alarms: int  # what the threshold rule allows there
    injected: dict[str, KindFigures]
    seconds: float

    @property
    def eligible(self) -> bool:
        return self.held_out_false_alarms <= self.allowed_false_alarms

    @property
    def detection_rate(self) -> float:
        """Mean over the kinds injected of the share of cases detected."""
        rates = [f.detected / f.injected for f in self.injected.values() if f.injected]
        return float(np.mean(rates)) if rates else 0.0

    @property
    def share_flagged(self) -> float:
        shares = [f.share_flagged for f in self.injected.values() if f.injected]
        return float(np.mean(shares)) if shares else 0.0

    def to_dict(self) -> dict:
        return {**self.candidate.to_dict(), "threshold": float(self.calibration.threshold.value),
                "held_out_false_alarms": self.held_out_false_alarms,
                "allowed_false_alarms": self.allowed_false_alarms, "eligible": self.eligible,
                "detection_rate": round(self.detection_rate, 4), "share_flagged": round(self.share_flagged, 4),
                "seconds": round(self.seconds, 2)}


@dataclass
class SelfTuning:
    """Every candidate's trial and the one chosen."""

    trials: list[Trial]
    chosen: Trial
    seconds: float

    def to_dict(self) -> dict:
        return {"chosen": self.chosen.candidate.to_dict(),
                "rule": "most injected-fault kinds detected (then share of faulty rows in alert) among the "
                        "candidates whose alert episodes on the held-out tail stay within the threshold rule's; "
                        "no label is read",
                "not_tuned": NOT_TUNED,
                "candidates": [t.to_dict() for t in self.trials],
                "seconds": round(self.seconds, 2)}


class ReconstructionMemo:
    """The model as a batch function that remembers its answers. Candidates change only what
    happens after the model (the score's reduction and weights, the threshold, the hysteresis),
    so every candidate's scorer asks the model the same questions: wrapping the backend in one
    memo runs the model once per batch of windows instead of once per candidate, and the
    answers are the model's own, so every candidate is still scored by the serving path."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.answers: dict[bytes, np.ndarray] = {}

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        key = hashlib.blake2b(np.ascontiguousarray(batch).view(np.uint8), digest_size=16).digest() + \
            str(batch.shape).encode()
        if key not in self.answers:
            self.answers[key] = self.backend(batch)
        return self.answers[key]


def typical_feature_errors(scorer: Scorer, runs: list[Frame]) -> tuple[float, ...]:
    """Each feature's typical reconstruction error on `runs` (held-out normal data): the scale
    that puts every sensor's vote in a max on the same footing (`ScoreSpec.feature_scale`)."""
    errors = np.concatenate([s.feature_errors for s in score_frames(scorer, runs)]).astype(np.float64)
    typical = np.quantile(errors, TYPICAL_ERROR_QUANTILE, axis=0)
    floor = max(TYPICAL_ERROR_FLOOR * float(np.median(typical)), np.finfo(np.float32).tiny)
    return tuple(float(x) for x in np.maximum(typical, floor))


def alert_opening_scores(runs: list[np.ndarray], enter_after: int) -> np.ndarray:
    """Per run, the lowest score of every `enter_after` consecutive windows: the hysteresis opens
    an alert exactly when that exceeds the threshold, so a quantile of these is the quantile
    rule applied to alerts rather than to single windows."""
    parts = [np.lib.stride_tricks.sliding_window_view(r, enter_after).min(axis=1)
             for r in runs if len(r) >= enter_after]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)


def candidates(configured: Candidate) -> list[Candidate]:
    """The configured setting first (ties keep it), then every other combination."""
    grid = [Candidate(r, n, k) for r, n, k in itertools.product(SCORE_REDUCTIONS, NORMALISED, ENTER_AFTER)]
    return [configured] + [c for c in grid if c != configured]


def allowed_false_alarms(method: str, budget: FalseAlarmBudget | None, windows: int, days: float) -> int:
    """Alert episodes the threshold rule itself tolerates on `windows` held-out windows spanning
    `days`: the budget's rate, or the exceedance the score rule names (quantile:Q -> 1 - Q)."""
    if budget is not None:
        return int(math.floor(budget.per_day * days))
    name, params = parse_method(method)
    exceedance = {"quantile": lambda: 1.0 - params.get("q", 0.99), "pot": lambda: params.get("risk", 1e-3)}.get(
        name, lambda: SIGMA_EXCEEDANCE)()
    return int(math.floor(exceedance * windows))


def try_candidate(candidate: Candidate, base: Bundle, backend: Backend, feature_scale: tuple[float, ...],
                  calibrate: Callable[[Scorer], Calibration], method: str, held_out: list[Frame],
                  sigma: np.ndarray, seed: int) -> Trial:
    started = time.time()
    scorer = Scorer(candidate.bundle(base, feature_scale), backend)
    calibration = calibrate(scorer)
    scorer.bundle.threshold = calibration.threshold
    scorer.bundle.false_alarm_budget = calibration.budget
    results = [detect(scorer, run, calibration.threshold.value) for run in held_out if len(run) >= scorer.window]
    false_alarms = sum(len(segments(r.predicted)) for r in results)
    windows = sum(len(r.scores.scores) for r in results)
    period = base.sample_period_seconds or 0.0
    days = sum(len(r.frame) for r in results) * period / 86400.0
    allowed = allowed_false_alarms(method, calibration.budget, windows, days)
    injected = injected_fault_table(scorer, held_out, sigma, seed)
    return Trial(candidate, scorer, calibration, false_alarms, allowed, injected, time.time() - started)


def self_tune(configured: Candidate, base: Bundle, backend: Backend, feature_scale: tuple[float, ...],
              calibrate: Callable[[Scorer], Calibration], method: str, held_out: list[Frame],
              sigma: np.ndarray, seed: int) -> SelfTuning:
    """Try every candidate; choose as the module docstring says. Where no candidate keeps its
    false alarms within the rule, those with the fewest are the eligible ones."""
    started = time.time()
    backend = ReconstructionMemo(backend)
    trials = [try_candidate(c, base, backend, feature_scale, calibrate, method, held_out, sigma, seed)
              for c in candidates(configured)]
    fewest = min(t.held_out_false_alarms for t in trials)
    eligible = [t for t in trials if t.eligible] or [t for t in trials if t.held_out_false_alarms == fewest]
    chosen = max(eligible, key=lambda t: (round(t.detection_rate, 9), round(t.share_flagged, 9)))
    log.info("self-tuning: %s (injected faults detected %.2f, %d candidates in %.1f s)",
             chosen.candidate.describe(), chosen.detection_rate, len(trials), time.time() - started)
    return SelfTuning(trials, chosen, time.time() - started)
