"""Model bundles: a directory holding `bundle.json` (everything needed to reproduce scoring)
and the weights as safetensors (tensors only, so loading a bundle cannot execute code).

`bundle.json` is validated field by field on load; every error names the file and the
field, because a hand-edited or half-copied bundle is the usual way models break in the field.
Every read of a bundle file goes through `_read`, which turns any OS or decoding error into a
`BundleError` naming the file: a SIGHUP reload then keeps the running model and says why, where
an escaped OSError would stop the service.
This module does not import torch: the ONNX runtime path loads bundles without it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from daemon.core.errors import BundleError
from daemon.core.postprocess import AlertSpec
from daemon.core.preprocess import Preprocess
from daemon.core.scaling import SCALER_KINDS, Scaler
from daemon.core.sensor_health import HealthSpec
from daemon.core.thresholds import FalseAlarmBudget, Threshold

FORMAT = "anomalyd-bundle"
FORMAT_VERSION = 1
BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
SCORE_ERRORS = ("mse", "mae")
# How per-feature errors become one window score; stored as "<name>_over_features".
SCORE_REDUCTIONS = ("mean", "max")


@dataclass(frozen=True)
class ScoreSpec:
    """How a reconstruction becomes a score: per-feature error over the window (`error`),
    divided by that feature's typical validation error (`feature_scale`, ones by default),
    then reduced over features (`reduction`: mean, or max so one sensor's fault is not diluted
    by seven healthy ones). The division keeps one noisy sensor from drowning the rest.
    `exclude` names features the model still reads (as context for the others) but whose own
    error does not vote: by default the slow sensors (temperatures), whose level drifts after
    a fault has ended and would otherwise keep the alert on (see daemon.core.preprocess)."""

    error: str = "mse"
    feature_scale: tuple[float, ...] | None = None
    reduction: str = "mean"
    exclude: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"error": self.error, "reduction": f"{self.reduction}_over_features",
                "feature_scale": None if self.feature_scale is None else list(self.feature_scale),
                "exclude": list(self.exclude)}


@dataclass
class Bundle:
    name: str
    arch: str
    arch_params: dict[str, Any]
    features: list[str]
    window: int
    stride: int
    scaler: Scaler
    score: ScoreSpec
    threshold: Threshold
    alert: AlertSpec = field(default_factory=AlertSpec)
    version: str = "1"
    created: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    path: Path | None = None
    # Per-window preprocessing before the model (daemon.core.preprocess); empty in old bundles.
    preprocess: Preprocess = field(default_factory=Preprocess)
    # The training data's sample period (median step between timestamps), so the live service
    # can tell a gap in a device's readings from its normal pace; None where it is unknown
    # (frames without timestamps, bundles written before the field existed).
    sample_period_seconds: float | None = None
    # How `anomalyd calibrate` re-thresholded this bundle: the previous and new thresholds and
    # the data they came from; empty for a bundle as `train` wrote it.
    calibration: dict[str, Any] = field(default_factory=dict)
    # How a "budget" threshold was set (daemon.offline.budget); None for the other methods and
    # in bundles written before the budget existed.
    false_alarm_budget: FalseAlarmBudget | None = None
    # The sensor-health checks fitted on the training data (daemon.core.sensor_health); None in
    # bundles written before they existed, which then score with the checks off.
    health: HealthSpec | None = None

    @property
    def weights_path(self) -> Path:
        return self._dir() / WEIGHTS_FILE

    @property
    def onnx_path(self) -> Path:
        return self._dir() / ONNX_FILE

    def _dir(self) -> Path:
        if self.path is None:
            raise BundleError(f"bundle {self.name!r} has not been saved to a directory yet")
        return self.path

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "architecture": {"name": self.arch, "params": self.arch_params},
            "features": self.features,
            "window": self.window,
            "stride": self.stride,
            "scaler": self.scaler.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "sample_period_seconds": self.sample_period_seconds,
            "health": None if self.health is None else self.health.to_dict(),
            "score": self.score.to_dict(),
            "threshold": self.threshold.to_dict(),
            "false_alarm_budget": None if self.false_alarm_budget is None else self.false_alarm_budget.to_dict(),
            "alert": self.alert.to_dict(),
            "training": self.training,
            **({"calibration": self.calibration} if self.calibration else {}),
            "weights": {"file": WEIGHTS_FILE, "sha256": self.weights_sha256},
        }

    def write_json(self, directory: Path) -> None:
        """Write bundle.json last, after the weights, so a crash never leaves a bundle.json
        that points at weights which are not there."""
        directory.mkdir(parents=True, exist_ok=True)
        self.weights_sha256 = sha256_of(directory / WEIGHTS_FILE)
        tmp = directory / (BUNDLE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(directory / BUNDLE_FILE)
        self.path = directory


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read(path: Path, read: Callable[[Path], Any], missing: str) -> Any:
    """`read(path)` with every OS error (a directory, no permission, an I/O error) raised as a
    BundleError naming the file; `missing` is the message when the file does not exist."""
    try:
        return read(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: {missing}") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _read_json(path: Path) -> Any:
    raw = _read(path, Path.read_bytes, "missing (not a model bundle directory?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None


def load_bundle(directory: str | Path) -> Bundle:
    """Read and validate a bundle directory (not the weights' contents: see the runtimes)."""
    directory = Path(directory)
    json_path = directory / BUNDLE_FILE
    if not _read(directory, Path.is_dir, "model bundle directory not found"):
        raise BundleError(f"{directory}: model bundle directory not found")
    data = _read_json(json_path)
    reader = _Fields(json_path, data)
    reader.require("format", str, lambda v: v == FORMAT, f"must be {FORMAT!r}")
    reader.require("format_version", int, lambda v: v == FORMAT_VERSION,
                   f"version {data.get('format_version')!r} is not supported (this anomalyd reads {FORMAT_VERSION})")
    features = reader.require("features", list, lambda v: v and all(isinstance(f, str) for f in v),
                              "must be a non-empty list of names")
    n = len(features)
    window = reader.require("window", int, lambda v: v >= 1, "must be >= 1")
    stride = reader.require("stride", int, lambda v: v >= 1, "must be >= 1")
    kind = reader.require("scaler.kind", str, lambda v: v in SCALER_KINDS, f"must be one of {SCALER_KINDS}")
    offset = reader.require("scaler.offset", list, _numbers(n), f"must be {n} finite numbers")
    scale = reader.require("scaler.scale", list, lambda v: _numbers(n)(v) and all(x != 0 for x in v),
                           f"must be {n} finite non-zero numbers")
    error = reader.require("score.error", str, lambda v: v in SCORE_ERRORS, f"must be one of {SCORE_ERRORS}")
    feature_scale = reader.optional("score.feature_scale", list, lambda v: _numbers(n)(v) and min(v) > 0,
                                    f"must be {n} positive numbers or null")
    exclude = reader.optional("score.exclude", list,
                              lambda v: all(isinstance(x, str) and x in features for x in v) and len(set(v)) < n,
                              "must be a list of feature names, leaving at least one feature") or []
    reductions = tuple(f"{r}_over_features" for r in SCORE_REDUCTIONS)
    reduction = reader.optional("score.reduction", str, lambda v: v in reductions,
                                f"must be one of {reductions}") or "mean_over_features"
    try:
        alert = AlertSpec.from_dict(reader.optional("alert", dict, lambda v: True, "") or {})
    except ValueError as exc:
        raise BundleError(f"{json_path}: field 'alert': {exc}") from None
    try:
        preprocess = Preprocess.from_dict(reader.optional("preprocess", dict, lambda v: True, "") or {}, features)
    except ValueError as exc:
        raise BundleError(f"{json_path}: field 'preprocess': {exc}") from None
    try:
        threshold = Threshold.from_dict(reader.require("threshold", dict, lambda v: True, ""))
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{json_path}: field 'threshold': {exc}") from None
    if not np.isfinite(threshold.value):
        raise BundleError(f"{json_path}: field 'threshold.value': must be a finite number")
    try:
        budget_field = reader.optional("false_alarm_budget", dict, lambda v: True, "")
        budget = None if budget_field is None else FalseAlarmBudget.from_dict(budget_field)
    except ValueError as exc:
        raise BundleError(f"{json_path}: field 'false_alarm_budget': {exc}") from None
    try:
        health = reader.optional("health", dict, lambda v: True, "must be an object or null")
        health = None if health is None else HealthSpec.from_dict(health, n)
    except ValueError as exc:
        raise BundleError(f"{json_path}: field 'health': {exc}") from None
    sample_period = reader.optional("sample_period_seconds", (int, float),
                                    lambda v: np.isfinite(v) and v > 0, "must be a positive number of seconds or null")
    bundle = Bundle(
        name=reader.require("name", str, bool, "must be a non-empty string"),
        version=str(reader.optional("version", (str, int), lambda v: True, "") or "1"),
        created=reader.optional("created", str, lambda v: True, "") or "",
        arch=reader.require("architecture.name", str, bool, "must be a non-empty string"),
        arch_params=reader.require("architecture.params", dict, lambda v: True, ""),
        features=features, window=window, stride=stride,
        scaler=Scaler(kind, np.asarray(offset, np.float32), np.asarray(scale, np.float32)),
        score=ScoreSpec(error, None if feature_scale is None else tuple(float(x) for x in feature_scale),
                        reduction.removesuffix("_over_features"), tuple(exclude)),
        threshold=threshold,
        false_alarm_budget=budget,
        alert=alert,
        preprocess=preprocess,
        sample_period_seconds=None if sample_period is None else float(sample_period),
        health=health,
        training=reader.optional("training", dict, lambda v: True, "") or {},
        calibration=reader.optional("calibration", dict, lambda v: True, "") or {},
        weights_sha256=reader.require("weights.sha256", str, lambda v: len(v) == 64, "must be a sha256 hex digest"),
        path=directory,
    )
    verify_weights(bundle)
    return bundle


def verify_weights(bundle: Bundle) -> None:
    """Catch truncated or swapped weight files before the runtime tries to parse them."""
    path = bundle.weights_path
    if not _read(path, Path.is_file, "weights file missing"):
        raise BundleError(f"{path}: weights file missing or not a file")
    if _read(path, sha256_of, "weights file missing") != bundle.weights_sha256:
        raise BundleError(f"{path}: checksum does not match bundle.json field 'weights.sha256' "
                          f"(truncated, corrupted or replaced file)")


def _numbers(n: int) -> Callable[[list], bool]:
    def check(values: list) -> bool:
        return len(values) == n and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values)
    return check


class _Fields:
    """Dotted-path access to bundle.json with errors that name the file and the field."""

    def __init__(self, path: Path, data: Any) -> None:
        if not isinstance(data, dict):
            raise BundleError(f"{path}: top level must be a JSON object")
        self.path, self.data = path, data

    def _lookup(self, dotted: str) -> tuple[bool, Any]:
        node = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return False, None
            node = node[part]
        return True, node

    def _check(self, dotted: str, value: Any, kind: type | tuple, ok: Callable, why: str) -> Any:
        if isinstance(value, bool) and kind in (int, float) or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise BundleError(f"{self.path}: field '{dotted}': expected {names}, got {type(value).__name__}")
        if not ok(value):
            raise BundleError(f"{self.path}: field '{dotted}': {why}")
        return value

    def require(self, dotted: str, kind: type | tuple, ok: Callable, why: str) -> Any:
        found, value = self._lookup(dotted)
        if not found:
            raise BundleError(f"{self.path}: field '{dotted}' is missing")
        return self._check(dotted, value, kind, ok, why)

    def optional(self, dotted: str, kind: type | tuple, ok: Callable, why: str) -> Any:
        found, value = self._lookup(dotted)
        return None if not found or value is None else self._check(dotted, value, kind, ok, why)
