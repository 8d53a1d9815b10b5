"""Slow-feature handling: `score.exclude` (features that are model input but do not vote) and
`preprocess.demean` (centre features on their window mean), chosen from training rows, stored
in bundle.json and applied by the one scoring path. Plus: daemon.core.thresholds imports scipy lazily."""

import json
import subprocess
import sys

import numpy as np
import pytest

from daemon.core.bundle import ScoreSpec, load_bundle
from daemon.core.errors import BundleError, UserError
from daemon.offline.frames import load_csv
from daemon.core.preprocess import Preprocess, lag1_autocorrelation, resolve_features, slow_features
from daemon.core.scoring import Scorer, combine, leading_features
from daemon.offline.training import TrainConfig, save, train
from datafiles import normal_csv, train_bundle

FEATURES = ["vibration", "current", "pressure", "flow", "temperature"]


def _runs(n=400, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n, 2))
    drift = np.cumsum(rng.normal(size=n)) * 0.1 + 60.0  # a slowly wandering temperature
    return [np.column_stack([noise, drift])]


def test_slow_features_are_the_drifting_ones():
    runs = _runs()
    ac = lag1_autocorrelation(runs)
    assert ac[2] > 0.9 and abs(ac[0]) < 0.3 and abs(ac[1]) < 0.3
    assert slow_features(["a", "b", "temp"], runs) == ("temp",)
    assert slow_features(["temp"], [runs[0][:, 2:]]) == ()  # never every feature
    assert lag1_autocorrelation([np.ones((50, 1))]).tolist() == [0.0]  # constant: not slow


def test_resolve_features_modes_and_errors():
    runs = _runs()
    assert resolve_features("none", ["a", "b", "temp"], runs, "x") == ()
    assert resolve_features("auto", ["a", "b", "temp"], runs, "x") == ("temp",)
    assert resolve_features(["b"], ["a", "b", "temp"], runs, "x") == ("b",)
    with pytest.raises(ValueError, match="unknown feature"):
        resolve_features(["nope"], ["a", "b", "temp"], runs, "x")
    with pytest.raises(ValueError, match="unknown"):
        resolve_features("sometimes", ["a", "b", "temp"], runs, "x")


def test_demean_centres_only_the_named_features_and_copies():
    x = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    out = Preprocess(("b",)).apply(x, ["a", "b", "c"])
    np.testing.assert_allclose(out[:, :, 1].mean(axis=1), 0.0, atol=1e-6)
    np.testing.assert_array_equal(out[:, :, [0, 2]], x[:, :, [0, 2]])
    np.testing.assert_array_equal(out[:, :, 1], x[:, :, 1] - x[:, :, 1].mean(axis=1, keepdims=True))
    assert x[0, 0, 1] == 1.0  # input untouched
    assert Preprocess().apply(x, ["a", "b", "c"]) is x


def test_excluded_features_do_not_vote():
    errors = np.array([[0.1, 9.0, 0.3], [0.2, 0.1, 0.5]], dtype=np.float32)
    spec = ScoreSpec(reduction="max", exclude=("b",))
    np.testing.assert_allclose(combine(errors, spec, ["a", "b", "c"]), [0.3, 0.5])
    np.testing.assert_allclose(combine(errors, ScoreSpec(reduction="max")), [9.0, 0.5])
    with pytest.raises(ValueError, match="feature names"):
        combine(errors, spec)


def test_a_model_alarm_names_the_voting_sensor_with_the_largest_weighted_error():
    errors = np.array([[0.1, 9.0, 0.3], [0.2, 0.1, 0.5], [4.0, 0.1, 1.0]], dtype=np.float32)
    features = ["a", "b", "c"]
    assert leading_features(errors, ScoreSpec(reduction="max"), features).tolist() == [1, 2, 0]
    assert leading_features(errors, ScoreSpec(reduction="max", exclude=("b",)), features).tolist() == [2, 2, 0]
    weighted = ScoreSpec(reduction="max", feature_scale=(8.0, 1.0, 1.0))  # a's typical error is 8x the others'
    assert leading_features(errors, weighted, features).tolist() == [1, 2, 2]


