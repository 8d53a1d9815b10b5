"""Per-feature scaling, fit on training rows only and stored in the bundle.

Stored as offset/scale so applying it is one fused expression, identical offline and live.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCALER_KINDS = ("zscore", "minmax")


@dataclass(frozen=True)
class Scaler:
    kind: str
    offset: np.ndarray  # float32 [features]
    scale: np.ndarray  # float32 [features], never zero

    @classmethod
    def fit(cls, kind: str, rows: np.ndarray) -> Scaler:
        """Fit on `[n, features]` training rows. A constant feature gets scale 1 so it maps
        to 0 instead of dividing by zero (it then carries no signal, which is the truth)."""
        if kind not in SCALER_KINDS:
            raise ValueError(f"scaler {kind!r} unknown (use one of: {', '.join(SCALER_KINDS)})")
        rows = np.asarray(rows, dtype=np.float64)
        if kind == "zscore":
            offset, scale = rows.mean(axis=0), rows.std(axis=0)
        else:
            offset, scale = rows.min(axis=0), rows.max(axis=0) - rows.min(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        return cls(kind, offset.astype(np.float32), scale.astype(np.float32))

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Scale rows `[..., features]`. Windows `[B, W, features]` are scaled as rows of W x
        features values against the parameters tiled W times: the same arithmetic, bit for bit,
        but numpy's inner loop then runs over W x features values instead of a handful of
        features, which is what makes it fast for the daemon's batches."""
        if values.ndim == 3:
            batch, window, features = values.shape
            out = values.reshape(batch, window * features) - np.tile(self.offset, window)
            np.divide(out, np.tile(self.scale, window), out=out)
            return out.reshape(values.shape).astype(np.float32, copy=False)
        return ((values - self.offset) / self.scale).astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> Scaler:
        return cls(data["kind"], np.asarray(data["offset"], dtype=np.float32),
                   np.asarray(data["scale"], dtype=np.float32))
