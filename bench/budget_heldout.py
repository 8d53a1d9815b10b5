"""Which held-out sample predicts the false alarms of fresh normal days: the budget's threshold
set on each, and the rate it realises on a data set's fault-free test stretches.

    .venv/bin/python bench/budget_heldout.py --dataset fleet --fleet-seed 0
    .venv/bin/python bench/budget_heldout.py --dataset tep
    .venv/bin/python bench/budget_heldout.py --dataset fleet --train-days 3   # a longer history

One model, trained as `anomalyd train --false-alarms-per-day N` trains it. Its budget threshold
is then set on three samples of normal window scores in turn, each with the package's own
`calibrate_budget`:
- the validation tail (the bundle's model; what `train` uses first);
- cross-fitted scores (every normal window, each scored by a fold model that never trained on
  it, `daemon.offline.cross_fit`; what `train` falls back to);
- every normal window, training windows included (the bundle's model; the last resort).
Each threshold is run through the bundle's hysteresis over the test runs' stretches where no
window touches a labelled row (counted rows only), and the episodes per day are printed beside
the budget, with the threshold that realises the budget on those stretches themselves (set on
test rows: a yardstick, not a detector).

On the fleet, whose test spans several days, it also plays a nightly recalibration (deploy/
README.md: `anomalyd calibrate` on the store's last day, every pump pooled): from the second
test day on, each day runs at the budget's threshold set on the day before's windows, and its
episodes on the fault-free stretches are counted, beside the share of the fault windows in
alert. The day before's windows leave out what `calibrate` would: the periods anomalyd was in
alert (its default); with `--incidents`, every labelled fault (an operator who learns of every
incident, from maintenance too) or the labelled faults that alarmed at least once (an operator
who confirms what anomalyd showed them; the faults it missed stay in); or nothing
(`--keep-alert-periods`). A last row sets each pump's threshold on its own day before
(`--per-device --incidents`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quality_cases import Case, fleet, tep  # noqa: E402  (bench/ is this script's directory)

from daemon.core.postprocess import AlertSpec, alert_flags  # noqa: E402
from daemon.core.runtime import torch_backend  # noqa: E402
from daemon.core.scoring import Scorer  # noqa: E402
from daemon.offline.budget import SECONDS_PER_DAY, HeldOut, TooLittleTail, calibrate_budget, episodes  # noqa: E402
from daemon.offline.cross_fit import cross_fitted_scores, fit_folds  # noqa: E402
from daemon.offline.evaluation import segments  # noqa: E402
from daemon.offline.frame_scoring import score_frame, score_frames  # noqa: E402
from daemon.offline.training import TrainConfig, fold_trainer, split_runs, train  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@dataclass
class ScoredRun:
    """One test run's window scores from its first counted window on, and which windows cover no
    labelled row."""

    scores: np.ndarray
    timestamps: np.ndarray  # data time of each window's last row
    clean: np.ndarray  # bool: no labelled row in the window


def scored_runs(scorer: Scorer, case: Case) -> list[ScoredRun]:
    out = []
    for test in case.tests:
        scored = score_frame(scorer, test.frame, 1)
        labelled = np.concatenate(([0], np.cumsum(test.frame.labels)))
        ends = scored.ends
        counted = ends >= test.counted_from
        clean = labelled[ends + 1] == labelled[np.maximum(ends + 1 - scorer.window, 0)]
        out.append(ScoredRun(scored.scores[counted], scored.timestamps[counted], clean[counted]))
    return out


def stretches(scores: np.ndarray, keep: np.ndarray) -> list[np.ndarray]:
    """The runs of consecutive kept windows' scores (each starts out of alert)."""
    return [scores[start:end] for start, end in segments(keep.astype(np.int8))]


def fault_free_stretches(runs: list[ScoredRun]) -> list[np.ndarray]:
    return [part for run in runs for part in stretches(run.scores, run.clean)]