def _train(tmp_path, **overrides):
    frame = load_csv(normal_csv(tmp_path, rows=800))
    assert frame.features == FEATURES
    config = TrainConfig(arch="mlp", window=10, epochs=2, **overrides)
    result = train([frame], config)
    out = tmp_path / "model"
    save(result, out)
    return frame, result, out


def test_bundle_stores_and_serving_applies_exclude_and_demean(tmp_path):
    frame, result, out = _train(tmp_path, demean=["temperature"], score_exclude=["temperature", "flow"])
    data = json.loads((out / "bundle.json").read_text())
    assert data["preprocess"] == {"demean": ["temperature"]}
    assert data["score"]["exclude"] == ["temperature", "flow"]
    bundle = load_bundle(out)
    assert bundle.preprocess.demean == ("temperature",)
    assert bundle.score.exclude == ("temperature", "flow")
    loaded, in_memory = Scorer.load(out), Scorer(result.bundle, _backend(result))
    raw = np.stack([frame.values[i:i + 10] for i in range(0, 200, 7)])
    a, b = loaded.score_windows(raw), in_memory.score_windows(raw)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    # score = max over the features that vote, each by its per-sensor weight; the excluded ones
    # are still reported
    keep = [i for i, f in enumerate(loaded.features) if f not in ("temperature", "flow")]
    scale = np.asarray(loaded.bundle.score.feature_scale or [1.0] * len(FEATURES))
    np.testing.assert_allclose(a.scores, (a.feature_errors / scale)[:, keep].max(axis=1), rtol=1e-5)
    assert a.feature_errors.shape == (len(raw), len(FEATURES))
    # the threshold was calibrated through the same path
    assert np.isfinite(loaded.threshold) and loaded.threshold > 0


def _backend(result):
    from daemon.core.runtime import torch_backend

    return torch_backend(result.model, 1)


def test_auto_excludes_the_slow_features_chosen_on_training_rows(tmp_path):
    frame, result, _ = _train(tmp_path, score_exclude="auto")
    runs = [frame.values[: int(round(len(frame) * 0.8))]]
    assert result.bundle.score.exclude == slow_features(frame.features, runs)
    assert result.bundle.preprocess.demean == ()
    assert TrainConfig.score_exclude == "none" and TrainConfig.demean == "none"


def test_old_bundles_without_the_new_fields_still_load(tmp_path):
    _, _, out = _train(tmp_path, score_exclude=["flow"], demean=["temperature"])
    data = json.loads((out / "bundle.json").read_text())
    del data["preprocess"], data["score"]["exclude"]
    (out / "bundle.json").write_text(json.dumps(data))
    bundle = load_bundle(out)
    assert bundle.preprocess == Preprocess() and bundle.score.exclude == ()


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["preprocess"].update(demean=["nope"]), "preprocess"),
    (lambda d: d["preprocess"].update(extra=1), "preprocess"),
    (lambda d: d["score"].update(exclude=list(d["features"])), "score.exclude"),
    (lambda d: d["score"].update(exclude=["nope"]), "score.exclude"),
])
def test_bad_new_fields_are_named(tmp_path, edit, field):
    _, _, out = _train(tmp_path, score_exclude="none")
    data = json.loads((out / "bundle.json").read_text())
    edit(data)
    (out / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=field):
        load_bundle(out)


@pytest.mark.parametrize("overrides", [{"score_exclude": ["nope"]}, {"demean": "sometimes"},
                                       {"score_exclude": FEATURES}])
def test_bad_training_selections_are_user_errors(tmp_path, overrides):
    with pytest.raises(UserError):
        _train(tmp_path, **overrides)


def test_cli_train_options(tmp_path):
    out = train_bundle(tmp_path, normal_csv(tmp_path, rows=800), "--score-exclude", "none",
                       "--demean", "temperature,flow")
    bundle = load_bundle(out)
    assert bundle.score.exclude == () and bundle.preprocess.demean == ("temperature", "flow")


def test_thresholds_import_does_not_load_scipy():
    code = "import sys, daemon.core.bundle, daemon.core.thresholds; print('scipy.stats' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
