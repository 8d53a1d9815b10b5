"""Build the live stages from a `Config`.

    MqttIngest ─► MessagePipeline (parse ─► DeviceBuffers ─► WindowQueue) ─► Worker ─► sink

With `model.devices`, a DeviceRouter in front sends each device to its own route (bundle,
parser, buffers, alert states, pipeline); the queue, the worker and the sink are shared.
Everything that depends on a bundle is built per route, so a reload rebuilds routes only
(`build_routes` with the running ones as `old`) and leaves the rest in place. The stages
know nothing of each other; only this module knows how they connect.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from daemon.core.bundle import Bundle, load_bundle
from daemon.core.errors import UserError
from daemon.core.runtime import load_backend
from daemon.core.scoring import Scorer
from daemon.live.alerting import AlertTracker
from daemon.live.budget_watch import BudgetWatch
from daemon.live.config import Config, StreamConfig
from daemon.live.ingest.buffers import DeviceBuffers
from daemon.live.ingest.mqtt import MqttIngest
from daemon.live.ingest.payload import PayloadParser
from daemon.live.ingest.pipeline import MessageHandler, MessagePipeline, Source
from daemon.live.ingest.routing import DeviceRouter
from daemon.live.sinks.base import Sink
from daemon.live.sinks.factory import build_sink
from daemon.live.telemetry.memory import release_free_memory
from daemon.live.telemetry.metrics import Metrics, route_label
from daemon.live.worker import ModelSlot, WindowQueue, Worker

if TYPE_CHECKING:
    from daemon.live.ingest.alert_state import AlertRecord, AlertStateTopic

log = logging.getLogger(__name__)


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
    size; the first bad one raises. The warm-up's transient buffers go back to the OS after."""
    loaded: dict[str, Scorer] = {}  # by path: a bundle named by several routes is loaded once
    scorers = {}
    for route, path in bundle_paths(config).items():
        if path not in loaded:
            loaded[path] = Scorer.load(path, config.model.runtime, config.batching.torch_threads)
            loaded[path].warm_up(config.batching.max_batch)
        scorers[route] = loaded[path]
    release_free_memory()
    return scorers


def load_candidate(config: Config, scorers: Mapping[str, Scorer]) -> Scorer | None:
    """The `model.candidate` bundle, loaded and warmed up, or None when none is named. It
    scores the windows cut for model.path, so it must take the same window and features."""
    path = config.model.candidate
    if not path:
        return None
    try:
        bundle = load_bundle(path)  # checked before its weights load, so a mismatch is named as such
    except UserError as exc:
        raise UserError(f"model.candidate: {exc}") from None
    served = scorers[""]
    check_candidate_shape(path, bundle, config.model.path, served.window, served.features)
    candidate = Scorer(bundle, load_backend(bundle, config.model.runtime, config.batching.torch_threads))
    candidate.warm_up(config.batching.max_batch)
    return candidate


def check_candidate_shape(candidate_path: str, candidate: Bundle, served_path: str, window: int,
                          features: Sequence[str]) -> None:
    """Raise unless the candidate takes model.path's windows (`window` x `features`): it
    scores the windows cut for model.path."""
    if (candidate.window, list(candidate.features)) != (window, list(features)):
        raise UserError(f"model.candidate: {candidate_path} takes windows of {candidate.window} x "
                        f"{candidate.features}, model.path {served_path} of {window} x {list(features)}; "
                        "a candidate scores the same windows, so both must match")


def shadow_slot(config: Config, candidate: Scorer | None, old: ModelSlot | None = None) -> ModelSlot | None:
    """What the worker scores the candidate with: its own threshold and its own alert states
    (kept from `old` across a reload), so its `alert` field shows what it would have raised."""
    if candidate is None:
        return None
    spec = alert_settings(config, candidate)
    if old is None:
        alerts = AlertTracker(*spec)
    else:
        alerts = old.alerts
        alerts.set_spec(*spec)
    return ModelSlot(candidate, alerts, None, candidate.bundle.threshold.devices)


