"""Generated pump-like sensor data with labelled faults, for the demo, tests and docs.

Four correlated sensors driven by one hidden load cycle (vibration, current, pressure, flow)
plus a slow temperature, so a model must learn *relations* between sensors: the faults below
include ones no single-sensor limit would catch (a broken correlation, a stuck sensor).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FEATURES = ["vibration", "current", "pressure", "flow", "temperature"]
FAULTS = ("spike", "level_shift", "stuck", "decorrelation")


@dataclass
class Synthetic:
    timestamps: np.ndarray  # float64 epoch seconds
    values: np.ndarray  # float32 [n, len(FEATURES)]
    labels: np.ndarray  # int8 [n]

    def write_csv(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["timestamp", *FEATURES, "anomaly"])
            for ts, row, label in zip(self.timestamps, self.values, self.labels):
                writer.writerow([f"{ts:.3f}", *(f"{v:.5f}" for v in row), int(label)])
        return path


def write_fleet_csv(path: Path, devices: dict[str, Synthetic]) -> Path:
    """Several devices' data in one long-format file, as a store exports a fleet: a `device`
    column first, the devices' rows interleaved in time order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted((float(ts), i, device, j) for i, (device, data) in enumerate(devices.items())
                  for j, ts in enumerate(data.timestamps))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["device", "timestamp", *FEATURES, "anomaly"])
        for ts, _, device, j in rows:
            data = devices[device]
            writer.writerow([device, f"{ts:.3f}", *(f"{v:.5f}" for v in data.values[j]), int(data.labels[j])])
    return path


def normal(rows: int, seed: int = 0, start: float = 1_700_000_000.0, period: float = 1.0) -> Synthetic:
    rng = np.random.default_rng(seed)
    t = np.arange(rows, dtype=np.float64)
    phase = rng.uniform(0, 2 * np.pi)
    load = 0.6 + 0.3 * np.sin(2 * np.pi * t / 120 + phase) + 0.1 * np.sin(2 * np.pi * t / 37)
    noise = rng.normal(0, 1, size=(rows, len(FEATURES)))
    values = np.stack([
        0.02 + 0.01 * load + 0.0008 * noise[:, 0],
        1.0 + 0.8 * load + 0.02 * noise[:, 1],
        2.0 + 1.5 * load + 0.03 * noise[:, 2],
        30.0 - 8.0 * load + 0.2 * noise[:, 3],
        60.0 + 2.0 * np.sin(2 * np.pi * t / 900 + phase) + 0.05 * noise[:, 4],
    ], axis=1)
    return Synthetic(start + t * period, values.astype(np.float32), np.zeros(rows, dtype=np.int8))


def inject(data: Synthetic, fault: str, start: int, length: int, seed: int = 0) -> Synthetic:
    """Return a copy with one labelled fault in rows [start, start + length)."""
    if fault not in FAULTS:
        raise ValueError(f"fault {fault!r} unknown (use one of: {', '.join(FAULTS)})")
    if start < 0 or length < 1 or start + length > len(data.timestamps):
        raise ValueError(f"fault rows [{start}, {start + length}) do not fit {len(data.timestamps)} rows")
    rng = np.random.default_rng(seed)
    values, labels = data.values.copy(), data.labels.copy()
    rows = slice(start, start + length)
    std = data.values.std(axis=0)
    if fault == "spike":
        hits = start + rng.choice(length, size=max(3, length // 8), replace=False)
        values[hits, 0] += 8 * std[0]
        values[hits, 2] -= 6 * std[2]
    elif fault == "level_shift":
        values[rows, 1] += 1.5 * std[1]
    elif fault == "stuck":
        values[rows, 3] = values[start, 3]
    else:  # decorrelation: pressure stops following the load cycle
        values[rows, 2] = values[rows, 2].mean() + rng.normal(0, std[2], size=length)
    labels[rows] = 1
    return Synthetic(data.timestamps, values, labels)


def with_faults(rows: int, seed: int = 0, faults: tuple[str, ...] = FAULTS, length: int = 120,
                start: float = 1_700_000_000.0) -> Synthetic:
    """Normal data with each fault once, spread evenly with normal stretches between them."""
    data = normal(rows, seed, start)
    gap = rows // (len(faults) + 1)
    length = min(length, gap // 2)
    for i, fault in enumerate(faults):
        data = inject(data, fault, gap * (i + 1) - length // 2, length, seed + i)
    return data
