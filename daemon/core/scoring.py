"""The one scoring path for windows. `Scorer` = bundle (features, window, scaler, score
definition, threshold) + an inference runtime. The daemon's worker runs its stages
(`model_input`, the backend, `finish`); training, `anomalyd score` and `anomalyd evaluate` reach
`score_windows` through daemon.offline.frame_scoring; so training, offline evaluation and live
serving cannot drift apart.

A window that cannot be scored is an anomaly, never normal. Two reasons, checked here so every
consumer applies them alike:

- `out_of_range`: the window holds a value that is not a number or lies more than
  SCALED_LIMIT scaling units (standard deviations for a z-score scaler) from the training
  level. No process variable strays that far: such a value is a sensor's fault code
  (+-3.4028235e38, the float32 limit, is a common one), a wrong unit or a corrupted reading, and
  it is what the operator of that device must hear about. So the window is not dropped but
  scored as maximal (MAX_SCORE) and flagged, and the feature holding the value gets MAX_SCORE
  as its error, which names the sensor. Dropping the reading instead would leave the device
  silent on the dashboard while its sensor is broken. The model reads the window with such
  values clipped to +-SCALED_LIMIT (NaN as +SCALED_LIMIT), so the other features' errors stay
  meaningful; the limit sits far below float32's overflow so that the squared errors of any
  in-range window are finite.
- `non_finite_score`: any other window whose score or a feature's error is not finite (the
  model's output or the error arithmetic overflowed). It is scored as maximal, and its
  non-finite errors are written as MAX_SCORE.

Scores and errors leaving this module are therefore always finite (every store accepts them),
and `WindowScores.flags` flags a window with a reason whatever the threshold.

Beside the score, the bundle's sensor-health checks (daemon.core.sensor_health) give a window a
reason `<check>:<feature>` (`stuck:flow`, `noisy:pressure`, `spike:flow`,
`out_of_envelope:pressure`, `drift:temperature`, `relation:pressure`) when one of its sensors looks broken or off its
relation to the others; they never change the score. They
run when the caller passes each window's `HealthState` (its device's memory for the drift
check): the live worker passes the device's, offline scoring one per file. A window that
cannot be scored keeps its unscorable reason: the sensor-health reason is the lesser news.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.core.bundle import Bundle, ScoreSpec, load_bundle
from daemon.core.runtime import Backend, load_backend, model_batches, padded_sizes
from daemon.core.sensor_health import HealthState, check_windows

OUT_OF_RANGE = "out_of_range"
NON_FINITE_SCORE = "non_finite_score"
REASONS = (OUT_OF_RANGE, NON_FINITE_SCORE)  # the unscorable reasons; health reasons: sensor_health.CHECKS
# The score (and error) of a window that cannot be scored: the largest float32, finite so that
# line protocol, CSV and JSON carry it, and above any threshold a bundle calibrates.
MAX_SCORE = float(np.finfo(np.float32).max)
# Scaled values beyond +-SCALED_LIMIT are out of range (see the module docstring).
SCALED_LIMIT = 1e9


@dataclass
class ModelInput:
    """What the model reads for a batch of raw windows, and which values were out of range."""

    values: np.ndarray  # float32 [B, W, F]: scaled, preprocessed, contiguous
    out_of_range: np.ndarray | None = None  # bool [B, F]: the feature had a value out of range; None: none had
    health: list[str] | None = None  # per window, a sensor-health reason or ""; None: every window healthy


@dataclass
class WindowScores:
    scores: np.ndarray  # float32 [B], finite
    feature_errors: np.ndarray  # float32 [B, F], finite: the per-sensor contributions
    # Per window, why it is anomalous whatever its score ("" for none; see REASONS and the
    # sensor-health reasons). None when no window of the batch has a reason, the usual case,
    # which then costs nothing.
    reasons: list[str] | None = None

    def flags(self, threshold: float) -> np.ndarray:
        """bool [B]: anomalous windows, those scoring above `threshold` (the thresholds
        module's convention) and every window with a reason."""
        with np.errstate(over="ignore"):  # a threshold beyond float32 compares as inf
            flags = self.scores > threshold
        if self.reasons is not None:
            flags |= np.fromiter((bool(r) for r in self.reasons), dtype=bool, count=len(self.reasons))
        return flags


def feature_errors(scaled: np.ndarray, reconstruction: np.ndarray, error: str) -> np.ndarray:
    """Per-feature reconstruction error over the window, `[B, W, F] -> [B, F]`.

    einsum, because numpy's mean over the middle axis is a strided reduction, several times
    slower for the daemon's batches, and this runs on the scoring thread for every window."""
    diff = reconstruction - scaled
    if error == "mae":
        return np.einsum("bwf->bf", np.abs(diff, out=diff)) / np.float32(diff.shape[1])
    return np.einsum("bwf,bwf->bf", diff, diff) / np.float32(diff.shape[1])


def _voting_errors(errors: np.ndarray, spec: ScoreSpec, features: list[str] | None) -> tuple[np.ndarray, list[int]]:
    """Per-feature errors as they vote (divided by `spec.feature_scale`), and the indices of the
    features that vote (all but `spec.exclude`, which needs `features`)."""
    if spec.feature_scale is not None:
        with np.errstate(over="ignore"):  # an unscorable window's MAX_SCORE errors become inf: still the largest
            errors = errors / np.asarray(spec.feature_scale, dtype=np.float32)
    if not spec.exclude:
        return errors, list(range(errors.shape[1]))
    if features is None:
        raise ValueError("the score excludes features, pass the feature names")
    return errors, [i for i, f in enumerate(features) if f not in spec.exclude]


def combine(errors: np.ndarray, spec: ScoreSpec, features: list[str] | None = None) -> np.ndarray:
    """Window score from per-feature errors: mean (or max) over (optionally normalised) features,
    leaving out `spec.exclude` (needs `features`, the column names of `errors`)."""
    errors, voting = _voting_errors(errors, spec, features)
    if len(voting) < errors.shape[1]:
        errors = errors[:, voting]
    return errors.max(axis=1) if spec.reduction == "max" else errors.mean(axis=1)


def leading_features(errors: np.ndarray, spec: ScoreSpec, features: list[str] | None = None) -> np.ndarray:
    """Per window, the index of the feature whose error weighs most in its score (as it votes:
    divided by its scale; an excluded feature never leads): the sensor a model alarm names."""
    errors, voting = _voting_errors(errors, spec, features)
    return np.asarray(voting)[np.argmax(errors[:, voting], axis=1)]


def alarm_names(reasons: list[str] | None, errors: np.ndarray, spec: ScoreSpec, features: list[str]) -> list[str]:
    """What each window's alarm names, the sensor to check: its reason (a sensor-health flag such
    as `stuck:flow`, or why it could not be scored), else `model:<sensor>`, the sensor whose error
    weighs most in its score (`leading_features`)."""
    leading = leading_features(errors, spec, features)
    reasons = reasons or [""] * len(errors)
    return [reason or f"model:{features[k]}" for reason, k in zip(reasons, leading.tolist())]


class Scorer:
    def __init__(self, bundle: Bundle, backend: Backend) -> None:
        self.bundle = bundle
        self.backend = backend

    @classmethod
    def load(cls, path: str | Path, runtime: str = "torch", threads: int = 1) -> Scorer:
        bundle = load_bundle(path)
        return cls(bundle, load_backend(bundle, runtime, threads))

    @property
    def features(self) -> list[str]:
        return self.bundle.features

    @property
    def window(self) -> int:
        return self.bundle.window

    @property
    def threshold(self) -> float:
        return self.bundle.threshold.value

    def warm_up(self, max_batch: int) -> None:
        """Run the model once at every batch size the runtime will see for batches of up to
        `max_batch` windows, so the memory and compile time each shape costs are paid at start,
        not in the first hours of live traffic (see `daemon.core.runtime.padded_size`)."""
        for size in padded_sizes(max_batch):
            self.backend(np.zeros((size, self.window, len(self.features)), dtype=np.float32))

    def score_windows(self, raw: np.ndarray, health: list[HealthState] | None = None) -> WindowScores:
        """Score raw (unscaled) windows `[B, window, features]` in the bundle's feature order;
        with `health` (window i's device memory, see `model_input`), run the sensor-health checks.

        Raw windows are scaled, then preprocessed (the bundle's `preprocess`, e.g. centring slow
        features on their window mean), then reconstructed. Per-feature errors are reported
        unnormalised, in scaled units, so an operator can compare them against the training-time
        errors in bundle.json. Windows that cannot be scored come back scored as maximal with a
        reason (module docstring). The stages (`model_input`, the backend, `finish`) are public
        so the live worker can run the model on a thread of its own between them."""
        if raw.ndim != 3 or raw.shape[1:] != (self.window, len(self.features)):
            raise ValueError(f"windows must have shape [batch, {self.window}, {len(self.features)}], got {raw.shape}")
        scores = np.empty(len(raw), dtype=np.float32)
        errors = np.empty((len(raw), len(self.features)), dtype=np.float32)
        reasons: list[str] | None = None
        for part in model_batches(len(raw)):
            model_input = self.model_input(raw[part], None if health is None else health[part])
            result = self.finish(model_input, self.backend(model_input.values))
            scores[part], errors[part] = result.scores, result.feature_errors
            if result.reasons is not None:
                reasons = reasons or [""] * len(raw)
                reasons[part] = result.reasons
        return WindowScores(scores, errors, reasons)

    def model_input(self, raw: np.ndarray, health: list[HealthState] | None = None) -> ModelInput:
        """What the model sees for raw windows: scaled, clipped into range, preprocessed; and,
        given `health` (one state per window, windows of a device in time order) and a bundle
        with health checks, each window's sensor-health reason."""
        health_reasons = None
        if health is not None and self.bundle.health is not None:
            health_reasons = check_windows(self.bundle.health, self.features, raw, health)
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values are handled below
            scaled = self.bundle.scaler.transform(raw)
        out_of_range = None
        # One max and one min cover the usual batch; NaN fails both comparisons.
        if len(scaled) and not (scaled.max() <= SCALED_LIMIT and scaled.min() >= -SCALED_LIMIT):
            out_of_range = ~(np.abs(scaled) <= SCALED_LIMIT).all(axis=1)
            scaled = np.clip(np.nan_to_num(scaled, nan=SCALED_LIMIT, posinf=SCALED_LIMIT, neginf=-SCALED_LIMIT),
                             -SCALED_LIMIT, SCALED_LIMIT)
        values = self.bundle.preprocess.apply(scaled, self.features)
        return ModelInput(np.ascontiguousarray(values), out_of_range, health_reasons)

    def finish(self, model_input: ModelInput, reconstruction: np.ndarray) -> WindowScores:
        """Scores and per-feature errors from the model's reconstruction of `model_input`."""
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite results are handled below
            errors = feature_errors(model_input.values, reconstruction, self.bundle.score.error)
            scores = combine(errors, self.bundle.score, self.features)
        if model_input.out_of_range is None and np.isfinite(scores).all() and np.isfinite(errors).all():
            return WindowScores(scores, errors, model_input.health)
        result = _unscorable_as_maximal(scores, errors, model_input.out_of_range)
        if model_input.health is not None:
            unscorable = result.reasons or [""] * len(scores)
            result.reasons = [u or h for u, h in zip(unscorable, model_input.health)]
        return result


def _unscorable_as_maximal(scores: np.ndarray, errors: np.ndarray, out_of_range: np.ndarray | None) -> WindowScores:
    """Scores with every window that cannot be scored set to MAX_SCORE, with its reason."""
    scores, errors = scores.astype(np.float32, copy=True), errors.astype(np.float32, copy=True)
    reasons = [""] * len(scores)
    finite_errors = np.isfinite(errors)
    for i in np.flatnonzero(~(np.isfinite(scores) & finite_errors.all(axis=1))):
        reasons[i] = NON_FINITE_SCORE
    errors[~finite_errors] = MAX_SCORE
    if out_of_range is not None:
        errors[out_of_range] = MAX_SCORE
        for i in np.flatnonzero(out_of_range.any(axis=1)):
            reasons[i] = OUT_OF_RANGE
    for i, reason in enumerate(reasons):
        if reason:
            scores[i] = MAX_SCORE
    return WindowScores(scores, errors, reasons if any(reasons) else None)
