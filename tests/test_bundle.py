"""A bundle loads back to identical scores; a damaged one is one clear line and exit 2."""

import json

import numpy as np
import pytest

from daemon.core.bundle import load_bundle
from daemon.cli import main
from daemon.core.errors import BundleError
from daemon.offline.frames import load_csv
from daemon.core.scoring import Scorer
from daemon.offline.training import TrainConfig, save, train
from datafiles import faults_csv, normal_csv, train_bundle


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    return train_bundle(tmp, normal_csv(tmp))


def test_loaded_bundle_scores_exactly_like_the_trained_model(tmp_path):
    frame = load_csv(normal_csv(tmp_path, rows=600))
    result = train([frame], TrainConfig(arch="lstm", window=16, epochs=2, seed=3))
    windows = np.random.default_rng(0).normal(size=(5, 16, len(frame.features))).astype(np.float32)
    from daemon.core.runtime import torch_backend
    before = Scorer(result.bundle, torch_backend(result.model, 1)).score_windows(windows)
    save(result, tmp_path / "m")
    after = Scorer.load(tmp_path / "m").score_windows(windows)
    np.testing.assert_array_equal(before.scores, after.scores)
    np.testing.assert_array_equal(before.feature_errors, after.feature_errors)


def test_same_seed_gives_the_same_bundle(tmp_path):
    data = normal_csv(tmp_path, rows=800)
    a, b = (train_bundle(tmp_path / name, data) for name in ("a", "b"))
    ja, jb = (json.loads((d / "bundle.json").read_text()) for d in (a, b))
    assert ja["weights"]["sha256"] == jb["weights"]["sha256"]
    assert ja["threshold"] == jb["threshold"]


def test_model_version_is_recorded(tmp_path):
    model = train_bundle(tmp_path, normal_csv(tmp_path, rows=400), "--epochs", "1", "--model-version", "2026.11-a")
    assert load_bundle(model).version == "2026.11-a"


def test_bundle_records_what_scoring_needs(bundle_dir):
    b = load_bundle(bundle_dir)
    assert b.features == ["vibration", "current", "pressure", "flow", "temperature"]
    assert (b.window, b.stride, b.arch) == (20, 1, "mlp")
    assert b.threshold.method == "quantile" and b.threshold.params == {"q": 0.999}
    assert b.threshold.scale == pytest.approx(4 / 3) and b.false_alarm_budget is None
    assert (b.alert.enter_after, b.alert.leave_after) == (3, 5) and b.score.reduction == "max"
    assert b.training["rows_train"] > 0 and b.training["loss_validation"]
    assert (bundle_dir / "training_loss.png").stat().st_size > 0
    assert (bundle_dir / "score_histogram.png").stat().st_size > 0


def _damaged(bundle_dir, tmp_path, edit):
    import shutil
    copy = tmp_path / "damaged"
    shutil.copytree(bundle_dir, copy)
    edit(copy)
    return copy


def _set(field, value):
    def edit(d):
        data = json.loads((d / "bundle.json").read_text())
        node = data
        *parents, leaf = field.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
        (d / "bundle.json").write_text(json.dumps(data))
    return edit


def _replace_with_directory(name):
    """A file that is a directory: what a botched copy leaves, and unreadable as a file."""
    def edit(d):
        (d / name).unlink()
        (d / name).mkdir()
    return edit


def _replace_with_symlink_loop(name):
    """A file that cannot be opened for a reason other than "not found" (the tests run as root,
    which reads past file modes; a symlink loop fails for everyone)."""
    def edit(d):
        (d / name).unlink()
        (d / name).symlink_to(name)
    return edit


