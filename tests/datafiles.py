"""Small generated data sets and bundles for tests (no test reads the SKAB copy)."""

from __future__ import annotations

from pathlib import Path

from daemon.offline import synthetic
from daemon.cli import main

FAST_TRAIN = ["--arch", "mlp", "--window", "20", "--epochs", "8", "--seed", "0", "--no-onnx"]


def normal_csv(directory: Path, rows: int = 2000, seed: int = 1, name: str = "normal.csv") -> Path:
    return synthetic.normal(rows, seed).write_csv(directory / name)


def faults_csv(directory: Path, rows: int = 2500, seed: int = 2, name: str = "faults.csv") -> Path:
    return synthetic.with_faults(rows, seed).write_csv(directory / name)


def train_bundle(directory: Path, data: Path, *extra: str) -> Path:
    out = directory / "model"
    assert main(["train", "--data", str(data), "--out", str(out), *FAST_TRAIN, *extra]) == 0
    return out