def alerted_faults(clean: np.ndarray, in_alert: np.ndarray) -> np.ndarray:
    """Per window, whether it belongs to a labelled stretch that was in alert at least once:
    the incidents an alarm review confirms. A fault that never alarmed is not among them."""
    out = np.zeros(len(clean), dtype=bool)
    for start, end in segments((~clean).astype(np.int8)):
        out[start:end] = in_alert[start:end].any()
    return out


def nightly_calibration(runs: list[ScoredRun], first: float, per_day: float | None, alert: AlertSpec, period: float,
                        cut: str = "alerts", per_device: bool = False) -> tuple[int, float, float]:
    """Episodes on the fault-free windows, and their days, from the second test day on, each day
    at the budget's threshold set on the day before's windows of every device pooled (the first
    day runs at `first`): a nightly `anomalyd calibrate` over the last day; with `per_device`,
    each device at its own threshold set on its own windows (`calibrate --per-device`; a device
    whose day shows too few episodes for a tail keeps its threshold, where `calibrate` would
    refuse). `cut` says which of the day's windows are left out: "alerts", those in alert at the
    threshold then in force (as the nightly unit leaves anomalyd's alert periods out of the
    store's data); "labels", the labelled ones (an operator who knows every incident);
    "reviewed", the labelled stretches that were in alert at least once (the incidents an alarm
    review confirms; a fault that never alarmed stays in); "nothing". `per_day` None: every day
    at `first`. Also returns the share of the labelled windows of those days in alert (score
    alone, the bundle's hysteresis), the price of a threshold raised by faults left in."""
    start = min(run.timestamps[0] for run in runs)
    days = [((run.timestamps - start) // SECONDS_PER_DAY).astype(int) for run in runs]
    thresholds, seen, span, faulty, caught = [first] * len(runs), 0, 0.0, 0, 0
    for d in range(int(max(day.max() for day in days)) + 1):
        samples, false_alarm_windows = [], []
        for run, day, threshold in zip(runs, days, thresholds):
            today = day == d
            scores, clean = run.scores[today], run.clean[today]
            in_alert = alert_flags((scores > threshold).astype(np.int8), alert).astype(bool)
            if d > 0:
                false_alarm_windows.append(stretches(scores, clean))
                faulty += int((~clean).sum())
                caught += int(in_alert[~clean].sum())
            keep = {"labels": clean, "alerts": ~in_alert, "nothing": np.ones(len(scores), dtype=bool),
                    "reviewed": clean | ~alerted_faults(clean, in_alert)}[cut]
            samples.append(stretches(scores, keep))
        if d > 0:
            seen += sum(episodes(parts, threshold, alert) for parts, threshold in zip(false_alarm_windows, thresholds))
            span += HeldOut.from_scores([p for parts in false_alarm_windows for p in parts], 1, period, "day").days
        if per_day is None:
            continue
        if not per_device:
            pooled = HeldOut.from_scores([p for parts in samples for p in parts], 1, period, f"day {d}")
            thresholds = [calibrate_budget(pooled, per_day, alert)[0]] * len(runs)
            continue
        for i, parts in enumerate(samples):
            try:
                thresholds[i] = calibrate_budget(HeldOut.from_scores(parts, 1, period, f"day {d}"), per_day, alert)[0]
            except TooLittleTail:
                pass
    return seen, span, caught / max(faulty, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("fleet", "tep"), default="fleet")
    parser.add_argument("--fleet-seed", type=int, default=0, metavar="N")
    parser.add_argument("--train-days", type=float, default=None, metavar="D",
                        help="fleet: days of normal history per pump to train on (default: the simulator's 1.25)")
    parser.add_argument("--tep", type=Path, default=SHARED / "tep", help="TEP folder (default: %(default)s)")
    parser.add_argument("--false-alarms-per-day", type=float, default=1.0, metavar="N")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    parser.add_argument("--no-cross-fit", action="store_true",
                        help="leave out the cross-fitted sample (its fold models take most of the run's time)")
    args = parser.parse_args()

    case = fleet(seed=args.fleet_seed, train_days=args.train_days) if args.dataset == "fleet" else tep(args.tep)
    config = dataclasses.replace(TrainConfig(), threshold="budget", false_alarms_per_day=args.false_alarms_per_day,
                                 threshold_scale=1.0, seed=args.seed)
    result = train(case.train, config)
    bundle = result.bundle
    scorer = Scorer(bundle, torch_backend(result.model, config.threads))
    split = split_runs(case.train, config.window, config.validation_fraction)
    samples = {"validation tail": [s.scores for s in score_frames(scorer, split.validation)]}
    if not args.no_cross_fit:
        folds = fit_folds(split.runs, config.window, fold_trainer(config, int(bundle.training["best_epoch"]),
                                                                  bundle.scaler, bundle.preprocess,
                                                                  len(bundle.features)))
        samples["cross-fitted"] = cross_fitted_scores(folds, scorer, 1)
    samples["train+validation"] = [s.scores for s in score_frames(scorer, split.train + split.validation)]
    period = bundle.sample_period_seconds
    tested = scored_runs(scorer, case)
    test = HeldOut.from_scores(fault_free_stretches(tested), 1, period, "fault-free test stretches")
    per_day = args.false_alarms_per_day
    print(f"{case.name}, training seed {args.seed}, budget {per_day:g} / device-day; "
          f"{test.days:.2f} fault-free test days\n")
    print("| held-out sample | days | threshold | rule | test episodes | realised / day | × budget |")
    print("|---|---|---|---|---|---|---|")
    thresholds = {}
    for name, runs in samples.items():
        held_out = HeldOut.from_scores(runs, 1, period, name)
        try:
            threshold, record = calibrate_budget(held_out, per_day, bundle.alert)
        except TooLittleTail as exc:
            print(f"| {name} | {held_out.days:.2f} | – | {exc} | | | |")
            continue
        thresholds[name] = threshold
        seen = episodes(test.runs, threshold, bundle.alert)
        print(f"| {name} | {held_out.days:.2f} | {threshold:.3f} | {record.rule} | {seen} | "
              f"{seen / test.days:.2f} | {seen / test.days / per_day:.2f} |")
    yardstick, record = calibrate_budget(test, per_day, bundle.alert)
    print(f"\nThreshold that realises the budget on the test stretches themselves: {yardstick:.3f} ({record.rule}).")
    if args.dataset == "fleet":
        tail = thresholds["validation tail"]
        print("\nFrom the second test day on, the validation tail's threshold against a nightly recalibration "
              "on the day before (every pump pooled; the first day at the tail's threshold):\n")
        print("| threshold | fault-free days | episodes | realised / day | × budget | fault windows in alert |")
        print("|---|---|---|---|---|---|")
        nights = [("the validation tail's", dict(per_day=None)),
                  ("the day before's, its alert periods left out (`calibrate`)", dict(cut="alerts")),
                  ("the day before's, every incident left out (`calibrate --incidents`)", dict(cut="labels")),
                  ("the day before's, the alarmed incidents left out (`calibrate --incidents`)", dict(cut="reviewed")),
                  ("the day before's, nothing left out (`calibrate --keep-alert-periods`)", dict(cut="nothing")),
                  ("each pump's own day before, every incident left out (`calibrate --per-device --incidents`)",
                   dict(cut="labels", per_device=True))]
        for what, how in nights:
            seen, span, share = nightly_calibration(tested, tail, how.pop("per_day", per_day), bundle.alert, period,
                                                    **how)
            print(f"| {what} | {span:.2f} | {seen} | {seen / span:.2f} | {seen / span / per_day:.2f} | {share:.3f} |")

if __name__ == "__main__":
    main()
