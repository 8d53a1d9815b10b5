"""The live service's lifecycle: start, signals, reload, health, shutdown.

`daemon.live.assembly` builds the stages from a `Config`; this module runs them. It answers
/healthz, exports every route's state at scrape time (`Metrics.live_state`), and handles
signals: SIGTERM/SIGINT stop intake, score what is queued, flush the sink and return; SIGHUP
reloads the config's model, stream and alerting sections, validating the new bundle before swapping
it in (a bad bundle keeps the old one and logs why).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
import time

from daemon.core.errors import UserError
from daemon.core.scoring import Scorer
from daemon.live.assembly import (Route, assemble, build_routes, load_candidate, load_scorers, message_handler,
                                   model_slots, shadow_slot)
from daemon.live.config import Config, load_config
from daemon.live.telemetry.http_server import MetricsServer
from daemon.live.telemetry.metrics import Metrics
from daemon.live.telemetry.sdnotify import SystemdNotifier
from daemon.live.sinks.base import Sink
from daemon.core.thresholds import threshold_in_force

log = logging.getLogger(__name__)

# The config sections a SIGHUP applies; a change to any other needs a restart (a reload logs it).
RELOADED_SECTIONS = ("model", "stream", "alerting")


class Service:
    def __init__(self, config: Config, config_path: str | None = None, metrics: Metrics | None = None,
                 sink: Sink | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = metrics or Metrics()
        stages = assemble(config, self.metrics, sink)
        self.queue, self.sink, self.routes = stages.queue, stages.sink, stages.routes
        self.worker, self.ingest = stages.worker, stages.ingest
        self.route_table = stages.route_table
        self.metrics.live_state.read_from(self)
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

    # ---- models ---------------------------------------------------------------------------

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
        self.metrics.staleness.serve([r.scorer.bundle for r in self.routes])

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
        """SIGHUP: re-read the config file, validate and load every bundle, then swap. The
        sections outside RELOADED_SECTIONS need a restart and are left as they are (logged)."""
        self.notifier.reloading()
        try:
            config = load_config(self.config_path) if self.config_path else self.config
            scorers = load_scorers(config)
            candidate = load_candidate(config, scorers)
        except UserError as exc:
            self.metrics.config_reloads.labels(result="failed").inc()
            log.error("reload failed, keeping model %s: %s", self.scorer.bundle.name, exc)
            self.notifier.ready()
            return
        kept = {field.name: getattr(self.config, field.name) for field in dataclasses.fields(Config)
                if field.name not in RELOADED_SECTIONS}
        for section, running in kept.items():
            if getattr(config, section) != running:
                log.warning("reload: changes to section %r need a restart; keeping the running settings", section)
        config = dataclasses.replace(config, **kept)
        old = self.scorer.bundle.name
        routes = build_routes(config, scorers, self.queue, self.metrics, {r.key: r for r in self.routes})
        rebuilt = [r.key or "*" for r in routes if r.buffers not in {o.buffers for o in self.routes}]
        self.routes, self.config = routes, config
        handler = message_handler(routes)
        self.ingest.swap_handler(handler)
        if self.route_table is not None:
            self.route_table.swap(routes, handler)
        self.worker.swap_models(model_slots(config, routes), shadow_slot(config, candidate, self.worker.shadow))
        self._announce(config)
        self.metrics.config_reloads.labels(result="ok").inc()
        log.info("reloaded: model %s -> %s%s", old, self.scorer.bundle.name,
                 f" (new windowing for {', '.join(rebuilt)}: those device windows restart)" if rebuilt else "")
        self.notifier.ready()
