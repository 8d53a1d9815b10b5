"""Alert hysteresis (daemon.core.postprocess), max-over-features scores, the scaler floor, and that
all of them travel in bundle.json and are applied by the one detection path."""

import json

import numpy as np
import pytest

from daemon.core.bundle import Bundle, ScoreSpec, load_bundle
from daemon.offline.detection import detect
from daemon.core.errors import BundleError, UserError
from daemon.offline.frames import Frame, load_csv
from daemon.core.postprocess import AlertSpec, Hysteresis, alert_flags
from daemon.core.scaling import Scaler
from daemon.core.scoring import Scorer, combine
from daemon.core.thresholds import Threshold
from daemon.offline.training import TrainConfig, floor_scale, save, train
from datafiles import normal_csv, train_bundle


def _steps(spec, flags):
    state = Hysteresis(spec)
    return [int(state.step(f)) for f in flags]


def test_default_alert_is_the_window_flag():
    flags = np.array([0, 1, 0, 1, 1, 0], dtype=np.int8)
    np.testing.assert_array_equal(alert_flags(flags, AlertSpec()), flags)
    assert _steps(AlertSpec(), flags) == flags.tolist()


def test_enter_after_k_anomalous_and_leave_after_m_normal_windows():
    spec = AlertSpec(enter_after=3, leave_after=2)
    flags = [1, 1, 0, 1, 1, 1, 1, 0, 1, 0, 0, 0, 1]
    assert _steps(spec, flags) == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0]


def test_a_broken_streak_starts_counting_again():
    spec = AlertSpec(enter_after=2, leave_after=3)
    assert _steps(spec, [1, 0, 1, 0, 1, 1, 0, 0, 1, 0, 0, 0]) == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0]


def test_offline_alert_flags_run_the_live_state_machine():
    rng = np.random.default_rng(0)
    flags = (rng.random(500) < 0.3).astype(np.int8)
    for spec in (AlertSpec(2, 5), AlertSpec(1, 10), AlertSpec(4, 1)):
        np.testing.assert_array_equal(alert_flags(flags, spec), _steps(spec, flags))


def test_reset_clears_state():
    state = Hysteresis(AlertSpec(1, 3))
    assert state.step(True)
    state.reset()
    assert not state.alert and not state.step(False)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_alert_spec_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="enter_after"):
        AlertSpec(enter_after=bad)


def test_alert_spec_round_trips_and_names_unknown_keys():
    assert AlertSpec.from_dict(AlertSpec(3, 7).to_dict()) == AlertSpec(3, 7)
    assert AlertSpec.from_dict({}) == AlertSpec()
    with pytest.raises(ValueError, match="enter_afer"):
        AlertSpec.from_dict({"enter_afer": 2})


