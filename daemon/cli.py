"""`anomalyd` command line. Every user error ends as one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from daemon import __version__
from daemon.core.errors import UserError

# name -> one-line summary. A command's module (and so torch, matplotlib...) is imported only
# when that command runs or shows its help: `anomalyd run` should not pay for training code.
COMMANDS = {
    "train": "train a model bundle on normal data",
    "calibrate": "re-threshold a bundle on recent normal data (new bundle, same weights)",
    "score": "score a CSV file with a model bundle",
    "evaluate": "measure detection quality on labelled CSVs",
    "inspect": "summarise a model bundle",
    "run": "run the streaming service",
    "check-config": "validate a config file (and the bundle it names)",
    "export-onnx": "export a bundle's model to ONNX (torch-free runtime)",
    "replay": "publish a CSV file to MQTT as a device's readings",
    "demo": "run broker + service + replayed devices end to end",
    "generate": "write synthetic sensor data with labelled faults",
    "compare": "compare the served model's alerts with its shadow candidate's",
    "alerts": "list the alert episodes raised, as CSV for an alarm review (the incidents file)",
}

DESCRIPTION = """\
Streaming anomaly detection for industrial sensors.

Offline: train an autoencoder on normal history, score and evaluate labelled data.
Every command uses the same windowing, scaling and scoring code as the live daemon,
stored with the model in its bundle directory.

Typical flow:
  anomalyd train --data normal.csv --out models/pump
  anomalyd evaluate --model models/pump --data faults.csv --plot eval.png
  anomalyd score --model models/pump --data today.csv --out scores.csv

Live: anomalyd demo (everything on one machine), anomalyd run --config config.yaml.

Run 'anomalyd COMMAND --help' for each command's options and examples.
"""


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomalyd", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"anomalyd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in COMMANDS.items():
        if name == selected:
            importlib.import_module(f"daemon.commands.{name.replace('-', '_')}").add_parser(sub, summary)
        else:
            sub.add_parser(name, help=summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(selected).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        code = args.run(args) or 0
        sys.stdout.flush()  # here, so that a reader gone early (`| head`) ends below, not in a traceback at exit
        return code
    except BrokenPipeError:
        # The reader closed the pipe: stop quietly, as a Unix filter does. stdout goes to /dev/null
        # so that the interpreter's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except UserError as exc:
        print(f"anomalyd {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
