"""The relation check: is each sensor where the other sensors say it should be?

An autoencoder reconstructs a window from the window itself, each sensor included, so a slow
change in how one sensor relates to the others passes through its reconstruction and the
window's error barely moves: a pump's head falling at the same speed and flow as its impeller
wears, a pressure reading low because a seal leaks. This check predicts each sensor's window
level from the *other* sensors' levels only (analytical redundancy: the sensor cannot vouch for
itself), with a polynomial of degree 2 (every square and product: the second-order expansion of
whatever smooth law ties them) fitted by ridge regression on the training windows, and flags a
window whose residual on some sensor is beyond what normal operation shows.

Levels are the sensor-health check's window means in training standard deviations
(`sensor_health.window_levels`, `HealthSpec.level_mean` and `level_std`), so the check reacts
to sustained changes over a window, not to one reading's noise.

Limits, every one a statistic of the training windows times a constant fixed a priori:
- each sensor's residual is divided by its RESIDUAL_QUANTILE on the held-out validation
  windows (unseen by the fit, so not flattered by it), floored at MIN_RESIDUAL_SCALE;
- the alarm limit on that ratio is the default threshold rule of the model (`quantile:0.999`
  × 4/3) applied to the largest ratio of every training window, fitted and held out alike.

The degree falls to 1 when the fitted data are too few for every square and product
(SAMPLES_PER_TERM), and the check is off when they are too few for a linear fit. The data are
counted in independent windows, the fitted rows over the window length: consecutive windows
share all but one row, so their levels are not independent samples, and a 400-row run at a
window of 20 is 20 samples, which fit no relation of eight sensors worth trusting. Sensors that
cannot take part: constant ones and those whose level moved within training alone
(`sensor_health`'s trend exemption).

A failing window names the sensor whose level, replaced by what the others predict for it,
makes every relation hold again (`RelationSpec.culprits`), not the one furthest from its own
prediction: a level that moved also moves every prediction it feeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

# Independent samples (fitted rows / window) per regression term: the textbook minimum for a
# regression whose fit is to be trusted on data it has not seen.
SAMPLES_PER_TERM = 10
# Beyond this many terms a degree-2 fit costs more than it is worth on an edge box; a wide
# plant falls back to degree 1.
MAX_TERMS = 2000
# The ridge penalty per term, as a share of the fitted windows: keeps the solve well posed when
# sensors are collinear (two meters on one line) without visibly shrinking real relations.
RIDGE = 1e-3
# A sensor is watched when the others explain at least this share of its level's variance over
# the training windows (measured on the held-out ones): a sensor the others do not explain (a
# quiet channel on its own) has no relation to break, and its level is the drift check's.
MIN_EXPLAINED = 0.5
# The residual scale: this quantile of |residual| on the held-out windows ...
RESIDUAL_QUANTILE = 0.99
# ... and never below this share of the sensor's level standard deviation, so a sensor the
# others determine almost exactly (a computed power) is not held to rounding noise.
MIN_RESIDUAL_SCALE = 0.05
# The alarm limit: the model's default threshold rule, on the largest scaled residual of each
# training window.
LIMIT_QUANTILE = 0.999
LIMIT_MARGIN = 4.0 / 3.0
# Windows per chunk when accumulating the normal equations (bounded memory on long runs).
_CHUNK = 8192


def design(z: np.ndarray, degree: int) -> np.ndarray:
    """Regression terms of standardised levels `[B, S]`: a constant, the levels, and for degree 2
    every square and product `z_i * z_j` (i <= j), in that order."""
    z = np.asarray(z, dtype=np.float64)
    parts = [np.ones((len(z), 1)), z]
    if degree == 2:
        i, j = np.triu_indices(z.shape[1])
        parts.append(z[:, i] * z[:, j])
    return np.concatenate(parts, axis=1)


def term_count(sensors: int, degree: int) -> int:
    return 1 + sensors + (sensors * (sensors + 1) // 2 if degree == 2 else 0)


def _terms_of(sensors: int, degree: int) -> list[set[int]]:
    """For each design column, the sensors (positions in `sensors`) it involves."""
    terms: list[set[int]] = [set()] + [{s} for s in range(sensors)]
    if degree == 2:
        terms += [{int(i), int(j)} for i, j in zip(*np.triu_indices(sensors))]
    return terms


@dataclass
class RelationSpec:
    """The fitted relations (stored in bundle.json under `health.relation`)."""

    degree: int  # 1 or 2
    sensors: list[int]  # the sensors taking part, as indices into the bundle's features
    coef: np.ndarray  # float64 [terms, S]: column s predicts sensors[s]; zero on every term involving it
    limit: np.ndarray  # float64 [S]: |residual| (in level standard deviations) above it fails; 0 = not watched
    low: np.ndarray  # float64 [S]: the lowest level training showed; a predictor is clipped into [low, high]
    high: np.ndarray  # float64 [S]: the highest

    def residuals(self, z: np.ndarray) -> np.ndarray:
        """Per window and taking-part sensor, the level minus what the others predict `[B, S]`,
        from standardised levels of every feature `[B, F]`. As a predictor a level is clipped
        into its training range: a polynomial extrapolates wildly, and one sensor far out (a
        drift, a fault code) would otherwise move every other sensor's prediction and its flag
        would name the wrong sensor. As a target it is not: being out is its own residual."""
        return self._residuals(np.asarray(z, dtype=np.float64)[:, self.sensors])

    def _residuals(self, part: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            inputs = np.clip(part, self.low, self.high)
        return part - design(inputs, self.degree) @ self.coef

    def excess(self, z: np.ndarray) -> np.ndarray:
        """|residual| / limit per window and taking-part sensor `[B, S]`; above 1 fails, 0 for
        a sensor not watched. A non-finite level (an unscorable reading) gives NaN, which fails
        no comparison."""
        return self._excess(np.asarray(z, dtype=np.float64)[:, self.sensors])

    def _excess(self, part: np.ndarray) -> np.ndarray:
        watched = self.limit > 0
        excess = np.zeros(part.shape)
        excess[:, watched] = np.abs(self._residuals(part)[:, watched]) / self.limit[watched]
        return excess

    def culprits(self, z: np.ndarray) -> np.ndarray:
        """For failing windows `[B, F]`, the position in `sensors` of the watched sensor to
        blame: the one whose level, replaced by what the others predict for it, leaves the
        smallest excess on every other sensor (fault isolation by reconstruction, as PCA
        monitoring's reconstruction-based contribution). The sensor furthest from its own
        prediction is often a victim: a level that moved within its range moves every
        prediction it takes part in, so a pump's current rising with bearing friction makes
        its discharge pressure look wrong. Of equally good repairs, the sensor furthest from
        its own prediction is blamed."""
        part = np.asarray(z, dtype=np.float64)[:, self.sensors]
        predicted = part - self._residuals(part)
        own = self._excess(part)
        remaining = np.full(own.shape, np.inf)
        with np.errstate(invalid="ignore"):
            for s in np.flatnonzero(self.limit > 0):
                repaired = part.copy()
                repaired[:, s] = predicted[:, s]
                remaining[:, s] = np.nan_to_num(self._excess(repaired), nan=np.inf).max(axis=1)
            best = remaining <= remaining.min(axis=1, keepdims=True) * (1 + 1e-9)
            return np.argmax(np.where(best, np.nan_to_num(own, nan=0.0), -1.0), axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"degree": self.degree, "sensors": list(self.sensors),
                "coef": [[float(v) for v in row] for row in self.coef],
                **{name: [float(v) for v in getattr(self, name)] for name in ("limit", "low", "high")}}

    @classmethod
    def from_dict(cls, data: Any, n_features: int) -> RelationSpec:
        """Validate on load (bundle.json is edited by hand); errors name the key."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        known = ("degree", "sensors", "coef", "limit", "low", "high")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")
        degree = data.get("degree")
        if degree not in (1, 2) or isinstance(degree, bool):
            raise ValueError("'degree' must be 1 or 2")
        sensors = data.get("sensors")
        if (not isinstance(sensors, list) or len(sensors) < 2 or len(set(sensors)) != len(sensors)
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < n_features for s in sensors)):
            raise ValueError(f"'sensors' must be at least 2 distinct feature indices in [0, {n_features})")
        terms = term_count(len(sensors), degree)
        coef = data.get("coef")
        if (not isinstance(coef, list) or len(coef) != terms
                or not all(isinstance(row, list) and len(row) == len(sensors) and _finite_numbers(row) for row in coef)):
            raise ValueError(f"'coef' must be {terms} rows of {len(sensors)} finite numbers")
        arrays = {}
        for name in ("limit", "low", "high"):
            value = data.get(name)
            if not isinstance(value, list) or len(value) != len(sensors) or not _finite_numbers(value):
                raise ValueError(f"{name!r} must be {len(sensors)} finite numbers")
            arrays[name] = np.asarray(value, dtype=np.float64)
        if (arrays["limit"] < 0).any():
            raise ValueError("'limit' must be >= 0")
        if (arrays["low"] > arrays["high"]).any():
            raise ValueError("'low' must not exceed 'high'")
        return cls(degree, sensors, np.asarray(coef, dtype=np.float64), **arrays)


