"""Re-threshold a bundle on recent normal data without retraining it.

A plant's normal drifts (seasons, retooling, a replaced pump) faster than a model needs
retraining: the reconstruction still works, only the score level that counts as normal has
moved. Recalibration scores the new data through the serving `Scorer` and recomputes the
threshold with the bundle's own method (`Threshold.spec`) and safety margin (`scale`), on the
normal windows only (labelled rows, e.g. anomalyd's alert periods read from the store, are cut
out as in training). With `per_device`, each device seen in the data also gets a threshold of
its own (`Threshold.devices`): a fleet shares one model while each device keeps its baseline.

The result is a new bundle directory: weights (and model.onnx) copied byte for byte, so the
weights' sha256 is the old one, and bundle.json with the new threshold and a `calibration`
record (previous threshold, new one, the data and its time range). A served bundle is never
changed in place: the new directory is promoted with deploy/README.md's symlink + reload.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from daemon import __version__
from daemon.core.bundle import BUNDLE_FILE, ONNX_FILE, WEIGHTS_FILE, Bundle
from daemon.core.errors import BundleError, DataError, UserError
from daemon.core.scoring import Scorer
from daemon.core.thresholds import FalseAlarmBudget, Threshold, calibrate
from daemon.core.score_reference import REFERENCE_KEY, ScoreReference
from daemon.offline.budget import (EXPECTED_FALSE_ALARMS_KEY, HeldOut, RateEstimate, TooLittleTail, calibrate_budget,
                                   estimate_at)
from daemon.offline.frame_scoring import score_frames
from daemon.offline.frames import Frame
from daemon.offline.training import normal_runs

# Files of the source bundle that describe the model itself, copied unchanged.
COPIED_FILES = (WEIGHTS_FILE, ONNX_FILE, "training_loss.png")


@dataclass
class Recalibration:
    threshold: Threshold  # the new one, with per-device values when asked for
    scores: np.ndarray  # every device's calibration window scores, pooled
    windows: dict[str, int]  # calibration windows per device
    reference: ScoreReference  # the normal windows' score quantile, for the live staleness gauge
    # How the new threshold meets the bundle's false-alarm budget, on the data (budget bundles),
    # or the rate expected at it there (other methods; None without a sample period or data to
    # count on): what `inspect` and `evaluate` say from now on instead of training's.
    budget: FalseAlarmBudget | None = None
    estimate: RateEstimate | None = None


def recalibrate(scorer: Scorer, runs: dict[str, list[Frame]], per_device: bool = False) -> Recalibration:
    """The bundle's threshold method applied to `runs` (device -> its runs): one threshold over
    every device's windows, and with `per_device` one per device as well."""
    old = scorer.bundle.threshold
    if per_device and "" in runs:
        raise UserError("--per-device: some data names no device (name CSV files DEVICE=PATH; "
                        "from the store, keep --device-tag pointing at the tag that names devices)")
    if old.method == "budget":
        return _recalibrate_budget(scorer, runs, per_device)
    per_device_scores = {device: _scores(scorer, frames, old.method) for device, frames in runs.items()}
    pooled = _join(list(per_device_scores.values()))
    threshold = _calibrate(old, pooled, "the data")
    devices = ({device: _calibrate(old, scores, f"device {device!r}").value
                for device, scores in sorted(per_device_scores.items())} if per_device else {})
    reference = ScoreReference.of_scores(_normal(pooled), {device: _normal(scores) for device, scores
                                                           in per_device_scores.items()} if per_device else None)
    return Recalibration(dataclasses.replace(threshold, devices=devices), pooled[0],
                         {device: len(scores[0]) for device, scores in per_device_scores.items()}, reference,
                         estimate=_expected(scorer, runs, threshold.value))


def _expected(scorer: Scorer, runs: dict[str, list[Frame]], threshold: float) -> RateEstimate | None:
    """The alert episodes per device-day the normal runs show at `threshold` (counted, or
    extrapolated by the tail `train` uses), and what they vouch for by themselves."""
    parts = [part for parts in _serving_scores(scorer, runs).values() for part in parts]
    return estimate_at(scorer.bundle, parts, threshold, "calibration")


def _serving_scores(scorer: Scorer, runs: dict[str, list[Frame]]) -> dict[str, list[np.ndarray]]:
    """Per device, the window scores of its normal runs at the serving stride, one array per run
    (each run its own stretch of the hysteresis, as `train` scores its held-out runs)."""
    return {device: [r.scores for r in score_frames(
                scorer, [run for frame in frames for run in normal_runs(frame, scorer.window)], scorer.bundle.stride)]
            for device, frames in runs.items()}


