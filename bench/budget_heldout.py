"""Which held-out sample predicts the false alarms of fresh normal days: the budget's threshold
set on each, and the rate it realises on a data set's fault-free test stretches.

    .venv/bin/python bench/budget_heldout.py --dataset fleet --fleet-seed 0
    .venv/bin/python bench/budget_heldout.py --dataset tep
    .venv/bin/python bench/budget_heldout.py --dataset fleet --train-days 4   # a longer history

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
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quality_cases import Case, fleet, tep  # noqa: E402  (bench/ is this script's directory)

from daemon.core.runtime import torch_backend  # noqa: E402
from daemon.core.scoring import Scorer  # noqa: E402
from daemon.offline.budget import HeldOut, TooLittleTail, calibrate_budget, episodes  # noqa: E402
from daemon.offline.cross_fit import cross_fitted_scores, fit_folds  # noqa: E402
from daemon.offline.evaluation import segments  # noqa: E402
from daemon.offline.frame_scoring import score_frame, score_frames  # noqa: E402
from daemon.offline.training import TrainConfig, fold_trainer, split_runs, train  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def fault_free_stretches(scorer: Scorer, case: Case) -> list[np.ndarray]:
    """Window scores of every counted stretch of the test runs where no window covers a
    labelled row, one array per stretch (each starts out of alert)."""
    out = []
    for test in case.tests:
        scored = score_frame(scorer, test.frame, 1)
        labelled = np.concatenate(([0], np.cumsum(test.frame.labels)))
        ends = scored.ends
        clean = (labelled[ends + 1] == labelled[np.maximum(ends + 1 - scorer.window, 0)]) & (ends >= test.counted_from)
        out += [scored.scores[start:end] for start, end in segments(clean.astype(np.int8))]
    return out


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
    args = parser.parse_args()

    case = fleet(seed=args.fleet_seed, train_days=args.train_days) if args.dataset == "fleet" else tep(args.tep)
    config = dataclasses.replace(TrainConfig(), threshold="budget", false_alarms_per_day=args.false_alarms_per_day,
                                 threshold_scale=1.0, seed=args.seed)
    result = train(case.train, config)
    bundle = result.bundle
    scorer = Scorer(bundle, torch_backend(result.model, config.threads))
    split = split_runs(case.train, config.window, config.validation_fraction)
    folds = fit_folds(split.runs, config.window, fold_trainer(config, int(bundle.training["best_epoch"]),
                                                              bundle.scaler, bundle.preprocess, len(bundle.features)))
    samples = {
        "validation tail": [s.scores for s in score_frames(scorer, split.validation)],
        "cross-fitted": cross_fitted_scores(folds, scorer, 1),
        "train+validation": [s.scores for s in score_frames(scorer, split.train + split.validation)],
    }
    period = bundle.sample_period_seconds
    test = HeldOut.from_scores(fault_free_stretches(scorer, case), 1, period, "fault-free test stretches")
    per_day = args.false_alarms_per_day
    print(f"{case.name}, training seed {args.seed}, budget {per_day:g} / device-day; "
          f"{test.days:.2f} fault-free test days\n")
    print("| held-out sample | days | threshold | rule | test episodes | realised / day | × budget |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in samples.items():
        held_out = HeldOut.from_scores(runs, 1, period, name)
        try:
            threshold, record = calibrate_budget(held_out, per_day, bundle.alert)
        except TooLittleTail as exc:
            print(f"| {name} | {held_out.days:.2f} | – | {exc} | | | |")
            continue
        seen = episodes(test.runs, threshold, bundle.alert)
        print(f"| {name} | {held_out.days:.2f} | {threshold:.3f} | {record.rule} | {seen} | "
              f"{seen / test.days:.2f} | {seen / test.days / per_day:.2f} |")
    yardstick, record = calibrate_budget(test, per_day, bundle.alert)
    print(f"\nThreshold that realises the budget on the test stretches themselves: {yardstick:.3f} ({record.rule}).")


if __name__ == "__main__":
    main()
