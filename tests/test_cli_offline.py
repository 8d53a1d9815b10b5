"""The offline commands end to end, on generated data with injected faults."""

import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from daemon.offline import synthetic
from daemon.cli import main
from datafiles import faults_csv, normal_csv, train_bundle


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("offline")
    normal = normal_csv(tmp, rows=3000)
    return {"tmp": tmp, "normal": normal, "faults": faults_csv(tmp), "model": train_bundle(tmp, normal)}


def _evaluate(model, data, capsys, *extra):
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_trained_model_finds_spikes_shifts_stuck_and_decorrelated_sensors(workdir, capsys):
    figures = _evaluate(workdir["model"], workdir["faults"], capsys)
    assert {"precision", "recall", "f1", "far", "mar", "event_recall", "threshold", "points"} <= set(figures)
    assert figures["points"] == 2500
    assert figures["event_recall"] == 1.0
    assert figures["f1"] >= 0.6, figures


def test_a_broken_model_cannot_reach_the_f1_floor(workdir, capsys, tmp_path):
    broken = train_bundle(tmp_path, workdir["normal"], "--epochs", "1", "--lr", "1e-9")
    capsys.readouterr()
    bundle = json.loads((broken / "bundle.json").read_text())
    bundle["health"] = None  # the model alone: the sensor-health checks beside it find faults by themselves
    (broken / "bundle.json").write_text(json.dumps(bundle))
    figures = _evaluate(broken, workdir["faults"], capsys)
    assert figures["f1"] < 0.6, figures


