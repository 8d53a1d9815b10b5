"""Which CSV columns are sensors: a label under any of its usual names is read as the label,
and a column named like a label is never a sensor unless named, so that no model reads its
own answer (a model that does scores a perfect evaluation and detects nothing in service)."""

import json
import logging

import numpy as np
import pytest

from daemon.cli import main
from daemon.offline.frames import load_csv, load_device_runs
from datafiles import FAST_TRAIN


def _write(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("name", ["anomaly", "label", "Label", "is_anomaly", "attack"])
def test_a_0_1_column_under_a_usual_label_name_is_the_label(tmp_path, name):
    frame = load_csv(_write(tmp_path / "a.csv", ["timestamp", "flow", name], [(1, 2.0, 0), (2, 2.5, 1)]))
    assert frame.features == ["flow"]
    assert frame.labels.tolist() == [0, 1]


def test_anomaly_is_preferred_to_label_and_the_other_is_left_out(tmp_path):
    frame = load_csv(_write(tmp_path / "a.csv", ["timestamp", "label", "flow", "anomaly"],
                            [(1, 1, 2.0, 0), (2, 0, 2.5, 1)]))
    assert frame.features == ["flow"] and frame.labels.tolist() == [0, 1]


def test_columns_named_like_labels_are_no_sensors_and_the_log_says_so(tmp_path, caplog):
    path = _write(tmp_path / "a.csv", ["timestamp", "flow", "changepoint", "faultNumber", "label"],
                  [(1, 2.0, 0, 3, 2), (2, 2.5, 1, 3, 5)])
    with caplog.at_level(logging.INFO, logger="daemon.offline.frames"):
        frame = load_csv(path)
    assert frame.features == ["flow"]
    assert frame.labels is None  # 'label' holds other values than 0/1: no label, and no sensor either
    assert "'changepoint', 'faultNumber', 'label' left out of the features" in caplog.text


def test_features_named_explicitly_are_read_whatever_their_name(tmp_path):
    path = _write(tmp_path / "a.csv", ["timestamp", "flow", "target"], [(1, 2.0, 7.0), (2, 2.5, 7.5)])
    assert load_csv(path, features=["flow", "target"]).values[:, 1].tolist() == [7.0, 7.5]


def test_a_fleet_file_finds_its_label_on_the_whole_file(tmp_path):
    path = _write(tmp_path / "a.csv", ["device", "timestamp", "flow", "label"],
                  [("a", 1, 2.0, 0), ("b", 1, 3.0, 0), ("a", 2, 2.1, 1), ("b", 2, 3.1, 0)])
    runs = load_device_runs(path)
    assert [(r.device, r.features, r.labels.tolist()) for r in runs] == [("a", ["flow"], [0, 1]),
                                                                          ("b", ["flow"], [0, 0])]


def test_a_model_trained_on_a_file_with_a_label_column_does_not_read_it(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(i, *np.round(rng.normal(size=3), 4), 0) for i in range(400)]
    path = _write(tmp_path / "normal.csv", ["timestamp", "a", "b", "c", "label"], rows)
    assert main(["train", "--data", str(path), "--out", str(tmp_path / "model"), *FAST_TRAIN, "--epochs", "1"]) == 0
    assert json.loads((tmp_path / "model" / "bundle.json").read_text())["features"] == ["a", "b", "c"]


def test_the_readme_names_every_label_and_label_like_name():
    from pathlib import Path
    from daemon.offline.frames import LABEL_LIKE_NAMES
    readme = (Path(__file__).parent.parent / "README.md").read_text().lower()
    paragraph = readme[readme.index("**input csv.**"):readme.index("**a fleet in one file.**")]
    assert [name for name in LABEL_LIKE_NAMES if name not in paragraph] == []
