"""Per-device ring buffers, driven through `push_values` as the message pipeline calls it:
(device, data time, the parser's tuple of feature values, arrival time)."""

import numpy as np
import pytest

from daemon.core.windowing import window_ends, windows
from daemon.live.config import LimitsConfig, StreamConfig
from daemon.live.events import WindowJob
from daemon.live.ingest.buffers import DeviceBuffers
from daemon.live.ingest.payload import Rejected
from daemon.live.telemetry.metrics import Metrics

F = 2


def reading(device: str, ts: float, value: float | None = None, received: float | None = None) -> tuple:
    """push_values arguments for one reading: features (value, -value), value defaulting to ts."""
    v = ts if value is None else value
    return device, ts, (v, -v), ts if received is None else received


def buffers(window=4, stride=2, sample_period=None, gap_factor=5.0, max_devices=100, idle=3600.0, on_evict=None,
            clock_reset_seconds=300.0):
    metrics = Metrics()
    stream = StreamConfig(stride=stride, sample_period_seconds=sample_period, gap_factor=gap_factor,
                          clock_reset_seconds=clock_reset_seconds)
    limits = LimitsConfig(max_devices=max_devices, idle_evict_seconds=idle)
    return DeviceBuffers(window, F, stream, limits, metrics, on_evict=on_evict), metrics


def push_all(b: DeviceBuffers, readings) -> list:
    return [b.push_values(*r) for r in readings]


def test_first_window_after_window_samples_then_one_every_stride():
    b, _ = buffers(window=4, stride=2)
    results = push_all(b, [reading("d", t) for t in range(1, 11)])
    emitted_at = [i for i, r in enumerate(results) if isinstance(r, WindowJob)]
    assert emitted_at == [3, 5, 7, 9]
    assert emitted_at == window_ends(10, 4, 2).tolist()  # same windows as offline scoring


def test_window_contents_are_the_last_samples_in_order_and_match_offline_windowing():
    b, _ = buffers(window=5, stride=3)
    values = np.arange(1, 23, dtype=np.float32)
    jobs = [r for r in push_all(b, [reading("d", float(t)) for t in values]) if r is not None]
    offline = windows(np.stack([values, -values], axis=1), 5, 3)
    assert len(jobs) == len(offline)
    for job, expected in zip(jobs, offline):
        assert job.window.dtype == np.float32 and job.window.shape == (5, F)
        np.testing.assert_array_equal(job.window, expected)
        assert job.ts_end == job.window[-1, 0]


def test_emitted_window_is_a_copy_not_a_view_of_the_ring():
    b, _ = buffers(window=2, stride=1)
    b.push_values(*reading("d", 1))
    job = b.push_values(*reading("d", 2))
    before = job.window.copy()
    push_all(b, [reading("d", t) for t in range(3, 8)])
    np.testing.assert_array_equal(job.window, before)


def test_job_carries_device_data_time_and_arrival_time():
    b, _ = buffers(window=2, stride=1)
    b.push_values(*reading("d", 1, received=100))
    job = b.push_values(*reading("d", 2, received=101.5))
    assert (job.device, job.ts_end, job.received) == ("d", 2, 101.5)


def test_devices_have_independent_windows():
    b, _ = buffers(window=3, stride=1)
    results = push_all(b, [reading(dev, t) for t in range(1, 4) for dev in ("a", "b")])
    jobs = [r for r in results if r is not None]
    assert [j.device for j in jobs] == ["a", "b"]
    assert jobs[0].window[:, 0].tolist() == [1, 2, 3]
    assert len(b) == 2


def test_repeated_timestamp_is_duplicate_and_older_is_out_of_order():
    b, _ = buffers(window=3, stride=1)
    push_all(b, [reading("d", 10), reading("d", 11)])
    assert b.push_values(*reading("d", 11)).reason == "duplicate"
    assert b.push_values(*reading("d", 9)).reason == "out_of_order"
    job = b.push_values(*reading("d", 12))  # rejects did not enter the window
    assert job.window[:, 0].tolist() == [10, 11, 12]


def test_a_clock_set_back_further_than_clock_reset_seconds_restarts_the_window(caplog):
    b, metrics = buffers(window=3, stride=1, clock_reset_seconds=300)
    push_all(b, [reading("d", t) for t in (1000, 1001, 1002)])
    assert b.push_values(*reading("d", 702)).reason == "out_of_order"  # 300 s back: late data, not a reset
    assert metrics.clock_resets._value.get() == 0
    assert push_all(b, [reading("d", 600), reading("d", 601)]) == [None, None]  # 402 s back: a reset
    assert metrics.clock_resets._value.get() == 1
    assert "device d: clock set back by 402 s" in caplog.text
    job = b.push_values(*reading("d", 602))
    assert job.window[:, 0].tolist() == [600, 601, 602]  # nothing from before the reset


def test_gap_longer_than_gap_factor_periods_restarts_the_window():
    b, metrics = buffers(window=3, stride=1, sample_period=1.0, gap_factor=5.0)
    push_all(b, [reading("d", t) for t in (1, 2, 3)])
    assert b.push_values(*reading("d", 8)) is not None  # a 5 s gap is still allowed
    assert metrics.window_restarts._value.get() == 0
    assert push_all(b, [reading("d", 13.5), reading("d", 14.5)]) == [None, None]  # 5.5 s gap: restart
    assert metrics.window_restarts._value.get() == 1
    job = b.push_values(*reading("d", 15.5))
    assert job.window[:, 0].tolist() == [13.5, 14.5, 15.5]  # nothing from before the gap


