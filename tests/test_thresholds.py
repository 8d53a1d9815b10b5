import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from daemon.core.thresholds import Threshold, calibrate, parse_method, threshold_in_force

DEMO_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "demo"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("quantile:0.95", ("quantile", {"q": 0.95})),
        ("quantile", ("quantile", {"q": 0.99})),
        ("sigma:3", ("sigma", {"k": 3.0})),
        ("sigma", ("sigma", {"k": 3.0})),
        ("pot:1e-3", ("pot", {"risk": 0.001})),
        ("pot", ("pot", {"risk": 0.001})),
        ("f1", ("f1", {})),
        ("budget", ("budget", {})),
        (" quantile : 0.9 ", ("quantile", {"q": 0.9})),
    ],
)
def test_parse_method(spec, expected):
    assert parse_method(spec) == expected


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("median", "valid methods: budget, quantile, sigma, pot, f1"),
        ("Quantile:0.9", "unknown threshold method 'Quantile'"),
        ("", "valid methods"),
        ("quantile:1.5", "threshold method 'quantile': q must be in (0, 1), got 1.5"),
        ("quantile:0", "q must be in (0, 1)"),
        ("quantile:abc", "q must be a number, got 'abc'"),
        ("quantile:", "q must be a number"),
        ("pot:2", "risk must be in (0, 1), got 2.0"),
        ("pot:nan", "risk must be in (0, 1)"),
        ("sigma:-1", "k must be > 0, got -1.0"),
        ("sigma:inf", "k must be > 0"),
        ("f1:0.5", "'f1' takes no parameter"),
        ("budget:2", "'budget' takes no parameter, got 'budget:2' (the budget is --false-alarms-per-day)"),
    ],
)
def test_parse_method_errors(spec, fragment):
    with pytest.raises(ValueError) as err:
        parse_method(spec)
    assert fragment in str(err.value)


def test_a_budget_is_not_calibrated_from_a_bag_of_scores():
    """A budget counts alert episodes over time-ordered runs; daemon.offline.budget does that."""
    with pytest.raises(ValueError, match="calibrated on held-out runs"):
        calibrate("budget", np.arange(100.0))


def test_quantile_of_known_sample():
    scores = np.arange(101, dtype=float)  # 0..100
    th = calibrate("quantile:0.9", scores)
    assert th.value == pytest.approx(90.0)
    assert th.method == "quantile"
    assert th.params == {"q": 0.9}
    assert th.scale == 1.0


def test_scale_multiplies_raw_value():
    scores = np.arange(101, dtype=float)
    th = calibrate("quantile:0.9", scores, scale=1.5)
    assert th.value == pytest.approx(135.0)
    assert th.scale == 1.5


@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf, math.nan])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        calibrate("quantile", np.arange(10.0), scale=scale)


def test_sigma_on_normal_sample():
    rng = np.random.default_rng(1)
    scores = rng.normal(5.0, 2.0, 100_000)
    th = calibrate("sigma:3", scores)
    assert th.value == pytest.approx(5.0 + 3 * 2.0, rel=0.01)
    assert th.params == {"k": 3.0}


def test_pot_exponential_tail():
    rng = np.random.default_rng(0)
    scores = rng.exponential(1.0, 200_000)
    th = calibrate("pot:1e-4", scores)
    assert th.value == pytest.approx(-math.log(1e-4), rel=0.10)
    assert th.method == "pot"
    assert th.params["risk"] == 1e-4
    assert th.params["t"] == pytest.approx(np.quantile(scores, 0.98))
    assert abs(th.params["gamma"]) < 0.1  # exponential tail: shape ~ 0
    assert th.params["sigma"] == pytest.approx(1.0, rel=0.1)


def test_pot_pareto_tail():
    dist = stats.genpareto(c=0.3)
    scores = dist.rvs(200_000, random_state=np.random.default_rng(2))
    th = calibrate("pot:1e-4", scores)
    assert th.value == pytest.approx(dist.isf(1e-4), rel=0.15)
    assert th.params["gamma"] == pytest.approx(0.3, abs=0.1)


def test_pot_extrapolates_beyond_sample_quantile():
    """The reason to use POT: with 20k points, risk 1e-6 is far past the sample max."""
    rng = np.random.default_rng(3)
    scores = rng.exponential(1.0, 20_000)
    th = calibrate("pot:1e-6", scores)
    assert th.value > scores.max()
    assert th.value == pytest.approx(-math.log(1e-6), rel=0.15)


def test_pot_too_few_scores():
    with pytest.raises(ValueError, match="too few scores for POT"):
        calibrate("pot", np.arange(100.0))


def test_pot_risk_not_in_tail():
    with pytest.raises(ValueError, match="use 'quantile'"):
        calibrate("pot:0.05", np.random.default_rng(0).exponential(size=10_000))


