"""A fleet's history in one CSV file: a `device` column makes each device's rows a run of
their own, for train, score, evaluate and calibrate alike (replay: tests/test_demo_and_replay.py)."""

import csv
import json

import numpy as np
import pytest

from daemon.cli import main
from daemon.core.errors import DataError
from daemon.offline.frames import load_csv, load_device_runs
from datafiles import FAST_TRAIN, faults_csv, fleet_csv, normal_csv, train_bundle


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    normal = {"pump-1": normal_csv(tmp, rows=1200, seed=1, name="n1.csv"),
              "pump-2": normal_csv(tmp, rows=1200, seed=3, name="n2.csv")}
    faults = {"pump-1": faults_csv(tmp, rows=1500, seed=2, name="f1.csv"),
              "pump-2": faults_csv(tmp, rows=1500, seed=4, name="f2.csv")}
    return {"tmp": tmp, "normal": normal, "faults": faults, "model": train_bundle(tmp, normal["pump-1"]),
            "normal_fleet": fleet_csv(tmp / "normal_fleet.csv", normal),
            "faults_fleet": fleet_csv(tmp / "faults_fleet.csv", faults)}


def test_each_devices_rows_are_a_run_of_their_own_in_the_order_devices_appear(fleet):
    runs = load_device_runs(fleet["faults_fleet"])
    assert [run.device for run in runs] == ["pump-1", "pump-2"]
    for run in runs:
        alone = load_csv(fleet["faults"][run.device])
        assert run.features == alone.features  # the device column is no feature
        np.testing.assert_array_equal(run.timestamps, alone.timestamps)
        np.testing.assert_array_equal(run.values, alone.values)
        np.testing.assert_array_equal(run.labels, alone.labels)
        assert run.source.endswith(f"faults_fleet.csv [{run.device}]")
        assert run.name == f"faults_fleet-{run.device}"


def test_numeric_device_ids_are_ids_not_a_sensor(tmp_path):
    path = tmp_path / "numbered.csv"
    path.write_text("timestamp,device,flow\n1,7,1.0\n1,8,2.0\n2,7,1.5\n2,8,2.5\n")
    runs = load_device_runs(path)
    assert [(run.device, run.features, run.values[:, 0].tolist()) for run in runs] == [
        ("7", ["flow"], [1.0, 1.5]), ("8", ["flow"], [2.0, 2.5])]


def test_a_file_without_a_device_column_is_one_run(fleet):
    (run,) = load_device_runs(fleet["faults"]["pump-1"])
    assert run.device == "" and len(run) == 1500


