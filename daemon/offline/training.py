"""Train an autoencoder on normal history and turn it into a calibrated bundle.

The visible steps (alibi-detect style): split -> fit scaler -> train with early stopping ->
score validation windows with the *serving* Scorer -> calibrate threshold -> write bundle.
Calibrating through `Scorer` (not a training-only loss) is what keeps the threshold honest:
the number compared against it live is computed by exactly the same code.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from daemon import __version__
from daemon.core.bundle import SCORE_REDUCTIONS, WEIGHTS_FILE, Bundle, ScoreSpec
from daemon.core.errors import DataError, UserError
from daemon.core.models import AutoEncoder, build_model, default_params
from daemon.core.postprocess import AlertSpec
from daemon.core.preprocess import Preprocess, resolve_features
from daemon.core.runtime import Backend, torch_backend
from daemon.core.scaling import Scaler
from daemon.core.scoring import Scorer
from daemon.core.sensor_health import HealthSpec, fit_health
from daemon.core.thresholds import FalseAlarmBudget, Threshold, calibrate, parse_method
from daemon.offline.budget import (EXPECTED_FALSE_ALARMS_KEY, HeldOut, RateEstimate, TooLittleTail,
                                   calibrate_budget, estimate_at)
from daemon.core.score_reference import REFERENCE_KEY, ScoreReference
from daemon.offline.cross_fit import Fold, cross_fitted_scores, fit_folds
from daemon.offline.evaluation import segments
from daemon.offline.frame_scoring import score_frames
from daemon.offline.frames import Frame, median_sample_period
from daemon.offline.sensor_evidence import SENSOR_EVIDENCE_KEY, SensorEvidence
from daemon.offline.training_windows import TrainingWindows
from daemon.offline.self_tuning import (Calibration, Candidate, alert_opening_scores, self_tune, try_candidate,
                                        typical_feature_errors)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training and scoring settings. The defaults are the ones that score best on the SKAB
    benchmark (bench/skab.py; figures in docs/quality.md): short windows, a 1 % scaler floor,
    the worst feature's error as the window score and 3-in / 5-out alert hysteresis. The
    threshold is SKAB's own rule, "quantile:0.999" of the normal windows' scores x 4/3.
    `threshold` = "budget" sets it from a false-alarm budget instead (daemon.offline.budget):
    `false_alarms_per_day` alert episodes per device per day of normal operation, on the
    held-out validation tail. The budget is not the default while its realised rate misses the
    budget by more than x2 on the held-out data sets (docs/quality.md); its value, one page per
    device-day, is argued, not fitted: an operator watching a hundred devices then gets about a
    hundred alarms a day, inside ISA-18.2's "acceptable" 150 per operator-day.

    `score_exclude` names features the model reads but whose own error does not vote (e.g.
    ["Temperature", "Thermocouple"]: slow sensors whose level drifts after a fault has ended
    and cause most false alarms); with a larger threshold_scale that is the low-false-alarm
    setting (docs/quality.md). It is a per-installation choice, so the default is "none": the
    "auto" rule (lag-1 autocorrelation >= 0.5 in the training rows) is only a heuristic and on
    short training runs also picks fast sensors (flow, vibration); check the list it writes to
    bundle.json. `demean` centres features on their window mean before the model, so the model
    judges how they move and leaves their level to the sensor-health checks: "thin" the sensors
    seen in fewer than THIN_EVIDENCE independent stretches (daemon.offline.sensor_evidence),
    "auto" every slow sensor. It is off by default: either trades fewer false alarms for more
    misses, and a thin sensor's level still carries faults the health checks do not catch (a
    calibration creep on a quiet channel; docs/quality.md, decided on a held-out fleet).

    `normalise_features` divides each feature's error by its typical error on the held-out
    windows (`ScoreSpec.feature_scale`), so a quiet sensor's fault is not outvoted by a noisy
    sensor's normal error; each divisor is raised by how little of its sensor the training runs
    show (daemon.offline.sensor_evidence), so a slow sensor in a short run does not outvote the
    rest. `self_tune` chooses the reduction, that normalisation and `enter_after` on faults
    injected into the held-out tail (daemon.offline.self_tuning), no label read. Normalisation is on by default and self-tuning off: the held-out pump fleet
    decided it by a rule fixed before any detector ran on it (docs/quality.md). Both raise the
    detection of faults on quiet sensors and, on SKAB, the false alarms of quiet sensors
    settling at a new level after a fault, which look to them like the faults they catch.

    `relation_check` fits the sensor-health `relation` check (daemon.core.relations: each
    sensor predicted from the others), which catches slow changes of how sensors relate that
    the model passes through (a pump's head falling at the same flow). It is on by default, and
    fitted only where the training data hold enough independent windows for it: a fresh pump
    fleet decided it by a rule fixed before its run (docs/quality.md).

    `noisy_lookback` is how many windows' worth of readings the `noisy` health check also
    judges a sensor's step noise over (daemon.core.sensor_health; 1: the window alone). Three
    is the default: a fresh pump fleet decided it by a rule fixed before its run
    (docs/quality.md, "The noise look-back").

    `spike_check` fits the sensor-health `spike` check: a reading that leaves both its
    neighbours by more than twice what any training reading did (a loose connector's spike, a
    dropout to the under-range value). It is on by default: a fresh pump fleet decided it by a
    rule fixed before its run (docs/quality.md, "The spike check").

    `shift_check` fits the sensor-health `shift` check: a quiet sensor's window level beyond
    twice its largest departure in training, widened for how few independent levels training
    shows (a transmitter's bias, a variable a controller now holds elsewhere). It is off by
    default: SKAB, held out from its design, decided it by a rule fixed before its run, as its
    rig's flows settle at new normal levels after a fault (docs/quality.md, "The shift check").
    Where a controlled process keeps a fault's evidence in a variable's level once its loops
    compensate (TEP's fault 5), it is worth turning on.

    `max_windows_per_epoch` bounds an epoch: every training window where there are fewer, else
    a fresh draw of that many (see `fit_model`); no data set of the quality suite reaches it."""

    arch: str = "lstm"
    window: int = 20
    stride: int = 1
    scaler: str = "zscore"
    scale_floor: float = 0.01
    demean: str | list = "none"
    score_error: str = "mse"
    score_reduction: str = "max"
    score_exclude: str | list = "none"
    normalise_features: bool = True
    self_tune: bool = False
    relation_check: bool = True
    noisy_lookback: int = 3
    spike_check: bool = True
    shift_check: bool = False
    epochs: int = 50
    batch_size: int = 64
    max_windows_per_epoch: int = 50_000
    learning_rate: float = 1e-3
    patience: int = 5
    validation_fraction: float = 0.2
    threshold: str = "quantile:0.999"
    false_alarms_per_day: float = 1.0
    threshold_scale: float = 4 / 3
    calibrate_on: str = "all"
    enter_after: int = 3
    leave_after: int = 5
    seed: int = 0
    threads: int = 1
    arch_params: dict = field(default_factory=dict)
    name: str = ""
    version: str = "1"


