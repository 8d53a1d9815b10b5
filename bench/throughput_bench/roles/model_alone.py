"""The model without the daemon around it: the ceiling every worker figure is compared with.

The bundle's model runs on pre-built, pre-scaled tensors, back to back, for a fixed time;
also one window per `score_windows` call (what a worker without batching would do), and
beside a thread busy in Python (what the MQTT thread is at full ingest load).
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import daemon_api
from ..common import MAX_BATCH, reply, rss_mb
from .timing import Speed, timed
from .training import ROWS, generated_series


def window_pool(scorer: daemon_api.Scorer, size: int = 4096) -> np.ndarray:
    """Windows of the bundle's shape, unscaled, as ingest would queue them: cut from a fresh
    stretch of the series the bench's bundles are trained on, so that they look like normal
    operation to the sensor-health checks (windows of independent random readings would all
    be flagged as spikes, the rare path in service)."""
    _, values = generated_series(size + scorer.window - 1, seed=1, start=ROWS)
    return np.ascontiguousarray(sliding_window_view(values, scorer.window, axis=0).transpose(0, 2, 1))


class ModelRuns:
    """Timed loops of the model alone, each `seconds` long."""

    def __init__(self, scorer: daemon_api.Scorer, pool: np.ndarray, seconds: float) -> None:
        self.scorer = scorer
        self.pool = pool
        self.seconds = seconds
        self.batch = np.ascontiguousarray(scorer.bundle.scaler.transform(pool[:MAX_BATCH]))
        self.single = np.ascontiguousarray(self.batch[:1])
        scorer.backend(self.batch)  # warm up (allocations, lazy init)
        scorer.backend(self.single)

    def batch_of_64(self) -> Speed:
        return self._repeat(self.batch)

    def batch_of_1(self) -> Speed:
        return self._repeat(self.single)

    def beside_busy_thread(self, switch_interval: float) -> Speed:
        """The batch of 64 while another thread runs pure Python, as the MQTT thread does at
        full ingest load: every return of the model to Python must win the GIL back, waiting
        up to the switch interval each time."""
        stop = threading.Event()
        previous = sys.getswitchinterval()
        sys.setswitchinterval(switch_interval)

        def spin() -> None:
            while not stop.is_set():
                pass

        spinner = threading.Thread(target=spin, daemon=True)
        spinner.start()
        try:
            return self.batch_of_64()
        finally:
            stop.set()
            spinner.join()
            sys.setswitchinterval(previous)

    def one_window_per_call(self) -> Speed:
        """`score_windows` on one unscaled window at a time: scaling, model and errors per call."""
        def loop() -> int:
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < self.seconds:
                self.scorer.score_windows(self.pool[n % len(self.pool)][None])
                n += 1
            return n
        return timed(loop)

    def _repeat(self, x: np.ndarray) -> Speed:
        def loop() -> int:
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < self.seconds:
                self.scorer.backend(x)
                n += len(x)
            return n
        return timed(loop)


def rss_growth(run, pool: np.ndarray) -> float:
    """MiB of RSS that batches of every size from 1 to MAX_BATCH, twice over, leave behind."""
    run(pool)  # first-use allocations of the path itself are not growth
    before = rss_mb()
    for _ in range(2):
        for n in range(1, MAX_BATCH + 1):
            run(pool[:n])
    return rss_mb() - before


def role_shapes(spec: dict) -> None:
    """RSS as batches of every size go through the model: first as the daemon runs it (loaded
    and warmed up as the service does, then `score_windows`), then the same batches straight
    into the model, unpadded (torch only), in the same process."""
    scorer = daemon_api.load_scorer(spec["bundle"], spec["runtime"])
    scorer.warm_up(MAX_BATCH)
    pool = window_pool(scorer, MAX_BATCH)
    out = {"daemon_mb": rss_growth(scorer.score_windows, pool)}
    if spec["runtime"] == "torch":
        out["unpadded_mb"] = rss_growth(daemon_api.unpadded_torch_model(scorer), pool)
    reply(out)



def role_model_threads(spec: dict) -> None:
    """The model alone at batch 64 on `threads` torch threads, set when it is loaded as the
    service does (one child per thread count: switching the count within a process is not what
    the daemon does), `reps` runs of `seconds`: their median windows/s."""
    import statistics

    scorer = daemon_api.load_scorer(spec["bundle"], "torch", spec["threads"])
    runs = ModelRuns(scorer, window_pool(scorer, MAX_BATCH), spec["seconds"])
    speeds = [runs.batch_of_64().wall for _ in range(spec["reps"])]
    reply({"windows_per_s": statistics.median(speeds), "runs": speeds})
