"""How much the training data show of each sensor, and how far its vote is trusted for it.

Per-sensor weights (`ScoreSpec.feature_scale`) divide each sensor's window error by its typical
error on the held-out windows, so that every sensor votes on the same scale. That typical error
is known only as well as the training data sample the sensor's own variation. A temperature that
wanders over tens of minutes shows a handful of independent stretches in a seven-minute run: its
errors there are a few looks at one slow excursion, their typical value is a guess, and dividing
by a guess that came out small makes that sensor the loudest voice the moment it settles a little
elsewhere. A vibration sensor sampled as often shows dozens to hundreds.

The count of independent stretches is each run's rows divided by the sensor's integrated
autocorrelation time there (Geyer's initial positive sequence estimator), summed over the runs.
A typical error is a scale estimated from that many samples, so its divisor is raised to the
upper `EVIDENCE_CONFIDENCE` bound of a variance seen in n independent samples,
(n - 1) / chi2_{1 - confidence}(n - 1) times the estimate (its square root for the absolute
error, which scales as a standard deviation). With a few hundred stretches the factor is close
to 1 for every sensor and the weights stay as they are; with three it is about 20.

The factor only scales the divisors, which the bundle stores like any other (serving reads
nothing new); the counts and factors are kept in bundle.json under `training.sensor_evidence`
for `inspect`, and `train` names the sensors seen in fewer than `THIN_EVIDENCE` stretches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

SENSOR_EVIDENCE_KEY = "sensor_evidence"  # in bundle.json's training section
# One-sided confidence of the bound on each sensor's typical error (the textbook 95 %).
EVIDENCE_CONFIDENCE = 0.95
# Below this many independent stretches `train` says the sensor's normal range is barely known
# (the textbook minimum of samples for a variance, the one the relation check counts per term).
THIN_EVIDENCE = 10.0
# The bound needs at least one degree of freedom: fewer than two stretches count as two.
MIN_DEGREES = 1.0


def autocorrelation_time(values: np.ndarray) -> float:
    """Integrated autocorrelation time of one series, in samples: 1 for white noise, about
    (1 + rho) / (1 - rho) for an AR(1) with coefficient rho, at most the series' length.
    Geyer's initial positive sequence: sums of adjacent autocorrelation pairs up to the first
    one that is not positive. A constant series counts as white (its every row is the same
    fact, and no rows are held back for it)."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    x = x - x.mean()
    power = float(x @ x)
    if n < 3 or power <= 0.0:
        return 1.0
    spectrum = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), 2 * n)[:n] / power
    pairs = acf[0:n - 1:2] + acf[1:n:2]
    stop = np.flatnonzero(pairs <= 0.0)
    kept = pairs[:stop[0]] if len(stop) else pairs
    return float(min(max(2.0 * kept.sum() - 1.0, 1.0), n))


def independent_stretches(runs: Sequence[np.ndarray]) -> np.ndarray:
    """Per feature, the runs' rows divided by that feature's autocorrelation time in each run,
    summed: how many independent looks at the sensor the runs hold."""
    features = runs[0].shape[1]
    return np.array([sum(len(r) / autocorrelation_time(r[:, j]) for r in runs) for j in range(features)])


def divisor_factor(stretches: np.ndarray, error: str) -> np.ndarray:
    """How much a typical error estimated from `stretches` independent samples is raised: the
    upper confidence bound of a variance over the estimate, its root for the absolute error."""
    from scipy.stats import chi2  # lazy: slow to import, and only training needs it

    degrees = np.maximum(np.asarray(stretches, dtype=np.float64) - 1.0, MIN_DEGREES)
    factor = degrees / chi2.ppf(1.0 - EVIDENCE_CONFIDENCE, degrees)
    return np.sqrt(factor) if error == "mae" else factor


@dataclass(frozen=True)
class SensorEvidence:
    """Each feature's independent stretches in the training runs and its divisor's factor."""

    features: tuple[str, ...]
    stretches: tuple[float, ...]
    factor: tuple[float, ...]

    @classmethod
    def of_runs(cls, features: Sequence[str], runs: Sequence[np.ndarray], error: str) -> SensorEvidence:
        stretches = independent_stretches(runs)
        return cls(tuple(features), tuple(float(s) for s in stretches),
                   tuple(float(f) for f in divisor_factor(stretches, error)))

    def widen(self, typical: Sequence[float]) -> tuple[float, ...]:
        """The per-sensor divisors raised by each sensor's factor."""
        return tuple(float(t * f) for t, f in zip(typical, self.factor))

    def thin(self) -> list[str]:
        """Features seen in fewer than `THIN_EVIDENCE` independent stretches."""
        return [f for f, s in zip(self.features, self.stretches) if s < THIN_EVIDENCE]

    def levels_unknown(self) -> tuple[str, ...]:
        """The thin features, whose level the training runs do not establish (TrainConfig.demean
        "thin" centres them on their window mean); none where that is every feature, as centring
        every sensor would leave the model no level at all."""
        thin = self.thin()
        return tuple(thin) if len(thin) < len(self.features) else ()

    def describe(self, features: Sequence[str] | None = None) -> str:
        """'Temperature 2.9 stretches (vote / 21.6), ...' for `features` (default: every one)."""
        chosen = set(self.features if features is None else features)
        return ", ".join(f"{f} {s:.1f} stretches (vote / {k:.3g})"
                         for f, s, k in zip(self.features, self.stretches, self.factor) if f in chosen)

    def to_dict(self) -> dict:
        return {f: {"stretches": round(s, 2), "factor": round(k, 4)}
                for f, s, k in zip(self.features, self.stretches, self.factor)}

    @classmethod
    def from_dict(cls, data: dict) -> SensorEvidence:
        return cls(tuple(data), tuple(float(v["stretches"]) for v in data.values()),
                   tuple(float(v["factor"]) for v in data.values()))