def budget_per_day(config: Config, scorer: Scorer) -> float | None:
    """The false-alarm budget a route's devices are watched against: alerting.false_alarms_per_day
    when set, else the bundle's; None (not watched) for a bundle without one."""
    if config.alerting.false_alarms_per_day is not None:
        return config.alerting.false_alarms_per_day
    budget = scorer.bundle.false_alarm_budget
    return None if budget is None else budget.per_day


def alarm_basis(config: Config, scorer: Scorer) -> tuple:
    """What a route's alert episodes depend on besides the data: the model (name and version:
    `calibrate` and `train` give a new bundle a new one), the thresholds in force and the
    hysteresis. Episodes raised under other ones say nothing about these."""
    bundle = scorer.bundle
    return (bundle.name, bundle.version, config.alerting.threshold, scorer.threshold, dict(bundle.threshold.devices),
            alert_settings(config, scorer))


@dataclass
class Route:
    """One bundle and the devices it scores. Everything here depends on the bundle's window
    and features, so a reload that changes them rebuilds the route's buffers."""

    key: str  # a model.devices glob, or "" for model.path
    scorer: Scorer
    alerts: AlertTracker
    buffers: DeviceBuffers
    pipeline: MessagePipeline
    budget: BudgetWatch
    basis: tuple  # alarm_basis: what the budget watch's episodes were raised under


def route_stream(stream: StreamConfig, scorer: Scorer) -> StreamConfig:
    """The stream settings a route's buffers run with: the config's, with what it leaves null
    taken from the bundle: the stride, and the sample period learnt from the training data,
    so the gap rule is on unless neither names a period."""
    period = stream.sample_period_seconds
    if period is None:
        period = getattr(scorer.bundle, "sample_period_seconds", None)  # absent from older bundles
    return dataclasses.replace(stream, stride=stream.stride or scorer.bundle.stride, sample_period_seconds=period)


def build_routes(config: Config, scorers: Mapping[str, Scorer], queue: WindowQueue, metrics: Metrics,
                 old: Mapping[str, Route] | None = None) -> list[Route]:
    """Routes for `scorers`, keeping the alert states of an old route with the same key, and
    its buffers too when its window, features and stream settings are unchanged. Its budget
    watch is kept, and starts afresh when the model, thresholds or hysteresis change."""
    old = old or {}
    routes = []
    for key, scorer in scorers.items():
        previous = old.get(key)
        spec = alert_settings(config, scorer)
        stream = route_stream(config.stream, scorer)
        basis = alarm_basis(config, scorer)
        if previous is None:
            alerts = AlertTracker(*spec)
            budget = BudgetWatch(budget_per_day(config, scorer), route_label(key))
        else:
            alerts = previous.alerts
            alerts.set_spec(*spec)
            budget = previous.budget
            if basis != previous.basis:
                budget.clear()
            budget.set_budget(budget_per_day(config, scorer))
            if (stream == previous.buffers.stream and scorer.window == previous.scorer.window
                    and scorer.features == previous.scorer.features):
                routes.append(Route(key, scorer, alerts, previous.buffers, previous.pipeline, budget, basis))
                continue
        buffers = DeviceBuffers(scorer.window, len(scorer.features), stream, config.limits, metrics,
                                on_evict=forget_device(alerts, budget), route=key)
        parser = PayloadParser(scorer.features, config.mqtt.topic, config.mqtt.device_level,
                               config.limits.max_payload_bytes, stream.max_future_seconds,
                               config.kafka.device_field if config.source == "kafka" else None)
        pipeline = MessagePipeline(parser, buffers, queue.put, metrics.messages)
        if previous is not None:
            pipeline.last_ok = previous.pipeline.last_ok  # the route's stream goes on; only its windows restart
            buffers.carry_over(previous.buffers)  # its devices' alert states too, until they go idle
        routes.append(Route(key, scorer, alerts, buffers, pipeline, budget, basis))
    return routes


def forget_device(alerts: AlertTracker, budget: BudgetWatch) -> Callable[[str], None]:
    """What a route's buffers call when they evict an idle device: its alert state and its
    budget watch go with its buffer."""
    def forget(device: str) -> None:
        alerts.forget(device)
        budget.forget(device)
    return forget


