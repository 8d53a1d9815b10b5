"""`anomalyd evaluate`: precision/recall/F1/FAR/MAR (as SKAB defines them) on labelled CSVs."""

from __future__ import annotations

import argparse
import json
import math
from datetime import datetime, timezone
from pathlib import Path

from daemon.offline.budget import expected_per_day, vouched_per_day
from daemon.offline import plots
from daemon.commands.common import add_data_options, formatter, read_frames
from daemon.offline.detection import EventOutcome, FileResult, evaluate_frames
from daemon.offline.evaluation import duration_text, report
from daemon.core.scoring import Scorer

EPILOG = """\
Scoring is streaming-causal: a window's score belongs to its last row; rows before the first
full window of each file count as predicted normal. A row's prediction is the alert state after
the bundle's hysteresis (bundle.json "alert": enter after K anomalous windows, leave after M
normal ones), the same state machine the daemon runs per device. Counts are summed over files.
  F1  = TP / (TP + (FP + FN) / 2)      FAR = FP / (FP + TN) * 100 (% of normal points flagged)
  MAR = FN / (FN + TP) * 100 (% of anomalous points missed)
  event recall = share of labelled segments with at least one flagged point
  false alarms/day = alert episodes touching no labelled row, per day of normal rows (per
  device-day: every file is one device's run, or one run per device when a device column names
  several), printed beside the bundle's false-alarm budget
With several runs, one line per run (file or device) follows the pooled figures. Then one line
per labelled event: the share of its rows in alert, the delay to its first alert, and what its
alarms named: a sensor-health reason (stuck:flow, relation:pressure, ...) or model:<sensor>, the
sensor whose error weighs most in the model's score: the sensor an operator would check.
A device with a threshold of its own in the bundle (anomalyd calibrate --per-device) is judged
at it, as the service judges it.

examples:
  anomalyd evaluate --model models/demo --data faults.csv
  anomalyd evaluate --model models/demo --data a.csv --data b.csv --json > metrics.json
  anomalyd evaluate --model models/demo --data faults.csv --plot eval.png
"""


def add_parser(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser("evaluate", help=summary, formatter_class=formatter,
                       description="Evaluate a model bundle on labelled data.", epilog=EPILOG)
    p.add_argument("--model", required=True, type=Path, metavar="DIR", help="model bundle directory")
    p.add_argument("--data", required=True, action="append", metavar="CSV", help="labelled CSV (repeatable)")
    p.add_argument("--threshold", type=float, help="override the bundle's threshold")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--plot", type=Path, metavar="PNG",
                   help="score vs threshold plot (one file per input as PNG-<name>.png when several)")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="(default: %(default)s)")
    add_data_options(p)
    p.set_defaults(run=run)


def _plot(result: FileResult, threshold: float, path: Path, features: list[str]) -> None:
    f = result.frame
    plots.score_timeline(f.timestamps, result.row_scores(), threshold, path, flags=result.predicted,
                         labels=f.labels, sensors=f.values, sensor_names=features, title=f"{f.source}")


def run(args: argparse.Namespace) -> int:
    scorer = Scorer.load(args.model, args.runtime)
    frames = read_frames(args.data, args, scorer.features)
    pooled, results = evaluate_frames(scorer, frames, args.threshold)
    if args.plot:
        for result in results:
            path = args.plot if len(results) == 1 else args.plot.with_name(
                f"{args.plot.stem}-{result.frame.name}{args.plot.suffix}")
            _plot(result, pooled.threshold, path, scorer.features)
    budget = scorer.bundle.false_alarm_budget
    expected, vouched = expected_per_day(scorer.bundle), vouched_per_day(scorer.bundle)
    events = [event for result in results for event in result.events(scorer.bundle)]
    figures = pooled.to_dict() | {"false_alarms_per_day": pooled.events.false_alarms_per_hour * 24.0,
                                  "budget_per_day": None if budget is None else budget.per_day,
                                  "expected_false_alarms_per_day": expected,
                                  "vouched_false_alarms_per_day": vouched,
                                  "labelled_events": [event.to_dict() for event in events]}
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in figures.items()}))
        return 0
    alert = scorer.bundle.alert
    own = sum(f.device in scorer.bundle.threshold.devices for f in frames) if args.threshold is None else 0
    print(f"model {scorer.bundle.name}, threshold {pooled.threshold:.6g}"
          + (f" ({own} device(s) at their own)" if own else "")
          + f", alert after {alert.enter_after} / clear after {alert.leave_after} window(s), {pooled.points} points "
          f"in {len(results)} run(s)")
    for key, label, unit in (("precision", "precision", ""), ("recall", "recall", ""), ("f1", "F1", ""),
                             ("far", "FAR", " %"), ("mar", "MAR", " %"), ("event_recall", "event recall", ""),
                             ("false_alarms_per_hour", "false alarms/h", "")):
        print(f"  {label:15s} {figures[key]:.4f}{unit}")
    print(f"  false alarms/d  {figures['false_alarms_per_day']:.4g} per device-day of normal rows "
          f"({pooled.events.normal_hours / 24:.3g} days), "
          + (f"budget {budget.per_day:g}" if budget else "no false-alarm budget in this bundle")
          + ("" if expected is None else f", expected {expected:.3g} from its held-out data")
          + ("" if vouched is None else f" (which vouch for at most {vouched:.3g})"))
    print(f"  confusion       TP {figures['tp']}  FP {figures['fp']}  TN {figures['tn']}  FN {figures['fn']}")
    if len(results) > 1:
        _print_runs(results, pooled.threshold)
    if events:
        _print_events(events)
    return 0


SHOWN_EVENTS = 20  # --json lists every one


def _print_events(events: list[EventOutcome]) -> None:
    """One line per labelled event: caught, how soon, and what its alarms named (the sensor to check)."""
    width = max(8, *(len(e.run) for e in events))
    print(f"\n  {'run':{width}s}  {'event start (UTC)':19s}  {'rows':>6s}  {'in alert':>8s}  {'delay':>8s}  alarms named")
    for event in events[:SHOWN_EVENTS]:
        start = datetime.fromtimestamp(event.start, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        total = sum(event.named.values())
        named = ", ".join(f"{what} {count / total:.0%}" for what, count in list(event.named.items())[:2]) or "-"
        print(f"  {event.run:{width}s}  {start:19s}  {event.rows:6d}  {event.share_in_alert:8.0%}  "
              f"{'missed' if event.delay_seconds is None else duration_text(event.delay_seconds):>8s}  {named}")
    if len(events) > SHOWN_EVENTS:
        print(f"  ... and {len(events) - SHOWN_EVENTS} more (--json lists every event)")


def _print_runs(results: list[FileResult], threshold: float | None) -> None:
    """One line per run (a file, or a device of a fleet's file): where the pooled figures come from."""
    names = [r.frame.device or r.frame.name for r in results]
    width = max(12, *map(len, names))
    print(f"\n  {'run':{width}s}  {'F1':>6s}  {'FAR %':>7s}  {'events caught':>13s}  {'false alarms':>12s}")
    for name, result in zip(names, results):
        run = report([(result.predicted, result.frame.labels, result.frame.timestamps)], threshold).to_dict()
        f1 = "-" if run["tp"] + run["fn"] == 0 else f"{run['f1']:.3f}"
        print(f"  {name:{width}s}  {f1:>6s}  {run['far']:7.2f}  {run['events_detected']:>6d} of {run['events']:<3d}  "
              f"{run['false_alarm_events']:>12d}")