@pytest.mark.parametrize("text, column, message", [
    ("timestamp,flow\n1,1.0\n", "pump_id", "device column 'pump_id' not found"),
    ("timestamp,device,flow\n1,a,1.0\n2,,2.0\n", None, "line 3 column 'device': no device id"),
    ("timestamp,device,flow\n1,a,1.0\n2,b,1.0\n0,a,2.0\n", None, "[a]: line 4 column 'timestamp': time goes backwards"),
    ("timestamp,device,flow\n1,a,1.0\n2,b,x\n", None, "[b]: line 3 column 'flow': not a number"),
])
def test_a_bad_fleet_file_is_one_error_naming_the_device_line_and_column(tmp_path, text, column, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_device_runs(path, device_column=column)


def test_training_on_a_fleet_file_trains_on_the_same_runs_as_one_file_per_device(fleet):
    from_files = fleet["tmp"] / "from_files"
    from_fleet = fleet["tmp"] / "from_fleet"
    assert main(["train", "--data", str(fleet["normal"]["pump-1"]), "--data", str(fleet["normal"]["pump-2"]),
                 "--out", str(from_files), *FAST_TRAIN, "--epochs", "2"]) == 0
    assert main(["train", "--data", str(fleet["normal_fleet"]), "--out", str(from_fleet), *FAST_TRAIN,
                 "--epochs", "2"]) == 0
    files, fleet_bundle = (json.loads((d / "bundle.json").read_text()) for d in (from_files, from_fleet))
    assert fleet_bundle["weights"] == files["weights"]  # the same sha256
    assert fleet_bundle["threshold"] == files["threshold"]


def test_evaluating_a_fleet_file_counts_as_evaluating_each_devices_file(fleet, capsys):
    def figures(*data):
        assert main(["evaluate", "--model", str(fleet["model"]), *[a for d in data for a in ("--data", str(d))],
                     "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    by_fleet, by_files = figures(fleet["faults_fleet"]), figures(*fleet["faults"].values())
    fleet_runs = [event.pop("run") for event in by_fleet["labelled_events"]]
    file_runs = [event.pop("run") for event in by_files["labelled_events"]]
    assert by_fleet == by_files
    assert sorted(set(fleet_runs)) == ["pump-1", "pump-2"] and len(set(file_runs)) == 2  # each event names its device


def test_calibrate_per_device_reads_the_devices_from_the_column(fleet, capsys):
    by_column, by_name = fleet["tmp"] / "by_column", fleet["tmp"] / "by_name"
    assert main(["calibrate", "--model", str(fleet["model"]), "--per-device", "--data", str(fleet["normal_fleet"]),
                 "--out", str(by_column)]) == 0
    assert main(["calibrate", "--model", str(fleet["model"]), "--per-device", "--out", str(by_name),
                 *[a for device, path in fleet["normal"].items() for a in ("--data", f"{device}={path}")]]) == 0
    column, named = (json.loads((d / "bundle.json").read_text())["threshold"] for d in (by_column, by_name))
    assert set(column["devices"]) == {"pump-1", "pump-2"}
    assert column["devices"] == named["devices"] and column["value"] == named["value"]


def test_score_writes_each_devices_windows_at_its_own_threshold(fleet, tmp_path):
    calibrated = tmp_path / "calibrated"
    assert main(["calibrate", "--model", str(fleet["model"]), "--per-device", "--data", str(fleet["normal_fleet"]),
                 "--out", str(calibrated)]) == 0
    own = json.loads((calibrated / "bundle.json").read_text())["threshold"]["devices"]
    out = tmp_path / "scores.csv"
    assert main(["score", "--model", str(calibrated), "--data", str(fleet["faults_fleet"]), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0])[:2] == ["device", "timestamp"]
    for device in ("pump-1", "pump-2"):
        mine = [row for row in rows if row["device"] == device]
        assert len(mine) == 1500 - 20 + 1
        assert all(float(row["threshold"]) == pytest.approx(own[device], rel=1e-5) for row in mine)
    assert own["pump-1"] != own["pump-2"]  # two thresholds, told apart


def test_score_device_picks_one_devices_rows_and_names_an_unknown_one(fleet, tmp_path, capsys):
    out = tmp_path / "pump-2.csv"
    assert main(["score", "--model", str(fleet["model"]), "--data", str(fleet["faults_fleet"]), "--device", "pump-2",
                 "--out", str(out)]) == 0
    assert {row["device"] for row in csv.DictReader(out.open())} == {"pump-2"}
    assert main(["score", "--model", str(fleet["model"]), "--data", str(fleet["faults_fleet"]), "--device", "pump-9",
                 "--out", str(out)]) == 2
    assert "--device 'pump-9': no rows of that device in the data (devices: pump-1, pump-2)" in capsys.readouterr().err


def test_generate_writes_a_fleet_that_evaluate_reports_pump_by_pump(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path), "--devices", "3", "--normal-rows", "600",
                 "--fault-rows", "900"]) == 0
    runs = load_device_runs(tmp_path / "faults.csv")
    assert [run.device for run in runs] == ["pump-1", "pump-2", "pump-3"]
    assert all(len(run) == 900 and run.labels.any() for run in runs)
    assert len({run.values.tobytes() for run in runs}) == 3  # each pump its own noise and load cycle
    model = train_bundle(tmp_path, tmp_path / "normal.csv", "--epochs", "1")
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "faults.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "in 3 run(s)" in lines[0]
    header = next(i for i, line in enumerate(lines) if "events caught" in line)
    assert [line.split()[0] for line in lines[header + 1:header + 4]] == ["pump-1", "pump-2", "pump-3"]
