"""Sensor evidence: a sensor that training shows in only a few independent stretches (a slow
temperature in a short run) has its per-sensor weight scaled down by how little its typical
error can be known (with `--demean thin` the model reads it centred on each window), and
`train` and `inspect` say so."""

import json

import numpy as np
import pytest
from scipy.stats import chi2

from daemon.cli import main
from daemon.core.bundle import load_bundle
from daemon.core.evidence import autocorrelation_time, divisor_factor, independent_stretches
from daemon.offline.sensor_evidence import SENSOR_EVIDENCE_KEY, SensorEvidence
from datafiles import normal_csv, train_bundle


def _ar1(rho: float, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty(n)
    x[0] = rng.normal()
    for i in range(1, n):
        x[i] = rho * x[i - 1] + rng.normal()
    return x


def test_white_noise_is_one_sample_per_row_and_an_ar1_series_about_1_plus_rho_over_1_minus_rho():
    assert autocorrelation_time(np.random.default_rng(1).normal(size=20000)) == pytest.approx(1.0, abs=0.1)
    assert autocorrelation_time(_ar1(0.9, 50000)) == pytest.approx(19.0, rel=0.15)


def test_degenerate_series_count_every_row_and_a_trend_counts_as_about_one_stretch():
    assert autocorrelation_time(np.full(500, 3.0)) == 1.0
    assert autocorrelation_time(np.array([1.0, 2.0])) == 1.0
    trend = np.linspace(0.0, 1.0, 400)
    assert autocorrelation_time(trend) > 100
    assert autocorrelation_time(trend) <= 400


def test_stretches_add_up_over_runs_and_per_feature():
    rng = np.random.default_rng(2)
    runs = [np.column_stack([rng.normal(size=n), np.cumsum(rng.normal(size=n))]) for n in (3000, 2000)]
    stretches = independent_stretches(runs)
    assert stretches[0] == pytest.approx(5000, rel=0.1)
    assert stretches[1] < 50


def test_the_divisor_is_raised_to_the_95_percent_bound_of_a_variance():
    factor = divisor_factor(np.array([2.0, 3.0, 11.0, 101.0, 1001.0]), "mse")
    expected = [1 / chi2.ppf(0.05, 1), 2 / chi2.ppf(0.05, 2), 10 / chi2.ppf(0.05, 10), 100 / chi2.ppf(0.05, 100),
                1000 / chi2.ppf(0.05, 1000)]
    np.testing.assert_allclose(factor, expected)
    assert list(factor) == sorted(factor, reverse=True) and 1.0 < factor[-1] < 1.1
    assert divisor_factor(np.array([0.5]), "mse")[0] == divisor_factor(np.array([2.0]), "mse")[0]
    np.testing.assert_allclose(divisor_factor(np.array([11.0]), "mae"), np.sqrt(factor[2]))


def test_a_slow_sensor_in_a_short_run_votes_less_and_train_and_inspect_say_why(tmp_path, capsys):
    # 800 rows of the generated pump: its temperature wanders over hundreds of rows, the other
    # four sensors over tens
    out = train_bundle(tmp_path, normal_csv(tmp_path, rows=800))
    printed = capsys.readouterr().out
    bundle = load_bundle(out)
    evidence = SensorEvidence.from_dict(json.loads((out / "bundle.json").read_text())["training"][SENSOR_EVIDENCE_KEY])
    assert evidence.thin() == ["temperature"]
    stretches = dict(zip(evidence.features, evidence.stretches))
    assert stretches["temperature"] < 10 < min(v for k, v in stretches.items() if k != "temperature")
    factor = dict(zip(evidence.features, evidence.factor))
    assert factor["temperature"] > 3 * max(v for k, v in factor.items() if k != "temperature")
    assert bundle.score.feature_scale is not None
    assert "thin evidence: training shows temperature in fewer than 10 independent stretches" in printed
    assert bundle.preprocess.demean == () and "centred" not in printed

    assert main(["inspect", "--model", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "evidence      independent stretches of each sensor" in shown
    assert f"temperature {stretches['temperature']:.1f} stretches (vote / {factor['temperature']:.3g})" in shown
    assert "fewer than 10: temperature" in shown


def test_the_divisors_are_the_typical_errors_times_the_factors(tmp_path):
    from daemon.core.scoring import Scorer
    from daemon.core.runtime import torch_backend
    from daemon.offline.frames import load_csv
    from daemon.offline.self_tuning import typical_feature_errors
    from daemon.offline.training import TrainConfig, split_runs, train

    frame = load_csv(normal_csv(tmp_path, rows=800))
    config = TrainConfig(arch="mlp", window=10, epochs=2)
    result = train([frame], config)
    evidence = SensorEvidence.from_dict(result.bundle.training[SENSOR_EVIDENCE_KEY])
    split = split_runs([frame], config.window, config.validation_fraction)
    unweighted = Scorer(result.bundle, torch_backend(result.model, 1))
    typical = typical_feature_errors(unweighted, split.validation)
    np.testing.assert_allclose(result.bundle.score.feature_scale, np.asarray(typical) * evidence.factor, rtol=1e-4)
    recount = SensorEvidence.of_runs(frame.features, [r.values for r in split.runs], "mse")
    np.testing.assert_allclose(evidence.stretches, recount.stretches, rtol=1e-3)


def test_only_thin_sensors_lose_their_level_and_never_every_sensor():
    evidence = SensorEvidence(("flow", "temperature"), (150.0, 4.0), (1.2, 8.0))
    assert evidence.levels_unknown() == ("temperature",)
    assert SensorEvidence(("flow", "temperature"), (6.0, 4.0), (5.0, 8.0)).levels_unknown() == ()


def test_demean_thin_centres_the_thin_sensor_and_train_and_inspect_say_so(tmp_path, capsys):
    out = train_bundle(tmp_path, normal_csv(tmp_path, rows=800), "--demean", "thin")
    printed = capsys.readouterr().out
    assert load_bundle(out).preprocess.demean == ("temperature",)
    assert "the model reads temperature centred on each window" in printed
    assert main(["inspect", "--model", str(out)]) == 0
    assert "demeaned      temperature" in capsys.readouterr().out


def test_with_many_thin_sensors_train_names_a_few_and_points_to_inspect_for_the_rest(tmp_path, capsys):
    # 600 rows of twelve sensors wandering over hundreds of rows: every one is thin
    rows = np.arange(600)
    slow = np.column_stack([np.sin(rows / (150 + 20 * k)) + 0.01 * _ar1(0.5, 600, seed=k) for k in range(12)])
    path = tmp_path / "wide.csv"
    np.savetxt(path, np.column_stack([1.7e9 + rows, slow]), delimiter=",", comments="", fmt="%.6f",
               header=",".join(["timestamp", *(f"s{k}" for k in range(12))]))
    train_bundle(tmp_path, path)
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("thin evidence:"))
    assert "training shows s0, s1, s2, s3, s4, s5, s6, s7 and 4 more (anomalyd inspect --model" in line
    assert "s8" not in line
