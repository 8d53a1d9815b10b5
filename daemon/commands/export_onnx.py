"""`anomalyd export-onnx`: write model.onnx into a bundle, for `model.runtime: onnx`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from daemon.commands.common import formatter

EPILOG = """\
Writes DIR/model.onnx from DIR/model.safetensors, after checking that ONNX Runtime reproduces
torch's output within 1e-5 on random windows (otherwise nothing is written). The file records
which weights it came from: the onnx runtime refuses it once the weights change, so re-export
after retraining a bundle in place.

Serve it with, in the daemon's config:
  model:
    path: DIR
    runtime: onnx
The daemon then does not import torch, which takes most of its memory; only onnxruntime is
needed (pip install 'anomalyd[onnx]'). docs/performance.md compares the two runtimes.

example:
  anomalyd export-onnx --model models/pump
"""


def add_parser(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser("export-onnx", help=summary, formatter_class=formatter,
                       description="Export a bundle's model to ONNX for the torch-free runtime.", epilog=EPILOG)
    p.add_argument("--model", required=True, type=Path, metavar="DIR", help="model bundle directory")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from daemon.offline.onnx_export import export_onnx

    started = time.monotonic()
    path = export_onnx(args.model)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB, matches torch within 1e-5, "
          f"{time.monotonic() - started:.1f} s)")
    return 0