def _recalibrate_budget(scorer: Scorer, runs: dict[str, list[Frame]], per_device: bool) -> Recalibration:
    """A false-alarm budget set again, as `train` sets it, on the new data's normal runs scored at
    the serving stride (each run its own stretch of the hysteresis): the same budget per
    device-day, the same counted or tail rule (daemon.offline.budget)."""
    bundle, old = scorer.bundle, scorer.bundle.threshold
    if bundle.sample_period_seconds is None:
        raise UserError("the bundle's threshold is a false-alarm budget, which needs its sample period, and the "
                        "bundle has none")
    score_runs = _serving_scores(scorer, runs)

    def budget_threshold(parts: list[np.ndarray], what: str) -> tuple[float, FalseAlarmBudget]:
        held_out = HeldOut.from_scores(parts, bundle.stride, bundle.sample_period_seconds, "calibration")
        try:
            value, record = calibrate_budget(held_out, float(old.params["per_day"]), bundle.alert)
        except (TooLittleTail, ValueError, KeyError) as exc:
            raise UserError(f"{what}: false-alarm budget: {exc}") from None
        return value * old.scale, record

    pooled_runs = [part for parts in score_runs.values() for part in parts]
    devices = ({device: budget_threshold(parts, f"device {device!r}")[0]
                for device, parts in sorted(score_runs.items())} if per_device else {})
    value, record = budget_threshold(pooled_runs, "the data")
    if bundle.false_alarm_budget is not None:
        record = dataclasses.replace(record, chosen_on=bundle.false_alarm_budget.chosen_on)
    threshold = dataclasses.replace(old, value=value, devices=devices)
    pooled = _concat(pooled_runs)
    reference = ScoreReference.of_scores(pooled, {device: _concat(parts) for device, parts in score_runs.items()}
                                         if per_device else None)
    windows = {device: sum(len(p) for p in parts) for device, parts in score_runs.items()}
    return Recalibration(threshold, pooled, windows, reference, budget=record)


def _scores(scorer: Scorer, frames: list[Frame], method: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores of the normal windows (every window with its label for 'f1', which needs both)."""
    if method == "f1":
        if any(f.labels is None for f in frames):
            raise UserError("the bundle's threshold method 'f1' needs labelled data (a label column)")
        usable = [f for f in frames if len(f) >= scorer.window]
        results = score_frames(scorer, usable)
        return _concat([r.scores for r in results]), _concat([f.labels[r.ends] for f, r in zip(usable, results)])
    normal = [run for frame in frames for run in normal_runs(frame, scorer.window)]
    return _concat([r.scores for r in score_frames(scorer, normal)]), None


def _normal(scored: tuple[np.ndarray, np.ndarray | None]) -> np.ndarray:
    """The scores of the normal windows ('f1' scores labelled anomalies too)."""
    scores, labels = scored
    return scores if labels is None else scores[labels == 0]


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)


def _join(parts: list[tuple[np.ndarray, np.ndarray | None]]) -> tuple[np.ndarray, np.ndarray | None]:
    labels = [labels for _, labels in parts]
    return (_concat([scores for scores, _ in parts]),
            None if any(lab is None for lab in labels) else _concat(labels))


def _calibrate(old: Threshold, scored: tuple[np.ndarray, np.ndarray | None], what: str) -> Threshold:
    scores, labels = scored
    if not len(scores):
        raise DataError(f"{what}: no run of normal rows is at least one window long, nothing to calibrate on")
    try:
        return calibrate(old.spec, scores, labels, old.scale)
    except ValueError as exc:
        raise UserError(f"{what}: threshold {old.spec}: {exc}") from None


def write_recalibrated(source: Bundle, result: Recalibration, out: Path, name: str, version: str,
                       data: list[str], first: float, last: float, left_out: str = "") -> Bundle:
    """A new bundle directory `out`: the model files of `source` copied, bundle.json with the new
    threshold and the `calibration` record (`left_out`: which rows of the data were not
    calibrated on, and how many). Refuses an existing non-empty `out` (never
    overwrite a bundle, least of all the one being served)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: already exists; calibrate writes a new bundle directory (promote it "
                        f"with the symlink + reload in deploy/README.md)")
    assert source.path is not None
    out.mkdir(parents=True, exist_ok=True)
    for name_ in COPIED_FILES:
        if (source.path / name_).is_file():
            shutil.copy2(source.path / name_, out / name_)
    bundle = dataclasses.replace(
        source, name=name, version=version, threshold=result.threshold, path=None,
        false_alarm_budget=result.budget or source.false_alarm_budget,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        calibration={
            "from": {"name": source.name, "version": source.version, "path": str(source.path)},
            "previous_threshold": source.threshold.to_dict(),
            "threshold": result.threshold.to_dict(),
            "windows": int(sum(result.windows.values())),
            "windows_per_device": {d: int(n) for d, n in sorted(result.windows.items()) if d},
            REFERENCE_KEY: result.reference.to_dict(),
            "data": sorted(data),
            "data_start": _iso(first),
            "data_stop": _iso(last),
            "left_out": left_out,
            EXPECTED_FALSE_ALARMS_KEY: None if result.estimate is None else result.estimate.to_dict(),
            "anomalyd_version": __version__,
        })
    bundle.write_json(out)
    if bundle.weights_sha256 != source.weights_sha256:
        (out / BUNDLE_FILE).unlink()
        raise BundleError(f"{out / WEIGHTS_FILE}: copied weights differ from {source.weights_path} (disk full?)")
    return bundle


def next_version(version: str) -> str:
    """'3' -> '4'; a version that is not a whole number gets '.1' appended."""
    return str(int(version) + 1) if version.isdigit() else f"{version}.1"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
