"""Wire the live stages together and own the process lifecycle.

    MqttIngest ─► MessagePipeline (parse ─► DeviceBuffers ─► WindowQueue) ─► Worker ─► sink
                                                                   Metrics + MetricsServer

With `model.devices`, a DeviceRouter in front sends each device to its own route (bundle,
parser, buffers, alert states); the queue, the worker and the sink are shared.

The stages know nothing of each other; this module builds them from a `Config`, answers
/healthz, and handles signals: SIGTERM/SIGINT stop intake, score what is queued, flush the
sink and return; SIGHUP reloads the config's model and alerting sections, validating the new
bundle before swapping it in (a bad bundle keeps the old one and logs why).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from daemon.core.errors import UserError
from daemon.live.alerting import AlertTracker
from daemon.live.ingest.buffers import DeviceBuffers
from daemon.live.config import Config, load_config
from daemon.live.events import ScoreEvent
from daemon.live.sinks.file import FileSink
from daemon.live.telemetry.http_server import MetricsServer
from daemon.live.sinks.influx import InfluxSink
from daemon.live.telemetry.memory import release_free_memory
from daemon.live.telemetry.metrics import Metrics
from daemon.live.ingest.mqtt import MessageHandler, MessagePipeline, MqttIngest
from daemon.live.ingest.payload import PayloadParser
from daemon.live.ingest.routing import DeviceRouter
from daemon.live.telemetry.sdnotify import SystemdNotifier
from daemon.live.sinks.spool import Spool
from daemon.live.worker import ModelSlot, Sink, WindowQueue, Worker
from daemon.core.scoring import Scorer
from daemon.core.thresholds import threshold_in_force

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
        return FileSink(config.local_store.path, metrics)
    log.warning("neither influxdb.enabled nor local_store.path is set: scores go to metrics only")
    return DiscardSink()


def alert_settings(config: Config, scorer: Scorer) -> tuple[int, int]:
    """Hysteresis from the config when set there, else the bundle's (what `evaluate` used)."""
    spec = scorer.bundle.alert
    return (config.alerting.enter_after or spec.enter_after, config.alerting.leave_after or spec.leave_after)


def bundle_paths(config: Config) -> dict[str, str]:
    """Route key -> bundle directory, in matching order: model.devices globs, then "" for
    model.path (every device no glob matches)."""
    return {**config.model.devices, "": config.model.path}


def load_scorers(config: Config) -> dict[str, Scorer]:
    """Every bundle the config names, loaded, validated and warmed up to the configured batch
    size; the first bad one raises. The warm-up's transient buffers go back to the OS after
    (LSTM AE: 254 -> 248 MB)."""
    loaded: dict[str, Scorer] = {}  # by path: a bundle named by several routes is loaded once
    scorers = {}
    for route, path in bundle_paths(config).items():
        if path not in loaded:
            loaded[path] = Scorer.load(path, config.model.runtime, config.batching.torch_threads)
            loaded[path].warm_up(config.batching.max_batch)
        scorers[route] = loaded[path]
    release_free_memory()
    return scorers


@dataclass
class Route:
    """One bundle and the devices it scores. Everything here depends on the bundle's window
    and features, so a reload that changes them rebuilds the route's buffers."""

    key: str  # a model.devices glob, or "" for model.path
    scorer: Scorer
    alerts: AlertTracker
    buffers: DeviceBuffers
    pipeline: MessagePipeline


