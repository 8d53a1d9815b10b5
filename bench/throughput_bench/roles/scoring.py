"""Scoring: the model alone vs the worker vs one window per call, for one bundle and runtime.

The box's speed drifts by tens of percent within seconds, so every worker run sits between
two runs of the model alone and is divided by their mean (a ratio against a run taken several
seconds earlier measures the drift as much as the worker); the figures are medians over
repetitions of that sequence.
"""

from __future__ import annotations

import os
import statistics
import sys
from dataclasses import dataclass

from .. import daemon_api
from ..common import PART_LOAD, PYTHON_SWITCH_INTERVAL, reply
from .model_alone import ModelRuns, window_pool
from .timing import Speed
from .worker_runs import WorkerRuns


@dataclass
class Repetition:
    speeds: dict[str, Speed]       # by kind of run
    ratios: dict[str, float]       # each against the runs of the model alone around it
    model_share: dict[str, float]  # worker runs: share of their wall time in the model


def repetition(model: ModelRuns, workers: WorkerRuns, sink_path: str) -> Repetition:
    before = model.batch_of_64()
    count = max(1000, int(before.wall * model.seconds))
    with_file = workers.flat_out(count, sink_path)
    middle = model.batch_of_64()
    counting = workers.flat_out(count, None)
    after = model.batch_of_64()
    single = model.batch_of_1()
    contended = model.beside_busy_thread(daemon_api.DAEMON_SWITCH_INTERVAL)
    naive = model.one_window_per_call()
    contended_default = model.beside_busy_thread(PYTHON_SWITCH_INTERVAL)
    last = model.batch_of_64()
    around_file, around_counting, around_rest = before.mean(middle), middle.mean(after), after.mean(last)
    speeds = {"raw": before.mean(after), "raw_batch1": single, "raw_gil_contended": contended,
              "raw_gil_contended_python_default": contended_default,
              "worker": with_file.speed, "worker_nosink": counting.speed, "naive": naive}
    ratios = {
        "worker": with_file.speed.wall / around_file.wall,
        "worker_nosink": counting.speed.wall / around_counting.wall,
        "worker_cpu": with_file.speed.cpu / around_file.cpu,
        "worker_nosink_cpu": counting.speed.cpu / around_counting.cpu,
        "naive": with_file.speed.wall / naive.wall,
        "naive_cpu": with_file.speed.cpu / naive.cpu,
        "naive_ceiling": around_rest.wall / naive.wall,  # a worker as fast as the model
        "batching": around_rest.wall / single.wall,
        "contended": contended.wall / around_rest.wall,
        "contended_python_default": contended_default.wall / around_rest.wall,
    }
    return Repetition(speeds, ratios, {"worker": with_file.model_share, "worker_nosink": counting.model_share})


def part_load(workers: WorkerRuns, reps: list[Repetition]) -> dict:
    """The worker fed a share of the model's median batch-64 rate, against the model's CPU."""
    median = statistics.median
    raw_cpu_us = 1e6 / median(r.speeds["raw"].cpu for r in reps)
    result = workers.paced(PART_LOAD * median(r.speeds["raw"].wall for r in reps))
    result["raw_cpu_us_per_window"] = raw_cpu_us
    result["cpu_ratio"] = raw_cpu_us / result["cpu_us_per_window"]
    return result


def summarise(reps: list[Repetition], part_load_result: dict) -> dict:
    median = statistics.median
    kinds = reps[0].speeds.keys()
    runs = {k: [r.speeds[k].wall for r in reps] for k in kinds}
    cpu = {k: [r.speeds[k].cpu for r in reps] for k in kinds}
    ratios = {k: [r.ratios[k] for r in reps] for k in reps[0].ratios}
    ratio = {k: median(v) for k, v in ratios.items()}
    return {"median": {k: median(v) for k, v in runs.items()}, "part_load": part_load_result,
            "median_per_cpu_s": {k: median(v) for k, v in cpu.items()},
            "runs": runs, "runs_per_cpu_s": cpu, "ratios": ratios,
            "worker_ratio": ratio["worker"],
            "worker_nosink_ratio": ratio["worker_nosink"],
            "naive_speedup": ratio["naive"],
            "naive_speedup_ceiling": ratio["naive_ceiling"],
            "model_batching_gain": ratio["batching"],
            "gil_contended_ratio": ratio["contended"],
            "gil_contended_ratio_python_default": ratio["contended_python_default"],
            "worker_ratio_cpu": ratio["worker_cpu"],
            "worker_nosink_ratio_cpu": ratio["worker_nosink_cpu"],
            "naive_speedup_cpu": ratio["naive_cpu"],
            "worker_model_share": median(r.model_share["worker"] for r in reps),
            "worker_nosink_model_share": median(r.model_share["worker_nosink"] for r in reps),
            "torch_imported": "torch" in sys.modules}


def role_scoring(spec: dict) -> None:
    sys.setswitchinterval(daemon_api.DAEMON_SWITCH_INTERVAL)
    scorer = daemon_api.load_scorer(spec["bundle"], spec["runtime"])
    pool = window_pool(scorer)
    model = ModelRuns(scorer, pool, spec["seconds"])
    workers = WorkerRuns(scorer, pool, spec["seconds"])
    reps = [repetition(model, workers, os.path.join(spec["tmp"], f"scores-{rep}.lp")) for rep in range(spec["reps"])]
    reply(summarise(reps, part_load(workers, reps)))
