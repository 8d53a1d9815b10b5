"""Quality suite: every labelled data set we have, through anomalyd's defaults, in one table.

    .venv/bin/python bench/quality.py            # full run
    .venv/bin/python bench/quality.py --quick    # smoke run, under 3 minutes on 2 cores

Data sets (each model trained with the `TrainConfig` that `anomalyd train` uses by default;
no data set gets a setting of its own):
- SKAB protocol A: a model per labelled file on its first 400 rows, tested on the rest;
- SKAB protocol B: one model on anomaly-free.csv, tested on the same rows;
- TEP: one model on d00.dat, tested on d00_te.dat and dNN_te.dat (fault from sample 161);
- generated: `anomalyd generate`'s normal.csv to train, faults.csv (every fault kind) to test;
- fleet: a simulated fleet of four pumps (fleet_sim.py), held out from every default: one model
  on every pump's fault-free days, tested on later days with eight sensor and process faults each.
Baselines on the same rows in the same run: the same model with a plain 99.9th-percentile
threshold and no hysteresis, and PCA T²/SPE (see baselines.py), at its own training limits
and re-thresholded to our FAR. The Markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

from quality_cases import (FLEET_QUICK_PUMPS, FLEET_QUICK_TRAIN_DAYS, TEP_FAULTS, TEP_QUICK_FAULTS,  # noqa: E402
                           Case, fleet, fleet_per_pump, generated, skab_protocol_a, skab_protocol_b, tep)
from quality_metrics import OURS, summarise  # noqa: E402
from quality_package import TrainConfig  # noqa: E402
from quality_run import CaseOutcome, run_case  # noqa: E402
from quality_table import render, seed_spread_table  # noqa: E402

log = logging.getLogger("quality")

DATASETS = {"skab-a": "SKAB A", "skab-b": "SKAB B", "tep": "TEP", "generated": "generated", "fleet": "fleet"}
QUICK_EPOCHS = 5
QUICK_EVERY = 4  # quick mode keeps every 4th SKAB file
QUICK_NORMAL_ROWS = 3000  # ... and this much of anomaly-free.csv


def find_dataset(name: str) -> Path:
    """shared/datasets/NAME in the nearest parent directory that has it (worktrees sit deeper
    than the main checkout)."""
    for parent in BENCH.parents:
        candidate = parent / "shared" / "datasets" / name
        if candidate.is_dir():
            return candidate
    return BENCH.parent.parent / "shared" / "datasets" / name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: at most {QUICK_EPOCHS} epochs, every {QUICK_EVERY}th SKAB file, "
                        f"{QUICK_NORMAL_ROWS} rows of anomaly-free.csv, TEP faults "
                        f"{', '.join(map(str, TEP_QUICK_FAULTS))}, fleet: {FLEET_QUICK_TRAIN_DAYS} training days "
                        f"per pump and {FLEET_QUICK_PUMPS} pumps' test days")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated (default: %(default)s)")
    p.add_argument("--skab", type=Path, default=find_dataset("skab"), help="SKAB folder (default: %(default)s)")
    p.add_argument("--tep", type=Path, default=find_dataset("tep"), help="TEP folder (default: %(default)s)")
    p.add_argument("--fleet-seed", type=int, default=0, metavar="N",
                   help="the fleet simulator's seed; seeds 0-10 have decided defaults, seeds from 11 on are "
                        "fresh fleets no decision has seen (docs/quality.md, held-out check) "
                        "(default: %(default)s)")
    p.add_argument("--fleet-train-days", type=float, metavar="D",
                   help="fault-free days each simulated pump is trained on (default: the simulator's 1.25; "
                        f"--quick: {FLEET_QUICK_TRAIN_DAYS}): a short history, as a new installation has")
    p.add_argument("--fleet-per-pump", action="store_true",
                   help="a model per simulated pump, trained on its own history only (a single machine with a "
                        "short history) instead of one model for the fleet")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes, one torch thread each (default: %(default)s)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write every figure as JSON")
    p.add_argument("--false-alarms-per-day", type=float, metavar="N",
                   help="threshold from a false-alarm budget of N (as `anomalyd train --false-alarms-per-day N`) "
                        "instead of the default threshold")
    p.add_argument("--training-seeds", type=int, default=1, metavar="N",
                   help="train every model N times, with seeds 0..N-1 (the data stay the same), and add a "
                        "table of the spread: mean, min and max of each figure. A difference between two "
                        "settings smaller than that spread is no evidence (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a TrainConfig field for every model (JSON values), e.g. --set self_tune=false; "
                        "the table then shows that setting, not the defaults")
    return p.parse_args(argv)


def build_cases(datasets: list[str], args: argparse.Namespace) -> list[Case]:
    """Longest trainings first, so the many short SKAB A models fill in around them."""
    every = QUICK_EVERY if args.quick else 1
    cases: list[Case] = []
    if "fleet" in datasets:
        cases += (fleet_per_pump(args.fleet_seed, args.fleet_train_days) if args.fleet_per_pump
                  else [fleet(args.quick, args.fleet_seed, args.fleet_train_days)])
    if "skab-b" in datasets:
        cases.append(skab_protocol_b(args.skab, every, QUICK_NORMAL_ROWS if args.quick else None))
    if "generated" in datasets:
        cases.append(generated())
    if "tep" in datasets:
        cases.append(tep(args.tep, TEP_QUICK_FAULTS if args.quick else TEP_FAULTS))
    if "skab-a" in datasets:
        cases += skab_protocol_a(args.skab, every)
    return cases


def suite_config(quick: bool, false_alarms_per_day: float | None = None, overrides: list[str] = ()) -> TrainConfig:
    """`anomalyd train`'s defaults (tests/test_quality_bench.py holds the two together), or
    what `train --false-alarms-per-day N` and the `--set FIELD=VALUE` overrides change in them."""
    config = TrainConfig()
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for pair in overrides:
        key, _, text = pair.partition("=")
        if key not in known:
            raise SystemExit(f"--set {pair!r}: unknown TrainConfig field (known: {', '.join(sorted(known))})")
        try:
            config = dataclasses.replace(config, **{key: json.loads(text)})
        except json.JSONDecodeError:
            config = dataclasses.replace(config, **{key: text})
    if false_alarms_per_day is not None:
        config = dataclasses.replace(config, threshold="budget", false_alarms_per_day=false_alarms_per_day,
                                     threshold_scale=1.0)
    return dataclasses.replace(config, epochs=min(config.epochs, QUICK_EPOCHS)) if quick else config


def run_all(cases: list[Case], config: TrainConfig, jobs: int) -> list[CaseOutcome]:
    outcomes: list[CaseOutcome] = []

    def done(outcome: CaseOutcome) -> None:
        outcomes.append(outcome)
        log.info("[%d/%d] %s: %d epochs, trained in %.1f s, scored in %.1f s; scoring %s", len(outcomes), len(cases),
                 outcome.name, outcome.epochs, outcome.train_seconds, outcome.score_seconds, outcome.scoring)

    if jobs <= 1:
        _limit_threads()
        for case in cases:
            done(run_case(case, config))
        return outcomes
    with get_context("spawn").Pool(jobs, initializer=_limit_threads) as pool:
        handles = [pool.apply_async(run_case, (case, config), callback=done) for case in cases]
        for handle in handles:
            handle.get()  # re-raises a worker's exception here
    return outcomes


def _limit_threads() -> None:
    import torch

    torch.set_num_threads(1)


def summarise_all(cases: list[Case], outcomes: list[CaseOutcome]) -> tuple[dict, dict[str, int]]:
    results, detectable_counts = {}, {}
    for dataset in dict.fromkeys(c.dataset for c in cases):
        detectable = next(c.detectable for c in cases if c.dataset == dataset)
        results[dataset] = summarise([o for o in outcomes if o.dataset == dataset], detectable)
        detectable_counts[dataset] = len(detectable)
    order = list(DATASETS.values())
    return dict(sorted(results.items(), key=lambda kv: order.index(kv[0]))), detectable_counts


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise SystemExit(f"--datasets: unknown {', '.join(unknown)} (use {', '.join(DATASETS)})")
    config = suite_config(args.quick, args.false_alarms_per_day, args.set)
    started = time.time()
    cases = build_cases(datasets, args)
    log.info("%d models to train (%s), %d worker(s); config: %s", len(cases),
             ", ".join(DATASETS[d] for d in datasets), args.jobs,
             {k: v for k, v in vars(config).items() if k not in ("name", "version", "arch_params")})
    if args.training_seeds < 1:
        raise SystemExit(f"--training-seeds: at least 1 (got {args.training_seeds})")
    by_seed = []
    for seed in range(args.training_seeds):
        seeded = dataclasses.replace(config, seed=config.seed + seed)
        if args.training_seeds > 1:
            log.info("training seed %d of %d", seeded.seed, args.training_seeds)
        seed_outcomes = run_all(cases, seeded, args.jobs)
        by_seed.append((seeded.seed, summarise_all(cases, seed_outcomes)[0]))
        if seed == 0:
            outcomes = seed_outcomes
    results, detectable_counts = summarise_all(cases, outcomes)
    wall = time.time() - started
    mode = "quick" if args.quick else "full"
    print(f"Quality suite ({mode} run, `bench/quality.py{' --quick' if args.quick else ''}`): "
          f"{len(cases) * args.training_seeds} models, {wall / 60:.1f} min wall time with {args.jobs} worker(s).\n")
    print(render(results, detectable_counts))
    if args.training_seeds > 1:
        print("\nThe same suite with the training seeds " + ", ".join(str(s) for s, _ in by_seed)
              + " (anomalyd defaults; mean, and min–max over the seeds):\n")
        print(seed_spread_table(by_seed))
    if args.json:
        out = {"meta": {"mode": mode, "wall_seconds": round(wall, 1), "jobs": args.jobs,
                        "config": {k: v for k, v in vars(config).items()},
                        "models": [{"name": o.name, "epochs": o.epochs, "train_seconds": o.train_seconds,
                                    "score_seconds": o.score_seconds, "pca_components": o.pca_components,
                                    "scoring": o.scoring}
                                   for o in outcomes]},
               "results": {ds: {k: f.to_dict() for k, f in by.items()} for ds, by in results.items()},
               "by_training_seed": {str(seed): {ds: by[OURS].to_dict() for ds, by in seeded.items()}
                                    for seed, seeded in by_seed}}
        args.json.write_text(json.dumps(out, indent=2, default=float) + "\n")
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
