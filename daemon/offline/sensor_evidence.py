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

from daemon.core.evidence import THIN_EVIDENCE, divisor_factor, independent_stretches

SENSOR_EVIDENCE_KEY = "sensor_evidence"  # in bundle.json's training section


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
