"""`anomalyd replay`: publish a CSV as one device's readings, or a fleet file's devices, for
demos and load tests."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from daemon.commands.common import add_data_options, formatter, read_frames, split_list
from daemon.core.errors import UserError
from daemon.offline.frames import Frame
from daemon.offline.publisher import Publisher, payload

EPILOG = """\
Each row becomes one JSON message {"ts": <row time>, "<feature>": <value>, ...} on TOPIC,
where {device} is replaced by the row's device: --device for a file of one device; for a
fleet's file, whose device column names each row's device (--device-column), every device's
rows interleaved in time order (or only --device's). Without --rate or --realtime rows are sent
as fast as the broker takes them; --shift-to-now moves the timestamps so the last row is 'now'
(handy when the database drops points outside its retention).

examples:
  anomalyd replay --data faults.csv --device pump-1 --rate 50
  anomalyd replay --data faults.csv --device pump-2 --realtime --host broker.local --port 1883
  anomalyd replay --data fleet.csv --realtime
"""


def add_parser(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser("replay", help=summary,
                       formatter_class=formatter, description="Replay a CSV file into MQTT.", epilog=EPILOG)
    p.add_argument("--data", required=True, metavar="CSV", help="CSV with a time column and feature columns")
    p.add_argument("--device", metavar="ID", help="device id to publish as (needed for a file without a device "
                                                "column); with one, replay only this device's rows")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=0.0, metavar="HZ", help="messages per second (0 = unpaced)")
    pace.add_argument("--realtime", action="store_true", help="keep the original spacing between rows")
    p.add_argument("--host", default="127.0.0.1", help="broker host (default: %(default)s)")
    p.add_argument("--port", type=int, default=1883, help="broker port (default: %(default)s)")
    p.add_argument("--topic", default="sensors/{device}/data", help="topic template (default: %(default)s)")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1, help="(default: %(default)s)")
    p.add_argument("--features", metavar="A,B,C", help="columns to send (default: every numeric column)")
    p.add_argument("--shift-to-now", action="store_true", help="rebase timestamps so the last row is now")
    add_data_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.rate < 0:
        raise UserError(f"--rate must be >= 0 (got {args.rate})")
    runs = read_frames([args.data], args, split_list(args.features), ("changepoint",))
    if not runs[0].device:
        if args.device is None:
            raise UserError(f"--data {args.data}: no device column, so name the device: --device ID")
        runs = [replace(runs[0], device=args.device)]
    elif args.device is not None:
        runs = [frame for frame in runs if frame.device == args.device]
        if not runs:
            raise UserError(f"--device {args.device!r}: no rows of that device in {args.data}")
    readings = _in_time_order(runs)
    shift = time.time() - readings.timestamps[-1] if args.shift_to_now else 0.0
    features = runs[0].features
    publisher = Publisher(args.host, args.port, args.qos)
    started = time.monotonic()
    who = args.device or f"{len(runs)} devices"
    try:
        for i in tqdm(range(len(readings.timestamps)), desc=f"replay {who}", unit="msg", file=sys.stderr,
                      disable=None):
            due = (readings.timestamps[i] - readings.timestamps[0] if args.realtime
                   else i / args.rate if args.rate else 0.0)
            delay = started + due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            run = runs[readings.run[i]]
            publisher.publish(args.topic.replace("{device}", run.device),
                              payload(readings.timestamps[i] + shift, features, run.values[readings.row[i]]))
    finally:
        publisher.close()
    topic = args.topic.replace("{device}", runs[0].device if len(runs) == 1 else "{device}")
    print(f"published {len(readings.timestamps)} readings of {Path(args.data).name} as {who} on {topic} "
          f"in {time.monotonic() - started:.1f} s")
    return 0


@dataclass
class _Readings:
    """Every run's rows merged in time order: which run and row each one is."""

    timestamps: np.ndarray
    run: np.ndarray
    row: np.ndarray


def _in_time_order(runs: list[Frame]) -> _Readings:
    timestamps = np.concatenate([frame.timestamps for frame in runs])
    run = np.concatenate([np.full(len(frame), i) for i, frame in enumerate(runs)])
    row = np.concatenate([np.arange(len(frame)) for frame in runs])
    order = np.argsort(timestamps, kind="stable")
    return _Readings(timestamps[order], run[order], row[order])