def _delete(field):
    def edit(d):
        data = json.loads((d / "bundle.json").read_text())
        del data[field]
        (d / "bundle.json").write_text(json.dumps(data))
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda d: (d / "bundle.json").write_text((d / "bundle.json").read_text()[:100]), r"bundle\.json: not valid JSON"),
    (lambda d: (d / "bundle.json").write_bytes(b"\x00\xff garbage"), r"bundle\.json: not UTF-8 text"),
    (lambda d: (d / "bundle.json").unlink(), r"bundle\.json: missing"),
    (_set("window", "sixty"), r"bundle\.json: field 'window': expected int, got str"),
    (_set("scaler.offset", [0.0, 1.0]), r"field 'scaler\.offset': must be 5 finite numbers"),
    (_set("scaler.scale", [1, 1, 0, 1, 1]), r"field 'scaler\.scale'"),
    (_set("score.error", "rmse"), r"field 'score\.error': must be one of"),
    (_set("format_version", 99), r"field 'format_version': version 99 is not supported"),
    (_set("threshold.value", "high"), r"field 'threshold'"),
    (_set("architecture.params", {"hidden": 7, "bogus": 1}), r"field 'architecture': .*bogus"),
    (_set("architecture.params", {"hidden": 7}), r"model\.safetensors: weights do not fit architecture"),
    (_delete("features"), r"field 'features' is missing"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:500]),
     r"model\.safetensors: checksum does not match"),
    (lambda d: (d / "model.safetensors").unlink(), r"model\.safetensors: weights file missing"),
    (_replace_with_directory("bundle.json"), r"bundle\.json: cannot read: Is a directory"),
    (_replace_with_directory("model.safetensors"), r"model\.safetensors: weights file missing or not a file"),
    (_replace_with_symlink_loop("bundle.json"), r"bundle\.json: cannot read: Too many levels of symbolic links"),
    (_replace_with_symlink_loop("model.safetensors"), r"model\.safetensors: weights file missing or not a file"),
    (_set("sample_period_seconds", 0), r"field 'sample_period_seconds': must be a positive number of seconds"),
    (_set("sample_period_seconds", "1s"), r"field 'sample_period_seconds': expected int or float, got str"),
])
def test_damaged_bundle_is_one_line_naming_file_and_field(bundle_dir, tmp_path, capsys, edit, message):
    damaged = _damaged(bundle_dir, tmp_path, edit)
    with pytest.raises(BundleError, match=message):
        Scorer.load(damaged)
    data = faults_csv(tmp_path, rows=300)
    assert main(["score", "--model", str(damaged), "--data", str(data), "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0]


def test_garbage_weights_with_matching_checksum_are_reported(bundle_dir, tmp_path):
    def edit(d):
        (d / "model.safetensors").write_bytes(b"not a safetensors file at all")
        from daemon.core.bundle import sha256_of
        _set("weights.sha256", sha256_of(d / "model.safetensors"))(d)
    with pytest.raises(BundleError, match=r"model\.safetensors: cannot read weights"):
        Scorer.load(_damaged(bundle_dir, tmp_path, edit))


# ---- reload keeps the running model when the new bundle cannot be read ------------------------

def test_a_reload_that_meets_an_unreadable_bundle_keeps_the_old_model_logs_one_line_and_counts_it(
        bundle_dir, tmp_path, caplog):
    import logging
    import shutil

    from daemon.live.config import build
    from daemon.live.service import Service
    from daemon.live.sinks.factory import DiscardSink

    live = tmp_path / "live"
    shutil.copytree(bundle_dir, live)
    service = Service(build({"model": {"path": str(live)}, "metrics": {"enabled": False}}), sink=DiscardSink())
    running = service.scorer
    _replace_with_directory("bundle.json")(live)
    with caplog.at_level(logging.ERROR, logger="daemon.live.service"):
        service.reload()
    assert service.scorer is running
    assert service.metrics.registry.get_sample_value("anomalyd_config_reloads_total", {"result": "failed"}) == 1
    [line] = [r.getMessage() for r in caplog.records]
    assert "reload failed, keeping model" in line and "bundle.json: cannot read" in line


# ---- the training data's sample period ---------------------------------------------------------

def test_the_bundle_stores_the_training_datas_median_sample_period(tmp_path, capsys):
    from daemon.offline import synthetic

    data = synthetic.normal(400, seed=4, period=2.5).write_csv(tmp_path / "normal.csv")
    model = train_bundle(tmp_path, data, "--epochs", "1")
    assert load_bundle(model).sample_period_seconds == 2.5
    assert main(["inspect", "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert "sample period 2.5 s" in out
    assert "normal.csv; left out labelled rows: 0 rows" in out, "inspect says which rows training left out"


def test_the_sample_period_is_the_median_step_within_runs_never_across_them():
    from daemon.offline.frames import Frame, median_sample_period

    def frame(timestamps):
        return Frame("f", np.asarray(timestamps, dtype=np.float64), np.zeros((len(timestamps), 1), np.float32), ["a"])

    assert median_sample_period([frame([0, 1, 2, 3, 60]), frame([1000, 1001])]) == 1.0
    assert median_sample_period([frame([5])]) is None
    assert median_sample_period([frame([5, 5, 5])]) is None


def test_a_bundle_without_a_sample_period_still_loads(bundle_dir, tmp_path, capsys):
    old = _damaged(bundle_dir, tmp_path, _delete("sample_period_seconds"))
    assert load_bundle(old).sample_period_seconds is None
    assert Scorer.load(old).score_windows(np.zeros((1, 20, 5), np.float32)).scores.shape == (1,)
    assert main(["inspect", "--model", str(old)]) == 0
    assert "sample period unknown" in capsys.readouterr().out
