"""The score reference a bundle carries: the 99th percentile of the windows its threshold was
calibrated on (bundle.json `training.score_reference`, or `calibration.score_reference` after
`anomalyd calibrate`). While the data looks like that sample, about 1 % of windows score above
it; the live service (daemon.live.staleness) watches that share to see a model go stale."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from daemon.core.bundle import Bundle

log = logging.getLogger(__name__)

REFERENCE_QUANTILE = 0.99  # of the calibration windows' scores; ~1 % of normal windows score above it
REFERENCE_KEY = "score_reference"


@dataclass(frozen=True)
class ScoreReference:
    """The calibration sample's score quantile, pooled and, after `calibrate --per-device`,
    per device (a device with its own threshold is compared with its own baseline)."""

    quantile: float
    value: float
    devices: Mapping[str, float] = field(default_factory=dict)

    @property
    def expected_share(self) -> float:
        return 1.0 - self.quantile

    def to_dict(self) -> dict:
        return {"quantile": self.quantile, "value": self.value,
                **({"devices": dict(sorted(self.devices.items()))} if self.devices else {})}

    @classmethod
    def of_scores(cls, scores: np.ndarray, device_scores: Mapping[str, np.ndarray] | None = None) -> ScoreReference:
        """The reference of a calibration sample (finite scores only)."""
        return cls(REFERENCE_QUANTILE, _quantile(scores),
                   {device: _quantile(s) for device, s in (device_scores or {}).items() if np.isfinite(s).any()})

    @classmethod
    def of_bundle(cls, bundle: Bundle) -> ScoreReference | None:
        """The bundle's reference: its latest calibration's, else its training's; None when it
        has none or a malformed one (logged: staleness is then off for that bundle)."""
        source = "calibration" if REFERENCE_KEY in bundle.calibration else "training"
        raw = getattr(bundle, source).get(REFERENCE_KEY)
        if raw is None:
            return None
        try:
            reference = cls(float(raw["quantile"]), float(raw["value"]),
                            {str(d): float(v) for d, v in raw.get("devices", {}).items()})
            if not (0.0 < reference.quantile < 1.0 and math.isfinite(reference.value)):
                raise ValueError("quantile must be in (0, 1) and value finite")
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            log.warning("bundle %s: field '%s.%s' is malformed (%s): staleness not tracked for this model",
                        bundle.path or bundle.name, source, REFERENCE_KEY, exc)
            return None
        return reference


def _quantile(scores: np.ndarray) -> float:
    finite = np.asarray(scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        raise ValueError("no finite score to take a reference quantile of")
    return float(np.quantile(finite, REFERENCE_QUANTILE))
