"""The false-alarm budget: the operator says how many alert episodes per device-day they can
afford, `train` sets the threshold to meet it on held-out normal windows, and the rate realised
on fresh normal data is within x2 of it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.signal import lfilter

from daemon.cli import main
from daemon.core.bundle import load_bundle
from daemon.core.errors import BundleError
from daemon.core.postprocess import AlertSpec
from daemon.core.thresholds import FalseAlarmBudget
from daemon.offline.budget import (HeldOut, TooLittleTail, calibrate_budget, episode_peaks, episodes, expected_rate,
                                   vouched_rate)
from datafiles import normal_csv, train_bundle

HYSTERESIS = AlertSpec(3, 5)
MINUTE = 60.0


def window_scores(days: float, seed: int, period: float = MINUTE) -> np.ndarray:
    """Scores like a reconstruction error's: squares of a strongly autocorrelated Gaussian series,
    so exceedances come in bursts, as overlapping windows' scores do."""
    rng = np.random.default_rng(seed)
    x = lfilter([1.0], [1.0, -0.9], rng.standard_normal(int(days * 86_400 / period))) * np.sqrt(1 - 0.81)
    return x ** 2


def realised_per_day(threshold: float, days: float, seed: int) -> float:
    return episodes([window_scores(days, seed)], threshold, HYSTERESIS) / days


def test_an_episode_is_one_entry_into_alert_after_the_hysteresis():
    burst = np.r_[np.zeros(10), np.ones(40), np.zeros(10), 1, 1, np.zeros(10), np.ones(3), np.zeros(10)]
    assert episodes([burst], 0.5, HYSTERESIS) == 2  # the 40-window burst and the 3; the pair never enters
    assert episodes([burst, burst], 0.5, HYSTERESIS) == 4  # every run starts out of alert


def test_where_the_held_out_span_holds_enough_budgeted_episodes_they_are_counted():
    held_out = HeldOut.from_scores([window_scores(20, seed=1)], stride=1, period_seconds=MINUTE, name="validation")
    threshold, record = calibrate_budget(held_out, 5.0, HYSTERESIS)
    assert record.rule == "counted" and record.held_out_days == pytest.approx(20)
    assert episodes(held_out.runs, threshold, HYSTERESIS) <= 5.0 * 20
    assert record.expected_per_day == pytest.approx(5.0, rel=0.1)


def test_on_a_long_normal_series_the_realised_rate_is_within_twice_the_budget():
    held_out = HeldOut.from_scores([window_scores(20, seed=1)], 1, MINUTE, "validation")
    threshold, _ = calibrate_budget(held_out, 5.0, HYSTERESIS)
    assert 5.0 / 2 <= realised_per_day(threshold, days=100, seed=7) <= 5.0 * 2


def test_a_budget_rarer_than_the_held_out_span_shows_is_extrapolated_by_a_pareto_tail():
    held_out = HeldOut.from_scores([window_scores(2, seed=1)], 1, MINUTE, "validation")
    threshold, record = calibrate_budget(held_out, 0.2, HYSTERESIS)  # 0.4 episodes in 2 days: none to count
    assert record.rule == "pot" and record.expected_per_day == 0.2
    assert record.tail["peaks"] >= 10 and record.tail["level"] < threshold
    assert episodes(held_out.runs, threshold, HYSTERESIS) == 0  # past every episode the span shows


def test_the_extrapolated_threshold_typically_meets_the_budget_within_twice():
    """Two days of held-out scores, a budget of one page in five days: over five held-out
    samples the median realised rate (on 300 fresh days) is within x2 of the budget. Single
    samples spread wider: a tail fitted on a dozen episode peaks is uncertain."""
    ratios = []
    for seed in range(1, 6):
        held_out = HeldOut.from_scores([window_scores(2, seed=seed)], 1, MINUTE, "validation")
        threshold, _ = calibrate_budget(held_out, 0.2, HYSTERESIS)
        ratios.append(realised_per_day(threshold, days=300, seed=100 + seed) / 0.2)
    assert 0.5 <= float(np.median(ratios)) <= 2.0, ratios