def test_f1_recovers_separating_threshold():
    rng = np.random.default_rng(4)
    normal = rng.uniform(0.0, 1.0, 5_000)
    anomalous = rng.uniform(2.0, 3.0, 300)
    scores = np.concatenate([normal, anomalous])
    labels = np.concatenate([np.zeros(normal.size, int), np.ones(anomalous.size, int)])
    th = calibrate("f1", scores, labels)
    assert th.params["f1"] == 1.0
    assert normal.max() <= th.value < anomalous.min()
    np.testing.assert_array_equal(scores > th.value, labels.astype(bool))


def test_f1_with_many_unique_scores_is_subsampled_but_good():
    rng = np.random.default_rng(5)
    scores = np.concatenate([rng.normal(0, 1, 50_000), rng.normal(6, 1, 1_000)])
    labels = np.r_[np.zeros(50_000, int), np.ones(1_000, int)]
    th = calibrate("f1", scores, labels)
    assert 2.0 < th.value < 4.5
    assert th.params["f1"] > 0.95


def test_f1_needs_labels():
    with pytest.raises(ValueError, match="needs labels"):
        calibrate("f1", np.arange(10.0))


def test_f1_needs_positive_labels():
    with pytest.raises(ValueError, match="no positives"):
        calibrate("f1", np.arange(10.0), np.zeros(10, int))


def test_f1_labels_length_mismatch():
    with pytest.raises(ValueError, match=r"labels must have shape \(10,\)"):
        calibrate("f1", np.arange(10.0), np.ones(9, int))


@pytest.mark.parametrize(
    ("scores", "fragment"),
    [
        (np.array([]), "scores are empty"),
        (np.ones((3, 3)), "scores must be 1-D"),
        (np.array([1.0, np.nan]), "non-finite"),
    ],
)
def test_bad_scores(scores, fragment):
    with pytest.raises(ValueError, match=fragment):
        calibrate("quantile", scores)


def test_to_dict_from_dict_round_trip():
    rng = np.random.default_rng(6)
    th = calibrate("pot:1e-3", rng.exponential(size=50_000), scale=1.2)
    d = json.loads(json.dumps(th.to_dict()))
    assert Threshold.from_dict(d) == th


def test_from_dict_defaults_scale_and_params():
    assert Threshold.from_dict({"value": 2, "method": "f1"}) == Threshold(2.0, "f1", {}, 1.0)


@pytest.mark.parametrize(
    ("d", "fragment"),
    [
        ({"method": "quantile"}, "missing key 'value'"),
        ({"value": 1.0}, "missing key 'method'"),
        ({"value": 1.0, "method": "median"}, "key 'method' must be one of"),
        ({"value": "high", "method": "sigma"}, "key 'value' must be a number"),
        ({"value": math.nan, "method": "sigma"}, "key 'value' must be finite"),
        ({"value": 1.0, "method": "sigma", "params": [3]}, "key 'params' must be a dict"),
        ({"value": 1.0, "method": "sigma", "params": {"k": "x"}}, "key 'params.k' must be a number"),
        ({"value": 1.0, "method": "sigma", "scale": 0}, "key 'scale' must be > 0"),
        ([1.0], "expected a dict"),
    ],
)
def test_from_dict_errors(d, fragment):
    with pytest.raises(ValueError) as err:
        Threshold.from_dict(d)
    assert fragment in str(err.value)


# ---- the threshold in force -------------------------------------------------------------------

def test_without_an_override_the_bundles_calibrated_threshold_is_in_force():
    assert threshold_in_force(0.32) == 0.32
    assert threshold_in_force(0.32, None) == 0.32


@pytest.mark.parametrize("override", [0.0, 0, 0.05, 7.0])
def test_a_configured_threshold_is_in_force_even_when_it_is_zero(override):
    assert threshold_in_force(0.32, override) == override


@pytest.mark.parametrize("override", [math.nan, math.inf, "high", True])
def test_an_override_that_is_not_a_finite_number_is_refused(override):
    with pytest.raises(ValueError, match="threshold override"):
        threshold_in_force(0.32, override)


def test_the_service_announces_a_configured_threshold_of_zero_as_the_one_in_force(caplog):
    """The log line an operator reads at start names the threshold the worker compares with."""
    from daemon.live.config import build
    from daemon.live.service import Service
    from daemon.live.sinks.factory import DiscardSink

    config = build({"model": {"path": str(DEMO_BUNDLE)}, "alerting": {"threshold": 0},
                    "metrics": {"enabled": False}})
    with caplog.at_level(logging.INFO, logger="daemon.live.service"):
        service = Service(config, sink=DiscardSink())
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model ")]
    assert "threshold 0)" in line
    assert service.worker._models[""].threshold == 0.0
