"""Wire the live stages together and own the process lifecycle.

    MqttIngest ─► MessagePipeline (parse ─► DeviceBuffers ─► WindowQueue) ─► Worker ─► sink
                                                                   Metrics + MetricsServer

The stages know nothing of each other; this module builds them from a `Config`, answers
/healthz, and handles signals: SIGTERM/SIGINT stop intake, score what is queued, flush the
sink and return; SIGHUP reloads the config's model and alerting sections, validating the new
bundle before swapping it in (a bad bundle keeps the old one and logs why).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import UserError
from daemon.live.alerting import AlertTracker
from daemon.live.buffers import DeviceBuffers
from daemon.live.config import Config, load_config
from daemon.live.events import ScoreEvent
from daemon.live.file_sink import FileSink
from daemon.live.http_server import MetricsServer
from daemon.live.influx_sink import InfluxSink
from daemon.live.metrics import Metrics
from daemon.live.mqtt_ingest import MessagePipeline, MqttIngest
from daemon.live.payload import PayloadParser
from daemon.live.sdnotify import SystemdNotifier
from daemon.live.spool import Spool
from daemon.live.worker import Sink, WindowQueue, Worker
from daemon.scoring import Scorer

log = logging.getLogger(__name__)


class DiscardSink:
    """No store configured: scores only move the metrics. Logged once at start."""

    healthy = True

    def submit(self, events: list[ScoreEvent]) -> None:
        pass

    def status(self) -> dict[str, object]:
        return {"healthy": True, "sink": "none"}

    def close(self, timeout: float = 10.0) -> bool:
        return True


def build_sink(config: Config, metrics: Metrics):
    influx = config.influxdb
    if influx.enabled:
        spool = Spool(Path(influx.spool_dir), influx.spool_max_bytes)
        return InfluxSink(influx.url, influx.org or "", influx.bucket, influx.token or "", influx.batch_size,
                          influx.flush_interval_ms / 1000, spool, metrics, influx.timeout_ms)
    if config.local_store.path:
        return FileSink(config.local_store.path)
    log.warning("neither influxdb.enabled nor local_store.path is set: scores go to metrics only")
    return DiscardSink()


def alert_settings(config: Config, scorer: Scorer) -> tuple[int, int]:
    """Hysteresis from the config when set there, else the bundle's (what `evaluate` used)."""
    spec = scorer.bundle.alert
    return (config.alerting.enter_after or spec.enter_after, config.alerting.leave_after or spec.leave_after)


@dataclass
class Intake:
    """What depends on the model's window and features: rebuilt when a reload changes them."""

    buffers: DeviceBuffers
    pipeline: MessagePipeline


