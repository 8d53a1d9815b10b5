import math

import numpy as np
import pytest

from daemon.offline.evaluation import (
    Confusion,
    EventStats,
    confusion,
    event_stats,
    nab_scores,
    report,
    segments,
)

# Hand-worked 10-point example:
# idx     0  1  2  3  4  5  6  7  8  9
# pred    1  1  0  0  1  0  0  0  1  0
# actual  1  0  0  1  1  0  0  0  0  0
# ->      TP FP TN FN TP TN TN TN FP TN   => TP=2 FP=2 TN=5 FN=1
PRED10 = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 0])
ACTUAL10 = np.array([1, 0, 0, 1, 1, 0, 0, 0, 0, 0])


def seconds(n, start=0.0, step=1.0):
    return start + step * np.arange(n, dtype=float)


def test_confusion_hand_worked():
    c = confusion(PRED10, ACTUAL10)
    assert c == Confusion(tp=2, fp=2, tn=5, fn=1)
    assert c.precision == pytest.approx(0.5)
    assert c.recall == pytest.approx(2 / 3)
    assert c.f1 == pytest.approx(4 / 7)  # 2 / (2 + (2 + 1) / 2)
    assert c.far == pytest.approx(200 / 7)  # 2 / (2 + 5) * 100 = 28.571...
    assert c.mar == pytest.approx(100 / 3)  # 1 / (1 + 2) * 100


def test_zero_denominators_give_zero():
    c = Confusion(0, 0, 0, 0)
    assert (c.precision, c.recall, c.f1, c.far, c.mar) == (0.0, 0.0, 0.0, 0.0, 0.0)


def test_confusion_accepts_bool():
    assert confusion(PRED10.astype(bool), ACTUAL10.astype(bool)) == Confusion(2, 2, 5, 1)


def test_confusion_length_mismatch():
    with pytest.raises(ValueError, match="predicted has 3 points but actual has 2"):
        confusion(np.array([0, 1, 0]), np.array([0, 1]))


def test_confusion_non_binary():
    with pytest.raises(ValueError, match="actual must contain only 0/1"):
        confusion(np.array([0, 1]), np.array([0, 2]))


def test_sum_over_files_equals_concatenation():
    rng = np.random.default_rng(0)
    p1, a1 = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    p2, a2 = rng.integers(0, 2, 80), rng.integers(0, 2, 80)
    summed = confusion(p1, a1) + confusion(p2, a2)
    assert summed == confusion(np.r_[p1, p2], np.r_[a1, a2])

    r = report([(p1, a1, seconds(50)), (p2, a2, seconds(80))], threshold=0.5)
    assert r.confusion == summed
    assert r.points == 130


def test_all_anomaly_prediction_skab_baseline():
    # SKAB's "perfect detector"-style baseline: flag everything on a file
    # where 53.7% of points are anomalous.
    actual = np.r_[np.ones(537, int), np.zeros(463, int)]
    c = confusion(np.ones(1000, int), actual)
    assert c.f1 == pytest.approx(0.698, abs=0.001)
    assert c.far == 100.0
    assert c.mar == 0.0


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([], []),
        ([0, 0, 0], []),
        ([1, 1, 1], [(0, 3)]),
        ([1, 1, 0, 0], [(0, 2)]),
        ([0, 0, 1, 1], [(2, 4)]),
        ([1, 0, 1, 0, 0, 1], [(0, 1), (2, 3), (5, 6)]),
    ],
)
def test_segments(labels, expected):
    assert segments(np.array(labels, dtype=int)) == expected


def test_event_recall_one_detected_one_missed():
    actual = np.array([0, 1, 1, 0, 0, 1, 1, 1, 0, 0])
    pred = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 1])
    e = event_stats(pred, actual, seconds(10))
    assert (e.events, e.detected) == (2, 1)
    assert e.event_recall == 0.5
    assert e.false_alarm_events == 1  # the run at index 9; the one at 2 is a hit


def test_alarm_run_touching_an_anomaly_is_not_false():
    actual = np.array([0, 0, 0, 1, 1, 0])
    pred = np.array([0, 1, 1, 1, 0, 0])
    assert event_stats(pred, actual, seconds(6)).false_alarm_events == 0


def test_false_alarms_per_hour_at_1hz():
    n = 7200  # 2 h of 1 Hz data, all normal
    pred = np.zeros(n, int)
    pred[[100, 101, 102]] = 1  # one run
    pred[[2000]] = 1
    pred[[5000, 5001]] = 1
    e = event_stats(pred, np.zeros(n, int), seconds(n, start=1.7e9))
    assert e.false_alarm_events == 3
    assert e.normal_hours == pytest.approx(2.0)
    assert e.false_alarms_per_hour == pytest.approx(1.5)
    assert math.isnan(e.event_recall)


def test_normal_hours_use_median_spacing_and_only_normal_points():
    t = np.r_[seconds(3600), 100_000 + seconds(3600)]  # a long logging gap
    actual = np.zeros(7200, int)
    actual[:1800] = 1
    e = event_stats(np.zeros(7200, int), actual, t)
    assert e.normal_hours == pytest.approx(1.5)


