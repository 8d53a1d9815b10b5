"""Known incidents: the periods an operator confirmed as real faults, per device.

A file of rows `device,start,end` (epoch seconds, end inclusive), the record an alarm review
leaves behind. `compare --labels` counts the alert episodes that overlap none as false alarms;
`calibrate --incidents` leaves the incidents' rows out of the windows it calibrates on and keeps
the rest, anomalyd's unconfirmed alerts included: those are false alarms, exactly the scores a
threshold that alarms too often must learn to let pass.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path

import numpy as np

from daemon.core.errors import UserError
from daemon.offline.frames import Frame

log = logging.getLogger(__name__)

Incidents = dict[str, list[tuple[float, float]]]  # device -> (start, end) intervals, epoch seconds


def read_incidents(path: Path) -> Incidents:
    """device -> its incidents' (start, end) intervals; a bad row names the file and line."""
    intervals: Incidents = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for number, row in enumerate(csv.DictReader(f), start=2):
                try:
                    start, end = float(row["start"]), float(row["end"])
                    device = row["device"]
                    if device is None or not start <= end:
                        raise ValueError
                except (KeyError, TypeError, ValueError):
                    raise UserError(f"{path}:{number}: expected columns device,start,end (epoch seconds, start "
                                    f"<= end), got {row}") from None
                intervals.setdefault(device, []).append((start, end))
    except OSError as exc:
        raise UserError(f"cannot read incidents {path}: {exc.strerror}") from None
    return intervals


def in_incidents(timestamps: np.ndarray, intervals: list[tuple[float, float]]) -> np.ndarray:
    """Per timestamp, whether it falls in one of the intervals (both ends included)."""
    inside = np.zeros(len(timestamps), dtype=bool)
    for start, end in intervals:
        inside |= (timestamps >= start) & (timestamps <= end)
    return inside


def mark_incidents(frame: Frame, intervals: list[tuple[float, float]]) -> Frame:
    """The frame with its rows inside the intervals labelled anomalous (as well as any row its
    own labels mark), so training's and calibration's normal runs leave them out."""
    inside = in_incidents(frame.timestamps, intervals)
    if not inside.any():
        return frame
    labels = inside if frame.labels is None else (frame.labels.astype(bool) | inside)
    return dataclasses.replace(frame, labels=labels.astype(np.int8))


def label_incidents(runs: dict[str, list[Frame]], incidents: Incidents, path: Path) -> dict[str, list[Frame]]:
    """Runs (device -> its frames) with the incidents' rows labelled, so training and calibration
    leave them out. A frame's device is the one its rows name (a device column, the store's
    device tag), else its key (`calibrate --data DEVICE=PATH`)."""
    out = {device: [mark_incidents(f, incidents.get(f.device or device, [])) for f in frames]
           for device, frames in runs.items()}
    seen = {f.device or device for device, frames in runs.items() for f in frames}
    unknown = sorted(set(incidents) - seen)
    if unknown:
        log.warning("%s: incidents of %s, which the data does not hold", path, ", ".join(unknown))
    left_out = sum(int(in_incidents(f.timestamps, incidents.get(f.device or device, [])).sum())
                   for device, frames in runs.items() for f in frames)
    log.info("%s: %d rows in confirmed incidents left out; anomalyd's other alert periods kept", path, left_out)
    return out
