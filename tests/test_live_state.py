"""The scrape-time gauges: one collector reads every route of the running service when asked."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from daemon.live.budget_watch import BudgetWatch
from daemon.live.events import WindowJob
from daemon.live.telemetry.metrics import Metrics


@dataclass
class Pipeline:
    last_ok: float | None = None


@dataclass
class Alerts:
    active: int = 0
    standing: int = 0

    def active_count(self) -> int:
        return self.active

    def standing_count(self) -> int:
        return self.standing


@dataclass
class Route:
    buffers: list = field(default_factory=list)  # len() = devices
    alerts: Alerts = field(default_factory=Alerts)
    pipeline: Pipeline = field(default_factory=Pipeline)
    key: str = ""
    budget: BudgetWatch = field(default_factory=lambda: BudgetWatch(None))


@dataclass
class Sink:
    details: dict = field(default_factory=lambda: {"healthy": True})

    def status(self) -> dict[str, object]:
        return self.details


@dataclass
class Live:
    routes: list[Route]
    queue: list = field(default_factory=list)
    sink: Sink = field(default_factory=Sink)


def scrape(live: Live) -> dict[str, float]:
    metrics = Metrics(CollectorRegistry())
    metrics.live_state.read_from(live)
    names = ("queue_windows", "devices", "alerts_active", "alerts_standing", "sink_spool_bytes",
             "last_message_age_seconds")
    return {name: metrics.registry.get_sample_value("anomalyd_" + name) for name in names}


def test_every_gauge_sums_over_all_routes():
    live = Live([Route(["a", "b"], Alerts(1, 1)), Route(["c"], Alerts(2))], queue=[1, 2, 3],
                sink=Sink({"spool_bytes": 4096}))
    values = scrape(live)
    assert values["devices"] == 3 and values["alerts_active"] == 3 and values["alerts_standing"] == 1
    assert values["queue_windows"] == 3 and values["sink_spool_bytes"] == 4096


def test_the_last_message_age_is_that_of_the_newest_reading_on_any_route():
    now = time.time()
    live = Live([Route(pipeline=Pipeline(now - 100)), Route(pipeline=Pipeline(None)), Route(pipeline=Pipeline(now - 5))])
    assert scrape(live)["last_message_age_seconds"] == pytest.approx(5, abs=2)


def test_the_last_message_age_is_nan_before_any_route_had_a_reading():
    assert math.isnan(scrape(Live([Route(), Route()]))["last_message_age_seconds"])


def test_a_sink_without_a_spool_reports_zero_spooled_bytes():
    assert scrape(Live([Route()], sink=Sink({"healthy": True, "sink": "none"})))["sink_spool_bytes"] == 0


def test_routes_swapped_by_a_reload_are_read_at_the_next_scrape():
    metrics = Metrics(CollectorRegistry())
    live = Live([Route(["a"])])
    metrics.live_state.read_from(live)
    live.routes = [Route(["a", "b"]), Route(["c"])]
    assert metrics.registry.get_sample_value("anomalyd_devices") == 3


def test_before_a_service_is_attached_the_gauges_describe_an_empty_one():
    registry = Metrics(CollectorRegistry()).registry
    assert registry.get_sample_value("anomalyd_devices") == 0
    assert registry.get_sample_value("anomalyd_queue_windows") == 0
    assert math.isnan(registry.get_sample_value("anomalyd_last_message_age_seconds"))


def test_each_watched_route_reports_its_budget_and_its_devices_over_it_and_an_unwatched_one_nothing():
    metrics = Metrics(CollectorRegistry())
    pumps, others = BudgetWatch(1.0), BudgetWatch(0.5)
    day = 86400.0
    for ts in (0.0, 0.1 * day, 0.2 * day, 0.3 * day, 0.4 * day):  # five episodes in under half a day
        raised = WindowJob("pump-1", 1_750_000_000.0 + ts, np.zeros((1, 1), dtype=np.float32), 0.0)
        pumps.record([raised], [raised])
    metrics.live_state.read_from(Live([Route(key="pump-*", budget=pumps), Route(key="valve-*"),
                                       Route(key="", budget=others)]))  # "": model.path, labelled "*"
    sample = metrics.registry.get_sample_value
    assert sample("anomalyd_false_alarm_budget_per_day", {"route": "pump-*"}) == 1.0
    assert sample("anomalyd_devices_over_budget", {"route": "pump-*"}) == 1
    assert sample("anomalyd_false_alarm_budget_per_day", {"route": "*"}) == 0.5
    assert sample("anomalyd_devices_over_budget", {"route": "*"}) == 0
    assert sample("anomalyd_false_alarm_budget_per_day", {"route": "valve-*"}) is None
    assert sample("anomalyd_devices_over_budget", {"route": "valve-*"}) is None
