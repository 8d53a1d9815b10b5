import pytest

from daemon.live.alerting import AlertTracker


def run(tracker: AlertTracker, flags: str, device: str = "d") -> tuple[str, str]:
    """Feed '1'/'0' windows; return the alert state and the raise flags as strings."""
    states, raises = "", ""
    for flag in flags:
        alert, raised = tracker.update(device, flag == "1")
        states += "A" if alert else "."
        raises += "!" if raised else "."
    return states, raises


def test_enters_alert_after_k_consecutive_anomalous_windows():
    assert run(AlertTracker(3, 2), "111") == ("..A", "..!")


def test_a_normal_window_resets_the_entry_streak():
    assert run(AlertTracker(3, 2), "1101101") == (".......", ".......")


def test_leaves_alert_after_m_consecutive_normal_windows():
    assert run(AlertTracker(2, 3), "11000") == (".AAA.", ".!...")


def test_an_anomalous_window_resets_the_exit_streak():
    assert run(AlertTracker(2, 3), "11001000") == (".AAAAAA.", ".!......")


def test_raised_only_on_the_transition_into_alert():
    assert run(AlertTracker(1, 1), "1101") == ("AA.A", "!..!")


def test_devices_are_tracked_independently():
    t = AlertTracker(2, 2)
    t.update("a", True)
    t.update("b", True)
    assert t.update("a", True) == (True, True)
    assert t.update("b", False) == (False, False)
    assert t.active_count() == 1


def test_active_count_follows_entries_and_exits():
    t = AlertTracker(1, 2)
    for device in ("a", "b", "c"):
        t.update(device, True)
    assert t.active_count() == 3
    run(t, "00", device="b")
    assert t.active_count() == 2


def test_forget_clears_an_evicted_devices_alert():
    t = AlertTracker(1, 5)
    t.update("a", True)
    t.forget("a")
    t.forget("never-seen")
    assert t.active_count() == 0
    assert t.update("a", False) == (False, False)


def test_quiet_devices_take_no_memory():
    t = AlertTracker(3, 3)
    for i in range(1000):
        t.update(f"dev{i}", False)
    assert len(t._states) == 0


@pytest.mark.parametrize("args", [(0, 1), (1, 0)])
def test_rejects_counts_below_one(args):
    with pytest.raises(ValueError, match=">= 1"):
        AlertTracker(*args)
