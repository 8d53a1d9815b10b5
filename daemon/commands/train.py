"""`anomalyd train`: normal history in, calibrated model bundle out."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from tqdm import tqdm

from daemon.offline.budget import stored_estimate
from daemon.offline import plots
from daemon.offline.incidents import label_incidents
from daemon.commands.common import (add_data_options, add_incidents_option, add_influx_options, check_one_source,
                                    describe_history, formatter, incidents_of, left_out, read_frames, read_influx,
                                    split_list)
from daemon.core.errors import DataError, UserError
from daemon.core.models import ARCHITECTURES, default_params
from daemon.core.scaling import SCALER_KINDS
from daemon.core.bundle import SCORE_REDUCTIONS
from daemon.core.preprocess import DEMEAN_MODES
from daemon.core.thresholds import describe_span
from daemon.offline.sensor_evidence import SENSOR_EVIDENCE_KEY, THIN_EVIDENCE, SensorEvidence
from daemon.offline.training import CALIBRATE_ON, TrainConfig, save, train

log = logging.getLogger(__name__)

EPILOG = """\
threshold methods (--threshold-method), each then multiplied by --threshold-scale:
  budget       the false-alarm budget (selected by --false-alarms-per-day N): the threshold at
               which the bundle's hysteresis raises N alert episodes per device per day on the
               held-out validation tail (never the windows the model was fitted on); counted
               where the tail holds at least 10 budgeted episodes, else extrapolated with a
               generalised Pareto tail of the episode peaks (peaks over threshold). A tail too
               short for that (a few hundred rows) gives way to cross-fitted scores: every
               normal window scored by one of 4 fold models that never trained on it (4 more
               models to train), and only then to the training windows themselves. bundle.json
               "false_alarm_budget" and `anomalyd inspect` say which, on how many days; check
               the realised rate with `evaluate` on fresh normal data (docs/quality.md)
