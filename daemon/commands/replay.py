"""`anomalyd replay`: publish a CSV as one device's readings, for demos and load tests."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from daemon.commands.common import add_data_options, formatter, read_frames, split_list
from daemon.core.errors import UserError
from daemon.offline.publisher import Publisher, payload

EPILOG = """\
Each row becomes one JSON message {"ts": <row time>, "<feature>": <value>, ...} on TOPIC,
where {device} is replaced by --device. Without --rate or --realtime rows are sent as fast
as the broker takes them; --shift-to-now moves the timestamps so the last row is 'now'
(handy when the database drops points outside its retention).

examples:
  anomalyd replay --data faults.csv --device pump-1 --rate 50
  anomalyd replay --data faults.csv --device pump-2 --realtime --host broker.local --port 1883
"""


def add_parser(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser("replay", help=summary,
                       formatter_class=formatter, description="Replay a CSV file into MQTT.", epilog=EPILOG)
    p.add_argument("--data", required=True, metavar="CSV", help="CSV with a time column and feature columns")
    p.add_argument("--device", required=True, metavar="ID", help="device id to publish as")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=0.0, metavar="HZ", help="messages per second (0 = unpaced)")
    pace.add_argument("--realtime", action="store_true", help="keep the original spacing between rows")
    p.add_argument("--host", default="127.0.0.1", help="broker host (default: %(default)s)")
    p.add_argument("--port", type=int, default=1883, help="broker port (default: %(default)s)")
    p.add_argument("--topic", default="sensors/{device}/data", help="topic template (default: %(default)s)")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1, help="(default: %(default)s)")
    p.add_argument("--features", metavar="A,B,C", help="columns to send (default: every numeric column)")
    p.add_argument("--shift-to-now", action="store_true", help="rebase timestamps so the last row is now")
    add_data_options(p, labels_default="anomaly")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.rate < 0:
        raise UserError(f"--rate must be >= 0 (got {args.rate})")
    frame = read_frames([args.data], args, split_list(args.features), ("changepoint",))[0]
    timestamps = frame.timestamps + (time.time() - frame.timestamps[-1] if args.shift_to_now else 0.0)
    topic = args.topic.replace("{device}", args.device)
    publisher = Publisher(args.host, args.port, args.qos)
    started = time.monotonic()
    try:
        for i in tqdm(range(len(frame)), desc=f"replay {args.device}", unit="msg", file=sys.stderr, disable=None):
            due = (timestamps[i] - timestamps[0] if args.realtime else i / args.rate if args.rate else 0.0)
            delay = started + due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            publisher.publish(topic, payload(timestamps[i], frame.features, frame.values[i]))
    finally:
        publisher.close()
    print(f"published {len(frame)} readings of {Path(args.data).name} as {args.device} on {topic} "
          f"in {time.monotonic() - started:.1f} s")
    return 0
