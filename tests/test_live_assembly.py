"""What the assembly fills in from the bundle when the config leaves it null, and how it wires
the budget watch of each route."""

from types import SimpleNamespace

import numpy as np

from daemon.core.postprocess import AlertSpec
from daemon.live.assembly import RouteTable, build_routes, route_stream
from daemon.live.config import AlertingConfig, Config, LimitsConfig, StreamConfig
from daemon.live.events import WindowJob
from daemon.live.ingest.buffers import DeviceBuffers
from daemon.live.telemetry.metrics import Metrics
from daemon.live.worker import WindowQueue


def scorer(stride: int = 3, **bundle) -> SimpleNamespace:
    return SimpleNamespace(bundle=SimpleNamespace(stride=stride, **bundle))


def test_the_bundle_gives_the_stride_and_the_sample_period_the_config_leaves_null():
    stream = route_stream(StreamConfig(), scorer(stride=3, sample_period_seconds=2.0))
    assert (stream.stride, stream.sample_period_seconds) == (3, 2.0)


def test_the_config_overrides_the_bundle():
    stream = route_stream(StreamConfig(stride=1, sample_period_seconds=0.5), scorer(sample_period_seconds=2.0))
    assert (stream.stride, stream.sample_period_seconds) == (1, 0.5)


def test_a_bundle_without_a_sample_period_leaves_the_gap_rule_off():
    assert route_stream(StreamConfig(), scorer()).sample_period_seconds is None
    assert route_stream(StreamConfig(), scorer(sample_period_seconds=None)).sample_period_seconds is None


def test_by_default_a_gap_in_a_stream_restarts_the_device_window():
    metrics = Metrics()
    stream = route_stream(StreamConfig(), scorer(stride=1, sample_period_seconds=1.0))
    buffers = DeviceBuffers(2, 1, stream, LimitsConfig(), metrics)
    assert buffers.push_values("d", 1.0, (1.0,), 1.0) is None
    assert buffers.push_values("d", 2.0, (2.0,), 2.0) is not None
    assert buffers.push_values("d", 60.0, (3.0,), 60.0) is None  # 58 s > gap_factor 5 x 1 s: starts over
    assert metrics.registry.get_sample_value("anomalyd_window_restarts_total") == 1


# ---- the false-alarm budget each route's devices are watched against ------------------------------

def served(threshold: float = 1.0, budget: float | None = None, devices: dict | None = None,
           version: str = "1") -> SimpleNamespace:
    """A scorer as build_routes reads it: window, features, threshold and the bundle's settings."""
    bundle = SimpleNamespace(name="pump", version=version, stride=1, sample_period_seconds=1.0, alert=AlertSpec(3, 5),
                             threshold=SimpleNamespace(devices=devices or {}),
                             false_alarm_budget=None if budget is None else SimpleNamespace(per_day=budget))
    return SimpleNamespace(window=2, features=["a"], threshold=threshold, bundle=bundle)


def routes(config: Config, scorer: SimpleNamespace, old=None) -> list:
    metrics = Metrics()
    return build_routes(config, {"": scorer}, WindowQueue(10, metrics), metrics,
                        None if old is None else {r.key: r for r in old})


def raise_once(route, device: str = "pump-1") -> None:
    window = WindowJob(device, 1_750_000_000.0, np.zeros((2, 1), dtype=np.float32), received=1_750_000_000.0)
    route.budget.record([window], [window])


def test_a_route_is_watched_against_the_bundles_budget_or_the_configured_one_and_not_without_either():
    assert routes(Config(), served(budget=0.5))[0].budget.per_day == 0.5
    configured = Config(alerting=AlertingConfig(false_alarms_per_day=2.0))
    assert routes(configured, served(budget=0.5))[0].budget.per_day == 2.0
    assert routes(configured, served())[0].budget.per_day == 2.0
    assert routes(Config(), served())[0].budget.per_day is None


def test_a_reload_keeps_the_watch_when_only_the_budget_changes_and_starts_it_afresh_with_a_new_model_or_alarm():
    [route] = routes(Config(), served(budget=1.0))
    raise_once(route)
    [same] = routes(Config(alerting=AlertingConfig(false_alarms_per_day=3.0)), served(budget=1.0), [route])
    assert same.budget is route.budget and same.budget.per_day == 3.0
    assert same.budget.verdict("pump-1").episodes == 1
    [recalibrated] = routes(Config(), served(budget=1.0, devices={"pump-1": 2.0}), [same])
    assert recalibrated.budget is route.budget and recalibrated.budget.watched() == 0
    raise_once(recalibrated)
    [rehysteresis] = routes(Config(alerting=AlertingConfig(enter_after=1)), served(budget=1.0, devices={"pump-1": 2.0}),
                            [recalibrated])
    assert rehysteresis.budget.watched() == 0
    raise_once(rehysteresis)
    [retrained] = routes(Config(alerting=AlertingConfig(enter_after=1)),
                         served(budget=1.0, devices={"pump-1": 2.0}, version="2"), [rehysteresis])
    assert retrained.budget.watched() == 0


def test_devices_whose_partitions_move_away_leave_the_budget_watch():
    [route] = routes(Config(), served(budget=1.0))
    raise_once(route, "pump-1")
    raise_once(route, "pump-2")
    RouteTable([route], route.pipeline, 60.0).drop_devices({"pump-1"})
    assert route.budget.verdict("pump-1") is None and route.budget.watched() == 1


def test_a_device_in_alert_that_goes_silent_after_a_reload_rebuilt_its_buffers_is_forgotten_once_idle():
    """A reload that changes the window rebuilds the route's buffers but keeps its alert states:
    the new buffers evict the old devices that never send again, so no alert is held forever."""
    [route] = routes(Config(limits=LimitsConfig(idle_evict_seconds=60)), served())
    for ts in (1000.0, 1001.0):
        route.buffers.push_values("gone", ts, (1.0,), ts)
    route.alerts.update_batch(["gone"] * 3, [True] * 3)
    assert route.alerts.active_count() == 1
    wider = served()
    wider.window = 3
    [rebuilt] = routes(Config(limits=LimitsConfig(idle_evict_seconds=60)), wider, [route])
    assert rebuilt.buffers is not route.buffers and rebuilt.alerts is route.alerts
    rebuilt.buffers.push_values("other", 1030.0, (1.0,), 1030.0)
    assert rebuilt.alerts.active_count() == 1  # 29 s silent: still its alert
    rebuilt.buffers.push_values("other", 1070.0, (1.0,), 1070.0)  # the sweep: "gone" silent 69 s > 60 s
    assert rebuilt.alerts.active_count() == 0
