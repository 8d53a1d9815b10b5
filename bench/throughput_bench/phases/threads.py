"""`batching.torch_threads` 1 against 2, end to end: does the model's gain from a second torch
thread survive the rest of the service on the same cores?

The model alone runs faster on two torch threads, but the service also runs its MQTT thread,
the worker thread and the sink's writer, and on a 2-core box a second torch thread takes a core
they need. So each run is the whole service (MQTT ingest, ring buffers, worker, model, file
sink) at stride 1 on the LSTM, every device's window one reading short of full, then a
saturating blast (the bisection's starting point in `sustained`): the windows it scores a
second, its ingest rate and its CPU a window. Runs come in pairs, one daemon of each setting,
the order alternating from pair to pair (the box's speed drifts); the figure is the median of
the pairs' ratios, 2 threads over 1, with their range. The model alone on 1 and 2 threads
(a child per run, the count set at load as the service sets it), measured in the same run,
says how much of its gain the service keeps. The box's load average before and after is
noted: other work on the cores is what a second torch thread is most sensitive to.
"""

from __future__ import annotations

import os
import statistics

from ..harness import Harness
from .sustained import DEVICES, Fleet, fill_windows, saturated_blast

THREADS = (1, 2)


def end_to_end(h: Harness, threads: int, per_device: int) -> dict:
    """One daemon on `threads` torch threads: windows filled, then one saturating blast."""
    fleet = Fleet("t", DEVICES, 1)
    daemon = h.daemon("lstm", 1, 0, "torch", torch_threads=threads)
    try:
        fill_windows(h, daemon, fleet)
        return saturated_blast(h, daemon, fleet, per_device)
    finally:
        daemon.stop()


def model_alone(h: Harness, pairs: int) -> dict:
    """The LSTM alone at batch 64 on 1 and 2 torch threads, a child for each run, in pairs of
    alternating order: windows/s of each run and the pairs' ratios."""
    runs: dict[str, list[float]] = {f"threads_{threads}": [] for threads in THREADS}
    ratios = []
    for i in range(pairs):
        speed = {}
        for threads in THREADS if i % 2 == 0 else THREADS[::-1]:
            spec = {"bundle": h.bundles["lstm"], "threads": threads, "seconds": 1.0, "reps": 3}
            child = h.child("_model_threads", spec, f"{h.name(f'model-t{threads}')}.log")
            speed[threads] = child.wait_result(120)["windows_per_s"]
            runs[f"threads_{threads}"].append(speed[threads])
        ratios.append(speed[2] / speed[1])
    return {"windows_per_s": {key: statistics.median(values) for key, values in runs.items()}, "runs": runs,
            "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}}


def torch_threads(h: Harness) -> dict:
    load_before = os.getloadavg()[0]
    pairs = []
    per_device = 15 if h.quick else 30
    for i in range(3 if h.quick else 5):
        order = THREADS if i % 2 == 0 else THREADS[::-1]
        runs = {threads: end_to_end(h, threads, per_device) for threads in order}
        one, two = runs[1], runs[2]
        pair = {"first": order[0], "threads_1": one, "threads_2": two,
                "scored_ratio": two["scored_windows"] / one["scored_windows"],
                "ingest_ratio": two["ingest"] / one["ingest"],
                "cpu_ratio": two["cpu_us_per_window"] / one["cpu_us_per_window"]}
        pairs.append(pair)
        h.log(f"torch_threads pair {i + 1} ({order[0]} first): scored {one['scored_windows']:,.0f} / "
              f"{two['scored_windows']:,.0f} windows/s on 1 / 2 threads ({pair['scored_ratio']:.2f}x), CPU "
              f"{one['cpu_us_per_window']:.0f} / {two['cpu_us_per_window']:.0f} us a window")
    alone = model_alone(h, len(pairs))
    h.log(f"torch_threads: the model alone at batch 64 on 2 threads is {alone['ratio']['median']:.2f}x its speed "
          f"on 1 ({alone['ratio']['min']:.2f}-{alone['ratio']['max']:.2f})")

    def spread(key: str) -> dict:
        values = [p[key] for p in pairs]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    return {"pairs": pairs, "scored_ratio": spread("scored_ratio"), "ingest_ratio": spread("ingest_ratio"),
            "cpu_ratio": spread("cpu_ratio"), "model_alone": alone,
            "median": {f"threads_{threads}": {key: statistics.median(p[f"threads_{threads}"][key] for p in pairs)
                                              for key in ("scored_windows", "ingest", "cpu_us_per_window", "dropped")}
                       for threads in THREADS},
            "blast_per_device": per_device, "devices": DEVICES,
            "load_average_1min": [load_before, os.getloadavg()[0]]}
