"""The one scoring path for windows. `Scorer` = bundle (features, window, scaler, score
definition, threshold) + an inference runtime. The daemon's worker runs its stages
(`model_input`, the backend, `finish`); training, `anomalyd score` and `anomalyd evaluate` reach
`score_windows` through daemon.offline.frame_scoring; so training, offline evaluation and live
serving cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.core.bundle import Bundle, ScoreSpec, load_bundle
from daemon.core.runtime import Backend, load_backend, model_batches, padded_sizes


@dataclass
class WindowScores:
    scores: np.ndarray  # float32 [B]
    feature_errors: np.ndarray  # float32 [B, F], the per-sensor contributions


def feature_errors(scaled: np.ndarray, reconstruction: np.ndarray, error: str) -> np.ndarray:
    """Per-feature reconstruction error over the window, `[B, W, F] -> [B, F]`.

    einsum, because numpy's mean over the middle axis is a strided reduction, several times
    slower for the daemon's batches, and this runs on the scoring thread for every window."""
    diff = reconstruction - scaled
    if error == "mae":
        return np.einsum("bwf->bf", np.abs(diff, out=diff)) / np.float32(diff.shape[1])
    return np.einsum("bwf,bwf->bf", diff, diff) / np.float32(diff.shape[1])


def combine(errors: np.ndarray, spec: ScoreSpec, features: list[str] | None = None) -> np.ndarray:
    """Window score from per-feature errors: mean (or max) over (optionally normalised) features,
    leaving out `spec.exclude` (needs `features`, the column names of `errors`)."""
    if spec.feature_scale is not None:
        errors = errors / np.asarray(spec.feature_scale, dtype=np.float32)
    if spec.exclude:
        if features is None:
            raise ValueError("combine: the score excludes features, pass the feature names")
        errors = errors[:, [i for i, f in enumerate(features) if f not in spec.exclude]]
    return errors.max(axis=1) if spec.reduction == "max" else errors.mean(axis=1)


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

    def score_windows(self, raw: np.ndarray) -> WindowScores:
        """Score raw (unscaled) windows `[B, window, features]` in the bundle's feature order.

        Raw windows are scaled, then preprocessed (the bundle's `preprocess`, e.g. centring slow
        features on their window mean), then reconstructed. Per-feature errors are reported
        unnormalised, in scaled units, so an operator can compare them against the training-time
        errors in bundle.json. The stages (`model_input`, the backend, `finish`) are public so the
        live worker can run the model on a thread of its own between them."""
        if raw.ndim != 3 or raw.shape[1:] != (self.window, len(self.features)):
            raise ValueError(f"windows must have shape [batch, {self.window}, {len(self.features)}], got {raw.shape}")
        scores = np.empty(len(raw), dtype=np.float32)
        errors = np.empty((len(raw), len(self.features)), dtype=np.float32)
        for part in model_batches(len(raw)):
            model_input = self.model_input(raw[part])
            result = self.finish(model_input, self.backend(model_input))
            scores[part], errors[part] = result.scores, result.feature_errors
        return WindowScores(scores, errors)

    def model_input(self, raw: np.ndarray) -> np.ndarray:
        """What the model sees for raw windows: scaled, preprocessed, contiguous."""
        scaled = self.bundle.preprocess.apply(self.bundle.scaler.transform(raw), self.features)
        return np.ascontiguousarray(scaled)

    def finish(self, model_input: np.ndarray, reconstruction: np.ndarray) -> WindowScores:
        """Scores and per-feature errors from the model's reconstruction of `model_input`."""
        errors = feature_errors(model_input, reconstruction, self.bundle.score.error)
        return WindowScores(combine(errors, self.bundle.score, self.features), errors)
