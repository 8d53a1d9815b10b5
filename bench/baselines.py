"""Textbook PCA process monitoring (Hotelling T² and SPE/Q), the baseline our model must beat.

Fitted on the same normal training rows as the autoencoder: z-scored with the training mean
and standard deviation, principal components kept up to `variance` (90 %) of the training
variance. The control limits are the parametric ones of the process-monitoring literature at
significance `alpha` (1 %), set on training data only:
- T²: k (n² − 1) / (n (n − k)) · F(1 − α; k, n − k)  (Hotelling, for a new observation);
- SPE: g · χ²(1 − α; h) with g = var/(2·mean), h = 2·mean²/var of the training SPE
  (Box's approximation, as in Nomikos & MacGregor).
A row alarms when either statistic is over its limit; there is no window and no hysteresis.
`combined` returns max(T²/T²-limit, SPE/SPE-limit), so one number per row can also be
thresholded elsewhere than at 1 (the suite moves it to match another detector's FAR).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

VARIANCE = 0.90
ALPHA = 0.01


@dataclass
class PcaMonitor:
    mean: np.ndarray  # [F]
    scale: np.ndarray  # [F]
    loadings: np.ndarray  # [F, k]
    eigenvalues: np.ndarray  # [k]
    t2_limit: float
    spe_limit: float

    @property
    def components(self) -> int:
        return int(self.loadings.shape[1])

    @classmethod
    def fit(cls, rows: np.ndarray, variance: float = VARIANCE, alpha: float = ALPHA) -> PcaMonitor:
        rows = np.asarray(rows, dtype=np.float64)
        n, features = rows.shape
        if n < features + 2:
            raise ValueError(f"PCA needs more training rows than features + 1 (got {n} rows, {features} features)")
        mean = rows.mean(axis=0)
        scale = rows.std(axis=0, ddof=1)
        # A constant training column carries no information; scale 1 keeps it out of the
        # components and lets any later change show up in SPE.
        scale = np.where(scale > 1e-12, scale, 1.0)
        z = (rows - mean) / scale
        _, singular, vt = np.linalg.svd(z, full_matrices=False)
        eigenvalues = singular ** 2 / (n - 1)
        share = np.cumsum(eigenvalues) / eigenvalues.sum()
        k = int(np.searchsorted(share, variance) + 1)
        k = max(1, min(k, features - 1))  # leave a residual space for SPE
        monitor = cls(mean, scale, vt[:k].T, eigenvalues[:k], np.inf, np.inf)
        t2, spe = monitor.statistics(rows)
        monitor.t2_limit = float(k * (n * n - 1) / (n * (n - k)) * stats.f.ppf(1 - alpha, k, n - k))
        m, v = float(spe.mean()), float(spe.var(ddof=1))
        monitor.spe_limit = float(v / (2 * m) * stats.chi2.ppf(1 - alpha, 2 * m * m / v)) if m > 0 and v > 0 else 0.0
        return monitor

    def statistics(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T², SPE) per row."""
        z = (np.asarray(rows, dtype=np.float64) - self.mean) / self.scale
        scores = z @ self.loadings
        t2 = np.sum(scores ** 2 / self.eigenvalues, axis=1)
        residual = z - scores @ self.loadings.T
        return t2, np.sum(residual ** 2, axis=1)

    def combined(self, rows: np.ndarray) -> np.ndarray:
        """max(T²/limit, SPE/limit) per row: over 1 means an alarm at the training limits."""
        t2, spe = self.statistics(rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            spe_ratio = np.where(spe > 0, spe / self.spe_limit, 0.0) if self.spe_limit > 0 else np.where(
                spe > 0, np.inf, 0.0)
        return np.maximum(t2 / self.t2_limit, spe_ratio)