def test_max_reduction_keeps_a_single_sensor_fault_undiluted():
    errors = np.array([[0.1, 0.1, 0.1, 4.0], [1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(combine(errors, ScoreSpec()), [1.075, 1.0])
    np.testing.assert_allclose(combine(errors, ScoreSpec(reduction="max")), [4.0, 1.0])
    scaled = combine(errors, ScoreSpec(feature_scale=(1.0, 1.0, 1.0, 8.0), reduction="max"))
    np.testing.assert_allclose(scaled, [0.5, 1.0])


def test_scale_floor_stops_a_nearly_constant_sensor_dominating():
    rng = np.random.default_rng(1)
    rows = np.column_stack([100 + 5 * rng.normal(size=400), 26 + 0.001 * rng.normal(size=400)]).astype(np.float32)
    scaler = Scaler.fit("zscore", rows)
    floored = floor_scale(scaler, rows, 0.01)
    assert floored.scale[0] == scaler.scale[0]  # 5 > 1 % of 100: untouched
    assert floored.scale[1] == pytest.approx(0.26, rel=1e-3)  # 0.001 < 1 % of 26: floored
    np.testing.assert_array_equal(floored.offset, scaler.offset)
    assert floor_scale(scaler, rows, 0.0) is scaler


def _toy_bundle(alert: AlertSpec, reduction: str = "mean") -> Bundle:
    return Bundle(name="toy", arch="mlp", arch_params={}, features=["a", "b"], window=2, stride=1,
                  scaler=Scaler("zscore", np.zeros(2, np.float32), np.ones(2, np.float32)),
                  score=ScoreSpec(reduction=reduction), threshold=Threshold(0.5, "quantile", {"q": 0.99}),
                  alert=alert)


def test_detect_applies_the_bundles_hysteresis():
    values = np.zeros((40, 2), dtype=np.float32)
    values[5:7, 1] = 3.0  # a blip: 3 windows above threshold
    values[20:30, 1] = 3.0  # a fault: 11 windows above threshold
    frame = Frame("toy", np.arange(40, dtype=np.float64), values, ["a", "b"], np.zeros(40, np.int8))
    zeros = lambda batch: np.zeros_like(batch)  # noqa: E731  (error = squared scaled value)
    raw = detect(Scorer(_toy_bundle(AlertSpec()), zeros), frame, 0.5)
    held = detect(Scorer(_toy_bundle(AlertSpec(enter_after=4, leave_after=3)), zeros), frame, 0.5)
    assert raw.predicted[5:8].all() and raw.predicted[20:31].all() and raw.predicted.sum() == 14
    assert not held.predicted[:20].any()  # the blip never raises an alert
    assert held.predicted[23:33].all() and not held.predicted[:23].any() and not held.predicted[34:].any()
    expected = alert_flags((raw.scores.scores > 0.5).astype(np.int8), AlertSpec(4, 3))
    np.testing.assert_array_equal(held.predicted[1:], expected)


def test_training_options_travel_in_bundle_json(tmp_path):
    frame = load_csv(normal_csv(tmp_path, rows=600))
    config = TrainConfig(arch="mlp", window=10, epochs=2, score_reduction="max", enter_after=2, leave_after=4,
                         scale_floor=0.05, calibrate_on="validation")
    result = train([frame], config)
    directory = tmp_path / "m"
    save(result, directory)
    data = json.loads((directory / "bundle.json").read_text())
    assert data["alert"] == {"enter_after": 2, "leave_after": 4}
    assert data["score"]["reduction"] == "max_over_features"
    loaded = load_bundle(directory)
    assert loaded.alert == AlertSpec(2, 4) and loaded.score.reduction == "max"
    assert loaded.training["calibrated_on"] == "validation"
    level = np.abs(frame.values[: loaded.training["rows_train"]]).mean(axis=0)
    assert (loaded.scaler.scale >= 0.05 * level * (1 - 1e-5)).all()


@pytest.mark.parametrize("field, value", [("score_reduction", "median"), ("calibrate_on", "test"),
                                          ("enter_after", 0), ("scale_floor", -0.1)])
def test_bad_training_options_are_user_errors(tmp_path, field, value):
    frame = load_csv(normal_csv(tmp_path, rows=300))
    with pytest.raises(UserError):
        train([frame], TrainConfig(arch="mlp", window=10, epochs=1, **{field: value}))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    return train_bundle(tmp, normal_csv(tmp, rows=800))


def test_old_bundle_json_without_new_fields_still_loads(bundle_dir, tmp_path):
    import shutil
    copy = tmp_path / "old"
    shutil.copytree(bundle_dir, copy)
    data = json.loads((copy / "bundle.json").read_text())
    del data["alert"]
    data["score"] = {"error": "mse", "reduction": "mean_over_features", "feature_scale": None}
    (copy / "bundle.json").write_text(json.dumps(data))
    loaded = load_bundle(copy)
    assert loaded.alert == AlertSpec() and loaded.score.reduction == "mean"


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d.update(alert={"enter_after": 0}), "field 'alert'"),
    (lambda d: d.update(alert={"leave": 2}), "field 'alert'"),
    (lambda d: d["score"].update(reduction="median_over_features"), "field 'score.reduction'"),
])
def test_bad_new_fields_name_the_field(bundle_dir, tmp_path, edit, fragment):
    import shutil
    copy = tmp_path / "bad"
    shutil.copytree(bundle_dir, copy)
    data = json.loads((copy / "bundle.json").read_text())
    edit(data)
    (copy / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=fragment):
        load_bundle(copy)