def test_an_episode_that_splits_at_a_higher_threshold_has_two_peaks():
    one_at_low_two_at_high = np.r_[np.zeros(10), [5, 5, 5], [2] * 8, [6, 6, 6], np.zeros(10)]
    assert episodes([one_at_low_two_at_high], 1.0, HYSTERESIS) == 1
    assert sorted(episode_peaks([one_at_low_two_at_high], 1.0, HYSTERESIS)) == [5.0, 6.0]


def test_held_out_data_without_a_tail_is_refused_by_name():
    with pytest.raises(ValueError, match="alert episode"):
        calibrate_budget(HeldOut.from_scores([np.zeros(50)], 1, MINUTE, "validation"), 1.0, HYSTERESIS)


def test_where_the_validation_tail_is_too_short_the_budget_is_set_on_cross_fitted_windows(tmp_path):
    """A 2 % tail of 3,000 rows (41 windows) shows no tail of episodes; every normal row,
    scored by fold models that never trained on it, does."""
    model = train_bundle(tmp_path, normal_csv(tmp_path, rows=3000), "--false-alarms-per-day", "2",
                         "--validation-fraction", "0.02")
    budget = load_bundle(model).false_alarm_budget
    assert budget.held_out == "cross-fitted"
    assert budget.held_out_windows == 12 * (250 - 20 + 1)  # twelve blocks of 250 rows, three per fold
    assert budget.held_out_days == pytest.approx(budget.held_out_windows / 86_400)
    assert budget.expected_per_day == 2.0


@pytest.fixture(scope="module")
def budget_bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budget")
    return train_bundle(tmp, normal_csv(tmp, rows=3000), "--false-alarms-per-day", "2")


def test_train_sets_the_budget_on_the_validation_tail_and_records_how(budget_bundle):
    bundle = load_bundle(budget_bundle)
    budget = bundle.false_alarm_budget
    assert bundle.threshold.method == "budget" and bundle.threshold.value > 0
    assert budget.per_day == 2.0 and budget.held_out == "validation"
    assert budget.held_out_windows == 600 - 20 + 1
    assert budget.held_out_days == pytest.approx(581 / 86_400)
    assert budget.rule in ("pot", "pot-exponential") and budget.expected_per_day == 2.0
    assert budget.chosen_on == "the operator"
    assert bundle.training["calibrated_on"] == "validation"
    # 581 minutes held out vouch for no budget of 2 a day: the record says how much they can
    assert budget.bound_per_day == pytest.approx(vouched_rate(HeldOut([np.zeros(1)], budget.held_out_days, ""),
                                                              1.0, HYSTERESIS)) and budget.bound_per_day > 7


def test_the_budget_survives_a_bundle_round_trip(budget_bundle):
    raw = json.loads((budget_bundle / "bundle.json").read_text())["false_alarm_budget"]
    assert FalseAlarmBudget.from_dict(json.loads(json.dumps(raw))) == load_bundle(budget_bundle).false_alarm_budget


