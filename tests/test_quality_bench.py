"""The quality suite (bench/quality.py): its machinery on small generated data.

The suite's claim is "defaults only, every detector on the same rows": these tests hold it to
that (the config is `anomalyd train`'s, the baselines see the same counted rows, PCA moved to
our FAR flags the same share of normal rows) and check the pieces it adds to the package's
metrics (per-fault detection rate and delay, the PCA limits, the TEP layout).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from baselines import PcaMonitor  # noqa: E402
from quality import run_all, suite_config  # noqa: E402
from quality_cases import TEP_FEATURES, generated_case, tep  # noqa: E402
from quality_metrics import (DETECTORS, OURS, PCA, PCA_AT_OUR_FAR, alarm_names, by_name, events_of,  # noqa: E402
                             summarise, threshold_at_far)
from quality_package import Frame, TrainConfig, cli_train_defaults, synthetic  # noqa: E402
from quality_run import RunOutcome  # noqa: E402
from quality_table import render, seed_spread_table  # noqa: E402

CLI_NAMES = {"lr": "learning_rate"}


def test_the_suite_trains_with_exactly_what_anomalyd_train_uses_by_default():
    config = suite_config(quick=False)
    cli = cli_train_defaults()
    shared = {CLI_NAMES.get(k, k): v for k, v in cli.items()
              if CLI_NAMES.get(k, k) in {f.name for f in dataclasses.fields(TrainConfig)}}
    assert {"window", "threshold", "threshold_scale", "score_reduction", "enter_after"} <= set(shared)
    for name, value in shared.items():
        if name in ("name", "version"):
            continue
        assert getattr(config, name) == value, f"{name}: suite {getattr(config, name)!r}, anomalyd train {value!r}"


def test_quick_mode_changes_only_the_number_of_epochs():
    quick, full = suite_config(quick=True), suite_config(quick=False)
    assert quick.epochs < full.epochs
    assert dataclasses.replace(quick, epochs=full.epochs) == full


def correlated(rows: int, seed: int) -> np.ndarray:
    """Six sensors driven by two hidden factors, plus noise."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(rows, 2))
    mixing = np.array([[1.0, 0.5, -0.8, 0.3, 0.0, 1.2], [0.2, -1.0, 0.4, 0.9, 1.1, 0.0]])
    return factors @ mixing + 0.1 * rng.normal(size=(rows, 6))


def test_pca_limits_from_training_flag_about_one_percent_of_fresh_normal_rows():
    monitor = PcaMonitor.fit(correlated(3000, seed=0))
    assert monitor.components == 2
    flagged = float(np.mean(monitor.combined(correlated(20000, seed=1)) > 1.0))
    assert 0.005 < flagged < 0.04  # T² and SPE each at alpha = 1 %, alarm when either is over


def test_pca_spe_flags_a_sensor_that_stops_following_the_others():
    monitor = PcaMonitor.fit(correlated(3000, seed=0))
    broken = correlated(1000, seed=2)
    broken[:, 2] = np.random.default_rng(3).normal(scale=broken[:, 2].std(), size=1000)
    _, spe = monitor.statistics(broken)
    _, spe_normal = monitor.statistics(correlated(1000, seed=4))
    assert np.mean(spe > monitor.spe_limit) > 0.5 > 0.05 > np.mean(spe_normal > monitor.spe_limit)


def test_pca_moved_to_another_detectors_far_flags_that_share_of_normal_rows():
    statistic = np.random.default_rng(0).exponential(size=10000)
    for far in (0.0, 1.7, 25.0, 100.0):
        assert np.mean(statistic > threshold_at_far(statistic, far)) * 100 == pytest.approx(far, abs=0.01)


def run_with(labels: list[int], names: tuple[str, ...], named: list[str] | None = None) -> RunOutcome:
    n = len(labels)
    zeros = np.zeros(n, dtype=np.int8)
    return RunOutcome("test.csv", np.array(labels, dtype=np.int8), 100.0 + 10.0 * np.arange(n), zeros, zeros,
                      np.zeros(n), names, named or [""] * n)


def test_each_named_fault_gets_its_detection_rate_and_the_delay_to_its_first_alarm():
    run = run_with([0, 1, 1, 1, 1, 0, 0, 1, 1, 0], ("stuck", "drift"))
    predicted = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 0], dtype=np.int8)
    stuck, drift = events_of(predicted, run)
    assert (stuck.name, stuck.fdr, stuck.delay_seconds) == ("stuck", 0.5, 20.0)
    assert (drift.name, drift.fdr) == ("drift", 0.0)
    assert math.isnan(drift.delay_seconds)


def write_tep(root: Path, train_rows: int = 60, test_rows: int = 200) -> None:
    rng = np.random.default_rng(0)
    np.savetxt(root / "d00.dat", rng.normal(size=(len(TEP_FEATURES), train_rows)))  # stored transposed
    for fault in (0, 3, 5):
        np.savetxt(root / f"d{fault:02d}_te.dat", rng.normal(size=(test_rows, len(TEP_FEATURES))))