def test_event_stats_bad_timestamps():
    with pytest.raises(ValueError, match="sorted"):
        event_stats(np.zeros(3, int), np.zeros(3, int), np.array([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        event_stats(np.zeros(3, int), np.zeros(3, int), seconds(4))
    with pytest.raises(ValueError, match="at least 2 timestamps"):
        event_stats(np.zeros(1, int), np.zeros(1, int), seconds(1))


def test_event_stats_add():
    total = EventStats(2, 1, 3, 1.5) + EventStats(1, 1, 0, 0.5)
    assert total == EventStats(3, 2, 3, 2.0)
    assert total.event_recall == pytest.approx(2 / 3)
    assert total.false_alarms_per_hour == pytest.approx(1.5)


def test_report_to_dict():
    r = report([(PRED10, ACTUAL10, seconds(10, step=360.0))], threshold=1.25)
    d = r.to_dict()
    required = {
        "precision", "recall", "f1", "far", "mar", "event_recall", "false_alarms_per_hour",
        "threshold", "points", "tp", "fp", "tn", "fn", "events", "events_detected",
    }
    assert required <= d.keys()
    assert (d["tp"], d["fp"], d["tn"], d["fn"], d["points"]) == (2, 2, 5, 1, 10)
    assert d["f1"] == pytest.approx(4 / 7)
    assert d["threshold"] == 1.25
    # segments [0,1) and [3,5) both hit; alarm run [0,2) touches an anomaly so only
    # [8,9) is a false alarm; 7 normal points * 0.1 h
    assert (d["events"], d["events_detected"], d["false_alarm_events"]) == (2, 2, 1)
    assert d["false_alarms_per_hour"] == pytest.approx(1 / 0.7)
    assert all(type(v) in (int, float) for v in d.values())


# --- NAB ---------------------------------------------------------------------
# 300 s of 1 Hz data, one true changepoint at t=100 -> window [100, 160].

N = 300
T = seconds(N)


def true_cp(*idx):
    cp = np.zeros(N, int)
    cp[list(idx)] = 1
    return cp


def alarm(*runs):
    pred = np.zeros(N, int)
    for start, end in runs:
        pred[start:end] = 1
    return pred


def sigmoid(position, a_tp, a_fp):
    """SKAB my_scale at a relative position, written out independently."""
    x = np.linspace(-np.pi / 2, np.pi / 2, 1000)[min(int(position * 1000), 999)]
    return (a_tp - a_fp) / 2 * -np.tanh(x) / np.tanh(np.pi / 2) + (a_tp - a_fp) / 2 + a_fp


def test_nab_perfect_detection_is_100():
    # rising edge exactly at the changepoint; the falling edge at 130 is a
    # second changepoint in the same window and is ignored
    s = nab_scores([(alarm((100, 130)), true_cp(100), T)])
    assert s == pytest.approx({"standard": 100.0, "low_fp": 100.0, "low_fn": 100.0})


def test_nab_no_detection_is_0():
    s = nab_scores([(np.zeros(N, int), true_cp(100), T)])
    assert s == {"standard": 0.0, "low_fp": 0.0, "low_fn": 0.0}


def test_nab_detection_mid_window_scores_between():
    s = nab_scores([(alarm((130, N)), true_cp(100), T)])  # edge at 130 = middle of [100, 160]
    for name, (a_fp, a_fn) in {"standard": (-0.11, -1), "low_fp": (-0.22, -1), "low_fn": (-0.11, -2)}.items():
        raw = sigmoid(0.5, 1.0, a_fp)
        assert s[name] == pytest.approx(100 * (raw - a_fn) / (1 - a_fn))
        assert 0 < s[name] < 100
    assert s["standard"] == pytest.approx(72.2, abs=0.1)


def test_nab_detection_at_window_end_scores_a_fp():
    s = nab_scores([(alarm((160, N)), true_cp(100), T)])
    assert s["standard"] == pytest.approx(100 * (-0.11 + 1) / 2)


def test_nab_false_positive_lowers_score():
    # a one-sample blip at 250 is two changepoints (rise at 250, fall at 251)
    s = nab_scores([(alarm((100, 130), (250, 251)), true_cp(100), T)])
    assert s["standard"] == pytest.approx(100 * (1 - 2 * 0.11 + 1) / 2)
    assert s["low_fp"] == pytest.approx(100 * (1 - 2 * 0.22 + 1) / 2)
    assert s["low_fn"] == pytest.approx(100 * (1 - 2 * 0.11 + 2) / 3)


def test_nab_alarm_from_first_sample_is_not_a_changepoint():
    s = nab_scores([(alarm((0, 100)), true_cp(200), T)])  # falls at 100, before window
    assert s["standard"] == pytest.approx(100 * (-1 - 0.11 + 1) / 2)


def test_nab_overlapping_windows_cut_the_earlier_one():
    # windows [100, 120] and [120, 180]; an edge at 110 is the middle of the cut window
    s = nab_scores([(alarm((110, N)), true_cp(100, 120), T)])
    assert s["standard"] == pytest.approx(100 * (sigmoid(0.5, 1, -0.11) - 1 + 2) / 4)


def test_nab_edge_on_cut_boundary_counts_for_both_windows_like_skab():
    # SKAB's windows are closed on both ends, so an edge at 120 is the end of
    # window [100, 120] (scores A_fp) and the start of [120, 180] (scores A_tp)
    s = nab_scores([(alarm((120, N)), true_cp(100, 120), T)])
    assert s["standard"] == pytest.approx(100 * (-0.11 + 1 + 2) / 4)


def test_nab_sums_over_files_before_normalising():
    perfect = (alarm((100, 130)), true_cp(100), T)
    missed = (np.zeros(N, int), true_cp(100), T)
    s = nab_scores([perfect, missed])
    assert s["standard"] == pytest.approx(50.0)


def test_nab_without_changepoints_is_nan():
    s = nab_scores([(alarm((10, 20)), np.zeros(N, int), T)])
    assert all(math.isnan(v) for v in s.values())


def test_nab_bad_window():
    with pytest.raises(ValueError, match="window_seconds must be > 0"):
        nab_scores([(np.zeros(N, int), true_cp(100), T)], window_seconds=0)