@dataclass
class Split:
    """Runs of normal rows for training and validation (validation = tail of each run)."""

    train: list[Frame]
    validation: list[Frame]
    runs: list[Frame]  # the whole normal runs the two were cut from


@dataclass
class TrainResult:
    bundle: Bundle
    model: AutoEncoder
    history: list[tuple[float, float]]  # (train loss, validation loss) per epoch
    validation_scores: np.ndarray  # the scores the threshold was calibrated on
    normal_scores: np.ndarray  # every normal window's score (train + validation)


def normal_runs(frame: Frame, min_rows: int) -> list[Frame]:
    """Contiguous stretches of label-0 rows, each long enough for one window.

    Cutting at labelled anomalies (instead of deleting rows) keeps every window a real
    stretch of time: a window glued across a removed fault would teach the model a jump."""
    if frame.labels is None:
        return [frame] if len(frame) >= min_rows else []
    normal = (frame.labels == 0).astype(np.int8)
    return [frame.select((np.arange(len(frame)) >= s) & (np.arange(len(frame)) < e))
            for s, e in segments(normal) if e - s >= min_rows]


def split_runs(frames: list[Frame], window: int, validation_fraction: float) -> Split:
    train, validation, runs = [], [], []
    for frame in frames:
        for run in normal_runs(frame, window):
            runs.append(run)
            cut = int(round(len(run) * (1.0 - validation_fraction)))
            if len(run) - cut >= window and cut >= window:
                train.append(run.head(cut))
                validation.append(run.tail_from(cut))
            else:
                train.append(run)
    if not train:
        raise DataError(f"no run of normal rows is at least one window ({window} rows) long "
                        f"(files: {', '.join(f.source for f in frames)})")
    return Split(train, validation, runs)


