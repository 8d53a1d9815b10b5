"""How many independent looks a series gives at what it measures, and how far a scale estimated
from that many looks may be off: the statistics behind the per-sensor vote divisors
(daemon.offline.sensor_evidence) and the sensor-health `shift` limits (daemon.core.sensor_health).

The count of independent stretches is each run's rows divided by the series' integrated
autocorrelation time there (Geyer's initial positive sequence estimator), summed over the runs.
A scale estimated from n independent samples is raised to its upper `EVIDENCE_CONFIDENCE`
bound, (n - 1) / chi2_{1 - confidence}(n - 1) times the estimate for a variance, its square
root for a standard deviation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# One-sided confidence of the bound on a scale estimated from few independent samples (the
# textbook 95 %).
EVIDENCE_CONFIDENCE = 0.95
# Below this many independent stretches a sensor's normal range is barely known: `train` says
# so and the shift check leaves the sensor alone (the textbook minimum of samples for a
# variance, the one the relation check counts per term).
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