the others are computed on the scores of the normal training windows (--calibrate-on all, the
default) or of the validation tail only:
  quantile:Q   the Q quantile (the default: quantile:0.999 x --threshold-scale 1.3333, SKAB's rule)
  sigma:K      mean + K standard deviations
  pot:RISK     peaks-over-threshold: generalised Pareto fit on the score tail, threshold at
               exceedance probability RISK (e.g. pot:1e-3)
  f1           best point-wise F1 on --validation-data, which must have a label column

architecture parameters (--param KEY=VALUE, repeatable):
""" + "\n".join(f"  {arch:8s} " + ", ".join(f"{k}={v}" for k, v in default_params(arch).items())
                for arch in ARCHITECTURES) + """

examples:
  anomalyd train --data normal.csv --out models/pump
  anomalyd train --data run1.csv --data run2.csv --out models/pump-conv --arch conv \\
      --window 60 --false-alarms-per-day 0.2 --epochs 30 --seed 1
  anomalyd train --data normal.csv --validation-data labelled.csv --threshold-method f1 --out models/pump-f1
  anomalyd train --data normal.csv --out models/pump-ens --arch ensemble --score-exclude \\
      Temperature,Thermocouple --threshold-method quantile:0.999 --threshold-scale 1.7  # SKAB's best

Window scores are the largest per-feature reconstruction error (--score-reduction max): a fault
that shows on one sensor is not averaged away by the healthy ones. Fewer false alarms: let slow
sensors stay model inputs without voting, e.g. --score-exclude Temperature,Thermocouple
(their level drifts after a fault has ended), or lower --false-alarms-per-day. Alerts follow the bundle's
hysteresis (--enter-after / --leave-after), in `anomalyd evaluate` exactly as in the daemon.
Rows labelled 1 in the label column are never trained on; each --data file is a separate
run (no window crosses files). The bundle directory gets bundle.json, model.safetensors,
training_loss.png and score_histogram.png.
"""


# The thin-evidence line names this many sensors; `inspect` lists every one.
THIN_LISTED = 8


def add_parser(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser("train", help=summary, formatter_class=formatter,
                       description="Train an autoencoder on normal sensor history and calibrate its "
                                   "anomaly threshold.", epilog=EPILOG)
    p.add_argument("--data", action="append", metavar="CSV",
                   help="training CSV (repeat for several runs); or read the history with --from-influx")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="bundle directory to write")
    p.add_argument("--name", default="", help="model name written as the 'model' tag (default: DIR's name)")
    p.add_argument("--model-version", default="1", metavar="V",
                   help="version recorded in the bundle and in anomalyd_model_info (default: %(default)s)")
    p.add_argument("--arch", default=TrainConfig.arch,
                   help=f"one of: {', '.join(ARCHITECTURES)} (default: %(default)s)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="architecture hyper-parameter (see below)")
    p.add_argument("--window", type=int, default=TrainConfig.window, help="samples per window (default: %(default)s)")
    p.add_argument("--stride", type=int, default=1,
                   help="samples between scored windows when serving (default: %(default)s)")
    p.add_argument("--features", metavar="A,B,C", help="feature columns in order (default: every numeric "
                   "column except time and label)")
    p.add_argument("--ignore-columns", metavar="A,B", help="numeric columns that are not features "
                   "(e.g. changepoint)")
    p.add_argument("--scaler", choices=SCALER_KINDS, default=TrainConfig.scaler, help="(default: %(default)s)")
    p.add_argument("--score-error", choices=("mse", "mae"), default="mse",
                   help="per-feature error over the window (default: %(default)s)")
    p.add_argument("--score-reduction", choices=SCORE_REDUCTIONS, default=TrainConfig.score_reduction,
                   help="window score = mean or max of the per-feature errors (default: %(default)s)")
    p.add_argument("--scale-floor", type=float, default=TrainConfig.scale_floor, metavar="F",
                   help="keep each feature's scaler scale >= F x its mean absolute training level, so a "
                        "nearly constant sensor's slow drift is not scored as a fault; 0 = off (default: %(default)s)")
    p.add_argument("--score-exclude", default="none", metavar="none|auto|thin|A,B",
                   help="features the model reads but whose own error does not count in the window score: "
                        "'none', names (e.g. slow temperatures, whose level drifts after a fault; with "
                        "a lower budget the low-false-alarm setting), 'auto' = features with lag-1 "
                        "autocorrelation >= 0.5 in the training rows, a heuristic: check bundle.json, or "
                        "'thin', as for --demean (default: %(default)s)")
    p.add_argument("--demean", default=TrainConfig.demean, metavar="thin|auto|none|A,B",
                   help="centre these features on their window mean before the model, so the model judges "
                        "how they move and leaves their level to the sensor-health checks: 'thin' = the "
                        "sensors the training history shows in fewer than 10 independent stretches (their "
                        "normal level is not known yet; train prints them), 'auto' = the slow sensors, as "
                        "above (default: %(default)s)")
    p.add_argument("--normalise-features", action=argparse.BooleanOptionalAction, default=TrainConfig.normalise_features,
                   help="divide each feature's error by its typical error on the held-out validation windows "
                        "before the reduction, so every sensor votes on the same scale (default: %(default)s)")
    p.add_argument("--self-tune", action=argparse.BooleanOptionalAction, default=TrainConfig.self_tune,
                   help="choose the score reduction, --normalise-features and --enter-after (the knobs that need "
                        "no retraining) by what the model detects of synthetic faults injected into the held-out "
                        "tail, each candidate with its own threshold by the same rule; no label is read. The "
                        "candidates and the choice go to bundle.json training.self_tuning (default: %(default)s)")
    p.add_argument("--relation-check", action=argparse.BooleanOptionalAction, default=TrainConfig.relation_check,
                   help="also fit the sensor-health check 'relation': each sensor's window level predicted from "
                        "the other sensors' by a polynomial fitted on the training windows, flagged "
                        "relation:<sensor> when it is off; catches slow changes of how sensors relate (a pump's "
                        "head falling at the same flow) that the model passes through. Fitted only when the "
                        "training rows hold at least 10 windows' worth of data per regression term (degree 2, "
                        "else 1, else off) (default: %(default)s)")
    p.add_argument("--noisy-lookback", type=int, default=TrainConfig.noisy_lookback, metavar="N",
                   help="windows' worth of readings the sensor-health check 'noisy' also judges a sensor's "
                        "step noise over (the median of each window's, per device): a longer look-back "
                        "scatters less, so its limit sits closer to the typical noise; a window is noisy when "
                        "both that median and its own step noise pass it; 1 judges the window alone "
                        "(default: %(default)s)")
    p.add_argument("--spike-check", action=argparse.BooleanOptionalAction, default=TrainConfig.spike_check,
                   help="also fit the sensor-health check 'spike': a reading that leaves both its neighbours "
                        "(above the higher or below the lower) by more than twice what any training reading "
                        "did is flagged spike:<sensor>: a loose connector, a dropout to the under-range value. "
                        "A step or a ramp never leaves both neighbours (default: %(default)s)")
    p.add_argument("--shift-check", action=argparse.BooleanOptionalAction, default=TrainConfig.shift_check,
                   help="also fit the sensor-health check 'shift': a quiet sensor whose window level lies "
                        "beyond twice its largest departure in training from the training level (that "
                        "departure widened for how few independent levels training shows) is flagged "
                        "shift:<sensor>: a transmitter's bias, or a variable a controller now holds elsewhere. "
                        "Sensors whose level training shows in fewer than 10 independent stretches are left "
                        "alone (default: %(default)s)")
    p.add_argument("--validation-data", action="append", metavar="CSV",
                   help="labelled CSV for --threshold-method f1")
    p.add_argument("--validation-fraction", type=float, default=0.2,
                   help="tail of each run held out for early stopping and calibration (default: %(default)s)")
    p.add_argument("--threshold-method", "--threshold", dest="threshold", default=None,
                   metavar="METHOD", help="budget, quantile:Q, sigma:K, pot:RISK or f1, see below (default: "
                                          f"{TrainConfig.threshold}, or budget with --false-alarms-per-day)")
    p.add_argument("--false-alarms-per-day", type=float, default=None, metavar="N",
                   help="the false-alarm budget: alert episodes (after hysteresis) per device per day of "
                        "normal operation that --threshold-method budget sets the threshold for; giving it "
                        f"selects that method (default: none; {TrainConfig.false_alarms_per_day:g} with "
                        "--threshold-method budget)")
    p.add_argument("--threshold-scale", type=float, default=None, metavar="X",
                   help="multiply the calibrated threshold by X, a safety margin (default: "
                        f"{TrainConfig.threshold_scale:.5g}, 1 for budget)")
    p.add_argument("--calibrate-on", choices=CALIBRATE_ON, default=TrainConfig.calibrate_on,
                   help="windows whose scores calibrate the threshold: 'all' normal training windows "
                        "(train + validation) or only the 'validation' tail (default: %(default)s)")
    p.add_argument("--enter-after", type=int, default=TrainConfig.enter_after, metavar="K",
                   help="alert hysteresis stored in the bundle: a device enters alert after K consecutive "
                        "anomalous windows (default: %(default)s)")
    p.add_argument("--leave-after", type=int, default=TrainConfig.leave_after, metavar="M",
                   help="... and leaves it after M consecutive normal windows (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="maximum epochs (default: %(default)s)")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--max-windows-per-epoch", type=int, default=TrainConfig.max_windows_per_epoch, metavar="N",
                   help="an epoch fits every training window, or N of them drawn afresh each epoch where there "
                        "are more (validation: a fixed draw of N): windows a row apart share all but one row, so "
                        "a long history (weeks at one reading a second) trains in minutes instead of hours; "
                        "windows are cut per batch, so the fit holds the rows once, not every window "
                        "(default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bundle (default: %(default)s)")
    p.add_argument("--no-onnx", dest="onnx", action="store_false",
                   help="do not export model.onnx (the torch-free runtime) next to the weights")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    add_data_options(p)
    add_influx_options(p, fields_help="fields to train on, in order (default: every numeric field)")
    add_incidents_option(p)
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


def _selection(text: str) -> str | list[str]:
    """A mode ('none', 'auto', 'thin') stays a mode; anything else is a comma-separated list of
    feature names."""
    text = text.strip()
    return text if text in DEMEAN_MODES else split_list(text)


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0 (got {value})")


def _export_onnx(directory: Path) -> None:
    """model.onnx next to the weights, so `runtime: onnx` works without a separate step;
    skipped (with a note) where the onnx packages are not installed."""
    from daemon.offline.onnx_export import export_onnx

    try:
        export_onnx(directory)
    except UserError as exc:
        log.warning("no model.onnx written: %s", exc)


def _training_frames(args: argparse.Namespace) -> list:
    """The runs to train on: one per --data file, or the store's runs (gaps cut them; rows in
    anomalyd's alert periods are labelled, so training leaves them out as it does labelled rows;
    with --incidents the incidents' rows instead)."""
    check_one_source(args)
    incidents = incidents_of(args)
    if args.data:
        runs = {"": read_frames(args.data, args, split_list(args.features),
                                tuple(split_list(args.ignore_columns) or ()))}
    else:
        if args.features or args.ignore_columns:
            raise UserError("--features and --ignore-columns name CSV columns; with --from-influx use --fields")
        history = read_influx(args, split_list(args.fields))
        log.info("read %s", describe_history(history))
        runs = history.runs
    if incidents is not None:
        runs = label_incidents(runs, incidents, args.incidents)
    return [run for device in sorted(runs) for run in runs[device]]


def resolve_threshold_options(args: argparse.Namespace) -> None:
    """Fill the threshold options left unset: --false-alarms-per-day alone selects the budget,
    and the budget needs no safety margin (it is the margin)."""
    if args.threshold is None:
        args.threshold = "budget" if args.false_alarms_per_day is not None else TrainConfig.threshold
    if args.false_alarms_per_day is None:
        args.false_alarms_per_day = TrainConfig.false_alarms_per_day
    if args.threshold_scale is None:
        args.threshold_scale = 1.0 if args.threshold.split(":")[0] == "budget" else TrainConfig.threshold_scale


def run(args: argparse.Namespace) -> int:
    resolve_threshold_options(args)
    if args.arch not in ARCHITECTURES:
        raise UserError(f"--arch {args.arch!r} unknown (use one of: {', '.join(ARCHITECTURES)})")
    _check_positive(window=args.window, stride=args.stride, epochs=args.epochs, batch_size=args.batch_size,
                    max_windows_per_epoch=args.max_windows_per_epoch, noisy_lookback=args.noisy_lookback,
                    lr=args.lr, threshold_scale=args.threshold_scale, threads=args.threads,
                    false_alarms_per_day=args.false_alarms_per_day,
                    enter_after=args.enter_after, leave_after=args.leave_after)
    if args.scale_floor < 0:
        raise UserError(f"--scale-floor must be >= 0 (got {args.scale_floor})")
    if not 0 <= args.validation_fraction < 1:
        raise UserError(f"--validation-fraction must be in [0, 1) (got {args.validation_fraction})")
    frames = _training_frames(args)
    for frame in frames[1:]:
        if frame.features != frames[0].features:
            raise DataError(f"{frame.source}: feature columns {frame.features} differ from "
                            f"{frames[0].source}: {frames[0].features} (pass --features)")
    validation = (read_frames(args.validation_data, args, frames[0].features)
                  if args.validation_data else None)
    config = TrainConfig(arch=args.arch, window=args.window, stride=args.stride, scaler=args.scaler,
                         score_error=args.score_error, score_reduction=args.score_reduction,
                         scale_floor=args.scale_floor, score_exclude=_selection(args.score_exclude),
                         normalise_features=args.normalise_features, self_tune=args.self_tune,
                         relation_check=args.relation_check, noisy_lookback=args.noisy_lookback,
                         spike_check=args.spike_check, shift_check=args.shift_check,
                         demean=_selection(args.demean), epochs=args.epochs, batch_size=args.batch_size,
                         max_windows_per_epoch=args.max_windows_per_epoch,
                         learning_rate=args.lr, patience=args.patience,
                         validation_fraction=args.validation_fraction, threshold=args.threshold,
                         false_alarms_per_day=args.false_alarms_per_day, threshold_scale=args.threshold_scale, calibrate_on=args.calibrate_on,
                         enter_after=args.enter_after, leave_after=args.leave_after, seed=args.seed,
                         threads=args.threads,
                         arch_params=_params(args.param), name=args.name or args.out.resolve().name,
                         version=args.model_version)
    log.info("training %s on %d run(s), %d rows, features: %s", args.arch, len(frames),
             sum(len(f) for f in frames), ", ".join(frames[0].features))
    with tqdm(total=args.epochs, desc="train", unit="epoch", file=sys.stderr, disable=None) as bar:
        def progress(epoch: int, train_loss: float, val_loss: float) -> None:
            bar.update(1)
            bar.set_postfix(train=f"{train_loss:.4g}", val=f"{val_loss:.4g}")
            if bar.disable:
                log.info("epoch %d: train loss %.4g, validation loss %.4g", epoch, train_loss, val_loss)
        result = train(frames, config, validation, progress)
    result.bundle.training["left_out"] = left_out(args, frames)
    bundle = save(result, args.out)
    if args.onnx:
        _export_onnx(args.out)
    plots.training_loss(result.history, args.out / "training_loss.png")
    plots.score_histogram(result.validation_scores, bundle.threshold.value, bundle.threshold.method,
                          args.out / "score_histogram.png")
    t = bundle.training
    print(f"wrote {args.out}: {bundle.arch}, window {bundle.window}, {len(bundle.features)} features, "
          f"{t['epochs_run']} epochs (best {t['best_epoch']}), threshold {bundle.threshold.value:.6g} "
          f"({bundle.threshold.method} {bundle.threshold.params} x {bundle.threshold.scale:g}"
          + (f"; {bundle.false_alarm_budget.describe()}" if bundle.false_alarm_budget else "") + "), "
          f"alert after {bundle.alert.enter_after} / clear after {bundle.alert.leave_after} window(s), "
          f"{t['seconds']} s")
    budget = bundle.false_alarm_budget
    if budget is not None and budget.bound_per_day is not None and budget.bound_per_day > 2 * budget.per_day:
        print(f"unverified budget: the {describe_span(budget.held_out_days)} held out vouch for at most "
              f"{budget.bound_per_day:.3g} alert episodes per device-day by themselves, more than twice the "
              f"{budget.per_day:g} asked for, so the threshold rests on the fitted tail alone; check the realised "
              f"rate with evaluate on fresh normal data, or set the threshold again on a longer history "
              f"(calibrate)")
    if budget is None:
        estimate = stored_estimate(bundle)
        print("false alarms: " + (estimate.describe() if estimate
                                  else "no estimate (no validation tail, or no sample period)")
              + "; no budget set (--false-alarms-per-day N sets one)")
    if not t["windows_validation"]:
        fraction = args.validation_fraction  # a run needs a window on each side of its cut
        shortest = math.ceil(bundle.window / min(fraction, 1 - fraction)) if fraction else None
        print("no held-out tail: " + (f"no normal run is {shortest} rows long (a window on each side of the "
                                      "--validation-fraction cut), "
                                      if shortest else "--validation-fraction is 0, ")
              + f"so the model saw every one of its {t['windows_train']} windows and the threshold is set on "
              "errors it was fitted to, which are optimistic; expect more alarms than its rule says, and "
              "train on a longer history")
    evidence = SensorEvidence.from_dict(t[SENSOR_EVIDENCE_KEY]) if bundle.score.feature_scale else None
    thin = evidence.thin() if evidence else []
    if thin:
        centred = [f for f in thin if f in bundle.preprocess.demean]
        shown = thin[:THIN_LISTED]
        more = f" and {len(thin) - len(shown)} more (anomalyd inspect --model {args.out} lists them)" \
            if len(thin) > len(shown) else ""
        print(f"thin evidence: training shows {', '.join(shown)}{more} in fewer than {THIN_EVIDENCE:g} independent "
              f"stretches, so their normal range is barely known and their votes are scaled down "
              f"({evidence.describe(shown)})"
              + (f"; the model reads {', '.join(centred) if len(centred) <= THIN_LISTED else f'{len(centred)} of them'}"
                 f" centred on each window, their level is left to the sensor-health checks" if centred else "")
              + "; train on a longer history to trust them")
    if args.shift_check and bundle.health is not None:
        watched = [bundle.features[i] for i in bundle.health.shift_watched()]
        print("shift check watches " + (", ".join(watched) if watched else "no sensor")
              + f" (quiet sensors whose level training shows in at least {THIN_EVIDENCE:g} independent stretches)")
    if t.get("self_tuning"):
        chosen = t["self_tuning"]["chosen"]
        print(f"self-tuned on injected faults: score = {chosen['score_reduction']} over "
              f"{'normalised ' if chosen['normalised'] else ''}feature errors, alert after {chosen['enter_after']} "
              f"(candidates: anomalyd inspect --model {args.out})")
    return 0
