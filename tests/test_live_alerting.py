import pytest

from daemon.live.alerting import AlertTracker


def run(tracker: AlertTracker, flags: str, device: str = "d") -> tuple[str, str]:
    """Feed '1'/'0' windows of one device as one batch; return the alert states and the raise
    flags as strings ('A' in alert, '!' entered alert at that window)."""
    result = tracker.update_batch([device] * len(flags), [flag == "1" for flag in flags])
    return ("".join("A" if alert else "." for alert, _ in result),
            "".join("!" if alert and changed else "." for alert, changed in result))


def run_one_by_one(tracker: AlertTracker, flags: str, device: str = "d") -> tuple[str, str]:
    """The same windows, one batch each: the state carries over between batches."""
    states, raises = "", ""
    for flag in flags:
        [(alert, changed)] = tracker.update_batch([device], [flag == "1"])
        states += "A" if alert else "."
        raises += "!" if alert and changed else "."
    return states, raises


@pytest.mark.parametrize("feed", [run, run_one_by_one])
def test_enters_alert_after_k_consecutive_anomalous_windows(feed):
    assert feed(AlertTracker(3, 2), "111") == ("..A", "..!")


@pytest.mark.parametrize("feed", [run, run_one_by_one])
def test_a_normal_window_resets_the_entry_streak(feed):
    assert feed(AlertTracker(3, 2), "1101101") == (".......", ".......")


@pytest.mark.parametrize("feed", [run, run_one_by_one])
def test_leaves_alert_after_m_consecutive_normal_windows(feed):
    assert feed(AlertTracker(2, 3), "11000") == (".AAA.", ".!...")


@pytest.mark.parametrize("feed", [run, run_one_by_one])
def test_an_anomalous_window_resets_the_exit_streak(feed):
    assert feed(AlertTracker(2, 3), "11001000") == (".AAAAAA.", ".!......")


def test_raised_only_on_the_transition_into_alert():
    assert run(AlertTracker(1, 1), "1101") == ("AA.A", "!..!")


def test_devices_in_one_batch_are_tracked_independently():
    t = AlertTracker(2, 2)
    assert t.update_batch(["a", "b", "a", "b"], [True, True, True, False]) == [
        (False, False), (False, False), (True, True), (False, False)]
    assert t.active_count() == 1


def test_active_count_follows_entries_and_exits():
    t = AlertTracker(1, 2)
    t.update_batch(["a", "b", "c"], [True, True, True])
    assert t.active_count() == 3
    run(t, "00", device="b")
    assert t.active_count() == 2


def test_forget_clears_an_evicted_devices_alert():
    t = AlertTracker(1, 5)
    t.update_batch(["a"], [True])
    t.forget("a")
    t.forget("never-seen")
    assert t.active_count() == 0
    assert t.update_batch(["a"], [False]) == [(False, False)]


def test_quiet_devices_take_no_memory():
    t = AlertTracker(3, 3)
    t.update_batch([f"dev{i}" for i in range(1000)], [False] * 1000)
    assert len(t._states) == 0


def test_new_hysteresis_settings_apply_to_devices_part_way_through_a_streak():
    t = AlertTracker(3, 1)
    run(t, "11")
    t.set_spec(2, 1)
    assert run(t, "1") == ("A", "!")


@pytest.mark.parametrize("args", [(0, 1), (1, 0)])
def test_rejects_counts_below_one(args):
    with pytest.raises(ValueError, match=">= 1"):
        AlertTracker(*args)


HOUR = 3600.0


def test_an_alert_standing_over_a_day_of_data_time_is_counted_standing_until_it_clears():
    t = AlertTracker(1, 2)
    t.update_batch(["a", "b"], [True, True], [0.0, 0.0])
    t.update_batch(["a", "b"], [True, True], [24 * HOUR, 23 * HOUR])
    assert (t.active_count(), t.standing_count()) == (2, 0)  # a day exactly is not over a day
    t.update_batch(["a", "b"], [True, True], [24 * HOUR + 1, 23 * HOUR + 1])
    assert t.standing_count() == 1
    t.update_batch(["a", "a"], [False, False], [25 * HOUR, 25 * HOUR + 1])  # cleared
    assert (t.active_count(), t.standing_count()) == (1, 0)
    t.update_batch(["a"], [True], [26 * HOUR])  # a new alert starts its own day
    assert t.standing_count() == 0


def test_a_forgotten_device_no_longer_counts_standing():
    t = AlertTracker(1, 2)
    t.update_batch(["a", "a"], [True, True], [0.0, 2 * 24 * HOUR])
    assert t.standing_count() == 1
    t.forget("a")
    assert t.standing_count() == 0


def test_an_alert_taken_over_from_another_instance_stands_since_its_recorded_start():
    t = AlertTracker(3, 2)
    t.seed("pump", True, as_of=0.0, within=3600)
    t.update_batch(["pump", "pump"], [False, True], [0.0, 30 * HOUR])
    assert (t.active_count(), t.standing_count()) == (1, 1)
