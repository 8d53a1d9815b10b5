"""Throughput, latency and memory of the live daemon, each against its ceiling.

    .venv/bin/python bench/throughput.py [--quick] [--json OUT] [--runtime torch|onnx|both]
                                         [--only PHASES] [--ingest-stride N] [--keep]

Everything runs on this host, on 127.0.0.1 only, in separate processes so that CPU and RSS
belong to the process being measured:

    parent (this script: orchestration only, no torch)
      ├─ mosquitto           private broker on a free loopback port, max_queued_messages raised
      ├─ publisher           raw MQTT 3.1.1 over a socket, packets encoded in bulk
      ├─ bare subscriber     paho-mqtt, json.loads per message and nothing else: the client's ceiling
      ├─ daemon              the real `Service` from a generated config, its FileSink timed
      └─ scoring / train     the model's ceiling on pre-built tensors, the worker, a per-window loop

The code is in bench/throughput_bench/: `phases/` is what the parent measures, `roles/` the
child processes, `daemon_api.py` everything taken from the daemon package, `report.py` the
printed figures. What each figure means: bench/README.md and docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the daemon package and tests.servers

from throughput_bench.common import MOSQUITTO  # noqa: E402  (bench/ is this script's directory)

PHASE_NAMES = ("scoring", "ingest", "sustained", "latency", "memory", "growth", "shapes", "threads")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs, about 3 minutes instead of 13")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures (and the raw results) here")
    parser.add_argument("--runtime", choices=("torch", "onnx", "both"),
                        help="inference runtime(s) to measure (default: both; torch only with --quick)")
    parser.add_argument("--ingest-stride", type=int, default=60,
                        help="stride for the ingest comparison, high enough that inference is not the "
                             "bottleneck (default: %(default)s)")
    parser.add_argument("--only", type=lambda s: s.split(","), metavar="PHASES",
                        help=f"comma list of: {', '.join(PHASE_NAMES)} (threads, batching.torch_threads 1 "
                             f"against 2 end to end, runs only when named)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only or ()) - set(PHASE_NAMES))
    if unknown:
        parser.error(f"--only: unknown phase {', '.join(unknown)} (choose from {', '.join(PHASE_NAMES)})")
    return args


def run(args: argparse.Namespace, workdir: Path) -> dict:
    """Train the bundles, then run the chosen phases; the results by phase."""
    from throughput_bench.harness import Harness
    from throughput_bench.phases import OPT_IN, PHASES, train

    harness = Harness(args, workdir)
    results: dict = {}
    try:
        train(harness)
        for name in args.only or [name for name in PHASES if name not in OPT_IN]:
            results[name] = PHASES[name](harness)
    finally:
        harness.close()
    results["seconds"] = round(harness.elapsed(), 1)
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_"):  # a child process: bench/throughput.py ROLE SPEC_JSON
        from throughput_bench.roles import role

        role(argv[0])(json.loads(argv[1]))
        return 0
    args = parse_args(argv)
    if not os.access(MOSQUITTO, os.X_OK):
        print(f"{MOSQUITTO} not found: install the Debian package mosquitto", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="anomalyd-bench-"))
    try:
        results = run(args, workdir)
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(results, args)
    return 0


def print_report(results: dict, args: argparse.Namespace) -> None:
    from throughput_bench.report import summary, table

    flat = summary(results, args.quick)
    print(table(results))
    print()
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in flat.items()}, indent=1))
    if args.json:
        args.json.write_text(json.dumps({**flat, "details": results}, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
