"""`anomalyd score`: score a CSV with a bundle, one output row per scored window."""

from __future__ import annotations

import argparse
import csv
from datetime import datetime, timezone
from pathlib import Path

from daemon.commands.common import add_data_options, formatter, read_frames
from daemon.offline.detection import detect
from daemon.core.scoring import Scorer
from daemon.core.thresholds import threshold_in_force

EPILOG = """\
output columns: timestamp (RFC 3339, UTC, time of the window's last row), score, threshold,
anomaly (0/1: score > threshold, or a reason), reason (empty; or why the window could not be
scored: out_of_range, non_finite_score, its score then the largest float32; or a sensor-health
flag: stuck:<feature>, out_of_envelope:<feature>, drift:<feature>),
err_<feature> (that sensor's reconstruction error).

example:
  anomalyd score --model models/demo --data today.csv --out scores.csv
"""


def add_parser(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser("score", help=summary, formatter_class=formatter,
                       description="Score every window of a CSV file exactly as the live daemon would.",
                       epilog=EPILOG)
    p.add_argument("--model", required=True, type=Path, metavar="DIR", help="model bundle directory")
    p.add_argument("--data", required=True, metavar="CSV", help="CSV with the model's feature columns")
    p.add_argument("--out", required=True, type=Path, metavar="CSV", help="where to write the scores")
    p.add_argument("--threshold", type=float, help="override the bundle's threshold")
    p.add_argument("--device", metavar="D", help="device the rows come from: its own threshold applies when the "
                                               "bundle has one (anomalyd calibrate --per-device)")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="(default: %(default)s)")
    add_data_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    scorer = Scorer.load(args.model, args.runtime)
    threshold = threshold_in_force(scorer.threshold, args.threshold, args.device, scorer.bundle.threshold.devices)
    frame = read_frames([args.data], args, scorer.features)[0]
    result = detect(scorer, frame, threshold)
    s = result.scores
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "score", "threshold", "anomaly", "reason"]
                        + [f"err_{f}" for f in scorer.features])
        reasons = s.reasons or [""] * len(s.scores)
        for i, ts in enumerate(s.timestamps):
            when = datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")
            writer.writerow([when, f"{s.scores[i]:.6g}", f"{threshold:.6g}", int(result.flags[i]), reasons[i]]
                            + [f"{e:.6g}" for e in s.feature_errors[i]])
    print(f"wrote {args.out}: {len(s.scores)} scored windows, {int(result.flags.sum())} flagged anomalous")
    return 0