class Service:
    def __init__(self, config: Config, config_path: str | None = None, metrics: Metrics | None = None,
                 sink: Sink | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = metrics or Metrics()
        self.scorer = self._load_scorer(config)
        self.alerts = AlertTracker(*alert_settings(config, self.scorer))
        self.queue = WindowQueue(config.batching.queue_size, self.metrics)
        self.sink = sink if sink is not None else build_sink(config, self.metrics)
        self.intake = self._intake(config, self.scorer)
        b = config.batching
        self.worker = Worker(self.queue, self.scorer, self.alerts, self.sink, self.metrics,
                             config.alerting.threshold, b.max_batch, b.max_wait_ms / 1000)
        self.ingest = MqttIngest(config.mqtt, self.intake.pipeline, self.metrics)
        self.http = (MetricsServer(config.metrics.address, config.metrics.port, self.metrics.registry, self.health)
                     if config.metrics.enabled else None)
        self.notifier = SystemdNotifier()
        self._stop = threading.Event()
        self._reload = threading.Event()

    # ---- construction ---------------------------------------------------------------------

    def _load_scorer(self, config: Config) -> Scorer:
        scorer = Scorer.load(config.model.path, config.model.runtime, config.batching.torch_threads)
        b = scorer.bundle
        self.metrics.set_model(b.name, b.version, b.arch, config.model.runtime)
        log.info("model %s (%s, window %d, %d features, threshold %.6g) from %s", b.name, b.arch, b.window,
                 len(b.features), config.alerting.threshold or scorer.threshold, b.path)
        return scorer

    def _intake(self, config: Config, scorer: Scorer) -> Intake:
        s, lim = config.stream, config.limits
        buffers = DeviceBuffers(scorer.window, s.stride or scorer.bundle.stride, len(scorer.features),
                                s.sample_period_seconds, s.gap_factor, lim.max_devices, lim.idle_evict_seconds,
                                self.metrics, on_evict=self.alerts.forget)
        parser = PayloadParser(scorer.features, config.mqtt.topic, config.mqtt.device_level,
                               lim.max_payload_bytes, s.max_future_seconds)
        return Intake(buffers, MessagePipeline(parser, buffers, self.queue, self.metrics))

    # ---- health ---------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict]:
        broker = self.ingest.subscribed
        sink_ok = self.sink.healthy
        worker = self.worker.is_alive()
        details = {"broker_connected": broker, "model": self.scorer.bundle.name, "worker_alive": worker,
                   "sink": self.sink.status(), "devices": len(self.intake.buffers), "queued_windows": len(self.queue)}
        return broker and sink_ok and worker, details

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self.http is not None:
            self.http.start()
            log.info("metrics on %s/metrics, health on %s/healthz", self.http.url, self.http.url)
        self.worker.start()
        self.ingest.start()

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def request_reload(self, *_: object) -> None:
        self._reload.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    def serve(self, duration: float | None = None) -> None:
        """Run until a stop signal (or `duration` seconds), handling reloads in this thread."""
        deadline = None if duration is None else time.monotonic() + duration
        self.notifier.ready()
        while not self._stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            self._stop.wait(0.2)
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if self.worker.is_alive():
                self.notifier.watchdog()  # "alive", not "healthy": an outage must not get us restarted

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop intake, score what is queued, flush the sink. Order matters: nothing accepted
        is lost because each stage is drained before the one after it is closed."""
        self.notifier.stopping()
        log.info("stopping: %d windows queued", len(self.queue))
        self.ingest.stop()
        self.worker.stop(drain=True, timeout=timeout)
        flushed = self.sink.close(timeout)
        if self.http is not None:
            self.http.stop()
        log.info("stopped (sink flushed: %s)", flushed)

    def reload(self) -> None:
        """SIGHUP: re-read the config file, validate and load the new bundle, then swap. MQTT,
        sink and metrics settings need a restart and are left as they are (logged)."""
        self.notifier.reloading()
        try:
            config = load_config(self.config_path) if self.config_path else self.config
            scorer = Scorer.load(config.model.path, config.model.runtime, config.batching.torch_threads)
        except UserError as exc:
            self.metrics.config_reloads.labels(result="failed").inc()
            log.error("reload failed, keeping model %s: %s", self.scorer.bundle.name, exc)
            self.notifier.ready()
            return
        for section in ("mqtt", "influxdb", "local_store", "metrics", "batching", "limits"):
            if getattr(config, section) != getattr(self.config, section):
                log.warning("reload: changes to section %r need a restart; keeping the running settings", section)
        same_shape = (scorer.window, scorer.features) == (self.scorer.window, self.scorer.features)
        if not same_shape or config.stream != self.config.stream:
            self.intake = self._intake(config, scorer)
            self.ingest.swap_handler(self.intake.pipeline)
        self.alerts.set_spec(*alert_settings(config, scorer))
        self.worker.swap_scorer(scorer, config.alerting.threshold)
        old, self.scorer, self.config = self.scorer, scorer, config
        b = scorer.bundle
        self.metrics.set_model(b.name, b.version, b.arch, config.model.runtime)
        self.metrics.config_reloads.labels(result="ok").inc()
        log.info("reloaded: model %s -> %s%s", old.bundle.name, b.name,
                 "" if same_shape else " (new window shape: device windows restart)")
        self.notifier.ready()
