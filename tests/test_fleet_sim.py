"""The simulated pump fleet (bench/fleet_sim.py), the quality suite's held-out data set: it is
deterministic, its labels are exactly its faults, every fault kind is on every pump's test
days and nowhere else, its normal data holds every operating mode, and its sensors keep the
relations of a pump on a pipe system."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from fleet_sim import FAULT_KINDS, FEATURES, PERIOD, SETPOINTS, rows, simulate_fleet  # noqa: E402
from quality_cases import FLEET_QUICK_PUMPS, fleet  # noqa: E402
from quality_package import segments  # noqa: E402


@pytest.fixture(scope="module")
def simulated():
    return simulate_fleet(seed=0)


def column(name: str) -> int:
    return FEATURES.index(name)


def test_the_same_seed_gives_the_same_fleet_and_another_seed_another(simulated):
    again = simulate_fleet(seed=0)
    for a, b in zip(simulated.timelines, again.timelines):
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.labels, b.labels)
    other = simulate_fleet(seed=1)
    assert not np.array_equal(other.timelines[0].values, simulated.timelines[0].values)


def test_four_pumps_eight_sensors_every_30_seconds_all_finite(simulated):
    assert len(simulated.timelines) == 4
    for timeline in simulated.timelines:
        assert timeline.values.shape == (len(timeline.timestamps), len(FEATURES))
        assert np.all(np.diff(timeline.timestamps) == PERIOD)
        assert np.all(np.isfinite(timeline.values))


def test_labels_cover_exactly_the_fault_intervals(simulated):
    for timeline in simulated.timelines:
        assert segments(timeline.labels) == [(e.start, e.end) for e in timeline.events]


def test_every_fault_kind_occurs_once_on_every_pump_during_its_test_days_at_different_times(simulated):
    split = simulated.split
    for timeline in simulated.timelines:
        assert sorted(e.kind for e in timeline.events) == sorted(FAULT_KINDS)
        assert all(split.faults_start <= e.start < e.end <= len(timeline.labels) for e in timeline.events)
    orders = {tuple(e.kind for e in timeline.events) for timeline in simulated.timelines}
    assert len(orders) == len(simulated.timelines)


def test_training_days_history_and_the_normal_test_day_are_fault_free(simulated):
    split = simulated.split
    for timeline in simulated.timelines:
        assert not timeline.labels[:split.faults_start].any()
    assert split.faults_start - split.test_counted == rows(24.0)
    assert split.train_end == rows(30.0) <= split.test_start


def test_every_twelve_hours_of_normal_data_hold_every_speed_setpoint(simulated):
    for timeline in simulated.timelines:
        for start in range(0, simulated.split.train_end, rows(12.0)):
            assert set(timeline.setpoint[start:start + rows(12.0)]) == set(SETPOINTS)


def medians_by_setpoint(timeline, end: int, name: str) -> list[float]:
    values = timeline.values[:end, column(name)]
    return [float(np.median(values[timeline.setpoint[:end] == s])) for s in SETPOINTS]


@pytest.mark.parametrize("name", ["flow", "discharge_pressure", "motor_current", "vibration", "winding_temp"])
def test_flow_pressure_power_vibration_and_winding_heat_rise_with_speed(simulated, name):
    """(Bearing temperature rises with speed too, but less than the ambient's daily swing.)"""
    for timeline in simulated.timelines:
        by_speed = medians_by_setpoint(timeline, simulated.split.train_end, name)
        assert by_speed == sorted(by_speed), f"pump {timeline.pump} {name}: {by_speed}"


def test_suction_pressure_falls_as_flow_rises(simulated):
    for timeline in simulated.timelines:
        by_speed = medians_by_setpoint(timeline, simulated.split.train_end, "suction_pressure")
        assert by_speed == sorted(by_speed, reverse=True)


def test_current_grows_faster_than_speed_as_power_follows_the_affinity_laws(simulated):
    timeline = simulated.timelines[0]
    low, _, high = medians_by_setpoint(timeline, simulated.split.train_end, "motor_current")
    assert high / low > SETPOINTS[-1] / SETPOINTS[0]


def event(simulated, pump: int, kind: str):
    return next(e for e in simulated.timelines[pump].events if e.kind == kind)


def test_a_stuck_sensor_holds_its_last_value_over_the_whole_fault(simulated):
    for timeline in simulated.timelines:
        stuck = event(simulated, timeline.pump, "stuck sensor")
        held = timeline.values[stuck.start - 1:stuck.end, column(stuck.channel)]
        assert np.all(held == held[0])


def test_a_worn_bearing_vibrates_more_than_the_same_pump_at_the_same_speed_in_training(simulated):
    end = simulated.split.train_end
    for timeline in simulated.timelines:
        wear = event(simulated, timeline.pump, "bearing wear")
        last_hour = np.arange(wear.end - rows(1.0), wear.end)
        speed = timeline.setpoint[last_hour[-1]]
        worn = timeline.values[last_hour[timeline.setpoint[last_hour] == speed], column("vibration")]
        normal = timeline.values[:end][timeline.setpoint[:end] == speed, column("vibration")]
        assert np.median(worn) > np.median(normal) + 0.8 * 1.6 * 0.8  # ≥ 80 % of its smallest full size


def test_the_case_trains_one_model_on_every_pump_and_tests_each_pump_with_named_faults():
    case = fleet()
    assert case.dataset == "fleet" and case.detectable == FAULT_KINDS
    assert len(case.train) == 4 and all(f.labels is None and len(f) == rows(30.0) for f in case.train)
    assert len(case.tests) == 4
    for test in case.tests:
        counted = test.frame.labels[test.counted_from:]
        assert len(segments(counted)) == len(test.event_names) == len(FAULT_KINDS)
        assert not test.frame.labels[:test.counted_from].any()
        assert test.frame.timestamps[0] > case.train[0].timestamps[-1]


def test_the_quick_case_trains_on_half_a_day_per_pump_and_tests_fewer_pumps():
    case = fleet(quick=True)
    assert len(case.train) == 4 and all(len(f) == rows(12.0) for f in case.train)
    assert len(case.tests) == FLEET_QUICK_PUMPS
    assert {n for t in case.tests for n in t.event_names} == set(FAULT_KINDS)
