"""`anomalyd` command line. Every user error ends as one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from daemon import __version__
from daemon.errors import UserError

COMMANDS = ("train", "score", "evaluate", "inspect", "generate", "replay", "run", "check-config", "demo")

DESCRIPTION = """\
Streaming anomaly detection for industrial sensors.

Offline: train an autoencoder on normal history, score and evaluate labelled data.
Every command uses the same windowing, scaling and scoring code as the live daemon,
stored with the model in its bundle directory.

Typical flow:
  anomalyd train --data normal.csv --out models/pump
  anomalyd evaluate --model models/pump --data faults.csv --plot eval.png
  anomalyd score --model models/pump --data today.csv --out scores.csv

Run 'anomalyd COMMAND --help' for each command's options and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomalyd", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"anomalyd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"daemon.commands.{name.replace('-', '_')}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.run(args) or 0
    except UserError as exc:
        print(f"anomalyd {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