def test_without_sample_period_gaps_are_not_checked():
    b, metrics = buffers(window=2, stride=1, sample_period=None)
    b.push_values(*reading("d", 1))
    assert b.push_values(*reading("d", 1_000_000, received=2)) is not None
    assert metrics.window_restarts._value.get() == 0


def test_new_device_beyond_max_devices_is_rejected_known_ones_continue():
    b, _ = buffers(window=2, stride=1, max_devices=2)
    push_all(b, [reading("a", 1), reading("b", 1)])
    result = b.push_values(*reading("c", 1))
    assert isinstance(result, Rejected) and result.reason == "too_many_devices"
    assert b.push_values(*reading("a", 2)) is not None
    assert len(b) == 2


def test_evict_idle_drops_silent_devices_counts_them_and_reports_them():
    forgotten = []
    b, metrics = buffers(window=2, stride=1, idle=60, on_evict=forgotten.append)
    b.push_values(*reading("old", 1, received=1000))
    b.push_values(*reading("new", 1, received=1050))
    assert b.evict_idle(now=1070) == 1
    assert len(b) == 1
    assert forgotten == ["old"]
    assert metrics.devices_evicted._value.get() == 1
    assert b.push_values(*reading("old", 0.5, received=1071)) is None  # starts over: earlier ts accepted


def test_push_sweeps_idle_devices_so_slots_free_up_without_a_timer():
    b, metrics = buffers(window=2, stride=1, idle=60, max_devices=1)
    b.push_values(*reading("a", 1, received=1000))
    assert b.push_values(*reading("b", 1, received=1030)).reason == "too_many_devices"
    assert b.push_values(*reading("b", 2, received=1100)) is None  # "a" silent for 100 s > 60 s
    assert metrics.devices_evicted._value.get() == 1


def test_device_count_is_the_number_of_devices_with_a_ring():
    b, _ = buffers()
    push_all(b, [reading("a", 1), reading("b", 1), reading("a", 2)])
    assert len(b) == 2


@pytest.mark.parametrize("window, stride, n_features", [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_rejects_nonsense_shapes(window, stride, n_features):
    with pytest.raises(ValueError, match="must be >= 1"):
        DeviceBuffers(window, n_features, StreamConfig(stride=stride), LimitsConfig(), Metrics())


def test_the_stride_must_be_resolved_before_the_buffers_are_built():
    with pytest.raises(ValueError, match="stride must be resolved"):
        DeviceBuffers(4, F, StreamConfig(stride=None), LimitsConfig(), Metrics())


def test_values_are_stored_as_float32_like_the_model_input():
    b, _ = buffers(window=1, stride=1)
    job = b.push_values("d", 1.0, (0.1, 1e30), 1.0)
    np.testing.assert_array_equal(job.window, np.array([[0.1, 1e30]], dtype=np.float32))


def test_devices_evicted_or_dropped_by_another_thread_while_readings_arrive_are_each_forgotten_once():
    """The device table has no lock: another thread's evictions and drops interleave with the
    ingest thread's readings without an error, and each device is forgotten exactly once."""
    import sys
    import threading

    forgotten: list[str] = []
    b, metrics = buffers(window=2, stride=1, idle=60, on_evict=forgotten.append, max_devices=100_000)
    old = [f"old-{i}" for i in range(3000)]
    push_all(b, [reading(device, 1, received=1000) for device in old])
    done = threading.Event()
    dropped, errors = [], []

    def housekeeping() -> None:
        try:
            while not done.is_set():
                dropped.append(b.drop_devices(old[::7]))
                b.evict_idle(now=2000)
        except Exception as exc:  # noqa: BLE001 - the assertion below reports it
            errors.append(exc)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=housekeeping)
    try:
        thread.start()
        for step in range(20):
            push_all(b, [reading(f"new-{i}", 1 + step, received=1990) for i in range(500)])
    finally:
        done.set()
        thread.join()
        sys.setswitchinterval(switch)
    assert errors == []
    b.evict_idle(now=2000)
    assert sorted(forgotten) == sorted(old)
    assert metrics.devices_evicted._value.get() + sum(dropped) == len(old)
    assert len(b) == 500


def test_buffers_that_replace_others_evict_the_old_devices_that_stay_silent_with_their_state():
    """A reload that changes a route's window rebuilds its buffers; the devices' alert states
    live on, so a device that never sends again is still evicted (and its state forgotten)."""
    forgotten = []
    old, _ = buffers(window=2, stride=1, idle=60)
    old.push_values(*reading("gone", 1, received=1000))
    old.push_values(*reading("back", 1, received=1000))
    new, metrics = buffers(window=3, stride=1, idle=60, on_evict=forgotten.append)
    new.carry_over(old)
    assert len(new) == 0  # every window restarts
    new.push_values(*reading("back", 2, received=1030))
    assert new.evict_idle(now=1070) == 1 and forgotten == ["gone"]  # silent 70 s > 60 s since its last reading
    assert metrics.devices_evicted._value.get() == 1
    assert new.evict_idle(now=1080) == 0 and len(new) == 1  # "back" is a device of the new buffers


def test_a_partition_moving_away_forgets_carried_over_devices_too():
    forgotten = []
    old, _ = buffers(window=2, stride=1)
    old.push_values(*reading("d", 1, received=1000))
    new, _ = buffers(window=3, stride=1, on_evict=forgotten.append)
    new.carry_over(old)
    assert new.drop_devices({"d"}) == 1 and forgotten == ["d"]
    assert new.evict_idle(now=1e9) == 0
