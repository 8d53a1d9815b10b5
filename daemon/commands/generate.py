"""`anomalyd generate`: synthetic pump data with labelled faults (demo, docs, tests)."""

from __future__ import annotations

import argparse
from pathlib import Path

from daemon.offline import synthetic
from daemon.commands.common import formatter
from daemon.core.errors import UserError

EPILOG = f"""\
Writes OUT/normal.csv (fault-free history to train on) and OUT/faults.csv (the same process
with one labelled fault of each kind: {', '.join(synthetic.FAULTS)}). Sensors: {', '.join(synthetic.FEATURES)}.
With --devices N both files hold a fleet: N pumps (pump-1..pump-N, a `device` column), each
with its own noise and load cycle, whose faults come in a different order on each pump; every
command reads such a file one device at a time (README, "A fleet in one file").

examples:
  anomalyd generate --out data/synthetic          # this is how models/demo was made ...
  anomalyd train --data data/synthetic/normal.csv --out models/demo --seed 0   # ... with this
  anomalyd generate --out data/fleet --devices 4
"""


def add_parser(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser("generate", help=summary, formatter_class=formatter,
                       description="Generate pump-like sensor data with injected faults.", epilog=EPILOG)
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the CSV files")
    p.add_argument("--normal-rows", type=int, default=6000, help="(default: %(default)s)")
    p.add_argument("--fault-rows", type=int, default=3000, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--devices", type=int, default=1, metavar="N",
                   help="pumps per file; above 1 the files get a device column (default: %(default)s)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for name in ("normal_rows", "fault_rows", "devices"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    if args.devices == 1:
        normal = synthetic.normal(args.normal_rows, args.seed).write_csv(args.out / "normal.csv")
        faults = synthetic.with_faults(args.fault_rows, args.seed + 1).write_csv(args.out / "faults.csv")
        print(f"wrote {normal} ({args.normal_rows} rows) and {faults} ({args.fault_rows} rows)")
        return 0
    pumps = [f"pump-{i + 1}" for i in range(args.devices)]
    kinds = synthetic.FAULTS
    normal = synthetic.write_fleet_csv(args.out / "normal.csv", {
        pump: synthetic.normal(args.normal_rows, args.seed + 2 * i) for i, pump in enumerate(pumps)})
    faults = synthetic.write_fleet_csv(args.out / "faults.csv", {
        pump: synthetic.with_faults(args.fault_rows, args.seed + 2 * i + 1, kinds[i % len(kinds):] + kinds[:i % len(kinds)])
        for i, pump in enumerate(pumps)})
    print(f"wrote {normal} and {faults}: {args.devices} devices, {args.normal_rows} and {args.fault_rows} rows each")
    return 0