def test_a_bundle_written_before_the_budget_loads_without_one(budget_bundle, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    data = json.loads((budget_bundle / "bundle.json").read_text())
    before_bound = {k: v for k, v in data["false_alarm_budget"].items() if k != "bound_per_day"}
    assert FalseAlarmBudget.from_dict(before_bound).bound_per_day is None
    del data["false_alarm_budget"]
    data["threshold"] = {"value": 0.3, "method": "quantile", "params": {"q": 0.999}, "scale": 4 / 3}
    (old / "bundle.json").write_text(json.dumps(data))
    (old / "model.safetensors").write_bytes((budget_bundle / "model.safetensors").read_bytes())
    assert load_bundle(old).false_alarm_budget is None


def test_a_damaged_budget_field_names_the_field(budget_bundle, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    data = json.loads((budget_bundle / "bundle.json").read_text())
    data["false_alarm_budget"]["rule"] = "guess"
    (bad / "bundle.json").write_text(json.dumps(data))
    (bad / "model.safetensors").write_bytes((budget_bundle / "model.safetensors").read_bytes())
    with pytest.raises(BundleError, match="field 'false_alarm_budget': .*key 'rule' must be one of"):
        load_bundle(bad)


def test_inspect_and_evaluate_print_the_budget_and_the_realised_rate(budget_bundle, tmp_path, capsys):
    assert main(["inspect", "--model", str(budget_bundle)]) == 0
    out = capsys.readouterr().out
    assert "budget 2 false alarm(s) per device-day" in out and "validation windows" in out
    fresh = normal_csv(tmp_path, rows=4000, seed=9)
    assert main(["evaluate", "--model", str(budget_bundle), "--data", str(fresh)]) == 0
    assert "per device-day of normal rows" in capsys.readouterr().out and "budget 2" in out
    assert main(["evaluate", "--model", str(budget_bundle), "--data", str(fresh), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["budget_per_day"] == 2.0 and figures["false_alarms_per_day"] >= 0


def test_the_other_threshold_methods_stay_options(tmp_path):
    model = train_bundle(tmp_path, normal_csv(tmp_path, rows=1500), "--threshold-method", "quantile:0.999",
                         "--threshold-scale", "1.3333")
    bundle = load_bundle(model)
    assert bundle.threshold.method == "quantile" and bundle.false_alarm_budget is None


def test_the_rate_expected_at_a_budget_threshold_is_the_budget():
    """expected_rate asks the budget's question the other way round, on the same level and fit."""
    held_out = HeldOut([window_scores(0.5, seed=1)], 0.5, "validation")
    for per_day in (0.2, 1.0):  # extrapolated
        threshold, record = calibrate_budget(held_out, per_day, HYSTERESIS)
        assert record.rule != "counted"
        assert expected_rate(held_out, threshold, HYSTERESIS).per_day == pytest.approx(per_day, rel=1e-6)
    estimate = expected_rate(held_out, 0.5, HYSTERESIS)  # a low threshold: plenty of episodes seen
    assert estimate.rule == "counted" and estimate.per_day == episodes(held_out.runs, 0.5, HYSTERESIS) / 0.5


def test_the_rate_expected_at_a_quantile_threshold_typically_holds_within_twice_on_fresh_normal_data():
    """SKAB's rule (99.9th percentile x 4/3) on two days of held-out scores: over five samples
    the median ratio of the realised rate (300 fresh days) to the expected one is within x2."""
    ratios = []
    for seed in range(1, 6):
        held_out = HeldOut.from_scores([window_scores(2, seed=seed)], 1, MINUTE, "validation")
        threshold = float(np.quantile(held_out.runs[0], 0.999) * 4 / 3)
        expected = expected_rate(held_out, threshold, HYSTERESIS)
        assert expected.rule != "counted"  # past what two days show: extrapolated
        ratios.append(realised_per_day(threshold, days=300, seed=100 + seed) / expected.per_day)
    assert 0.5 <= float(np.median(ratios)) <= 2.0, ratios


def test_a_bundle_without_a_budget_says_how_often_it_is_expected_to_page(tmp_path, capsys):
    model = train_bundle(tmp_path, normal_csv(tmp_path, rows=3000), "--threshold-method", "quantile:0.999")
    estimate = load_bundle(model).training["expected_false_alarms"]
    assert estimate["held_out"] == "validation" and estimate["per_day"] >= 0
    assert main(["inspect", "--model", str(model)]) == 0
    shown = capsys.readouterr().out
    assert "alert episodes per device-day at this threshold" in shown
    assert f"alone vouch for at most {estimate['bound_per_day']:.3g}/day" in shown
    assert main(["evaluate", "--model", str(model), "--data", str(normal_csv(tmp_path, rows=2000, seed=9)),
                 "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["expected_false_alarms_per_day"] == estimate["per_day"]
    assert figures["vouched_false_alarms_per_day"] == estimate["bound_per_day"]


def test_a_tail_is_fitted_only_to_the_upper_tenth_of_the_held_out_scores():
    """A few hours of scores that show three episodes only far down in their body are no tail:
    the budget gives way to a longer held-out sample instead of extrapolating from the body."""
    # 81 windows in 4 hours: 8 bursts of 4 windows, each a little higher than the one before
    body = np.r_[np.concatenate([np.r_[np.full(4, 0.5 + 0.01 * k), np.zeros(6)] for k in range(8)]), 0.0]
    held_out = HeldOut([body], 4.0 / 24, "validation")
    assert len(episode_peaks(held_out.runs, float(np.median(body)), HYSTERESIS)) >= 3  # the body shows several
    assert len(episode_peaks(held_out.runs, float(np.quantile(body, 0.9)), HYSTERESIS)) < 3  # its top tenth not
    with pytest.raises(TooLittleTail):
        calibrate_budget(held_out, 1.0, HYSTERESIS)


def test_a_held_out_span_vouches_by_itself_for_the_poisson_bound_of_what_it_counted():
    """Where nothing is seen in D days the span vouches for about 3 / D a day (the rule of
    three); with k episodes, for the exact 95 % Poisson upper bound of k / D."""
    quiet = HeldOut([np.zeros(1000)], 0.5, "validation")
    assert vouched_rate(quiet, 1.0, HYSTERESIS) == pytest.approx(2.9957 / 0.5, rel=1e-4)
    burst = np.r_[np.zeros(10), np.ones(10), np.zeros(10)]
    four = HeldOut([np.tile(burst, 4)], 2.0, "validation")
    assert episodes(four.runs, 0.5, HYSTERESIS) == 4
    assert vouched_rate(four, 0.5, HYSTERESIS) == pytest.approx(9.1535 / 2.0, rel=1e-4)


def test_an_expectation_extrapolated_past_the_held_out_span_carries_what_the_span_vouches_for():
    held_out = HeldOut([window_scores(0.5, seed=1)], 0.5, "validation")
    far = float(held_out.runs[0].max() * 3)
    estimate = expected_rate(held_out, far, HYSTERESIS)
    assert estimate.rule != "counted" and estimate.per_day < 1e-3
    assert estimate.bound_per_day == pytest.approx(2.9957 / 0.5, rel=1e-4)
    assert "those 12 h alone vouch for at most 5.99/day" in estimate.describe()


def test_a_held_out_span_is_told_in_minutes_hours_or_days():
    from daemon.core.thresholds import describe_span

    assert describe_span(581 / 86_400) == "9.68 min"
    assert describe_span(0.4) == "9.6 h"
    assert describe_span(7.0) == "7 days"


def test_train_says_when_the_held_out_span_cannot_vouch_for_the_budget(tmp_path, capsys):
    """Ten minutes held out vouch for hundreds of episodes a day, not for 2: train says the
    budget rests on the tail alone."""
    train_bundle(tmp_path, normal_csv(tmp_path, rows=3000), "--false-alarms-per-day", "2")
    assert "unverified budget: the 9.68 min held out vouch for at most" in capsys.readouterr().out


def test_a_long_held_out_span_vouches_for_a_counted_budget_within_twice():
    held_out = HeldOut.from_scores([window_scores(20, seed=1)], 1, MINUTE, "validation")
    threshold, record = calibrate_budget(held_out, 5.0, HYSTERESIS)
    assert record.rule == "counted" and 5.0 < record.bound_per_day <= 2 * 5.0


def test_an_estimate_without_a_bound_round_trips_as_strict_json():
    from types import SimpleNamespace

    from daemon.offline.budget import EXPECTED_FALSE_ALARMS_KEY, RateEstimate, stored_estimate

    written = json.dumps(RateEstimate(None, "counted", 0, "validation", 0.1).to_dict(), allow_nan=False)
    back = stored_estimate(SimpleNamespace(calibration={}, training={EXPECTED_FALSE_ALARMS_KEY: json.loads(written)}))
    assert back.per_day is None and back.bound_per_day is None
    assert "no expected rate (the validation windows, 2.4 h held out" in back.describe()