class Service:
    def __init__(self, config: Config, config_path: str | None = None, metrics: Metrics | None = None,
                 sink: Sink | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = metrics or Metrics()
        scorers = load_scorers(config)
        self.queue = WindowQueue(config.batching.queue_size, self.metrics)
        self.sink = sink if sink is not None else build_sink(config, self.metrics)
        self.routes = self._routes(config, scorers, {})
        b = config.batching
        self.worker = Worker(self.queue, self._slots(config), self.sink, self.metrics, b.max_batch,
                             b.max_wait_ms / 1000)
        self.ingest = MqttIngest(config.mqtt, self._handler(), self.metrics)
        self.metrics.read_at_scrape(self.metrics.devices, lambda: sum(len(r.buffers) for r in self.routes))
        self._announce(config)
        self.http = (MetricsServer(config.metrics.address, config.metrics.port, self.metrics.registry, self.health)
                     if config.metrics.enabled else None)
        self.notifier = SystemdNotifier()
        self._stop = threading.Event()
        self._reload = threading.Event()

    @property
    def default_route(self) -> Route:
        """The route of model.path: every device no model.devices glob matches."""
        return self.routes[-1]

    @property
    def scorer(self) -> Scorer:
        return self.default_route.scorer

    # ---- construction ---------------------------------------------------------------------

    def _routes(self, config: Config, scorers: dict[str, Scorer], old: dict[str, Route]) -> list[Route]:
        """Routes for `scorers`, keeping the alert states of an old route with the same key, and
        its buffers too when its window, features, stride and stream settings are unchanged."""
        def shape(scorer: Scorer) -> tuple:
            return scorer.window, scorer.features, scorer.bundle.stride

        routes = []
        for key, scorer in scorers.items():
            previous = old.get(key)
            spec = alert_settings(config, scorer)
            if previous is None:
                alerts = AlertTracker(*spec)
            else:
                alerts = previous.alerts
                alerts.set_spec(*spec)
                if config.stream == self.config.stream and shape(scorer) == shape(previous.scorer):
                    routes.append(Route(key, scorer, alerts, previous.buffers, previous.pipeline))
                    continue
            s, lim = config.stream, config.limits
            buffers = DeviceBuffers(scorer.window, s.stride or scorer.bundle.stride, len(scorer.features),
                                    s.sample_period_seconds, s.gap_factor, lim.max_devices, lim.idle_evict_seconds,
                                    self.metrics, on_evict=alerts.forget, route=key,
                                    clock_reset_seconds=s.clock_reset_seconds)
            parser = PayloadParser(scorer.features, config.mqtt.topic, config.mqtt.device_level,
                                   lim.max_payload_bytes, s.max_future_seconds)
            routes.append(Route(key, scorer, alerts, buffers, MessagePipeline(parser, buffers, self.queue,
                                                                               self.metrics)))
        return routes

    def _slots(self, config: Config) -> dict[str, ModelSlot]:
        return {r.key: ModelSlot(r.scorer, r.alerts, config.alerting.threshold) for r in self.routes}

    def _handler(self) -> MessageHandler:
        """The default route's pipeline itself when there is one route (no routing cost)."""
        default = self.default_route.pipeline
        if len(self.routes) == 1:
            return default
        return DeviceRouter(default.parser, [(r.key, r.pipeline) for r in self.routes[:-1]], default)

    def _announce(self, config: Config) -> None:
        """Log every route's bundle and export it as anomalyd_model_info."""
        for r in self.routes:
            b = r.scorer.bundle
            log.info("model %s (%s, window %d, %d features, threshold %.6g) from %s for %s", b.name, b.arch,
                     b.window, len(b.features), threshold_in_force(r.scorer.threshold, config.alerting.threshold),
                     b.path,
                     f"devices {r.key!r}" if r.key else "every other device" if len(self.routes) > 1 else "every device")
        models = {(r.scorer.bundle.name, r.scorer.bundle.version, r.scorer.bundle.arch, config.model.runtime)
                  for r in self.routes}
        self.metrics.set_models(sorted(models))

    # ---- health ---------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict]:
        broker = self.ingest.subscribed
        sink_ok = self.sink.healthy
        worker = self.worker.is_alive()
        details = {"broker_connected": broker, "model": self.scorer.bundle.name, "worker_alive": worker,
                   "sink": self.sink.status(), "devices": sum(len(r.buffers) for r in self.routes),
                   "queued_windows": len(self.queue)}
        if len(self.routes) > 1:
            details["models"] = {r.key or "*": r.scorer.bundle.name for r in self.routes}
        return broker and sink_ok and worker, details

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        # Process-wide, so set by the service that owns the process, not by the worker. A thread
        # waiting for the GIL waits this long before the holder is asked to let go: the worker
        # coming back from the model waits behind the MQTT thread at every inference call.
        sys.setswitchinterval(self.config.batching.switch_interval_s)
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
        """SIGHUP: re-read the config file, validate and load every bundle, then swap. MQTT,
        sink and metrics settings need a restart and are left as they are (logged)."""
        self.notifier.reloading()
        try:
            config = load_config(self.config_path) if self.config_path else self.config
            scorers = load_scorers(config)
        except UserError as exc:
            self.metrics.config_reloads.labels(result="failed").inc()
            log.error("reload failed, keeping model %s: %s", self.scorer.bundle.name, exc)
            self.notifier.ready()
            return
        for section in ("mqtt", "influxdb", "local_store", "metrics", "batching", "limits"):
            if getattr(config, section) != getattr(self.config, section):
                log.warning("reload: changes to section %r need a restart; keeping the running settings", section)
        old = self.scorer.bundle.name
        routes = self._routes(config, scorers, {r.key: r for r in self.routes})
        rebuilt = [r.key or "*" for r in routes if r.buffers not in {o.buffers for o in self.routes}]
        self.routes, self.config = routes, config
        self.ingest.swap_handler(self._handler())
        self.worker.swap_models(self._slots(config))
        self._announce(config)
        self.metrics.config_reloads.labels(result="ok").inc()
        log.info("reloaded: model %s -> %s%s", old, self.scorer.bundle.name,
                 f" (new windowing for {', '.join(rebuilt)}: those device windows restart)" if rebuilt else "")
        self.notifier.ready()
