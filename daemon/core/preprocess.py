"""Per-window preprocessing stored in the bundle and applied by `Scorer` (the one scoring path),
after scaling and before the model, exactly as during training.

`demean` lists the features whose window is centred on its own mean: the model then sees (and
reconstructs) only how such a sensor moves *within* the window, never its level. That is for
slow sensors (motor body and fluid temperatures) whose level wanders with conditions the
training rows never covered: after a fault has ended the loop settles a few tenths of a degree
away from where it was during the training minutes, and an autoencoder fed the level reads
that harmless drift as a fault for the rest of the run. Fast changes of those sensors still
show up inside the window.

Centring commutes with per-feature affine scaling ((x - o) / s centred = (x - mean_w x) / s),
so applying it to scaled windows is the same as applying it to raw ones, without the scaler's
offset getting in the way. Pure numpy: the ONNX runtime path needs no torch for it.

`slow_features` picks such sensors from the training rows only: a feature is "slow" when its
pooled lag-1 autocorrelation over the training runs is at least `SLOW_AUTOCORR` (drift
dominates sample-to-sample noise). Training uses it for `demean="auto"` and for the score's
`exclude="auto"` (see daemon.core.bundle.ScoreSpec). The chosen names, not the rule, go into
bundle.json, so serving never re-decides and an operator can edit the list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

# "none": no feature; "auto": the slow features (slow_features); "thin": the features whose
# level the training runs do not establish, from training's sensor evidence
# (daemon.offline.sensor_evidence, SensorEvidence.levels_unknown).
DEMEAN_MODES = ("none", "auto", "thin")
SLOW_AUTOCORR = 0.5


@dataclass(frozen=True)
class Preprocess:
    """What happens to a scaled window `[B, W, F]` before the model. Empty = nothing."""

    demean: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"demean": list(self.demean)}

    @classmethod
    def from_dict(cls, data: Any, features: Sequence[str]) -> Preprocess:
        """Validate on load (bundle.json is edited by hand); a missing key means "nothing"."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"demean"})
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)} (known: demean)")
        demean = data.get("demean") or []
        if not isinstance(demean, list) or not all(isinstance(n, str) for n in demean):
            raise ValueError("'demean' must be a list of feature names")
        missing = [n for n in demean if n not in features]
        if missing:
            raise ValueError(f"'demean' names unknown feature(s) {', '.join(missing)}")
        return cls(tuple(demean))

    def mask(self, features: Sequence[str]) -> np.ndarray:
        return np.isin(np.asarray(features, dtype=object), np.asarray(self.demean, dtype=object))

    def apply(self, scaled: np.ndarray, features: Sequence[str]) -> np.ndarray:
        """Return the windows the model sees; `scaled` is not modified."""
        if not self.demean:
            return scaled
        mask = self.mask(features)
        out = np.array(scaled, dtype=np.float32, copy=True)
        out[:, :, mask] -= out[:, :, mask].mean(axis=1, keepdims=True)
        return out


def lag1_autocorrelation(runs: Sequence[np.ndarray]) -> np.ndarray:
    """Pooled lag-1 autocorrelation per feature over several `[n, F]` runs (0 for constants)."""
    num = den = 0.0
    for rows in runs:
        x = np.asarray(rows, dtype=np.float64)
        if len(x) < 3:
            continue
        x = x - x.mean(axis=0)
        num = num + (x[1:] * x[:-1]).sum(axis=0)
        den = den + (x * x).sum(axis=0)
    den = np.asarray(den, dtype=np.float64)
    return np.where(den > 1e-12, np.asarray(num) / np.maximum(den, 1e-12), 0.0)


def slow_features(features: Sequence[str], runs: Sequence[np.ndarray]) -> tuple[str, ...]:
    """Features whose training rows drift more than they jitter (lag-1 autocorrelation >=
    SLOW_AUTOCORR over the training runs), e.g. motor and fluid temperatures. If that is every
    feature, nothing is singled out (returns ())."""
    slow = lag1_autocorrelation(runs) >= SLOW_AUTOCORR
    return () if slow.all() else tuple(f for f, s in zip(features, slow) if s)


def resolve_features(mode: str | Sequence[str], features: Sequence[str], runs: Sequence[np.ndarray],
                     what: str, thin: Sequence[str] = ()) -> tuple[str, ...]:
    """Resolve a TrainConfig feature selection ("none", "auto" = slow_features, "thin" = `thin`,
    the features training's sensor evidence leaves without a known level, or explicit names) to
    feature names, decided on training rows only."""
    if isinstance(mode, str):
        if mode == "none":
            return ()
        if mode == "auto":
            return slow_features(features, runs)
        if mode == "thin":
            return tuple(thin)
        raise ValueError(f"{what} {mode!r} unknown (use one of: {', '.join(DEMEAN_MODES)}, or a list of feature names)")
    names = tuple(mode)
    missing = [n for n in names if n not in features]
    if missing:
        raise ValueError(f"{what}: unknown feature(s) {', '.join(missing)} (features: {', '.join(features)})")
    return names
