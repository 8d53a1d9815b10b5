"""Everything the bench takes from the daemon package, in one module.

The live service, its queue, worker and sinks change shape more often than the bench's
questions do; when they move, this module is the one to adapt. It imports nothing that loads
torch (the daemon's runtimes load it when a torch model is built), so a daemon on ONNX Runtime
measured through it never holds torch; training and the unpadded torch model import their
heavy modules when called.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from daemon.core.scoring import Scorer
from daemon.live.alerting import AlertTracker
from daemon.live.config import BatchingConfig, load_config
from daemon.live.events import ScoreEvent, WindowJob
from daemon.live.service import Service
from daemon.live.sinks.file import FileSink
from daemon.live.telemetry.logsetup import configure_logging
from daemon.live.telemetry.metrics import Metrics
from daemon.live.worker import ModelSlot, WindowQueue, Worker

DAEMON_SWITCH_INTERVAL = BatchingConfig().switch_interval_s  # what Service.start sets
OnWritten = Callable[[list[ScoreEvent]], None]


# ---- the service ----------------------------------------------------------------------------

def build_service(config_path: str, on_written: OnWritten) -> tuple[Service, bool]:
    """The service from its config file, logging set up as `anomalyd run` does. Returns the
    service and whether it writes to InfluxDB: then it uses its own InfluxSink (the production
    path); otherwise a FileSink that calls `on_written(events)` after each write and flush."""
    config = load_config(config_path)
    configure_logging(config.logging.level, config.logging.format)
    if config.influxdb.enabled:
        return Service(config, config_path), True
    sink = FileSink(config.local_store.path, on_written=on_written)
    return Service(config, config_path, sink=sink), False


def wait_subscribed(service: Service, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not service.ingest.subscribed:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@dataclass
class ServiceCounters:
    ok: float = 0.0          # messages accepted
    rejected: float = 0.0    # messages refused, every reason
    scored: float = 0.0      # windows scored
    dropped: float = 0.0     # windows lost before the sink, every reason
    sink_written: float = 0.0  # points the InfluxSink wrote
    last_ok: float = 0.0     # wall time of the last accepted message
    queued: int = 0          # windows waiting for the worker
    devices: int = 0         # devices with a ring buffer


_COUNTERS = {"anomalyd_messages", "anomalyd_windows_scored", "anomalyd_windows_dropped", "anomalyd_sink_points"}


def read_counters(service: Service) -> ServiceCounters:
    """One pass over the registry (what a scrape costs), not one per value."""
    c = ServiceCounters()
    for metric in service.metrics.registry.collect():
        if metric.name.removesuffix("_total") not in _COUNTERS:
            continue
        for sample in metric.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = sample.labels
            if sample.name == "anomalyd_messages_total":
                if labels["result"] == "ok":
                    c.ok = sample.value
                else:
                    c.rejected += sample.value
            elif sample.name == "anomalyd_windows_scored_total":
                c.scored = sample.value
            elif sample.name == "anomalyd_windows_dropped_total":
                c.dropped += sample.value
            elif sample.name == "anomalyd_sink_points_total" and labels["result"] == "written":
                c.sink_written = sample.value
    route = service.default_route
    c.last_ok = route.pipeline.last_ok or 0.0
    c.queued = len(service.queue)
    c.devices = len(route.buffers)
    return c


# ---- the worker on its own ------------------------------------------------------------------

def load_scorer(bundle: str, runtime: str, threads: int = 1) -> Scorer:
    """A bundle's Scorer as the service loads it, on `threads` torch threads."""
    return Scorer.load(bundle, runtime, threads)


def file_sink(path: str, on_written: OnWritten) -> FileSink:
    return FileSink(path, on_written=on_written)


def window_job(i: int, window: np.ndarray) -> WindowJob:
    """The i-th window of a stream of 1000 devices, as ingest queues it."""
    return WindowJob(f"dev{i % 1000}", 1.7e9 + i, window, 1.7e9 + i)


@dataclass
class BenchWorker:
    metrics: Metrics
    queue: WindowQueue
    worker: Worker

    def batches_run(self) -> float:
        return self.metrics.registry.get_sample_value("anomalyd_batch_windows_count")


def build_worker(scorer: Scorer, sink, queue_size: int, max_batch: int) -> BenchWorker:
    """A Worker as the service builds it (3-in / 5-out hysteresis, 50 ms max wait), on a queue
    of its own."""
    metrics = Metrics()
    queue = WindowQueue(queue_size, metrics)
    worker = Worker(queue, {"": ModelSlot(scorer, AlertTracker(3, 5))}, sink, metrics, max_batch, 0.05)
    return BenchWorker(metrics, queue, worker)


# ---- the model without the daemon's padding, and training -----------------------------------

def unpadded_torch_model(scorer: Scorer) -> Callable[[np.ndarray], None]:
    """The bundle's traced torch model fed each batch as it is (no padding to a known shape)."""
    import torch

    from daemon.core.runtime import load_torch_model, trace_for_inference

    graph = trace_for_inference(load_torch_model(scorer.bundle))

    def run(windows: np.ndarray) -> None:
        with torch.inference_mode():
            graph(torch.from_numpy(np.ascontiguousarray(scorer.bundle.scaler.transform(windows))))
    return run


def train_bundle(timestamps: np.ndarray, values: np.ndarray, features: list[str], arch: str, window: int,
                 directory: Path) -> None:
    """Train one epoch of `arch` on one generated frame, save the bundle and export it to ONNX."""
    from daemon.offline.frames import Frame
    from daemon.offline.onnx_export import export_onnx
    from daemon.offline.training import TrainConfig, save, train

    frame = Frame("generated", timestamps, values, list(features))
    result = train([frame], TrainConfig(arch=arch, window=window, stride=1, epochs=1, name=f"bench-{arch}"))
    save(result, directory)
    export_onnx(directory)
