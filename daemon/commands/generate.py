"""`anomalyd generate`: synthetic pump data with labelled faults (demo, docs, tests)."""

from __future__ import annotations

import argparse
from pathlib import Path

from daemon.offline import synthetic
from daemon.commands.common import formatter

EPILOG = f"""\
Writes OUT/normal.csv (fault-free history to train on) and OUT/faults.csv (the same process
with one labelled fault of each kind: {', '.join(synthetic.FAULTS)}). Sensors: {', '.join(synthetic.FEATURES)}.

example (this is how models/demo was made):
  anomalyd generate --out data/synthetic
  anomalyd train --data data/synthetic/normal.csv --out models/demo --seed 0
"""


def add_parser(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser("generate", help=summary, formatter_class=formatter,
                       description="Generate pump-like sensor data with injected faults.", epilog=EPILOG)
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the CSV files")
    p.add_argument("--normal-rows", type=int, default=6000, help="(default: %(default)s)")
    p.add_argument("--fault-rows", type=int, default=3000, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    normal = synthetic.normal(args.normal_rows, args.seed).write_csv(args.out / "normal.csv")
    faults = synthetic.with_faults(args.fault_rows, args.seed + 1).write_csv(args.out / "faults.csv")
    print(f"wrote {normal} ({args.normal_rows} rows) and {faults} ({args.fault_rows} rows)")
    return 0
