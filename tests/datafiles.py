"""Small generated data sets and bundles for tests (no test reads the SKAB copy)."""

from __future__ import annotations

import csv
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


def fleet_csv(path: Path, files: dict[str, Path]) -> Path:
    """One long-format file of several devices' CSV files, as a store exports a fleet: a
    `device` column first, every device's rows interleaved in time order."""
    rows = []
    for device, source in files.items():
        with open(source, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            rows += [(float(row[0]), i, device, row) for i, row in enumerate(reader)]
    rows.sort(key=lambda r: r[:2])
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["device", *header])
        writer.writerows([device, *row] for _, _, device, row in rows)
    return path