def floor_scale(scaler: Scaler, rows: np.ndarray, floor: float) -> Scaler:
    """Keep each feature's scale at least `floor` x its mean absolute training level.

    A sensor that barely moves in the training rows (a fluid temperature that varies by
    0.01 degC in ten minutes) gets a tiny standard deviation, and its z-score then turns a
    harmless slow drift of a few hundredths of a degree into a "fault" dwarfing a real one on
    another sensor. The floor says that a change below `floor` (1 % by default) of a sensor's
    operating level is not, by itself, evidence; 0 disables it. The floored scale is stored in
    the bundle like any other, so serving needs nothing new."""
    if floor <= 0:
        return scaler
    level = np.abs(np.asarray(rows, dtype=np.float64)).mean(axis=0)
    scale = np.maximum(scaler.scale.astype(np.float64), floor * level)
    return Scaler(scaler.kind, scaler.offset, scale.astype(np.float32))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def _epoch_loss(model: AutoEncoder, data: TrainingWindows, batch_size: int,
                optimiser: torch.optim.Optimizer | None, indices: torch.Tensor) -> float:
    """Mean loss over the windows `indices`, in that order; a training step per batch with an optimiser."""
    total, count = 0.0, 0
    for start in range(0, len(indices), batch_size):
        batch = data.batch(indices[start:start + batch_size])
        loss, extra = model.losses(batch)
        if optimiser is not None:
            optimiser.zero_grad()
            (loss + extra).backward()
            optimiser.step()
        total += loss.item() * len(batch)
        count += len(batch)
    return total / max(count, 1)


def fit_model(model: AutoEncoder, train: TrainingWindows, validation: TrainingWindows, config: TrainConfig,
              progress: Callable[[int, float, float], None]) -> list[tuple[float, float]]:
    """Adam + early stopping on validation loss; the best epoch's weights are kept. Without a
    validation set (a cross-fitting fold, a run too short for a tail) the epoch's own training
    loss is the monitor: scoring the training windows again would cost a forward pass per epoch
    and say nothing the training pass did not.

    An epoch is every training window in a fresh random order, or, where there are more than
    `config.max_windows_per_epoch`, that many of them drawn afresh each epoch: windows a row
    apart share all but one row, so a long history repeats itself within an epoch, and one
    that sees every window costs hours for the same model. The validation loss is then taken
    on a fixed draw of that many validation windows, the same every epoch, so epochs compare."""
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    cap = config.max_windows_per_epoch
    checked = torch.arange(len(validation))
    if len(validation) > cap:
        drawn = torch.randperm(len(validation), generator=torch.Generator().manual_seed(config.seed))
        checked = drawn[:cap].sort().values
    best, best_state, since_best, history = math.inf, copy.deepcopy(model.state_dict()), 0, []
    for epoch in range(config.epochs):
        model.train()
        train_loss = _epoch_loss(model, train, config.batch_size, optimiser,
                                 torch.randperm(len(train), generator=generator)[:cap])
        model.eval()
        val_loss = train_loss
        if len(validation):
            with torch.no_grad():
                val_loss = _epoch_loss(model, validation, 1024, None, checked)
        history.append((train_loss, val_loss))
        progress(epoch + 1, train_loss, val_loss)
        if val_loss < best - 1e-9:
            best, best_state, since_best = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            since_best += 1
            if since_best >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return history


