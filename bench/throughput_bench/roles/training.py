"""The bench's bundles: tiny, one epoch on generated data (weights quality is irrelevant to
speed), trained in a child so that the parent never imports torch."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import daemon_api
from ..common import FEATURES, WINDOW, reply

ROWS = 2000


def generated_series(rows: int = ROWS, seed: int = 0, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps and values: a phase-shifted sine per feature plus noise, from row `start` on
    (the bundles are trained on the first ROWS rows with seed 0)."""
    rng = np.random.default_rng(seed)
    t = np.arange(start, start + rows, dtype=np.float64)
    values = np.sin(t[:, None] / 20 + np.arange(len(FEATURES))) + 0.1 * rng.normal(size=(rows, len(FEATURES)))
    return 1.7e9 + t, values.astype(np.float32)


def role_train(spec: dict) -> None:
    timestamps, values = generated_series()
    out = {}
    for arch in spec["archs"]:
        directory = Path(spec["dir"]) / arch
        started = time.time()
        daemon_api.train_bundle(timestamps, values, FEATURES, arch, WINDOW, directory)
        out[arch] = {"path": str(directory), "seconds": round(time.time() - started, 1)}
    reply(out)
