"""`anomalyd calibrate`: re-threshold a bundle on recent normal data, weights untouched."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from daemon.commands.common import (add_data_options, add_incidents_option, add_influx_options, check_one_source,
                                    describe_history, formatter, incidents_of, left_out, read_frames, read_influx,
                                    split_list)
from daemon.core.errors import DataError, UserError
from daemon.core.scoring import Scorer
from daemon.offline import plots
from daemon.offline.budget import stored_estimate
from daemon.offline.frames import Frame
from daemon.offline.incidents import label_incidents
from daemon.offline.recalibration import next_version, recalibrate, write_recalibrated

log = logging.getLogger(__name__)

EPILOG = """\
The threshold is recomputed with the bundle's own method and scale (e.g. quantile:0.999 x 4/3)
on the scores of the normal windows of the data given: labelled rows (a CSV label column, or the
periods anomalyd had a device in alert, read from the store) are left out, as in training. The
weights are not touched. The result is a NEW bundle directory (--out): model.safetensors and
model.onnx copied unchanged (same sha256), bundle.json with the new threshold and a
'calibration' record (previous threshold, new one, the data and its time range). Promote it as
any new bundle: symlink + reload (deploy/README.md, "Upgrade and roll back a model").

--incidents names the incidents an alarm review confirmed (device,start,end in epoch seconds, the
file `compare --labels` reads): their rows are left out and anomalyd's other alert periods are
kept. Without it every alert period is left out, so a threshold that alarms too often is
calibrated on the scores below it and cannot rise: unconfirmed alerts are the false alarms it
must learn to let pass (docs/quality.md, "Keeping to the budget").

--per-device also stores a threshold for each device in the data (bundle.json threshold.devices),
used by the service and by `score --device D`; devices not listed use the bundle's threshold,
recomputed over every device's windows. A CSV file names its devices in a device column
(--device-column), or, holding one device's rows, as --data DEVICE=PATH.

examples:
  anomalyd calibrate --model models/pump-v3 --data last-week.csv --out models/pump-v4
  anomalyd calibrate --model models/pump-v3 --out models/pump-v4 --per-device \\
      --from-influx http://127.0.0.1:8086 --database telegraf --measurement pump \\
      --start 7d --influx-token-file /etc/anomalyd/influx.token
  anomalyd calibrate --model models/pump-v3 --out models/pump-v4 --incidents incidents.csv \\
      --from-influx http://127.0.0.1:8086 --database telegraf --measurement pump --start 1d
"""


def add_parser(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser("calibrate", help=summary, formatter_class=formatter,
                       description="Recompute a bundle's threshold on recent normal data and write it as a "
                                   "new bundle, without retraining.", epilog=EPILOG)
    p.add_argument("--model", required=True, type=Path, metavar="DIR", help="bundle to recalibrate")
    p.add_argument("--data", action="append", metavar="[DEVICE=]CSV",
                   help="recent data with the bundle's feature columns (repeatable); or --from-influx")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="new bundle directory to write (must not exist)")
    p.add_argument("--per-device", action="store_true", help="store a threshold for each device seen in the data")
    p.add_argument("--name", default="", help="model name of the new bundle (default: --out's directory name)")
    p.add_argument("--model-version", metavar="V", help="version of the new bundle (default: the old one + 1)")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="(default: %(default)s)")
    add_incidents_option(p)
    add_data_options(p)
    add_influx_options(p, fields_help="the store's fields (default: the bundle's features)")
    p.set_defaults(run=run)


def _csv_runs(args: argparse.Namespace, features: list[str]) -> dict[str, list[Frame]]:
    """device -> its runs. With --per-device a file's rows name their device in its device column,
    or the file is one device's, named DEVICE=PATH; without it every run counts alike."""
    runs: dict[str, list[Frame]] = {}
    for item in args.data:
        named, sep, path = item.partition("=") if args.per_device else ("", "", item)
        if not sep:
            named, path = "", item
        for frame in read_frames([path], args, features):
            device = frame.device or named if args.per_device else ""
            if args.per_device and frame.device and sep:
                raise UserError(f"--data {item!r}: the file names its devices in a device column; "
                                f"give it as --data {path}")
            if args.per_device and not device:
                raise UserError(f"--data {item!r}: with --per-device name each file's device: --data DEVICE=PATH "
                                f"(or give the file a device column)")
            runs.setdefault(device, []).append(frame)
    return runs


def run(args: argparse.Namespace) -> int:
    check_one_source(args)
    incidents = incidents_of(args)
    scorer = Scorer.load(args.model, args.runtime)
    bundle = scorer.bundle
    if args.data:
        runs = _csv_runs(args, bundle.features)
    else:
        history = read_influx(args, split_list(args.fields) or bundle.features)
        log.info("read %s", describe_history(history))
        if history.features != bundle.features:
            raise DataError(f"fields {history.features} are not the bundle's features {bundle.features} "
                            f"(in this order)")
        runs = history.runs
    if incidents is not None:
        runs = label_incidents(runs, incidents, args.incidents)
    frames = [f for device_runs in runs.values() for f in device_runs]
    result = recalibrate(scorer, runs, args.per_device)
    out = args.out
    new = write_recalibrated(bundle, result, out, args.name or out.resolve().name,
                             args.model_version or next_version(bundle.version), [f.source for f in frames],
                             min(float(f.timestamps[0]) for f in frames if len(f)),
                             max(float(f.timestamps[-1]) for f in frames if len(f)), left_out(args, frames))
    plots.score_histogram(result.scores, new.threshold.value, new.threshold.method, out / "score_histogram.png")
    old_t, new_t = bundle.threshold, new.threshold
    per_device = "".join(f", {d} {v:.6g}" for d, v in new_t.devices.items())
    print(f"wrote {out}: threshold {old_t.value:.6g} -> {new_t.value:.6g} ({old_t.spec} x {old_t.scale:g}) on "
          f"{new.calibration['windows']} windows from {new.calibration['data_start']} to "
          f"{new.calibration['data_stop']}" + (f"; per device{per_device}" if per_device else "")
          + f"; weights unchanged (sha256 {new.weights_sha256[:12]})")
    estimate = stored_estimate(new)
    if new.false_alarm_budget is not None or estimate is not None:
        print("false alarms: " + (new.false_alarm_budget.describe() if new.false_alarm_budget is not None
                                  else estimate.describe()))
    return 0
