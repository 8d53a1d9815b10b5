"""Every entry point of the anomalyd package that the quality suite uses, in one place.

The suite must measure what a user gets, so it trains, scores, thresholds and evaluates only
through these functions; the other `quality_*` modules and `baselines.py` import anomalyd
through this module alone, so when the package's offline API moves only this file changes.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.cli import build_parser, main as cli_main
from daemon.commands.train import resolve_threshold_options
from daemon.core.errors import UserError
from daemon.core.postprocess import AlertSpec, alert_flags
from daemon.core.runtime import torch_backend
from daemon.core.scoring import Scorer
from daemon.core.thresholds import FalseAlarmBudget, calibrate
from daemon.offline import synthetic
from daemon.offline.budget import expected_per_day, vouched_per_day
from daemon.offline.detection import FileResult, detect, event_outcomes
from daemon.offline.evaluation import Report, duration_text, report, segments
from daemon.offline.frame_scoring import row_flags
from daemon.offline.frames import Frame, load_csv
from daemon.offline.training import TrainConfig, train

__all__ = ["AlertSpec", "FalseAlarmBudget", "Frame", "Report", "TrainConfig", "TrainedModel", "cli_train_defaults",
           "duration_text", "event_outcomes", "generate", "load_csv", "pooled_report", "segments", "synthetic",
           "train_model", "UserError"]


@dataclass
class TrainedModel:
    """A model as `anomalyd train` leaves it, ready to score like `anomalyd evaluate`."""

    scorer: Scorer
    normal_scores: np.ndarray  # every normal training window's score (train + validation tail)
    epochs: int

    @property
    def threshold(self) -> float:
        return self.scorer.threshold

    @property
    def budget(self) -> FalseAlarmBudget | None:
        """How the bundle's false-alarm budget was met (None when its threshold is not a budget)."""
        return self.scorer.bundle.false_alarm_budget

    @property
    def expected_per_day(self) -> float:
        """The alert episodes per device-day `train` expects at the bundle's threshold: the
        budget's own prediction, or the estimate stored for other threshold methods (nan: none)."""
        expected = expected_per_day(self.scorer.bundle)
        return math.nan if expected is None else expected

    @property
    def vouched_per_day(self) -> float:
        """The most alert episodes per device-day the held-out span vouched for at the bundle's
        threshold, by itself (nan: not recorded)."""
        vouched = vouched_per_day(self.scorer.bundle)
        return math.nan if vouched is None else vouched

    @property
    def scoring(self) -> str:
        """The bundle's scoring knobs, and whether self-tuning chose them."""
        bundle = self.scorer.bundle
        tuned = bundle.training.get("self_tuning")
        return (f"{bundle.score.reduction}{' normalised' if bundle.score.feature_scale else ''}, "
                f"enter {bundle.alert.enter_after}{' (self-tuned)' if tuned else ''}")

    def detect(self, frame: Frame) -> FileResult:
        """Score `frame` once, as `anomalyd evaluate` does: the bundle's threshold and hysteresis."""
        return detect(self.scorer, frame, self.scorer.threshold)

    def alerts(self, result: FileResult) -> tuple[np.ndarray, list[str]]:
        """Per-row alert state with the bundle's threshold and hysteresis (what `evaluate`
        counts), and what each row in alert names: the reason of the window ending there (a
        sensor-health flag, an unscorable reading), else `model:<sensor>`, the sensor whose
        error weighs most in the window's score; "" elsewhere."""
        return result.predicted, result.alarm_names(self.scorer.bundle)

    def plain_flags(self, result: FileResult, quantile: float = 0.999) -> np.ndarray:
        """Per-row flags of the same model and the same window scores with a plain threshold:
        the `quantile` of every normal training window's score, no safety scale, no hysteresis
        (every window over it is an alert)."""
        value = calibrate(f"quantile:{quantile}", self.normal_scores, None, 1.0).value
        scores = result.scores
        plain = alert_flags(scores.flags(value).astype(np.int8), AlertSpec())
        return row_flags(len(result.frame), scores.ends, plain)


def train_model(frames: list[Frame], config: TrainConfig) -> TrainedModel:
    result = train(frames, config)
    scorer = Scorer(result.bundle, torch_backend(result.model, config.threads))
    return TrainedModel(scorer, result.normal_scores, int(result.bundle.training["epochs_run"]))


def pooled_report(files: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Report:
    """Point and event metrics summed over files, each (predicted, actual, timestamps)."""
    return report(files, None)


def cli_train_defaults() -> dict:
    """The option values `anomalyd train` runs with when given only --data and --out."""
    args = build_parser("train").parse_args(["train", "--data", "x.csv", "--out", "x"])
    resolve_threshold_options(args)  # what `train` fills in for the options left unset
    return vars(args)


def generate(directory: Path) -> tuple[Path, Path]:
    """Run `anomalyd generate` with its defaults; returns (normal.csv, faults.csv). The
    command's one-line report goes to stderr so the suite's stdout stays a Markdown table."""
    with contextlib.redirect_stdout(sys.stderr):
        code = cli_main(["generate", "--out", str(directory)])
    if code:
        raise RuntimeError(f"anomalyd generate --out {directory} exited with {code}")
    return directory / "normal.csv", directory / "faults.csv"