def model_slots(config: Config, routes: list[Route]) -> dict[str, ModelSlot]:
    """What the worker scores each route's windows with."""
    return {r.key: ModelSlot(r.scorer, r.alerts, config.alerting.threshold, r.scorer.bundle.threshold.devices,
                             r.budget) for r in routes}


def message_handler(routes: list[Route]) -> MessageHandler:
    """The default route's pipeline itself when there is one route (no routing cost). The
    default route (model.path) is the last."""
    default = routes[-1].pipeline
    if len(routes) == 1:
        return default
    return DeviceRouter(default.parser, [(r.key, r.pipeline) for r in routes[:-1]], default)


@dataclass
class Stages:
    """The connected stages of one service, not yet started."""

    queue: WindowQueue
    sink: Sink
    routes: list[Route]
    worker: Worker
    ingest: Source
    route_table: RouteTable | None = None  # source: kafka


def assemble(config: Config, metrics: Metrics, sink: Sink | None = None) -> Stages:
    """Load every bundle and build the stages; `sink` replaces the configured one."""
    scorers = load_scorers(config)
    shadow = shadow_slot(config, load_candidate(config, scorers))
    queue = WindowQueue(config.batching.queue_size, metrics)
    sink = sink if sink is not None else build_sink(config, metrics)
    routes = build_routes(config, scorers, queue, metrics)
    b = config.batching
    handler = message_handler(routes)
    if config.source != "kafka":
        worker = Worker(queue, model_slots(config, routes), sink, metrics, b.max_batch, b.max_wait_ms / 1000,
                        shadow)
        return Stages(queue, sink, routes, worker, MqttIngest(config.mqtt, handler, metrics))
    # The Kafka client is imported only for `source: kafka`, so an edge box needs no confluent-kafka.
    from daemon.live.ingest.kafka import build_alert_state

    alert_state = build_alert_state(config, metrics)
    worker = Worker(queue, model_slots(config, routes), sink, metrics, b.max_batch, b.max_wait_ms / 1000,
                    shadow, alert_state)
    table = RouteTable(routes, handler, config.limits.idle_evict_seconds)
    return Stages(queue, sink, routes, worker, build_kafka_ingest(config, table, metrics, alert_state), table)


class RouteTable:
    """The routes in force and the handler that sends each device to its route, for the Kafka
    source's rebalance callbacks: a device whose partition moves away is forgotten by every
    route, one taken over is seeded in its own route. A reload `swap`s both, so a route it adds
    is dropped and seeded like the others."""

    def __init__(self, routes: list[Route], handler: MessageHandler, seed_within: float) -> None:
        self.seed_within = seed_within  # limits.idle_evict_seconds: needs a restart to change
        self.swap(routes, handler)

    def swap(self, routes: list[Route], handler: MessageHandler) -> None:
        # One reference, read whole by the consumer thread's callbacks.
        self._current = (routes, handler, {id(r.pipeline): r for r in routes})

    @property
    def routes(self) -> list[Route]:
        return self._current[0]

    @property
    def handler(self) -> MessageHandler:
        return self._current[1]

    def route_of(self, device: str) -> Route:
        routes, handler, by_pipeline = self._current
        return routes[-1] if len(routes) == 1 else by_pipeline[id(handler.route_of(device))]

    def drop_devices(self, devices: set[str]) -> None:
        for route in self.routes:
            route.buffers.drop_devices(devices)
            route.alerts.forget_devices(devices)  # those seeded but not yet read have no buffer
            route.budget.forget_devices(devices)

    def seed_alerts(self, records: dict[str, AlertRecord]) -> None:
        for device, record in records.items():
            self.route_of(device).alerts.seed(device, record.alert, record.ts, within=self.seed_within)


def build_kafka_ingest(config: Config, table: RouteTable, metrics: Metrics, alert_state: AlertStateTopic | None
                       ) -> Source:
    """The Kafka source feeding the routes' pipelines through the table's handler."""
    from daemon.live.ingest.kafka import build_kafka_source

    spans = [(r.scorer.window, r.buffers.stream.sample_period_seconds) for r in table.routes]
    return build_kafka_source(config, table.handler, metrics, spans, table.drop_devices, alert_state, table.seed_alerts)
