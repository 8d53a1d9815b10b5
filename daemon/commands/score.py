"""`anomalyd score`: score a CSV with a bundle, one output row per scored window."""

from __future__ import annotations

import argparse
import csv
from datetime import datetime, timezone
from pathlib import Path

from daemon.commands.common import add_data_options, formatter, read_frames
from daemon.core.errors import UserError
from daemon.offline.detection import detect
from daemon.offline.frames import Frame
from daemon.core.scoring import Scorer
from daemon.core.thresholds import threshold_in_force

EPILOG = """\
output columns: device (when the data names devices: a fleet's file is scored one device's
run at a time, each at its own threshold), timestamp (RFC 3339, UTC, time of the window's last row), score, threshold,
anomaly (0/1: score > threshold, or a reason), reason (empty; or why the window could not be
scored: out_of_range, non_finite_score, its score then the largest float32; or a sensor-health
flag: stuck:<feature>, noisy:<feature>, spike:<feature>, out_of_envelope:<feature>,
drift:<feature>, relation:<feature>),
err_<feature> (that sensor's reconstruction error).

examples:
  anomalyd score --model models/demo --data today.csv --out scores.csv
  anomalyd score --model models/pump --data fleet.csv --device pump-3 --out pump-3.csv
"""


def add_parser(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser("score", help=summary, formatter_class=formatter,
                       description="Score every window of a CSV file exactly as the live daemon would.",
                       epilog=EPILOG)
    p.add_argument("--model", required=True, type=Path, metavar="DIR", help="model bundle directory")
    p.add_argument("--data", required=True, metavar="CSV", help="CSV with the model's feature columns")
    p.add_argument("--out", required=True, type=Path, metavar="CSV", help="where to write the scores")
    p.add_argument("--threshold", type=float, help="override the bundle's threshold")
    p.add_argument("--device", metavar="D", help="score only this device's rows of a file with a device column, or "
                                               "name the device a file without one comes from; a device's own "
                                               "threshold applies when the bundle has one (calibrate --per-device)")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="(default: %(default)s)")
    add_data_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    scorer = Scorer.load(args.model, args.runtime)
    runs = _device_runs(read_frames([args.data], args, scorer.features), args.device)
    named = any(frame.device for frame in runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    windows = flagged = 0
    with open(args.out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["device"] * named + ["timestamp", "score", "threshold", "anomaly", "reason"]
                        + [f"err_{f}" for f in scorer.features])
        for frame in runs:
            threshold = threshold_in_force(scorer.threshold, args.threshold, frame.device or args.device,
                                           scorer.bundle.threshold.devices)
            result = detect(scorer, frame, threshold)
            s = result.scores
            reasons = s.reasons or [""] * len(s.scores)
            for i, ts in enumerate(s.timestamps):
                when = datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")
                writer.writerow([frame.device] * named
                                + [when, f"{s.scores[i]:.6g}", f"{threshold:.6g}", int(result.flags[i]), reasons[i]]
                                + [f"{e:.6g}" for e in s.feature_errors[i]])
            windows += len(s.scores)
            flagged += int(result.flags.sum())
    devices = f" of {len(runs)} devices" if named and len(runs) > 1 else ""
    print(f"wrote {args.out}: {windows} scored windows{devices}, {flagged} flagged anomalous")
    return 0


def _device_runs(runs: list[Frame], device: str | None) -> list[Frame]:
    """The runs to score: with --device and a file naming devices, that device's run only."""
    named = [frame.device for frame in runs if frame.device]
    if device is None or not named:
        return runs
    chosen = [frame for frame in runs if frame.device == device]
    if not chosen:
        raise UserError(f"--device {device!r}: no rows of that device in the data (devices: {', '.join(named)})")
    return chosen
