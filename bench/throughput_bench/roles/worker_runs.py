"""The real Worker (queue, scaling, scoring, thresholds, hysteresis, events, sink) on its own,
fed from this process: flat out from a full queue, and paced at part load."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np

from .. import daemon_api
from ..common import MAX_BATCH
from .timing import CountingSink, Speed, WriteTiming, timed


@dataclass(frozen=True)
class WorkerRun:
    speed: Speed
    model_share: float  # share of the worker's wall time spent inside the model call


class WorkerRuns:
    def __init__(self, scorer: daemon_api.Scorer, pool: np.ndarray, seconds: float) -> None:
        self.scorer = scorer
        self.pool = pool
        self.seconds = seconds
        self._in_model = 0.0

    def _job(self, i: int):
        return daemon_api.window_job(i, self.pool[i % len(self.pool)])

    @contextlib.contextmanager
    def _model_clock(self):
        """Time every model call the worker makes (the backend is swapped for a timed one)."""
        backend = self.scorer.backend

        def timed_backend(x):
            started = time.perf_counter()
            try:
                return backend(x)
            finally:
                self._in_model += time.perf_counter() - started

        self._in_model = 0.0
        self.scorer.backend = timed_backend
        try:
            yield
        finally:
            self.scorer.backend = backend

    def flat_out(self, count: int, sink_path: str | None) -> WorkerRun:
        """`count` windows queued up front, then the worker started; timed until the sink has
        them all. With `sink_path`, the daemon's FileSink writes line protocol there;
        without, a sink that only counts."""
        if sink_path:
            timing = WriteTiming(count)
            sink = daemon_api.file_sink(sink_path, timing)
        else:
            sink = timing = CountingSink(count)
        bench = daemon_api.build_worker(self.scorer, sink, count, MAX_BATCH)
        for i in range(count):
            bench.queue.put(self._job(i))

        def loop() -> int:
            bench.worker.start()
            timing.reached.wait(60)
            return timing.count

        with self._model_clock():
            wall = time.perf_counter()
            speed = timed(loop)
            wall = time.perf_counter() - wall
        bench.worker.stop(drain=False, timeout=5)
        sink.close()
        return WorkerRun(speed, self._in_model / wall)

    def paced(self, rate: float) -> dict:
        """The worker fed `rate` windows/s from this thread, as ingest would at part load:
        CPU-us per window (the feeding loop's few us included) and windows per forward pass."""
        sink = CountingSink(0)
        bench = daemon_api.build_worker(self.scorer, sink, 100_000, MAX_BATCH)
        bench.worker.start()
        cpu, start, n = time.process_time(), time.perf_counter(), 0
        while (elapsed := time.perf_counter() - start) < 4 * self.seconds:
            for _ in range(int(elapsed * rate) - n):
                bench.queue.put(self._job(n))
                n += 1
            time.sleep(0.005)
        while sink.count < n:
            time.sleep(0.001)
        cpu = time.process_time() - cpu
        bench.worker.stop(drain=False, timeout=5)
        return {"rate": rate, "windows": n, "cpu_us_per_window": cpu / n * 1e6, "mean_batch": n / bench.batches_run()}
