"""SKAB benchmark for anomalyd's autoencoders, scored exactly as SKAB's leaderboard scores.

    python bench/skab.py --data ../shared/datasets/skab [--quick] [--json OUT]

Protocol A (SKAB's "Proposed Leaderboard"): one model per labelled file, trained on the
file's first 400 rows (labels not looked at: like SKAB, those rows are assumed normal, which
is false for other/2.csv), tested on the rest. The threshold comes from the training rows
only. Test rows are scored streaming-causally: the whole file goes through the serving
`Scorer`, so a test row's window may reach back into the training rows (the history a live
daemon would have), and only rows >= 400 are counted.

Protocol B (how the daemon is used): one model per architecture trained on
anomaly-free/anomaly-free.csv, tested on the same test rows (>= 400) of the 34 files.

Everything goes through the library: `train` (windowing, scaler, early stopping, threshold
calibration), `detect` (Scorer + the bundle's alert hysteresis), `report` / `nab_scores`
(SKAB's metrics). The bench only decides which rows are training and which are counted.
Point-wise confusion counts are summed over files; F1 = TP / (TP + (FP + FN) / 2),
FAR = FP / (FP + TN) * 100, MAR = FN / (FN + TP) * 100. The NAB changepoint score uses the
rising and falling edges of our per-row alert state, 60 s windows after each changepoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from daemon.offline.detection import detect  # noqa: E402
from daemon.offline.evaluation import report, nab_scores  # noqa: E402
from daemon.offline.frames import Frame, load_csv  # noqa: E402
from daemon.core.models import ARCHITECTURES  # noqa: E402
from daemon.offline.training import TrainConfig  # noqa: E402

TRAIN_ROWS = 400  # SKAB's train_test_split(train_size=400, shuffle=False)
GROUPS = ("valve1", "valve2", "other")
ARCH_LABELS = {"lstm": "LSTM AE", "conv": "Conv AE", "mlp": "MLP AE", "sparse": "Sparse AE",
               "ensemble": "Ensemble AE"}

# SKAB README "Proposed Leaderboard" (outlier detection), F1 / FAR % / MAR %.
SKAB_ROWS = [
    ("SKAB Conv-AE", 0.78, 13.55, 28.02),
    ("SKAB MSET", 0.78, 39.73, 14.13),
    ("SKAB T2+Q (PCA)", 0.76, 26.62, 24.92),
    ("SKAB LSTM-AE", 0.74, 29.96, 25.92),
    ("SKAB Vanilla AE", 0.39, 2.59, 75.15),
    ("SKAB flag everything", 0.698, 100.0, 0.0),
]


@dataclasses.dataclass
class Labelled:
    frame: Frame  # features + anomaly labels
    changepoints: np.ndarray  # int8 [rows]

    @property
    def name(self) -> str:
        return "/".join(Path(self.frame.source).parts[-2:])


def load_labelled(data: Path) -> list[Labelled]:
    paths = sorted((p for g in GROUPS for p in (data / g).glob("*.csv")),
                   key=lambda p: (GROUPS.index(p.parent.name), int(p.stem)))
    if not paths:
        raise SystemExit(f"{data}: no SKAB files under {', '.join(GROUPS)} (pass --data DIR)")
    out = []
    for path in paths:
        frame = load_csv(path, ignore_columns=("changepoint",), label_column="anomaly")
        cp = load_csv(path, features=frame.features, label_column="changepoint").labels
        out.append(Labelled(frame, cp))
    return out


def unlabelled(frame: Frame) -> Frame:
    """Training rows with the labels removed: training must not see them (SKAB assumes the
    first 400 rows are normal and so do we, even where they are not)."""
    return dataclasses.replace(frame, labels=None)


def _test_part(item: Labelled, predicted: np.ndarray) -> dict:
    rows = slice(TRAIN_ROWS, None)
    return {"file": item.name, "predicted": predicted[rows], "actual": item.frame.labels[rows],
            "changepoints": item.changepoints[rows], "timestamps": item.frame.timestamps[rows]}


def _scorer(result, threads: int):
    from daemon.core.runtime import torch_backend
    from daemon.core.scoring import Scorer

    return Scorer(result.bundle, torch_backend(result.model, threads))


def job_a(args: tuple[Labelled, TrainConfig]) -> dict:
    """Protocol A for one file and one architecture."""
    from daemon.offline.training import train

    item, config = args
    started = time.time()
    result = train([unlabelled(item.frame.head(TRAIN_ROWS))], config)
    seconds = time.time() - started
    scorer = _scorer(result, config.threads)
    found = detect(scorer, item.frame, scorer.threshold)
    return {"protocol": "A", "arch": config.arch, "seconds": seconds,
            "epochs": result.bundle.training["epochs_run"], "files": [_test_part(item, found.predicted)]}


def job_b(args: tuple[Frame, list[Labelled], TrainConfig]) -> dict:
    """Protocol B for one architecture: train on anomaly-free, test on every labelled file."""
    from daemon.offline.training import train

    normal, items, config = args
    started = time.time()
    result = train([normal], config)
    seconds = time.time() - started
    scorer = _scorer(result, config.threads)
    files = [_test_part(item, detect(scorer, item.frame, scorer.threshold).predicted) for item in items]
    return {"protocol": "B", "arch": config.arch, "seconds": seconds,
            "epochs": result.bundle.training["epochs_run"], "files": files}


def summarise(parts: list[dict]) -> dict:
    files = [f for p in parts for f in p["files"]]
    pooled = report([(f["predicted"], f["actual"], f["timestamps"]) for f in files], None)
    nab = nab_scores([(f["predicted"], f["changepoints"], f["timestamps"]) for f in files])
    c = pooled.confusion
    return {"f1": c.f1, "far": c.far, "mar": c.mar, "precision": c.precision, "recall": c.recall,
            "nab_standard": nab["standard"], "nab_low_fp": nab["low_fp"], "nab_low_fn": nab["low_fn"],
            "tp": c.tp, "fp": c.fp, "tn": c.tn, "fn": c.fn, "files": len(files),
            "train_seconds": round(sum(p["seconds"] for p in parts), 1),
            "epochs_mean": round(float(np.mean([p["epochs"] for p in parts])), 1)}


def print_table(title: str, figures: dict[str, dict], with_skab: bool) -> None:
    print(f"\n{title}")
    head = f"{'model':24s} {'F1':>6s} {'FAR %':>7s} {'MAR %':>7s} {'NAB std':>8s} {'NAB lowFP':>9s} " \
           f"{'NAB lowFN':>9s} {'train s':>8s}"
    print(head)
    print("-" * len(head))
    for arch, f in figures.items():
        print(f"{'anomalyd ' + ARCH_LABELS.get(arch, arch):24s} {f['f1']:6.3f} {f['far']:7.2f} {f['mar']:7.2f} "
              f"{f['nab_standard']:8.2f} {f['nab_low_fp']:9.2f} {f['nab_low_fn']:9.2f} {f['train_seconds']:8.1f}")
    if with_skab:
        for name, f1, far, mar in SKAB_ROWS:
            print(f"{name:24s} {f1:6.3f} {far:7.2f} {mar:7.2f} {'':>8s} {'':>9s} {'':>9s} {'':>8s}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Every model uses the library's TrainConfig defaults except --set overrides.")
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/skab",
                   help="SKAB data folder (with valve1/, valve2/, other/, anomaly-free/)")
    p.add_argument("--archs", default=",".join(ARCHITECTURES), help="comma-separated (default: %(default)s)")
    p.add_argument("--protocols", default="A,B", help="A, B or A,B (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: every 4th labelled file, at most 5 epochs, a 3,000-row anomaly-free slice")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes, one torch thread each (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a TrainConfig field for every model, e.g. --set window=60 (JSON values)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the figures as JSON")
    return p.parse_args(argv)


def base_config(args: argparse.Namespace) -> dict:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides: dict = {"seed": args.seed, "threads": 1}
    for pair in args.set:
        key, _, value = pair.partition("=")
        if key not in known:
            raise SystemExit(f"--set {pair!r}: unknown TrainConfig field (known: {', '.join(sorted(known))})")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if args.quick:
        overrides["epochs"] = min(overrides.get("epochs", TrainConfig.epochs), 5)
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in archs if a not in ARCHITECTURES]
    if unknown:
        raise SystemExit(f"--archs: unknown {', '.join(unknown)} (use {', '.join(ARCHITECTURES)})")
    protocols = [p.strip().upper() for p in args.protocols.split(",") if p.strip()]
    overrides = base_config(args)
    items = load_labelled(args.data)
    if args.quick:
        items = items[::4]
    jobs_a = ([(item, TrainConfig(arch=arch, **overrides)) for arch in archs for item in items]
              if "A" in protocols else [])
    jobs_b = []
    if "B" in protocols:
        normal = load_csv(args.data / "anomaly-free" / "anomaly-free.csv", label_column=None)
        if args.quick:
            normal = normal.head(3000)
        jobs_b = [(normal, items, TrainConfig(arch=arch, **overrides)) for arch in archs]
    config_shown = {k: v for k, v in vars(TrainConfig(**overrides)).items() if k not in ("arch", "name")}
    print(f"SKAB at {args.data}: {len(items)} labelled files, {sum(len(i.frame) - TRAIN_ROWS for i in items)} "
          f"test rows; archs {', '.join(archs)}; {args.jobs} worker(s)\nTrainConfig: {config_shown}", flush=True)

    started = time.time()
    # Protocol B trainings are the longest jobs: start them first so the A jobs fill around them.
    tasks = [(job_b, j) for j in jobs_b] + [(job_a, j) for j in jobs_a]
    if args.jobs > 1:
        with get_context("spawn").Pool(args.jobs, initializer=_limit_threads) as pool:
            handles = [pool.apply_async(fn, (j,)) for fn, j in tasks]
            parts = [h.get() for h in handles]
    else:
        _limit_threads()
        parts = [fn(j) for fn, j in tasks]
    wall = time.time() - started

    results: dict[str, dict] = {}
    for protocol in protocols:
        results[protocol] = {arch: summarise([p for p in parts if p["protocol"] == protocol and p["arch"] == arch])
                             for arch in archs}
    n_rows = sum(len(i.frame) - TRAIN_ROWS for i in items)
    if "A" in results:
        print_table(f"Protocol A: SKAB leaderboard split (a model per file, first {TRAIN_ROWS} rows train, "
                    f"{len(items)} files, {n_rows} test rows)", results["A"], with_skab=not args.quick)
    if "B" in results:
        print_table(f"Protocol B: one model per architecture trained on anomaly-free.csv, "
                    f"same {n_rows} test rows", results["B"], with_skab=not args.quick)
    print(f"\nwall time {wall:.0f} s with {args.jobs} worker(s)")
    if args.json:
        out = {protocol: {arch: {k: round(v, 4) if isinstance(v, float) else v for k, v in figs.items()}
                          for arch, figs in by_arch.items()} for protocol, by_arch in results.items()}
        out["meta"] = {"config": config_shown, "quick": args.quick, "files": [i.name for i in items],
                       "test_rows": n_rows, "wall_seconds": round(wall, 1), "jobs": args.jobs}
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _limit_threads() -> None:
    import torch

    torch.set_num_threads(1)


if __name__ == "__main__":
    sys.exit(main())