def _finite_numbers(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values)


def degree_for(samples: int, sensors: int) -> int | None:
    """The degree `samples` independent windows support for `sensors` sensors: 2, 1, or None
    (check off)."""
    if sensors < 2:
        return None
    for degree in (2, 1):
        terms = term_count(sensors, degree)
        if terms <= MAX_TERMS and samples >= SAMPLES_PER_TERM * terms:
            return degree
    return None


def fit_relations(fitted: Sequence[np.ndarray], held_out: Sequence[np.ndarray], sensors: Sequence[int],
                  samples: int) -> RelationSpec | None:
    """Fit the relations on standardised window levels `[n, F]` of the runs the model was
    fitted on (`fitted`) and of the held-out validation tails (`held_out`); `sensors` are the
    features that may take part, `samples` the independent windows behind `fitted`. None when
    they support no fit (see `degree_for`)."""
    sensors = list(sensors)
    degree = degree_for(samples, len(sensors))
    fitted = [np.asarray(z, dtype=np.float64) for z in fitted if len(z)]
    held_out = [np.asarray(z, dtype=np.float64) for z in held_out if len(z)]
    if degree is None or not fitted:
        return None
    every = np.concatenate(fitted + held_out)[:, sensors]
    low, high = np.nanmin(every, axis=0), np.nanmax(every, axis=0)
    terms = term_count(len(sensors), degree)
    gram = np.zeros((terms, terms))
    count = 0
    for chunk in _chunks(fitted):
        x = design(chunk[:, sensors], degree)
        gram += x.T @ x
        count += len(x)
    coef = np.zeros((terms, len(sensors)))
    involves = _terms_of(len(sensors), degree)
    for s in range(len(sensors)):
        use = [t for t, members in enumerate(involves) if s not in members]
        block = gram[np.ix_(use, use)] + RIDGE * count * np.diag([0.0] + [1.0] * (len(use) - 1))
        # The target z_s is design column 1 + s, so X'y is a column of the same Gram matrix.
        coef[use, s] = np.linalg.lstsq(block, gram[use, 1 + s], rcond=None)[0]
    spec = RelationSpec(degree, sensors, coef, np.ones(len(sensors)), low, high)
    with np.errstate(invalid="ignore", divide="ignore"):
        fitted_residuals = [spec.residuals(chunk) for chunk in _chunks(fitted)]
        held_out_residuals = [spec.residuals(chunk) for chunk in _chunks(held_out)]
        residuals = np.concatenate(held_out_residuals or fitted_residuals)
        explained = 1.0 - np.nanvar(residuals, axis=0) / np.nanvar(every, axis=0)
        watched = np.nan_to_num(explained) >= MIN_EXPLAINED
        if not watched.any():
            return None
        scale = np.nanquantile(np.abs(residuals), RESIDUAL_QUANTILE, axis=0)
        scale = np.maximum(np.nan_to_num(scale, nan=MIN_RESIDUAL_SCALE), MIN_RESIDUAL_SCALE)
        every_residual = np.concatenate(fitted_residuals + held_out_residuals)
        largest = np.nanmax(np.abs(every_residual[:, watched]) / scale[watched], axis=1)
    # Never below the scale itself: a relation exact in training is not held to rounding noise.
    limit = LIMIT_MARGIN * max(float(np.nanquantile(largest, LIMIT_QUANTILE)), 1.0) * scale
    spec.limit = np.where(watched, limit, 0.0)
    return spec


def _chunks(runs: Sequence[np.ndarray]):
    """The runs' windows at most _CHUNK at a time."""
    for z in runs:
        for first in range(0, len(z), _CHUNK):
            yield z[first:first + _CHUNK]
