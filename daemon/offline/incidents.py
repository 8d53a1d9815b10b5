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
from daemon.offline.frames import Frame, in_intervals

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


def label_incidents(runs: dict[str, list[Frame]], incidents: Incidents, path: Path) -> dict[str, list[Frame]]:
    """Runs (device -> its frames) with the incidents' rows labelled anomalous (as well as any
    row their own labels mark), so training and calibration leave them out as they leave out
    labelled rows. A frame's device is the one its rows name (a device column, the store's
    device tag), else its key (`calibrate --data DEVICE=PATH`)."""
    out: dict[str, list[Frame]] = {}
    left_out = 0
    for device, frames in runs.items():
        out[device] = []
        for frame in frames:
            inside = in_intervals(frame.timestamps, incidents.get(frame.device or device, []), end_included=True)
            left_out += int(inside.sum())
            if inside.any():
                labels = inside if frame.labels is None else (frame.labels.astype(bool) | inside)
                frame = dataclasses.replace(frame, labels=labels.astype(np.int8))
            out[device].append(frame)
    seen = {f.device or device for device, frames in runs.items() for f in frames}
    unknown = sorted(set(incidents) - seen)
    if unknown:
        log.warning("%s: incidents of %s, which the data does not hold", path, ", ".join(unknown))
    log.info("%s: %d rows in confirmed incidents left out; anomalyd's other alert periods kept", path, left_out)
    return out
