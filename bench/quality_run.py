"""One case of the quality suite: train the model and the PCA baseline on the case's training
rows, then score every test run with each detector and keep the counted rows' predictions.

Runs in a worker process; returns plain arrays so the parent can pool them per data set.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from baselines import PcaMonitor
from quality_cases import Case
from quality_package import FalseAlarmBudget, TrainConfig, UserError, train_model


@dataclass
class RunOutcome:
    """The counted rows of one test run and each detector's verdict on them."""

    source: str
    labels: np.ndarray  # int8 [rows]
    timestamps: np.ndarray  # float64 [rows]
    ours: np.ndarray  # int8: the bundle's threshold and hysteresis, as `anomalyd evaluate` counts
    plain: np.ndarray  # int8: the same model, 99.9th percentile of its calibration scores, no hysteresis
    pca: np.ndarray  # float64: max(T²/limit, SPE/limit); > 1 is an alarm at the training limits
    event_names: tuple[str, ...]
    named: list[str]  # per row in `ours`' alert, what the alarm names (TrainedModel.alerts); "" elsewhere


@dataclass
class CaseOutcome:
    dataset: str
    name: str
    epochs: int
    train_seconds: float
    score_seconds: float
    pca_components: int
    runs: list[RunOutcome]
    budget: FalseAlarmBudget | None = None  # how the model's threshold met its false-alarm budget
    scoring: str = ""  # the scoring knobs in the bundle (chosen by self-tuning, or configured)
    expected_per_day: float = math.nan  # the alert episodes per device-day train expects at its threshold
    vouched_per_day: float = math.nan  # the most its held-out span vouches for by itself
    refused: str = ""  # why `train` would not build this model (a budget its data cannot show), "" if built


def run_case(case: Case, config: TrainConfig) -> CaseOutcome:
    """The case's outcome; a model `train` refuses (exit 2 for a user) is an outcome without
    runs that says why, so the suite reports it instead of stopping on it."""
    started = time.time()
    try:
        model = train_model(case.train, config)
    except UserError as exc:
        return CaseOutcome(case.dataset, case.name, 0, round(time.time() - started, 2), 0.0, 0, [], refused=str(exc))
    trained = time.time()
    pca = PcaMonitor.fit(np.concatenate([f.values for f in case.train]))
    runs = []
    for test in case.tests:
        counted = slice(test.counted_from, None)
        frame = test.frame
        result = model.detect(frame)  # scored once; both thresholds read the same window scores
        ours, named = model.alerts(result)
        runs.append(RunOutcome(
            source=frame.source, labels=frame.labels[counted], timestamps=frame.timestamps[counted],
            ours=ours[counted], plain=model.plain_flags(result)[counted],
            pca=pca.combined(frame.values[counted]), event_names=test.event_names, named=named[counted]))
    return CaseOutcome(case.dataset, case.name, model.epochs, round(trained - started, 2),
                       round(time.time() - trained, 2), pca.components, runs, model.budget, model.scoring,
                       model.expected_per_day, model.vouched_per_day)