def test_tep_runs_are_faulty_from_sample_161_and_undetectable_faults_stay_out_of_the_mean(tmp_path):
    write_tep(tmp_path)
    case = tep(tmp_path, faults=(3, 5))
    assert case.train[0].values.shape == (60, len(TEP_FEATURES)) and case.train[0].labels is None
    normal, fault3, fault5 = case.tests
    assert not normal.frame.labels.any() and normal.event_names == ()
    assert fault5.frame.labels[:160].sum() == 0 and fault5.frame.labels[160:].all()
    assert fault5.event_names == ("fault 5",)
    assert np.diff(fault5.frame.timestamps)[0] == 180.0
    assert case.detectable == ("fault 5",)


@pytest.fixture(scope="module")
def generated_results():
    normal = synthetic.normal(400, seed=0)
    faults = synthetic.with_faults(600, seed=1, length=40)
    frame = lambda data, labels: Frame("gen.csv", data.timestamps, data.values, list(synthetic.FEATURES),  # noqa: E731
                                       labels)
    case = generated_case(frame(normal, None), frame(faults, faults.labels))
    outcomes = run_all([case], TrainConfig(epochs=1), jobs=1)
    return outcomes, summarise(outcomes)


def test_every_detector_is_scored_on_the_same_counted_rows(generated_results):
    outcomes, results = generated_results
    assert list(results) == list(DETECTORS)
    assert {f.rows for f in results.values()} == {600}
    assert [e.name for e in results[OURS].by_event] == list(synthetic.FAULTS)
    assert results[PCA_AT_OUR_FAR].far == pytest.approx(results[OURS].far, abs=0.1)
    assert results[PCA].pca_threshold == 1.0


def test_the_table_has_a_row_per_detector_and_a_line_per_fault_kind(generated_results):
    _, results = generated_results
    text = render({"generated": results}, {"generated": 0})
    rows = [line for line in text.splitlines() if line.startswith("| generated |")]
    assert len(rows) == len(DETECTORS)
    for kind in synthetic.FAULTS:
        assert any(line.startswith(f"| {kind} |") for line in text.splitlines())
    assert "set on test rows" in text  # the footnote says where PCA's moved threshold comes from


def test_a_fault_kind_on_several_runs_is_pooled_into_one_row_of_the_fault_table():
    first = run_with([0, 1, 1, 1, 1, 0], ("stuck",))
    second = run_with([0, 1, 1, 0, 0, 0], ("stuck",))
    events = events_of(np.array([0, 0, 0, 1, 1, 0], dtype=np.int8), first) + events_of(
        np.zeros(6, dtype=np.int8), second)
    (stuck,) = by_name(events)
    assert (stuck.fdr, stuck.delay_seconds, stuck.caught, stuck.events) == (2 / 6, 20.0, 1, 2)


def test_what_the_alarms_name_is_counted_per_fault_kind_over_its_rows_in_alert():
    first = run_with([0, 1, 1, 1, 0], ("stuck",), ["model:flow", "stuck:flow", "stuck:flow", "model:flow", ""])
    second = run_with([1, 1, 0, 0, 0], ("stuck",), ["", "relation:flow", "model:current", "", ""])
    assert alarm_names([first, second]) == {"stuck": {"stuck:flow": 2, "model:flow": 1, "relation:flow": 1}}


def test_the_table_says_what_the_alarms_name_during_each_fault_kind(generated_results):
    _, results = generated_results
    assert set(results[OURS].alarm_names) <= set(synthetic.FAULTS)
    text = render({"generated": results}, {"generated": 0})
    assert "| generated fault | rows in alert | what they name (share of those rows) |" in text


def test_the_training_seed_table_gives_each_figure_as_mean_and_range_over_the_seeds(generated_results):
    _, results = generated_results
    worse = {key: dataclasses.replace(f, f1=f.f1 - 0.1) for key, f in results.items()}
    table = seed_spread_table([(0, {"generated": results}), (1, {"generated": worse})])
    f1 = results[OURS].f1
    row = next(line for line in table.splitlines() if line.startswith("| generated |"))
    assert row.startswith(f"| generated | 2 | {f1 - 0.05:.3f} ({f1 - 0.1:.3f}–{f1:.3f}) |")


def test_a_model_train_refuses_is_reported_with_its_reason_not_a_stop():
    """A false-alarm budget on a run too short to show one (as SKAB A's 400-row files can be) is a
    refusal by `train`; the suite counts it beside the data set's budget rules and goes on."""
    normal = synthetic.normal(120, seed=0)
    faults = synthetic.with_faults(600, seed=1, length=40)
    frame = lambda data, labels: Frame("gen.csv", data.timestamps, data.values, list(synthetic.FEATURES),  # noqa: E731
                                       labels)
    case = generated_case(frame(normal, None), frame(faults, faults.labels))
    budget = dataclasses.replace(TrainConfig(epochs=1), threshold="budget", false_alarms_per_day=1.0,
                                 threshold_scale=1.0)
    [outcome] = run_all([case], budget, jobs=1)
    assert outcome.runs == [] and "too little normal data for a false-alarm budget" in outcome.refused
    # pooled with a model that was built, it is one of the data set's budget rules
    ours = summarise([outcome, *run_all([case], TrainConfig(epochs=1), jobs=1)])[OURS]
    assert ours.budget_rules == {"refused by train: too little normal data for a false-alarm budget": 1}