def train(frames: list[Frame], config: TrainConfig, validation_data: list[Frame] | None = None,
          progress: Callable[[int, float, float], None] | None = None) -> TrainResult:
    """Everything but writing files: returns the bundle (unsaved) and the trained model."""
    started = time.time()
    features = frames[0].features
    _check_config(config)
    seed_everything(config.seed)
    torch.set_num_threads(config.threads)
    split = split_runs(frames, config.window, config.validation_fraction)
    train_rows = np.concatenate([f.values for f in split.train])
    scaler = floor_scale(Scaler.fit(config.scaler, train_rows), train_rows, config.scale_floor)
    # How much the runs show of each sensor: which levels are known (demean "thin") and how far
    # each sensor's vote is trusted (the divisors below).
    evidence = SensorEvidence.of_runs(features, [f.values for f in split.runs], config.score_error)
    try:
        runs = [f.values for f in split.train]
        unknown_levels = evidence.levels_unknown()
        preprocess = Preprocess(resolve_features(config.demean, features, runs, "demean", unknown_levels))
        exclude = resolve_features(config.score_exclude, features, runs, "score exclude", unknown_levels)
        if len(set(exclude)) >= len(features):
            raise ValueError("score exclude: at least one feature must count towards the score")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        model = build_model(config.arch, config.window, len(features), config.arch_params)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    train_windows = TrainingWindows(split.train, scaler, config.window, preprocess)
    val_windows = TrainingWindows(split.validation, scaler, config.window, preprocess)
    history = fit_model(model, train_windows, val_windows, config, progress or (lambda *_: None))

    bundle = Bundle(
        name=config.name or f"{config.arch}-w{config.window}", version=config.version,
        arch=config.arch, arch_params={**default_params(config.arch), **config.arch_params},
        features=list(features), window=config.window, stride=config.stride,
        scaler=scaler, score=ScoreSpec(config.score_error, reduction=config.score_reduction, exclude=exclude),
        threshold=Threshold(math.inf, "pending", {}),
        alert=AlertSpec(config.enter_after, config.leave_after),
        preprocess=preprocess,
        sample_period_seconds=median_sample_period(frames),
        health=_fit_sensor_health(split, config),  # before the self-check below, which scores with it
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    backend = torch_backend(model, config.threads)
    # Each divisor raised by how little of its sensor the training runs show (thin evidence:
    # a slow sensor in a short run), so a guessed typical error does not become the loudest vote.
    typical = typical_feature_errors(Scorer(bundle, backend), split.validation or split.train)
    feature_scale = evidence.widen(typical)
    sigma = np.maximum(train_rows.std(axis=0), 1e-12)

    best_epoch = int(np.argmin([v for _, v in history])) + 1
    # Trained on first use only (most budgets are met on the validation tail), and once for
    # every scoring setting self-tuning tries.
    folds = functools.cache(lambda: fit_folds(split.runs, config.window, fold_trainer(
        config, best_epoch, scaler, preprocess, len(features))))

    def calibrate_threshold(scorer: Scorer) -> Calibration:
        return _calibration(scorer, config, split, validation_data, per_alert=config.self_tune, folds=folds)

    configured = Candidate(config.score_reduction, config.normalise_features, config.enter_after)
    tuning_args = (bundle, backend, feature_scale, calibrate_threshold, config.threshold, split.validation,
                   sigma, config.seed)
    tuning = None
    log.info("scoring the %d normal windows: threshold (%s)%s and the injected-fault self-check",
             len(train_windows) + len(val_windows), config.threshold,
             ", self-tuning's candidates" if config.self_tune else "")
    if not config.self_tune:
        trial = try_candidate(configured, *tuning_args)
    elif parse_method(config.threshold)[0] == "f1":
        log.warning("self-tuning skipped: threshold method f1 sets each candidate's threshold from labels")
        trial = try_candidate(configured, *tuning_args)
    else:
        tuning = self_tune(configured, *tuning_args)
        trial = tuning.chosen
    bundle, scorer = trial.scorer.bundle, trial.scorer
    calib_scores, calibrated_on = trial.calibration.scores, trial.calibration.calibrated_on
    # The threshold's own sample is every normal window, in order, where it was set on them one by one.
    every_window = trial.calibration.budget is None and config.calibrate_on == "all" and not config.self_tune
    normal_scores = (calib_scores if every_window else
                     np.concatenate([s.scores for s in score_frames(scorer, split.train + split.validation)]))
    estimate = None
    if bundle.false_alarm_budget is None:
        log.info("estimating the false alarms a day at this threshold on the held-out tail")
        estimate = _expected_false_alarms(scorer, config, split)
    bundle.training = {
        "data": sorted({f.source for f in frames}),
        "rows_train": int(sum(len(f) for f in split.train)),
        "rows_validation": int(sum(len(f) for f in split.validation)),
        "windows_train": int(len(train_windows)),
        "windows_validation": int(len(val_windows)),
        "calibrated_on": calibrated_on,
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "loss_train": [round(t, 6) for t, _ in history],
        "loss_validation": [round(v, 6) for _, v in history],
        "validation_score_mean": float(calib_scores.mean()),
        "validation_score_std": float(calib_scores.std()),
        # What the bundle catches of synthetic faults written into the held-out tail (no label
        # needed; daemon.offline.injection); empty when no held-out run is two windows long.
        "injected_faults": {k: f.to_dict() for k, f in trial.injected.items() if f.injected},
        # Each sensor's independent stretches in the training runs and how much that raised its
        # per-sensor divisor (daemon.offline.sensor_evidence); used only when the weights are on.
        SENSOR_EVIDENCE_KEY: evidence.to_dict(),
        # How often a bundle without a false-alarm budget will page, as its validation tail
        # predicts (a budget bundle's prediction is in false_alarm_budget.expected_per_day).
        EXPECTED_FALSE_ALARMS_KEY: None if estimate is None else estimate.to_dict(),
        # The scoring knobs chosen on those injected faults (daemon.offline.self_tuning); None when
        # the configured ones were kept without trying others.
        "self_tuning": None if tuning is None else tuning.to_dict(),
        # what the live service compares recent scores with to see the model go stale
        REFERENCE_KEY: ScoreReference.of_scores(calib_scores).to_dict(),
        "config": {k: v for k, v in vars(config).items() if k not in ("arch_params", "name", "version")},
        "seconds": round(time.time() - started, 2),
        "anomalyd_version": __version__,
        "torch_version": torch.__version__,
    }
    return TrainResult(bundle, model, history, calib_scores, normal_scores)


def _calibration(scorer: Scorer, config: TrainConfig, split: Split, validation_data: list[Frame] | None,
                 per_alert: bool, folds: Callable[[], list[Fold]]) -> Calibration:
    """The threshold for `scorer`'s bundle by the configured rule, and the scores it was set on.
    `per_alert` applies a score rule (quantile, sigma, pot) to the scores that open an alert
    under the bundle's hysteresis (`alert_opening_scores`) instead of to single windows, so that
    settings with different hysteresis are calibrated alike; the budget counts alert episodes
    already."""
    if parse_method(config.threshold)[0] == "budget":
        threshold, budget, scores = _calibrate_budget(scorer, config, split, folds)
        return Calibration(threshold, budget, scores, budget.held_out)
    # The threshold's sample: every normal window by default (a 400-row run leaves too few
    # validation windows for a 99.9th percentile), or only the unseen validation tail.
    calibration = (split.train + split.validation if config.calibrate_on == "all"
                   else split.validation or split.train)
    runs = [s.scores for s in score_frames(scorer, calibration)]
    scores = alert_opening_scores(runs, scorer.bundle.alert.enter_after) if per_alert else np.concatenate(runs)
    calibrated_on = ("train+validation" if config.calibrate_on == "all" else
                     "validation" if split.validation else "train (no validation tail long enough)")
    return Calibration(_calibrate(scorer, config, scores, validation_data), None, scores, calibrated_on)


def _fit_sensor_health(split: Split, config: TrainConfig) -> HealthSpec:
    """The sensor-health checks beside the model (daemon.core.sensor_health), fitted on the
    same normal runs: the rows fitted on and the held-out validation tails."""
    return fit_health([f.values for f in split.train], [f.values for f in split.validation],
                      config.window, config.stride, config.scale_floor,
                      with_relation=config.relation_check, noisy_lookback=config.noisy_lookback,
                      with_spike=config.spike_check, with_shift=config.shift_check)


CALIBRATE_ON = ("all", "validation")


def _check_config(config: TrainConfig) -> None:
    if config.score_reduction not in SCORE_REDUCTIONS:
        raise UserError(f"score reduction {config.score_reduction!r} unknown "
                        f"(use one of: {', '.join(SCORE_REDUCTIONS)})")
    if config.calibrate_on not in CALIBRATE_ON:
        raise UserError(f"calibrate-on {config.calibrate_on!r} unknown (use one of: {', '.join(CALIBRATE_ON)})")
    if not (isinstance(config.noisy_lookback, int) and config.noisy_lookback >= 1):
        raise UserError(f"noisy look-back must be a whole number of windows >= 1 (got {config.noisy_lookback})")
    if config.scale_floor < 0:
        raise UserError(f"scale floor must be >= 0 (got {config.scale_floor})")
    if not (isinstance(config.max_windows_per_epoch, int) and config.max_windows_per_epoch >= 1):
        raise UserError(f"max windows per epoch must be a whole number >= 1 (got {config.max_windows_per_epoch})")
    try:
        parse_method(config.threshold)
    except ValueError as exc:
        raise UserError(f"--threshold-method: {exc}") from None
    if not (math.isfinite(config.false_alarms_per_day) and config.false_alarms_per_day > 0):
        raise UserError(f"--false-alarms-per-day must be a positive number (got {config.false_alarms_per_day})")
    try:
        AlertSpec(config.enter_after, config.leave_after)
    except ValueError as exc:
        raise UserError(f"alert hysteresis: {exc}") from None


def _calibrate(scorer: Scorer, config: TrainConfig, scores: np.ndarray,
               validation_data: list[Frame] | None) -> Threshold:
    labels = None
    if config.threshold.split(":")[0] == "f1":
        if not validation_data or any(f.labels is None for f in validation_data):
            raise UserError("threshold method 'f1' needs --validation-data with a label column")
        results = score_frames(scorer, validation_data)
        scores = np.concatenate([r.scores for r in results])
        labels = np.concatenate([f.labels[r.ends] for f, r in zip(validation_data, results)])
    try:
        return calibrate(config.threshold, scores, labels, config.threshold_scale)
    except ValueError as exc:
        raise UserError(f"--threshold-method {config.threshold}: {exc}") from None


DEFAULT_BUDGET_CHOSEN_ON = ("no data set: one alert per device-day keeps an operator of 100 devices "
                            "inside ISA-18.2's 150 alarms per operator-day")


def _calibrate_budget(scorer: Scorer, config: TrainConfig, split: Split,
                      folds: Callable[[], list[Fold]]) -> tuple[Threshold, FalseAlarmBudget, np.ndarray]:
    """The threshold meeting the false-alarm budget on held-out normal windows, scored at the
    serving stride so the hysteresis steps as the service's does: the validation tail; where it
    shows too few episodes to fit even an exponential tail (a few hundred training rows leave a
    tail of minutes), every normal window cross-fitted (daemon.offline.cross_fit: held out too,
    but `FOLDS` more models to train); where even those are too few, the training windows join
    the tail, named so in the bundle and logged: their errors are optimistic, so the realised
    rate runs above the budget."""
    period = scorer.bundle.sample_period_seconds
    if period is None:
        raise UserError("--threshold-method budget needs the data's sample period, and the training data has "
                        "no two distinct timestamps; use --threshold-method quantile:0.999")
    per_day = config.false_alarms_per_day
    chosen_on = DEFAULT_BUDGET_CHOSEN_ON if per_day == TrainConfig.false_alarms_per_day else "the operator"
    tail = ("validation", lambda: _scores(scorer, split.validation, config.stride))
    cross_fitted = ("cross-fitted", lambda: cross_fitted_scores(folds(), scorer, config.stride))
    in_sample = ("train+validation", lambda: _scores(scorer, split.train + split.validation, config.stride))
    samples = [tail, cross_fitted, in_sample] if split.validation else [
        cross_fitted, ("train (no validation tail long enough)", in_sample[1])]
    for name, runs in samples:
        held_out = HeldOut.from_scores(runs(), config.stride, period, name)
        try:
            value, record = calibrate_budget(held_out, per_day, scorer.bundle.alert, chosen_on)
        except TooLittleTail as exc:
            log.warning("false-alarm budget on the %s windows: %s", name, exc)
            continue
        if name not in ("validation", "cross-fitted"):
            log.warning("false-alarm budget set on the %s windows: the training windows' errors are "
                        "optimistic, expect more false alarms than %g per day", name, per_day)
        threshold = Threshold(value * config.threshold_scale, "budget", {"per_day": per_day}, config.threshold_scale)
        return threshold, record, np.concatenate(held_out.runs)
    raise UserError(f"too little normal data for a false-alarm budget ({sum(len(f) for f in split.runs)} "
                    f"rows show too few alert episodes to fit a tail); give more data or use "
                    f"--threshold-method quantile:0.999")


def fold_trainer(config: TrainConfig, epochs: int, scaler: Scaler, preprocess: Preprocess,
                 n_features: int) -> Callable[[list[Frame], int], Backend]:
    """How a cross-fitting fold's model is fitted (daemon.offline.cross_fit): the bundle's
    architecture on the bundle's scaling, for the `epochs` the bundle's model took to its best
    validation loss (a fold has no validation tail of its own to stop on), seeded per fold."""

    def fit(rows: list[Frame], fold: int) -> Backend:
        data = TrainingWindows(rows, scaler, config.window, preprocess)
        fold_config = dataclasses.replace(config, epochs=epochs, patience=epochs + 1, seed=config.seed + 1 + fold)
        with torch.random.fork_rng():  # the folds leave the training's random state as they found it
            torch.manual_seed(fold_config.seed)
            model = build_model(config.arch, config.window, n_features, config.arch_params)
            fit_model(model, data, TrainingWindows([], scaler, config.window, preprocess), fold_config,
                      lambda *_: None)
        return torch_backend(model, config.threads)

    return fit


def _scores(scorer: Scorer, frames: list[Frame], stride: int) -> list[np.ndarray]:
    """`frames`' window scores at the serving stride, so the hysteresis steps as the service's does."""
    return [s.scores for s in score_frames(scorer, frames, stride)]


def _expected_false_alarms(scorer: Scorer, config: TrainConfig, split: Split) -> RateEstimate | None:
    """For a threshold set by a rule other than the budget: the alert episodes per device-day
    the validation tail predicts at it, and what the tail vouches for by itself, so `train` and
    `inspect` say how often the bundle will page. None without a tail or a sample period."""
    if not split.validation:
        return None
    return estimate_at(scorer.bundle, _scores(scorer, split.validation, config.stride),
                       scorer.bundle.threshold.value, "validation")


def save(result: TrainResult, directory: Path) -> Bundle:
    """Weights first, bundle.json last (see Bundle.write_json)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    result.bundle.write_json(directory)
    return result.bundle
