"""Prometheus metrics of the live service. Every name lives here, so deploy/ dashboards and
alert rules can be checked against this module instead of a copied list.

The registry is injected (a fresh one per test). Values that are a state rather than an
event count (queue depth, devices, alerts, spool size, seconds since the last message) are
computed at scrape time by one collector, `LiveStateCollector`, from the live objects of the
service attached to it: with several `model.devices` routes, each gauge is the sum (or, for
the last message, the newest) over every route the service runs at that moment, and a reload
that swaps the routes is seen by the next scrape without re-binding anything.
"""

from __future__ import annotations

import math
import time
from typing import Iterator, Protocol, Sequence, Sized

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from daemon.core.scoring import REASONS as UNSCORABLE_REASONS
from daemon.core.sensor_health import CHECKS as HEALTH_CHECKS
from daemon.live.staleness import STALE_RATIO, StalenessTracker

PREFIX = "anomalyd_"

# Bounded label values: every `result` a message can end with.
MESSAGE_RESULTS = (
    "ok",
    "invalid_json",  # not UTF-8 JSON, or not a JSON object
    "invalid_value",  # a feature value that is not a number (string, bool, null, list...)
    "non_finite",  # NaN or +-inf
    "missing_feature",  # a feature the model needs is absent
    "bad_timestamp",  # `ts` present but unparseable
    "bad_topic",  # topic does not match the configured shape
    "bad_device_id",  # device id fails validation
    "oversized",  # payload larger than limits.max_payload_bytes
    "too_many_devices",  # a new device beyond limits.max_devices
    "duplicate",  # same timestamp as the device's previous reading
    "out_of_order",  # older than the device's previous reading
    "missing_key",  # a Kafka record without a key (the key is the device id)
    "key_mismatch",  # a Kafka record whose payload names another device than its key
    "tombstone",  # a Kafka record without a value (a delete marker in a compacted topic)
    "internal_error",  # a bug: the callback caught an unexpected exception
)
DROP_REASONS = (
    "queue_full",  # the worker fell behind; the oldest windows went first
    "model_mismatch",  # queued for a model that a reload replaced with another window shape
    "scoring_error",  # the model raised; a bug, logged with its traceback
)
KAFKA_REBALANCE_EVENTS = ("assigned", "revoked", "lost")
# produced: delivered to the alert-state topic; failed: lost on the way; loaded: devices seeded on assignment
ALERT_STATE_RESULTS = ("produced", "failed", "loaded")  # lost: taken away without a revoke (session expired)
SINK_RESULTS = ("written", "retried", "spooled", "dropped")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MessageCounts:
    """`anomalyd_messages_total{result}`, counted in plain ints: the ingest thread (MQTT's network
    thread or the Kafka consumer's) counts every message, and a prometheus_client Counter takes a
    lock each time, several times the cost of adding to an int in a dict. Only that thread
    counts, so the ints need no lock of their own; a scrape reads them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counts = dict.fromkeys(MESSAGE_RESULTS, 0)  # the message path adds to these directly
        registry.register(self)

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily(PREFIX + "messages", "Messages received (MQTT messages or Kafka records), by result.",
                                     labels=["result"])
        for result, count in self.counts.items():
            family.add_metric([result], count)
        return [family]


class _LastMessage(Protocol):
    last_ok: float | None  # arrival time (epoch seconds) of the route's last accepted reading


class _AlertCount(Protocol):
    def active_count(self) -> int: ...

    def standing_count(self) -> int: ...


class _SinkStatus(Protocol):
    def status(self) -> dict[str, object]: ...


class _BudgetState(Protocol):
    per_day: float | None  # the budget watched; None: the route is not watched

    def over_budget(self) -> int: ...


class RouteState(Protocol):
    """What is read of one route: its key (model.devices glob, "" for model.path), ring
    buffers (len = devices), alert states, pipeline and budget watch."""

    @property
    def key(self) -> str: ...

    @property
    def buffers(self) -> Sized: ...

    @property
    def alerts(self) -> _AlertCount: ...

    @property
    def pipeline(self) -> _LastMessage: ...

    @property
    def budget(self) -> _BudgetState: ...


class LiveState(Protocol):
    """What is read of the service: its current routes, window queue and sink."""

    @property
    def routes(self) -> Sequence[RouteState]: ...

    @property
    def queue(self) -> Sized: ...

    @property
    def sink(self) -> _SinkStatus: ...


LIVE_GAUGES = {
    "queue_windows": "Windows waiting for the worker.",
    "devices": "Devices with a live ring buffer.",
    "alerts_active": "Devices currently in alert.",
    "alerts_standing": "Devices whose alert has stood over a day of data time (a stale alarm: the false-alarm "
                       "budget counts it as one episode however long it stands).",
    "sink_spool_bytes": "Bytes waiting in the sink's disk spool.",
    "last_message_age_seconds": "Seconds since the last valid reading on any route (NaN before the first).",
}
# One series per route whose devices' false-alarm budget is watched (daemon.live.budget_watch);
# a route without a budget has none. Labelled `route`: its model.devices glob, "*" for model.path.
BUDGET_GAUGES = {
    "false_alarm_budget_per_day": "The false-alarm budget the route's devices are watched against: alert episodes "
                                  "per device per day (the bundle's, or alerting.false_alarms_per_day).",
    "devices_over_budget": "Devices of the route whose alert episodes over the last 7 days of data are improbably "
                           "many for the budget (see daemon/live/budget_watch.py).",
}


def route_label(key: str) -> str:
    """A route's `route` label value: its glob, "*" for model.path (an empty value would be no label)."""
    return key or "*"


