"""Label-free self-tuning and per-sensor weighting: `train --self-tune` tries every setting of
the knobs that need no retraining on faults injected into the held-out tail, keeps the one that
detects the most within the threshold rule, and writes the candidates and the choice into the
bundle; `--normalise-features` stores each feature's typical held-out error as its weight."""

from __future__ import annotations

import json

import numpy as np
import pytest

from daemon.cli import main
from daemon.core.bundle import load_bundle
from daemon.core.scoring import Scorer
from daemon.offline.frames import load_csv
from daemon.offline.injection import KINDS
from daemon.offline.self_tuning import (ENTER_AFTER, NORMALISED, TYPICAL_ERROR_FLOOR, Candidate,
                                        ReconstructionMemo, alert_opening_scores, candidates)
from datafiles import faults_csv, normal_csv, train_bundle


def tuning_without_timings(bundle) -> dict:
    tuning = json.loads(json.dumps(load_bundle(bundle).training["self_tuning"]))
    tuning.pop("seconds")
    for candidate in tuning["candidates"]:
        candidate.pop("seconds")
    return tuning


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("self-tuning-data")
    return normal_csv(tmp, rows=2000)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, data):
    return train_bundle(tmp_path_factory.mktemp("tuned"), data, "--self-tune")


def test_every_candidate_is_tried_and_the_choice_is_stored_in_the_bundle(tuned):
    bundle = load_bundle(tuned)
    tuning = bundle.training["self_tuning"]
    tried = [(c["score_reduction"], c["normalised"], c["enter_after"]) for c in tuning["candidates"]]
    assert len(tried) == len(set(tried)) == 2 * len(NORMALISED) * len(ENTER_AFTER)
    assert tried[0] == ("max", True, 3)  # the configured setting (the defaults) first: ties keep it
    chosen = tuning["chosen"]
    best = max(c["detection_rate"] for c in tuning["candidates"] if c["eligible"])
    row = next(c for c in tuning["candidates"] if all(c[k] == v for k, v in chosen.items()))
    assert row["eligible"] and row["detection_rate"] == best
    # the bundle scores and alerts as chosen, at the chosen candidate's threshold
    assert bundle.score.reduction == chosen["score_reduction"]
    assert (bundle.score.feature_scale is not None) == chosen["normalised"]
    assert bundle.alert.enter_after == chosen["enter_after"]
    assert bundle.threshold.value == pytest.approx(row["threshold"])
    assert "window length" in tuning["not_tuned"]


def test_the_injected_fault_table_is_the_chosen_settings(tuned):
    bundle = load_bundle(tuned)
    table = bundle.training["injected_faults"]
    assert list(table) == list(KINDS)
    rates = [f["detection_rate"] for f in table.values()]
    chosen = next(c for c in bundle.training["self_tuning"]["candidates"]
                  if all(c[k] == v for k, v in bundle.training["self_tuning"]["chosen"].items()))
    assert np.mean(rates) == pytest.approx(chosen["detection_rate"], abs=1e-4)


def test_the_choice_reads_no_label(tmp_path, data, tuned):
    """The same normal data with other labelled files beside it gives the same choice: no
    label reaches a candidate's threshold, false alarms or injected-fault score."""
    other = train_bundle(tmp_path, data, "--self-tune", "--validation-data", str(faults_csv(tmp_path, seed=7)))
    assert tuning_without_timings(other) == tuning_without_timings(tuned)


def test_the_f1_threshold_reads_labels_so_it_is_not_self_tuned(tmp_path, data):
    bundle = train_bundle(tmp_path, data, "--self-tune", "--threshold-method", "f1",
                          "--validation-data", str(faults_csv(tmp_path)))
    assert load_bundle(bundle).training["self_tuning"] is None


def test_without_self_tuning_the_configured_knobs_are_kept(tmp_path, data):
    bundle = load_bundle(train_bundle(tmp_path, data, "--enter-after", "4", "--score-reduction", "mean",
                                      "--no-normalise-features"))
    assert bundle.training["self_tuning"] is None
    assert (bundle.score.reduction, bundle.score.feature_scale, bundle.alert.enter_after) == ("mean", None, 4)


def test_per_sensor_weights_are_the_default(tmp_path, data):
    assert load_bundle(train_bundle(tmp_path, data)).score.feature_scale is not None


def test_normalised_features_store_each_features_typical_error_and_score_with_it(tmp_path, data):
    path = train_bundle(tmp_path, data, "--normalise-features")
    bundle = load_bundle(path)
    scale = np.asarray(bundle.score.feature_scale)
    assert scale.shape == (len(bundle.features),) and (scale > 0).all()
    assert scale.min() >= TYPICAL_ERROR_FLOOR * np.median(scale) * (1 - 1e-6)  # the floor holds
    # the one scoring path divides by it: a feature's weighted error is its error over its scale
    scorer = Scorer.load(path)
    frame = load_csv(data)
    windows = np.stack([frame.values[i:i + bundle.window] for i in range(0, 200, 10)])
    scored = scorer.score_windows(windows)
    assert np.allclose(scored.scores, (scored.feature_errors / scale.astype(np.float32)).max(axis=1), rtol=1e-5)


def test_inspect_shows_the_candidates_and_marks_the_choice(tuned, capsys):
    assert main(["inspect", "--model", str(tuned)]) == 0
    out = capsys.readouterr().out
    assert "self-tuning   12 candidates" in out
    marked = [line for line in out.splitlines() if line.startswith("* ")]
    chosen = load_bundle(tuned).training["self_tuning"]["chosen"]
    assert len(marked) == 1 and marked[0].split()[1:4] == [
        chosen["score_reduction"], "yes" if chosen["normalised"] else "no", str(chosen["enter_after"])]


def test_a_threshold_rule_on_alert_opening_scores_sees_each_run_alone():
    runs = [np.array([1.0, 5.0, 6.0, 2.0]), np.array([7.0, 8.0]), np.array([9.0])]
    assert alert_opening_scores(runs, 1).tolist() == [1.0, 5.0, 6.0, 2.0, 7.0, 8.0, 9.0]
    # an alert after 2 windows opens when both exceed the threshold: their lower score decides
    assert alert_opening_scores(runs, 2).tolist() == [1.0, 5.0, 2.0, 7.0]


def test_the_configured_setting_is_the_first_candidate():
    configured = Candidate("mean", True, 5)
    grid = candidates(configured)
    assert grid[0] == configured and len(grid) == len(set(grid)) == 12


def test_the_memo_asks_the_model_once_per_distinct_batch():
    calls = []

    def model(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return batch * 2

    memo = ReconstructionMemo(model)
    a, b = np.ones((3, 4, 2), np.float32), np.zeros((3, 4, 2), np.float32)
    assert np.array_equal(memo(a), a * 2) and np.array_equal(memo(b), b * 2) and np.array_equal(memo(a.copy()), a * 2)
    assert len(calls) == 2