def test_score_writes_one_row_per_window_end_with_per_sensor_errors(workdir, tmp_path):
    out = tmp_path / "scores.csv"
    assert main(["score", "--model", str(workdir["model"]), "--data", str(workdir["faults"]), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2500 - 20 + 1
    assert list(rows[0]) == ["timestamp", "score", "threshold", "anomaly", "reason",
                             "err_vibration", "err_current", "err_pressure", "err_flow", "err_temperature"]
    assert rows[0]["timestamp"].endswith("Z")


def test_evaluate_lists_every_labelled_event_with_the_sensor_its_alarms_name(workdir, capsys):
    events = _evaluate(workdir["model"], workdir["faults"], capsys)["labelled_events"]
    assert [e["rows"] for e in events] == [120] * len(synthetic.FAULTS)  # one event per fault kind, in order
    stuck = events[synthetic.FAULTS.index("stuck")]
    assert stuck["delay_seconds"] is not None and next(iter(stuck["named"])).endswith(":flow")  # the stuck sensor
    assert main(["evaluate", "--model", str(workdir["model"]), "--data", str(workdir["faults"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if "alarms named" in line)
    assert len(lines[header + 1:]) == len(synthetic.FAULTS)
    assert ":flow" in lines[header + 1 + synthetic.FAULTS.index("stuck")]


def test_evaluate_plot_and_inspect(workdir, tmp_path, capsys):
    png = tmp_path / "eval.png"
    assert main(["evaluate", "--model", str(workdir["model"]), "--data", str(workdir["faults"]), "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "F1" in capsys.readouterr().out
    assert main(["inspect", "--model", str(workdir["model"])]) == 0
    assert "threshold" in capsys.readouterr().out


@pytest.mark.parametrize("spec", ["sigma:3", "pot:0.005"])
def test_other_threshold_methods_train_and_are_recorded(workdir, tmp_path, spec):
    model = train_bundle(tmp_path, workdir["normal"], "--threshold", spec)
    assert json.loads((model / "bundle.json").read_text())["threshold"]["method"] == spec.split(":")[0]


def test_f1_threshold_uses_labelled_validation_data(workdir, tmp_path):
    model = train_bundle(tmp_path, workdir["normal"], "--threshold", "f1", "--validation-data", str(workdir["faults"]))
    threshold = json.loads((model / "bundle.json").read_text())["threshold"]
    assert threshold["method"] == "f1" and threshold["params"]["f1"] > 0.5


def _write(path, text):
    path.write_text(text)
    return str(path)


def _one_line_error(capsys, argv, pattern):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert pattern in err[0], err[0]


def test_bad_training_inputs_are_one_line_errors(tmp_path, capsys):
    out = str(tmp_path / "m")
    header = "timestamp,a,b\n"
    rows = "".join(f"{i},{i % 7},{i % 5}\n" for i in range(100))
    cases = [
        (_write(tmp_path / "empty.csv", ""), "file is empty"),
        (_write(tmp_path / "header.csv", header), "no data rows"),
        (_write(tmp_path / "text.csv", header + rows + "100,high,3\n"), "line 102 column 'a': not a number"),
        (_write(tmp_path / "words.csv", "timestamp,a\n1,x\n2,y\n"), "no numeric feature columns"),
        (_write(tmp_path / "nan.csv", header + rows + "100,nan,3\n"), "line 102 column 'a': non-finite"),
        (_write(tmp_path / "short.csv", header + "1,2,3\n2,3,4\n"), "at least one window"),
        (_write(tmp_path / "back.csv", header + "5,1,1\n4,1,1\n"), "time goes backwards"),
    ]
    for data, message in cases:
        _one_line_error(capsys, ["train", "--data", data, "--out", out, "--window", "10"], message)
    ok = _write(tmp_path / "ok.csv", header + rows)
    _one_line_error(capsys, ["train", "--data", ok, "--out", out, "--arch", "transformer"], "--arch 'transformer' unknown")
    _one_line_error(capsys, ["train", "--data", ok, "--out", out, "--features", "a,zz"], "'zz' not found")
    _one_line_error(capsys, ["train", "--data", ok, "--out", out, "--threshold", "median"], "median")


def test_non_numeric_column_named_as_feature_is_reported(tmp_path, capsys):
    data = _write(tmp_path / "t.csv", "timestamp,a,b\n1,1,x\n2,2,y\n")
    _one_line_error(capsys, ["train", "--data", data, "--out", str(tmp_path / "m"), "--features", "a,b"],
                    "line 2 column 'b': not a number: 'x'")


def test_nan_rows_can_be_dropped_by_choice(tmp_path):
    rows = "".join(f"{i},{i % 7},{i % 5}\n" for i in range(200)) + "200,nan,1\n"
    data = _write(tmp_path / "nan.csv", "timestamp,a,b\n" + rows)
    assert main(["train", "--data", data, "--out", str(tmp_path / "m"), "--window", "10", "--epochs", "1",
                 "--nan", "drop", "--arch", "mlp"]) == 0


def test_scoring_data_without_a_model_feature_is_reported(workdir, tmp_path, capsys):
    data = _write(tmp_path / "partial.csv", "timestamp,vibration,current\n1,1,2\n")
    _one_line_error(capsys, ["score", "--model", str(workdir["model"]), "--data", data, "--out", str(tmp_path / "o")],
                    "'pressure'")


def test_scoring_fewer_rows_than_a_window_is_reported(workdir, tmp_path, capsys):
    data = synthetic.normal(10).write_csv(tmp_path / "tiny.csv")
    _one_line_error(capsys, ["evaluate", "--model", str(workdir["model"]), "--data", str(data)],
                    "fewer than one window")


def test_every_command_has_help_with_an_example(capsys):
    for command in ("train", "score", "evaluate", "inspect"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert "example" in capsys.readouterr().out


def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly():
    """`anomalyd evaluate ... | head`: the command stops with SIGPIPE's exit status, no traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        result = subprocess.run([sys.executable, "-m", "daemon", "check-config", "--example"], stdout=write,
                                stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (128 + signal.SIGPIPE, "")


@pytest.mark.parametrize("rows, fraction, says", [
    (60, "0.2", "no normal run is 100 rows long (a window on each side of the --validation-fraction cut)"),
    (3000, "0", "--validation-fraction is 0"),
])
def test_train_says_when_nothing_is_held_out_and_the_threshold_rests_on_fitted_errors(tmp_path, capsys, rows,
                                                                                       fraction, says):
    train_bundle(tmp_path, normal_csv(tmp_path, rows=rows), "--validation-fraction", fraction)
    printed = capsys.readouterr().out
    assert f"no held-out tail: {says}, so the model saw every one of its" in printed
    assert "the threshold is set on errors it was fitted to" in printed


def test_train_says_nothing_of_a_missing_tail_when_one_is_held_out(workdir, tmp_path, capsys):
    train_bundle(tmp_path, workdir["normal"])
    assert "no held-out tail" not in capsys.readouterr().out
