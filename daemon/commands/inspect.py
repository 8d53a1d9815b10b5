"""`anomalyd inspect`: what is in a bundle, for humans."""

from __future__ import annotations

import argparse
from pathlib import Path

from daemon.offline.budget import stored_estimate
from daemon.core.bundle import Bundle, load_bundle
from daemon.commands.common import formatter
from daemon.offline.sensor_evidence import SENSOR_EVIDENCE_KEY, THIN_EVIDENCE, SensorEvidence


def add_parser(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser("inspect", help=summary, formatter_class=formatter,
                       description="Validate a model bundle and print what it contains.",
                       epilog="example:\n  anomalyd inspect --model models/demo\n")
    p.add_argument("--model", required=True, type=Path, metavar="DIR", help="model bundle directory")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    b = load_bundle(args.model)
    t = b.training
    lines = [
        f"bundle        {b.path}",
        f"name          {b.name} (version {b.version}, created {b.created or 'unknown'})",
        f"architecture  {b.arch} {b.arch_params}",
        f"window        {b.window} samples, stride {b.stride}",
        "sample period " + (f"{b.sample_period_seconds:g} s (median step of the training data)"
                            if b.sample_period_seconds is not None else "unknown (not in this bundle)"),
        f"features      {', '.join(b.features)}",
        f"scaler        {b.scaler.kind}",
        f"score         {b.score.error} per feature, {b.score.reduction} over features"
        + (" (normalised per feature)" if b.score.feature_scale else "")
        + (f", not voting: {', '.join(b.score.exclude)}" if b.score.exclude else ""),
        *_evidence(b),
        f"threshold     {b.threshold.value:.6g} ({b.threshold.method} {b.threshold.params}, scale {b.threshold.scale:.4g})",
        *(["per device    " + ", ".join(f"{d} {v:.6g}" for d, v in b.threshold.devices.items())]
          if b.threshold.devices else []),
        *([f"calibrated    {b.calibration.get('windows')} windows from {b.calibration.get('data_start')} to "
           f"{b.calibration.get('data_stop')} (was {_previous_threshold(b.calibration)})"
           + (f"; left out {b.calibration['left_out']}" if b.calibration.get("left_out") else "")]
          if b.calibration else []),
        "false alarms  " + (b.false_alarm_budget.describe() + f"; budget chosen on: {b.false_alarm_budget.chosen_on}"
                            if b.false_alarm_budget else _no_budget(b)),
        "sensor health " + (b.health.describe(b.features) if b.health else "off (bundle written without checks)"),
        f"alert         after {b.alert.enter_after} anomalous window(s), clear after {b.alert.leave_after} normal",
    ]
    if b.preprocess.demean:
        lines.append(f"demeaned      {', '.join(b.preprocess.demean)}")
    if t:
        lines += [
            f"trained on    {', '.join(t.get('data', []))}"
            + (f"; left out {t['left_out']}" if t.get("left_out") else ""),
            f"rows          {t.get('rows_train')} train, {t.get('rows_validation')} validation",
            f"epochs        {t.get('epochs_run')} (best {t.get('best_epoch')}), {t.get('seconds')} s",
            f"val scores    mean {t.get('validation_score_mean', float('nan')):.4g}, "
            f"std {t.get('validation_score_std', float('nan')):.4g}",
        ]
    injected = t.get("injected_faults") or {}
    if injected:
        lines.append("injected faults (held-out tail, one feature at a time): detected / injected, "
                     "share of fault rows in alert")
        lines += [f"  {kind:20s} {f.get('detected', 0):>4}/{f.get('injected', 0):<4} "
                  f"{f.get('share_flagged', 0.0):.2f}" for kind, f in injected.items()]
    lines += _self_tuning(t.get("self_tuning"))
    print("\n".join(lines))
    return 0


def _evidence(b: Bundle) -> list[str]:
    """How many independent stretches of each sensor training saw, and how much that scaled
    down its vote (only bundles with per-sensor weights and the evidence stored)."""
    stored = b.training.get(SENSOR_EVIDENCE_KEY) if b.score.feature_scale else None
    if not stored:
        return []
    evidence = SensorEvidence.from_dict(stored)
    thin = evidence.thin()
    return [f"evidence      independent stretches of each sensor in training (its vote divided by): "
            f"{evidence.describe()}"
            + (f"; fewer than {THIN_EVIDENCE:g}: {', '.join(thin)}" if thin else "")]


def _no_budget(bundle: Bundle) -> str:
    estimate = stored_estimate(bundle)
    return "no budget (threshold set by its method alone)" + (f"; {estimate.describe()}" if estimate else "")


def _self_tuning(tuning: dict | None) -> list[str]:
    """The self-tuning's candidates, one line each, the chosen one marked."""
    if not tuning:
        return ["self-tuning   off (scoring knobs as configured)"]
    chosen = tuning.get("chosen", {})
    lines = [f"self-tuning   {len(tuning.get('candidates', []))} candidates in {tuning.get('seconds')} s, "
             f"not tuned: {tuning.get('not_tuned')}",
             "  reduction  weighted  enter   threshold  false alarms (allowed)  detected  share flagged"]
    for c in tuning.get("candidates", []):
        knobs = {k: c.get(k) for k in chosen}
        false_alarms = (f"{c.get('held_out_false_alarms', '?')} ({c.get('allowed_false_alarms', '?')})"
                        + ("" if c.get("eligible") else " over"))
        lines.append(f"{'*' if knobs == chosen else ' '} {c.get('score_reduction', '?'):10s} "
                     f"{'yes' if c.get('normalised') else 'no':9s} {c.get('enter_after', '?'):>5} "
                     f"{c.get('threshold', float('nan')):>11.4g}  {false_alarms:22s}"
                     f"{c.get('detection_rate', 0.0):>8.2f}  {c.get('share_flagged', 0.0):>13.2f}")
    return lines


def _previous_threshold(calibration: dict) -> str:
    """The threshold a calibration replaced, printed like the threshold line above it."""
    value = calibration.get("previous_threshold", {}).get("value")
    return "?" if value is None else f"{value:.6g}"
