"""The false-alarm budget watch: which devices raise alert episodes more often than the budget
the operator stated makes probable, judged on their last 7 days of data."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.stats import poisson

from daemon.live.alerting import AlertTracker
from daemon.live.assembly import forget_device
from daemon.live.budget_watch import LOOKBACK_HOURS, MIN_WATCHED_DAYS, BudgetWatch, poisson_tail
from daemon.live.config import LimitsConfig, StreamConfig
from daemon.live.events import WindowJob
from daemon.live.ingest.buffers import DeviceBuffers
from daemon.live.telemetry.metrics import Metrics
from daemon.live.worker import ModelSlot, WindowQueue, Worker
from test_live_worker import FakeScorer, FakeSink, job

DAY = 86400.0
T0 = 1_750_000_000.0
EMPTY = np.zeros((1, 1), dtype=np.float32)


def window(device: str, ts: float) -> WindowJob:
    return WindowJob(device, ts, EMPTY, received=ts)


def watch_days(watch: BudgetWatch, device: str, days: float, episodes: int, start: float = T0) -> None:
    """`device` scored from `start` for `days`, raising `episodes` alert episodes spread evenly."""
    watch.record([window(device, start)], [])
    for ts in np.linspace(start, start + days * DAY, episodes + 2)[1:-1]:
        raised = window(device, float(ts))
        watch.record([raised], [raised])
    watch.record([window(device, start + days * DAY)], [])


def test_a_device_alarming_at_its_budget_is_not_over_it():
    watch = BudgetWatch(per_day=1.0)
    watch_days(watch, "pump-1", days=7, episodes=7)
    verdict = watch.verdict("pump-1")
    assert (verdict.episodes, verdict.days, verdict.over) == (7, pytest.approx(7, abs=1 / 24), False)
    assert watch.over_budget() == 0


def test_a_device_with_improbably_many_episodes_is_over_budget_and_named_in_the_log_as_it_goes_over(caplog):
    watch = BudgetWatch(per_day=1.0, route="pump-*")
    with caplog.at_level(logging.WARNING, logger="daemon.live.budget_watch"):
        watch_days(watch, "pump-1", days=1, episodes=8)  # one every 1/9 day
    verdict = watch.verdict("pump-1")
    assert verdict.over and verdict.p == pytest.approx(poisson.sf(7, 1.0))
    assert watch.over_budget() == 1
    [record] = caplog.records  # at its third episode, a third of a day in: P(>= 3 | 1/3) = 0.0048
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    for part in ("'pump-1'", "over its false-alarm budget", "3 alert episodes in 0.333 days watched",
                 "1 per device-day allows 0.333", "P = 4.8e-03", "anomalyd calibrate --per-device",
                 "deploy/README.md"):
        assert part in message, part


def test_the_log_names_a_device_once_as_it_goes_over_not_at_every_episode_after(caplog):
    watch = BudgetWatch(per_day=1.0)
    with caplog.at_level(logging.WARNING, logger="daemon.live.budget_watch"):
        watch_days(watch, "pump-1", days=1, episodes=20)
    assert len(caplog.records) == 1


def test_days_watched_run_from_the_devices_first_window_and_are_at_least_an_hour():
    watch = BudgetWatch(per_day=1.0)
    watch.record([window("old", T0)], [])
    watch_days(watch, "new", days=0.5, episodes=1, start=T0 + 3 * DAY)
    assert watch.verdict("new").days == pytest.approx(0.5)
    first_minute = window("newest", T0 + 3 * DAY + 60)
    watch.record([window("newest", T0 + 3 * DAY)], [])
    watch.record([first_minute], [first_minute])
    verdict = watch.verdict("newest")
    assert verdict.days == MIN_WATCHED_DAYS and not verdict.over  # one episode in its first minute is no evidence


def test_episodes_older_than_the_look_back_no_longer_count():
    watch = BudgetWatch(per_day=1.0)
    watch_days(watch, "pump-1", days=1, episodes=10)
    assert watch.over_budget() == 1
    watch.record([window("pump-1", T0 + (1 + LOOKBACK_HOURS / 24) * DAY)], [])  # eight days on, quiet
    assert watch.verdict("pump-1") is None
    assert watch.over_budget() == 0


def test_days_watched_are_those_of_the_look_back_however_long_the_device_was_watched():
    watch = BudgetWatch(per_day=1.0)
    watch_days(watch, "pump-1", days=30, episodes=0)
    late = window("pump-1", T0 + 30 * DAY + 1)
    watch.record([late], [late])
    assert watch.verdict("pump-1").days == pytest.approx(LOOKBACK_HOURS / 24, abs=1 / 24)


def test_a_device_whose_clock_is_set_back_is_watched_afresh_from_there():
    watch = BudgetWatch(per_day=1.0)
    watch_days(watch, "pump-1", days=1, episodes=10)
    back = window("pump-1", T0 - DAY)
    watch.record([back], [back])
    verdict = watch.verdict("pump-1")
    assert (verdict.episodes, verdict.days) == (1, MIN_WATCHED_DAYS)


def test_forgetting_a_device_clears_it():
    watch = BudgetWatch(per_day=1.0)
    watch_days(watch, "pump-1", days=1, episodes=10)
    watch.forget_devices({"pump-1"})
    assert watch.verdict("pump-1") is None and watch.watched() == 0
    assert watch.over_budget() == 0


def test_a_device_evicted_as_idle_leaves_its_alert_state_and_its_watch_together():
    alerts, watch = AlertTracker(1, 1), BudgetWatch(per_day=1.0)
    buffers = DeviceBuffers(1, 1, StreamConfig(stride=1), LimitsConfig(idle_evict_seconds=60), Metrics(),
                            on_evict=forget_device(alerts, watch))
    raised = buffers.push_values("pump-1", T0, (1.0,), received=T0)
    alerts.update_batch(["pump-1"], [True])
    watch.record([raised], [raised])
    assert alerts.active_count() == 1 and watch.watched() == 1
    buffers.evict_idle(T0 + 120)
    assert alerts.active_count() == 0 and watch.watched() == 0


def test_a_route_without_a_budget_records_nothing():
    watch = BudgetWatch(per_day=None)
    watch_days(watch, "pump-1", days=1, episodes=50)
    assert watch.watched() == 0 and watch.over_budget() == 0


def test_a_new_budget_judges_the_episodes_already_counted_and_clear_forgets_them():
    watch = BudgetWatch(per_day=1.0)
    watch_days(watch, "pump-1", days=2, episodes=8)
    assert watch.over_budget() == 1
    watch.set_budget(4.0)
    assert watch.over_budget() == 0 and watch.verdict("pump-1").episodes == 8
    watch.clear()
    assert watch.watched() == 0


# ---- the significance is shared over the route's devices -----------------------------------------

def fleet(watch: BudgetWatch, devices: int, per_day: float, rng: np.random.Generator, start: float,
          prefix: str = "d") -> None:
    """`devices` devices watched for 7 days from `start`, their episodes a Poisson process at
    `per_day`, recorded in time order as the worker would."""
    names = [f"{prefix}{i}" for i in range(devices)]
    watch.record([window(name, start) for name in names], [])
    episodes = sorted((start + float(ts), name) for name, count in zip(names, rng.poisson(per_day * 7, devices))
                      for ts in rng.uniform(0, 7 * DAY, count))
    for ts, name in episodes:
        raised = window(name, ts)
        watch.record([raised], [raised])
    watch.record([window(name, start + 7 * DAY) for name in names], [])


def test_a_fleet_keeping_to_its_budget_shows_no_device_over_it():
    """At a given moment a route whose devices all keep to the budget shows a device over it
    with a chance of at most 1 %, however many devices it has: over twenty weeks of 500
    devices, none."""
    rng = np.random.default_rng(0)
    over = 0
    for week in range(20):
        watch = BudgetWatch(per_day=1.0)
        fleet(watch, 500, 1.0, rng, T0 + week * 7 * DAY)
        over += watch.over_budget()
    assert over == 0


def test_a_device_at_four_times_its_budget_for_a_week_is_found_among_thousands():
    watch = BudgetWatch(per_day=1.0)
    fleet(watch, 2000, 1.0, np.random.default_rng(1), T0)
    watch_days(watch, "pump-bad", days=7, episodes=28)
    assert watch.verdict("pump-bad").over
    assert watch.over_budget() == 1


def test_the_same_count_is_evidence_on_a_lone_device_and_not_among_many():
    lone, crowd = BudgetWatch(per_day=1.0), BudgetWatch(per_day=1.0)
    fleet(crowd, 1000, 0.0, np.random.default_rng(2), T0)
    for watch in (lone, crowd):
        watch_days(watch, "pump-1", days=7, episodes=16)  # P = 0.002 at a budget of 7
    assert lone.verdict("pump-1").over and not crowd.verdict("pump-1").over


@pytest.mark.parametrize("k, mean", [(0, 1.0), (1, 1 / 24), (3, 1 / 24), (8, 1.0), (21, 7.0), (5, 100.0),
                                     (150, 100.0), (7000, 7000.0), (10_000, 7.0)])
def test_the_poisson_tail_is_scipys(k, mean):
    assert poisson_tail(k, mean) == pytest.approx(poisson.sf(k - 1, mean), rel=1e-9, abs=1e-300)


# ---- the worker shows the watch first-time windows only --------------------------------------

class Receipt:
    def __init__(self, replay: bool) -> None:
        self.replay, self.source = replay, ("plant", 0)

    def settle(self) -> None:
        pass


def test_the_worker_records_episodes_of_first_time_windows_and_not_of_replayed_ones():
    metrics, sink, watch = Metrics(), FakeSink(), BudgetWatch(per_day=1.0)
    queue = WindowQueue(100, metrics)
    worker = Worker(queue, {"": ModelSlot(FakeScorer(threshold=1.0), AlertTracker(1, 1), budget=watch)}, sink,
                    metrics)
    # (device, ts, score, replayed): pump-1 raises on a replayed window, then again on a new one;
    # pump-2 raises on replayed windows only.
    windows = [("pump-1", 1.0, 2.0, True), ("pump-1", 2.0, 0.0, True), ("pump-1", 3.0, 2.0, False),
               ("pump-2", 1.0, 2.0, True), ("pump-2", 2.0, 0.0, True)]
    for device, ts, value, replayed in windows:
        queued = job(device, value, ts=T0 + ts)
        queued.receipt = Receipt(replayed)
        queue.put(queued)
    worker.start()
    sink.wait_for(1)
    worker.stop()
    assert watch.verdict("pump-1").episodes == 1
    assert watch.verdict("pump-2") is None and watch.watched() == 1
