"""`anomalyd train`: normal history in, calibrated model bundle out."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from daemon import plots
from daemon.commands.common import add_data_options, formatter, read_frames, split_list
from daemon.errors import DataError, UserError
from daemon.models import ARCHITECTURES, default_params
from daemon.scaling import SCALER_KINDS
from daemon.training import TrainConfig, save, train

log = logging.getLogger(__name__)

EPILOG = """\
threshold methods (--threshold), computed on validation-window scores:
  quantile:Q   the Q quantile (default quantile:0.99)
  sigma:K      mean + K standard deviations
  pot:RISK     peaks-over-threshold: generalised Pareto fit on the score tail, threshold at
               exceedance probability RISK (e.g. pot:1e-3)
  f1           best point-wise F1 on --validation-data, which must have a label column

architecture parameters (--param KEY=VALUE, repeatable):
""" + "\n".join(f"  {arch:7s} " + ", ".join(f"{k}={v}" for k, v in default_params(arch).items())
                for arch in ARCHITECTURES) + """

examples:
  anomalyd train --data normal.csv --out models/pump
  anomalyd train --data run1.csv --data run2.csv --out models/pump-conv --arch conv \\
      --window 60 --threshold pot:1e-3 --epochs 30 --seed 1
  anomalyd train --data normal.csv --validation-data labelled.csv --threshold f1 --out models/pump-f1

Rows labelled 1 in the label column are never trained on; each --data file is a separate
run (no window crosses files). The bundle directory gets bundle.json, model.safetensors,
training_loss.png and score_histogram.png.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model bundle on normal data", formatter_class=formatter,
                       description="Train an autoencoder on normal sensor history and calibrate its "
                                   "anomaly threshold.", epilog=EPILOG)
    p.add_argument("--data", action="append", required=True, metavar="CSV",
                   help="training CSV (repeat for several runs)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="bundle directory to write")
    p.add_argument("--name", default="", help="model name written as the 'model' tag (default: DIR's name)")
    p.add_argument("--arch", default="lstm", help=f"one of: {', '.join(ARCHITECTURES)} (default: %(default)s)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="architecture hyper-parameter (see below)")
    p.add_argument("--window", type=int, default=60, help="samples per window (default: %(default)s)")
    p.add_argument("--stride", type=int, default=1,
                   help="samples between scored windows when serving (default: %(default)s)")
    p.add_argument("--features", metavar="A,B,C", help="feature columns in order (default: every numeric "
                   "column except time and label)")
    p.add_argument("--ignore-columns", metavar="A,B", help="numeric columns that are not features "
                   "(e.g. changepoint)")
    p.add_argument("--scaler", choices=SCALER_KINDS, default="zscore", help="(default: %(default)s)")
    p.add_argument("--score-error", choices=("mse", "mae"), default="mse",
                   help="per-feature error over the window (default: %(default)s)")
    p.add_argument("--validation-data", action="append", metavar="CSV",
                   help="labelled CSV for --threshold f1")
    p.add_argument("--validation-fraction", type=float, default=0.2,
                   help="tail of each run held out for early stopping and calibration (default: %(default)s)")
    p.add_argument("--threshold", default="quantile:0.99", metavar="METHOD", help="(default: %(default)s)")
    p.add_argument("--threshold-scale", type=float, default=1.0, metavar="X",
                   help="multiply the calibrated threshold by X (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=50, help="maximum epochs (default: %(default)s)")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bundle (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    add_data_options(p)
    p.set_defaults(run=run)


def _params(pairs: list[str]) -> dict:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0 (got {value})")


def run(args: argparse.Namespace) -> int:
    if args.arch not in ARCHITECTURES:
        raise UserError(f"--arch {args.arch!r} unknown (use one of: {', '.join(ARCHITECTURES)})")
    _check_positive(window=args.window, stride=args.stride, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, threshold_scale=args.threshold_scale, threads=args.threads)
    if not 0 <= args.validation_fraction < 1:
        raise UserError(f"--validation-fraction must be in [0, 1) (got {args.validation_fraction})")
    frames = read_frames(args.data, args, split_list(args.features), tuple(split_list(args.ignore_columns) or ()))
    for frame in frames[1:]:
        if frame.features != frames[0].features:
            raise DataError(f"{frame.source}: feature columns {frame.features} differ from "
                            f"{frames[0].source}: {frames[0].features} (pass --features)")
    validation = (read_frames(args.validation_data, args, frames[0].features)
                  if args.validation_data else None)
    config = TrainConfig(arch=args.arch, window=args.window, stride=args.stride, scaler=args.scaler,
                         score_error=args.score_error, epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.lr, patience=args.patience,
                         validation_fraction=args.validation_fraction, threshold=args.threshold,
                         threshold_scale=args.threshold_scale, seed=args.seed, threads=args.threads,
                         arch_params=_params(args.param), name=args.name or args.out.resolve().name)
    log.info("training %s on %d file(s), %d rows, features: %s", args.arch, len(frames),
             sum(len(f) for f in frames), ", ".join(frames[0].features))
    with tqdm(total=args.epochs, desc="train", unit="epoch", file=sys.stderr, disable=None) as bar:
        def progress(epoch: int, train_loss: float, val_loss: float) -> None:
            bar.update(1)
            bar.set_postfix(train=f"{train_loss:.4g}", val=f"{val_loss:.4g}")
            if bar.disable:
                log.info("epoch %d: train loss %.4g, validation loss %.4g", epoch, train_loss, val_loss)
        result = train(frames, config, validation, progress)
    bundle = save(result, args.out)
    plots.training_loss(result.history, args.out / "training_loss.png")
    plots.score_histogram(result.validation_scores, bundle.threshold.value, bundle.threshold.method,
                          args.out / "score_histogram.png")
    t = bundle.training
    print(f"wrote {args.out}: {bundle.arch}, window {bundle.window}, {len(bundle.features)} features, "
          f"{t['epochs_run']} epochs (best {t['best_epoch']}), threshold {bundle.threshold.value:.6g} "
          f"({bundle.threshold.method} {bundle.threshold.params}), {t['seconds']} s")
    return 0