class LiveStateCollector:
    """The state gauges (`LIVE_GAUGES`, and `BUDGET_GAUGES` per watched route), read from the
    attached service on every collect. Until a service is attached they describe an empty one:
    nothing queued, no devices, no route."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._live: LiveState | None = None
        registry.register(self)

    def read_from(self, live: LiveState) -> None:
        """Report the state of `live` from the next scrape on."""
        self._live = live

    def describe(self) -> list[GaugeMetricFamily]:
        return ([GaugeMetricFamily(PREFIX + name, doc) for name, doc in LIVE_GAUGES.items()]
                + [GaugeMetricFamily(PREFIX + name, doc, labels=["route"]) for name, doc in BUDGET_GAUGES.items()])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        values = dict.fromkeys(LIVE_GAUGES, 0.0)
        values["last_message_age_seconds"] = math.nan
        live = self._live
        routes: tuple[RouteState, ...] = ()
        if live is not None:
            routes = tuple(live.routes)  # one snapshot: a reload replaces the list as a whole
            arrivals = [r.pipeline.last_ok for r in routes if r.pipeline.last_ok is not None]
            # The sink's own status, the one /healthz shows: a wrapping sink passes it through.
            spool = live.sink.status().get("spool_bytes", 0)
            values.update(queue_windows=len(live.queue), devices=sum(len(r.buffers) for r in routes),
                          alerts_active=sum(r.alerts.active_count() for r in routes),
                          alerts_standing=sum(r.alerts.standing_count() for r in routes),
                          sink_spool_bytes=spool if isinstance(spool, (int, float)) else 0)
            if arrivals:
                values["last_message_age_seconds"] = max(0.0, time.time() - max(arrivals))
        for name, doc in LIVE_GAUGES.items():
            yield GaugeMetricFamily(PREFIX + name, doc, value=values[name])
        budget, over = (GaugeMetricFamily(PREFIX + name, doc, labels=["route"]) for name, doc in BUDGET_GAUGES.items())
        for route in routes:
            per_day = route.budget.per_day
            if per_day is not None:
                budget.add_metric([route_label(route.key)], per_day)
                over.add_metric([route_label(route.key)], route.budget.over_budget())
        yield budget
        yield over


STALENESS_GAUGES = {
    "model_drift_share": "Share of the last hour's windows scoring above the 99th percentile of the windows the "
                         "model's threshold was calibrated on (NaN with too few windows).",
    "model_drift_expected_share": "The share expected while the data looks like the calibration data.",
    "model_drifted_devices": f"Devices whose own share over the last hour is over {STALE_RATIO:g} times the "
                             f"expected share.",
}


class StalenessCollector:
    """The staleness gauges (`STALENESS_GAUGES`), one series per model, summarised from the
    tracker at scrape time (see daemon.live.staleness for why per model, not per device)."""

    def __init__(self, registry: CollectorRegistry, tracker: StalenessTracker) -> None:
        self.tracker = tracker
        registry.register(self)

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(PREFIX + name, doc, labels=["model"]) for name, doc in STALENESS_GAUGES.items()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = self.describe()
        share, expected, devices = families
        for model in self.tracker.snapshot():
            share.add_metric([model.model], model.share)
            expected.add_metric([model.model], model.expected_share)
            devices.add_metric([model.model], model.drifted_devices)
        yield from families


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, staleness: StalenessTracker | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_* (CPU, RSS, start time): restarts and leaks show up
        self.messages = MessageCounts(r)
        self.window_restarts = Counter(PREFIX + "window_restarts_total",
                                       "Device windows restarted because of a gap longer than the gap policy allows.",
                                       registry=r)
        self.clock_resets = Counter(PREFIX + "clock_resets_total",
                                    "Readings stamped more than stream.clock_reset_seconds before their device's "
                                    "previous one: the device clock was set back and its window restarts.",
                                    registry=r)
        self.devices_evicted = Counter(PREFIX + "devices_evicted_total", "Idle devices evicted.", registry=r)
        self.windows_scored = Counter(PREFIX + "windows_scored_total", "Windows scored by the model.", registry=r)
        self.windows_dropped = Counter(PREFIX + "windows_dropped_total",
                                       "Windows lost before reaching the sink, by reason.", ["reason"], registry=r)
        for reason in DROP_REASONS:
            self.windows_dropped.labels(reason=reason)
        self.anomalous_windows = Counter(PREFIX + "anomalous_windows_total",
                                         "Scored windows flagged anomalous (score above the threshold, "
                                         "unscorable, or a sensor-health flag).", registry=r)
        self.unscorable_windows = Counter(PREFIX + "unscorable_windows_total",
                                          "Windows that cannot be scored, flagged anomalous, by reason.",
                                          ["reason"], registry=r)
        for reason in UNSCORABLE_REASONS:
            self.unscorable_windows.labels(reason=reason)
        self.sensor_health_flags = Counter(PREFIX + "sensor_health_flags_total",
                                           "Windows flagged anomalous by a sensor-health check (a sensor stuck, "
                                           "out of its training envelope or drifting), by check.",
                                           ["check"], registry=r)
        for check in HEALTH_CHECKS:
            self.sensor_health_flags.labels(check=check)
        self.alerts_raised = Counter(PREFIX + "alerts_raised_total",
                                     "Transitions of a device into alert (after hysteresis).", registry=r)
        self.shadow_windows_lost = Counter(PREFIX + "shadow_windows_lost_total",
                                           "Windows the candidate (model.candidate) failed to score or write in "
                                           "shadow; the served model's events for them are unaffected.", registry=r)
        self.inference_seconds = Histogram(PREFIX + "inference_seconds",
                                           "Time of one batched forward pass on the model thread.",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(PREFIX + "batch_windows", "Windows per forward pass.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.publish_to_sink_seconds = Histogram(PREFIX + "publish_to_sink_seconds",
                                                 "From arrival of a window's last reading to the sink write.",
                                                 buckets=LATENCY_BUCKETS, registry=r)
        self.sink_points = Counter(PREFIX + "sink_points_total", "Points handled by the InfluxDB sink, by result.",
                                   ["result"], registry=r)
        for result in SINK_RESULTS:
            self.sink_points.labels(result=result)
        self.mqtt_connected = Gauge(PREFIX + "mqtt_connected", "1 while connected to the MQTT broker.", registry=r)
        self.mqtt_reconnects = Counter(PREFIX + "mqtt_connects_total", "Successful MQTT (re)connections.", registry=r)
        self.mqtt_sessions_lost = Counter(PREFIX + "mqtt_sessions_lost_total",
                                          "Reconnects on which the broker had lost the persistent session: messages "
                                          "published while disconnected are gone.", registry=r)
        self.kafka_connected = Gauge(PREFIX + "kafka_connected", "1 while a Kafka broker connection is up.",
                                     registry=r)
        self.kafka_assigned_partitions = Gauge(PREFIX + "kafka_assigned_partitions",
                                               "Kafka partitions this instance consumes.", registry=r)
        self.kafka_consumer_lag = Gauge(PREFIX + "kafka_consumer_lag",
                                        "Records between the committed offset and the end of each assigned "
                                        "partition (from librdkafka's statistics).", ["topic", "partition"],
                                        registry=r)
        self.kafka_rebalances = Counter(PREFIX + "kafka_rebalances_total",
                                        "Partition assignment changes of this instance, by event.", ["event"],
                                        registry=r)
        for event in KAFKA_REBALANCE_EVENTS:
            self.kafka_rebalances.labels(event=event)
        self.kafka_replayed = Counter(PREFIX + "kafka_replayed_total",
                                      "Records below a newly assigned partition's committed offset read again to "
                                      "refill its devices' windows.", registry=r)
        self.kafka_replay_skipped = Counter(PREFIX + "kafka_replay_skipped_total",
                                            "Records read on assignment but older than the replay span (the "
                                            "broker's time lookup returned an earlier offset), skipped.",
                                            registry=r)
        self.alert_state_records = Counter(PREFIX + "alert_state_records_total",
                                           "Alert-state topic records (kafka.alert_state_topic), by result: "
                                           "produced (delivered), failed (lost), loaded (devices whose alert state "
                                           "was read on assignment).", ["result"], registry=r)
        for result in ALERT_STATE_RESULTS:
            self.alert_state_records.labels(result=result)
        self.config_reloads = Counter(PREFIX + "config_reloads_total", "SIGHUP reloads, by result.", ["result"],
                                      registry=r)
        for result in ("ok", "failed"):
            self.config_reloads.labels(result=result)
        self.model_info = Gauge(PREFIX + "model_info", "The loaded model bundle (value is always 1).",
                                ["name", "version", "architecture", "runtime"], registry=r)
        self.live_state = LiveStateCollector(r)
        # the worker counts each scored batch here; a test injects a tracker with its own clock
        self.staleness = staleness or StalenessTracker()
        StalenessCollector(r, self.staleness)

    def set_models(self, models: list[tuple[str, str, str, str]]) -> None:
        """One info series per loaded bundle: (name, version, architecture, runtime)."""
        self.model_info.clear()
        for name, version, architecture, runtime in models:
            self.model_info.labels(name=name, version=version, architecture=architecture, runtime=runtime).set(1)
