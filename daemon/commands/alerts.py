"""`anomalyd alerts`: the alert episodes the served model raised, one CSV row each, for an alarm
review: keep the rows of real faults (widened to the fault's span where it is known) and the
file is the confirmed incidents that `calibrate --incidents`, `train --incidents` and
`compare --labels` read. The shadow candidate's points are not listed (it raises nothing)."""

from __future__ import annotations

import argparse
import csv
import sys
from contextlib import nullcontext
from pathlib import Path

from daemon.commands.common import formatter
from daemon.commands.compare import SERVED, add_points_source, comparisons, read_alert_points
from daemon.core.errors import UserError

EPILOG = """\
Each row is one episode: device, the data time of its first and last window in alert (epoch
seconds), and the model that raised it. Episodes still open at the end of the points end at
their last window. After the review, the kept rows are the incidents file:

  anomalyd alerts --from-influx http://127.0.0.1:8086 --database anomalyd --since 1d --out review.csv
  # delete the false alarms from review.csv, keep the faults, save it as incidents.csv
  anomalyd calibrate --model models/current --out models/pump-v4 --incidents incidents.csv \\
      --from-influx http://127.0.0.1:8086 --database telegraf --measurement pump --start 1d

examples:
  anomalyd alerts --points demo-out/scores.lp
  anomalyd alerts --from-influx http://127.0.0.1:8086 --database anomalyd --since 7d --out review.csv
"""


def add_parser(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser("alerts", help=summary, formatter_class=formatter,
                       description="List the alert episodes the served model raised, per device, as CSV "
                                   "(device,start,end,model): the file an alarm review turns into the "
                                   "confirmed incidents.", epilog=EPILOG)
    add_points_source(p)
    p.add_argument("--out", type=Path, metavar="CSV", help="write here (default: standard output)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.out is not None and args.out.exists():
        raise UserError(f"--out {args.out}: already exists (a review file is not overwritten)")
    points, source = read_alert_points(args)
    rows = []
    for device, comparison in comparisons(points).items():
        model = ",".join(sorted(comparison.models[SERVED]))
        rows += [(episode.start, device, episode.end, model) for episode in comparison.episodes(SERVED)]
    rows.sort()
    with (open(args.out, "w", newline="", encoding="utf-8") if args.out else nullcontext(sys.stdout)) as handle:
        writer = csv.writer(handle)
        writer.writerow(["device", "start", "end", "model"])
        for start, device, end, model in rows:
            writer.writerow([device, f"{start:.3f}", f"{end:.3f}", model])
    if args.out:
        print(f"wrote {args.out}: {len(rows)} alert episode(s) of {len({r[1] for r in rows})} device(s) from {source}",
              file=sys.stderr)
    return 0

