"""Training on a long history: time per epoch and peak memory of `anomalyd train`.

    .venv/bin/python bench/train_long.py              # 1,000,000 rows (11.6 days at 1 s), 10 sensors
    .venv/bin/python bench/train_long.py --rows 200000

Writes a synthetic CSV (smooth signals plus noise, ten sensors), then runs `anomalyd train` on
it twice, each in its own process: with the defaults, where an epoch fits a fresh draw of
`--max-windows-per-epoch` windows, and with that cap above the number of windows, where an epoch
fits every window (the baseline, one epoch only: it is the slow one). Prints each run's wall time,
epochs, seconds per epoch and peak resident memory (the child's own, from wait4), and the ratio
of seconds per epoch. The figures are in docs/performance.md ("Training on a long history").
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ANOMALYD = [sys.executable, "-m", "daemon"]


def write_history(path: Path, rows: int, seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    steps = np.arange(rows)
    base = np.sin(steps / 300) + 0.05 * rng.normal(size=rows)
    columns = [base, 2 * base + 0.1 * rng.normal(size=rows), np.cos(steps / 300) + 0.05 * rng.normal(size=rows)]
    columns += [k * base + 0.1 * rng.normal(size=rows) for k in range(1, 8)]
    table = np.column_stack([1.7e9 + steps, *columns])
    np.savetxt(path, table, delimiter=",", fmt=["%.0f"] + ["%.5g"] * len(columns), comments="",
               header="timestamp," + ",".join(f"s{i}" for i in range(len(columns))))


def run_train(data: Path, out: Path, *extra: str) -> dict:
    """One `anomalyd train` in a child process: wall seconds, epochs run, peak RSS in MB."""
    started = time.perf_counter()
    child = subprocess.Popen([*ANOMALYD, "train", "--data", str(data), "--out", str(out), "--no-onnx", *extra],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"anomalyd train {' '.join(extra)} failed:\n{output[-2000:]}")
    epochs = int(re.search(r"(\d+) epochs \(best", output).group(1))
    fit = re.findall(r"(\d\d:\d\d:\d\d,\d+) INFO daemon.commands.train: (?:training|epoch)", output)
    first, last = (_clock(fit[0]), _clock(fit[-1])) if len(fit) > 1 else (0.0, 0.0)
    return {"seconds": seconds, "epochs": epochs, "per_epoch": (last - first) / epochs,
            "peak_mb": usage.ru_maxrss / 1024}


def _clock(stamp: str) -> float:
    hours, minutes, rest = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest.replace(",", "."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of history (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="anomalyd-train-long-") as directory:
        data = Path(directory) / "history.csv"
        print(f"writing {args.rows:,} rows ...", file=sys.stderr)
        write_history(data, args.rows)
        print("training with the defaults ...", file=sys.stderr)
        capped = run_train(data, Path(directory) / "capped")
        print("training one epoch over every window ...", file=sys.stderr)
        every = run_train(data, Path(directory) / "every", "--epochs", "1", "--max-windows-per-epoch", str(args.rows))
    print(f"| run ({args.rows:,} rows, 10 sensors, window 20) | wall time | epochs | s per epoch | peak RSS |")
    print("|---|---|---|---|---|")
    for name, run in (("defaults (a draw of 50,000 windows per epoch)", capped), ("every window, one epoch", every)):
        print(f"| {name} | {run['seconds']:.0f} s | {run['epochs']} | {run['per_epoch']:.1f} | {run['peak_mb']:.0f} MB |")
    print(f"\nseconds per epoch, defaults / every window: {capped['per_epoch'] / every['per_epoch']:.3f}")


if __name__ == "__main__":
    main()
