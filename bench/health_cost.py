"""What the sensor-health checks cost a window, against the model scoring the same windows.

    .venv/bin/python bench/health_cost.py [--window N] [--repeats N] [--json OUT]

The checks run on every scored window in the worker, beside the model, so their cost is a
share of the model's. On the simulated pump fleet (bench/fleet_sim.py, seed 0: 8 sensors,
window 20, `train`'s default; `--window 60` is the throughput bench's shape), fitted as
`anomalyd train` fits them, this times in one process, in interleaved
rounds so that load on the box touches every variant alike:
- the model alone: the bundle's LSTM on a batch of 64 scaled windows (`Scorer.backend`);
- `check_windows` on the same 64 raw windows (64 devices, one window each, as the live worker
  meets them) with every check but `relation`, with every check (`relation` of degree 2 over
  the sensors the others explain, the noise check's look-back of 3 windows, and `spike`), with
  every check but the noise look-back (`train --noisy-lookback 1`), and with every check but
  `spike` (`train --no-spike-check`).
It prints microseconds a window (the median over rounds) and each as a share of the model's.
The model is trained for one epoch: its cost does not depend on its weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet_sim import simulate_fleet  # noqa: E402  (bench/ is this script's directory)

from daemon.core.scoring import Scorer  # noqa: E402
from daemon.core.sensor_health import HealthState, check_windows  # noqa: E402
from daemon.core.windowing import windows  # noqa: E402
from daemon.offline.frames import Frame  # noqa: E402
from daemon.offline.training import TrainConfig, save, train  # noqa: E402

BATCH = 64


def timed(call, calls: int) -> float:
    """Seconds a call, over `calls` back-to-back calls."""
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=20,
                        help="window length the bundle is trained with; the checks' cost grows with it "
                             "(default: %(default)s, train's default; bench/throughput.py uses 60)")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    fleet = simulate_fleet(seed=0)
    frames = [Frame(f"pump {t.pump + 1}", t.timestamps[:fleet.split.train_end], t.values[:fleet.split.train_end],
                    list(fleet.features)) for t in fleet.timelines]
    print("training a one-epoch LSTM bundle on the fleet's training days ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as directory:
        save(train(frames, TrainConfig(window=args.window, epochs=1, seed=0, name="health-cost", spike_check=True)),
             Path(directory))
        scorer = Scorer.load(directory)  # the serving path: torch, one thread
    bundle = scorer.bundle
    if bundle.health is None or bundle.health.relation is None:
        raise SystemExit("health_cost: the bundle has no relation check to time")
    without = dataclasses.replace(bundle.health, relation=None)
    # `train --noisy-lookback 1`: no median over the last windows' step noise (the limits do not
    # change the cost)
    window_alone = dataclasses.replace(bundle.health, noisy_windows=1)
    no_spike = dataclasses.replace(bundle.health, spike_above=np.zeros_like(bundle.health.spike_above))
    test = fleet.timelines[0].values[fleet.split.test_counted:]
    raw = np.ascontiguousarray(windows(test[:BATCH + bundle.window - 1], bundle.window, 1))
    states = [HealthState() for _ in range(BATCH)]
    scaled = scorer.model_input(raw).values

    variants = {
        "model alone (LSTM, batch 64)": lambda: scorer.backend(scaled),
        "health checks without relation": lambda: check_windows(without, bundle.features, raw, states),
        "health checks with relation": lambda: check_windows(bundle.health, bundle.features, raw, states),
        "health checks with relation, noise judged on the window alone": lambda: check_windows(
            window_alone, bundle.features, raw, states),
        "health checks with relation, no spike check": lambda: check_windows(no_spike, bundle.features, raw, states),
    }
    calls = {name: max(1, int(0.2 / timed(call, 3))) for name, call in variants.items()}  # ~0.2 s a round
    rounds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, call in variants.items():
            rounds[name].append(timed(call, calls[name]) / BATCH * 1e6)
    per_window = {name: statistics.median(values) for name, values in rounds.items()}
    model = per_window["model alone (LSTM, batch 64)"]
    relation = bundle.health.relation
    print(f"fleet seed 0: {len(bundle.features)} sensors, window {bundle.window}, relation degree {relation.degree} "
          f"over {int((relation.limit > 0).sum())} watched sensors; median of {args.repeats} rounds\n")
    print("| what | µs a window | share of the model's |")
    print("|---|---|---|")
    for name, value in per_window.items():
        print(f"| {name} | {value:.1f} | {value / model:.3f} |")
    added = per_window["health checks with relation"] - per_window["health checks without relation"]
    print(f"| relation check alone (the difference) | {added:.1f} | {added / model:.3f} |")
    lookback = (per_window["health checks with relation"]
                - per_window["health checks with relation, noise judged on the window alone"])
    print(f"| noise look-back alone (the difference) | {lookback:.1f} | {lookback / model:.3f} |")
    spike = per_window["health checks with relation"] - per_window["health checks with relation, no spike check"]
    print(f"| spike check alone (the difference) | {spike:.1f} | {spike / model:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"per_window_us": per_window, "relation_added_us": added,
                                         "lookback_added_us": lookback, "spike_added_us": spike,
                                         "rounds_us": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
