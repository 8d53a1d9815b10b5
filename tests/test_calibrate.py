"""`anomalyd calibrate`: a new threshold on recent normal data, the weights untouched, and
per-device thresholds that `score` and the live worker apply."""

from __future__ import annotations

import csv
import json
import threading

import numpy as np
import pytest

from daemon.cli import main
from daemon.core.bundle import BUNDLE_FILE, WEIGHTS_FILE, load_bundle
from daemon.core.errors import BundleError
from daemon.core.scoring import Scorer
from daemon.core.thresholds import Threshold, calibrate, threshold_in_force
from daemon.live.assembly import assemble
from daemon.live.config import build
from daemon.live.events import ScoreEvent, WindowJob
from daemon.live.telemetry.metrics import Metrics
from daemon.offline import synthetic
from daemon.offline.budget import expected_per_day
from daemon.offline.frame_scoring import score_frames
from daemon.offline.frames import load_csv
from daemon.offline.training import normal_runs
from datafiles import normal_csv, train_bundle


def _drifted(rows: int, seed: int, noise: float) -> synthetic.Synthetic:
    """Normal readings whose sensors got noisier (a worn pump): same model, higher scores."""
    data = synthetic.normal(rows, seed)
    rng = np.random.default_rng(seed)
    values = data.values + noise * data.values.std(axis=0) * rng.normal(size=data.values.shape).astype(np.float32)
    return synthetic.Synthetic(data.timestamps, values.astype(np.float32), data.labels)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calibrate")
    model = train_bundle(tmp, normal_csv(tmp))
    quiet = synthetic.normal(1500, seed=5).write_csv(tmp / "pump-a.csv")
    noisy = _drifted(1500, seed=6, noise=0.3).write_csv(tmp / "pump-b.csv")
    per_device = tmp / "per-device"
    assert main(["calibrate", "--model", str(model), "--out", str(per_device), "--per-device",
                 "--data", f"pump-a={quiet}", "--data", f"pump-b={noisy}"]) == 0
    return {"tmp": tmp, "model": model, "quiet": quiet, "noisy": noisy, "per_device": per_device}


def test_calibrate_writes_a_new_bundle_with_the_same_weights_and_a_threshold_from_the_new_data(work, tmp_path,
                                                                                              capsys):
    old_json = (work["model"] / BUNDLE_FILE).read_bytes()
    out = tmp_path / "pump-v2"
    assert main(["calibrate", "--model", str(work["model"]), "--data", str(work["noisy"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "weights unchanged" in printed

    old, new = load_bundle(work["model"]), load_bundle(out)
    assert (out / WEIGHTS_FILE).read_bytes() == (work["model"] / WEIGHTS_FILE).read_bytes()
    assert new.weights_sha256 == old.weights_sha256
    assert (work["model"] / BUNDLE_FILE).read_bytes() == old_json  # the old bundle is never touched
    # the bundle's own method and margin, on the new data's normal windows
    scorer = Scorer.load(work["model"])
    frame = load_csv(work["noisy"], features=old.features)
    scores = np.concatenate([s.scores for s in score_frames(scorer, normal_runs(frame, old.window))])
    expected = calibrate(old.threshold.spec, scores, None, old.threshold.scale)
    assert new.threshold == expected
    assert new.threshold.value > old.threshold.value
    assert (new.name, new.version) == ("pump-v2", "2")
    assert new.threshold.devices == {}
    record = json.loads((out / BUNDLE_FILE).read_text())["calibration"]
    assert record["previous_threshold"] == old.threshold.to_dict()
    assert record["threshold"]["value"] == new.threshold.value
    assert record["windows"] == len(scores)
    assert (record["data_start"], record["data_stop"]) == ("2023-11-14T22:13:20Z", "2023-11-14T22:38:19Z")
    assert record["from"]["name"] == old.name
    assert (out / "score_histogram.png").is_file()
    # what the new threshold is expected to page, on the data it was set on, replaces training's
    # (made at the old threshold): the expected rate a recalibrated bundle shows is its own
    expected_rate = record["expected_false_alarms"]
    assert expected_rate["held_out"] == "calibration" and expected_rate["bound_per_day"] > 0
    assert expected_per_day(new) == expected_rate["per_day"] != expected_per_day(old)
    assert "false alarms: " in printed and "on the calibration windows" in printed


def test_calibrate_never_overwrites_a_bundle(work, capsys):
    assert main(["calibrate", "--model", str(work["model"]), "--data", str(work["quiet"]),
                 "--out", str(work["model"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0], err


def test_per_device_calibration_needs_each_file_to_name_its_device(work, tmp_path, capsys):
    assert main(["calibrate", "--model", str(work["model"]), "--data", str(work["quiet"]), "--per-device",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data DEVICE=PATH" in err[0], err


def test_per_device_thresholds_are_stored_for_each_device_seen(work):
    bundle = load_bundle(work["per_device"])
    devices = bundle.threshold.devices
    assert set(devices) == {"pump-a", "pump-b"}
    assert devices["pump-b"] > devices["pump-a"]  # the noisier pump gets the higher baseline
    # the bundle's own threshold comes from both devices' windows
    assert devices["pump-a"] < bundle.threshold.value <= devices["pump-b"]
    assert json.loads((work["per_device"] / BUNDLE_FILE).read_text())["calibration"]["windows_per_device"] == {
        "pump-a": 1481, "pump-b": 1481}


def _score_thresholds(work, tmp_path, *extra: str) -> set[float]:
    out = tmp_path / "scores.csv"
    assert main(["score", "--model", str(work["per_device"]), "--data", str(work["noisy"]), "--out", str(out),
                 *extra]) == 0
    with open(out) as handle:
        return {float(row["threshold"]) for row in csv.DictReader(handle)}


def test_score_applies_the_devices_own_threshold(work, tmp_path):
    bundle = load_bundle(work["per_device"])
    own = float(f"{bundle.threshold.devices['pump-b']:.6g}")
    shared = float(f"{bundle.threshold.value:.6g}")
    assert _score_thresholds(work, tmp_path, "--device", "pump-b") == {own}
    assert _score_thresholds(work, tmp_path, "--device", "pump-z") == {shared}  # not listed: the bundle's
    assert _score_thresholds(work, tmp_path) == {shared}
    assert _score_thresholds(work, tmp_path, "--device", "pump-b", "--threshold", "7") == {7.0}


class ListSink:
    def __init__(self) -> None:
        self.events: list[ScoreEvent] = []
        self.done = threading.Condition()

    def submit(self, events: list[ScoreEvent]) -> None:
        with self.done:
            self.events.extend(events)
            self.done.notify_all()


def test_the_live_worker_applies_each_devices_own_threshold(work):
    bundle = load_bundle(work["per_device"])
    config = build({"model": {"path": str(work["per_device"])}})
    sink = ListSink()
    stages = assemble(config, Metrics(), sink=sink)
    frame = load_csv(work["noisy"], features=bundle.features)
    stages.worker.start()
    devices = ["pump-a", "pump-b", "pump-z"]
    for i in range(30):
        rows = frame.values[i:i + bundle.window]
        for device in devices:
            stages.queue.put(WindowJob(device, float(frame.timestamps[i + bundle.window - 1]), rows.copy(), 0.0))
    stages.worker.stop(drain=True, timeout=30)
    assert len(sink.events) == 90
    by_device = {d: [e for e in sink.events if e.device == d] for d in devices}
    assert {e.threshold for e in by_device["pump-a"]} == {bundle.threshold.devices["pump-a"]}
    assert {e.threshold for e in by_device["pump-b"]} == {bundle.threshold.devices["pump-b"]}
    assert {e.threshold for e in by_device["pump-z"]} == {bundle.threshold.value}
    for events in by_device.values():  # the same windows, each flagged against its device's threshold
        # (or by a sensor-health check, whatever the threshold: this data's sensors got noisier)
        assert [e.anomaly for e in events] == [bool(np.float32(e.score) > np.float32(e.threshold)) or bool(e.reason)
                                               for e in events]
    assert sum(e.anomaly for e in by_device["pump-a"]) >= sum(e.anomaly for e in by_device["pump-b"])


def test_threshold_in_force_prefers_the_override_then_the_devices_own_then_the_bundles():
    per_device = {"pump-1": 0.5}
    assert threshold_in_force(0.3, None, "pump-1", per_device) == 0.5
    assert threshold_in_force(0.3, None, "pump-2", per_device) == 0.3
    assert threshold_in_force(0.3, None, None, per_device) == 0.3
    assert threshold_in_force(0.3, 0.0, "pump-1", per_device) == 0.0


def test_a_threshold_recalls_its_method_and_keeps_its_devices():
    t = Threshold(0.4, "quantile", {"q": 0.999}, 4 / 3, {"pump-1": 0.5})
    assert t.spec == "quantile:0.999"
    assert Threshold(1.0, "pot", {"risk": 1e-3, "gamma": 0.1}).spec == "pot:0.001"
    assert Threshold(1.0, "f1", {"f1": 0.8}).spec == "f1"
    assert Threshold.from_dict(t.to_dict()) == t
    assert "devices" not in Threshold(0.4, "sigma", {"k": 3.0}).to_dict()


def test_a_bad_per_device_threshold_in_bundle_json_names_the_field(work, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(work["per_device"], broken)
    data = json.loads((broken / BUNDLE_FILE).read_text())
    data["threshold"]["devices"]["pump-a"] = "high"
    (broken / BUNDLE_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"threshold.*devices\.pump-a"):
        load_bundle(broken)


def test_inspect_shows_the_per_device_thresholds_and_the_calibration(work, capsys):
    assert main(["inspect", "--model", str(work["per_device"])]) == 0
    out = capsys.readouterr().out
    assert "per device    pump-a " in out and ", pump-b " in out
    assert "calibrated    2962 windows from 2023-11-14T22:13:20Z" in out
    previous = load_bundle(work["per_device"]).calibration["previous_threshold"]["value"]
    assert f"(was {previous:.6g}); left out labelled rows: 0 rows" in out, \
        "the replaced threshold is printed like the threshold line, then what was not calibrated on"


def test_a_budget_threshold_is_set_again_as_a_budget_on_the_new_data(tmp_path):
    """The bundle's false-alarm budget (train --false-alarms-per-day) is met on the new data's
    normal runs, as train met it on its held-out tail; the weights do not change."""
    from daemon.offline.budget import HeldOut, calibrate_budget

    model = train_bundle(tmp_path, normal_csv(tmp_path, rows=3000), "--false-alarms-per-day", "2")
    fresh = synthetic.normal(4000, seed=42).write_csv(tmp_path / "fresh.csv")
    out = tmp_path / "recalibrated"
    assert main(["calibrate", "--model", str(model), "--data", str(fresh), "--out", str(out)]) == 0
    old, new = load_bundle(model), load_bundle(out)
    assert new.threshold.method == "budget" and new.threshold.params == {"per_day": 2.0}
    assert new.weights_sha256 == old.weights_sha256
    scorer = Scorer.load(model)
    runs = [r.scores for r in score_frames(scorer, normal_runs(load_csv(fresh), scorer.window), old.stride)]
    expected, _ = calibrate_budget(HeldOut.from_scores(runs, old.stride, old.sample_period_seconds, "x"), 2.0,
                                   old.alert)
    assert new.threshold.value == pytest.approx(expected * old.threshold.scale)
    # the budget's record says how the new threshold met it, on the new data
    assert new.false_alarm_budget.held_out == "calibration" and old.false_alarm_budget.held_out == "validation"
    assert new.false_alarm_budget.held_out_days == pytest.approx(old.sample_period_seconds * len(np.concatenate(runs))
                                                                 / 86_400)
    assert new.false_alarm_budget.chosen_on == old.false_alarm_budget.chosen_on


def test_confirmed_incidents_are_left_out_as_labelled_rows_are(work, tmp_path):
    """`--incidents` marks its rows as a label column would: calibrating the unlabelled file with
    the incident gives the threshold that the labelled file gives, and a lower one than the
    unlabelled file alone, whose fault rows would count as normal."""
    faulty = synthetic.inject(synthetic.normal(1500, seed=7), "level_shift", 600, 200, seed=3)
    labelled = faulty.write_csv(tmp_path / "labelled.csv")
    unlabelled = synthetic.Synthetic(faulty.timestamps, faulty.values,
                                     np.zeros(len(faulty.labels), dtype=np.int8)).write_csv(tmp_path / "unlabelled.csv")
    incidents = tmp_path / "incidents.csv"
    incidents.write_text(f"device,start,end\npump-x,{faulty.timestamps[600]},{faulty.timestamps[799]}\n"
                         f"pump-elsewhere,0,1\n")

    def calibrated(data, *extra: str):
        out = tmp_path / f"cal-{len(list(tmp_path.iterdir()))}"
        assert main(["calibrate", "--model", str(work["model"]), "--out", str(out), "--per-device",
                     "--data", f"pump-x={data}", *extra]) == 0
        return load_bundle(out)

    from_labels = calibrated(labelled)
    from_incidents = calibrated(unlabelled, "--incidents", str(incidents))
    assert from_incidents.threshold == from_labels.threshold
    assert calibrated(unlabelled).threshold.value > from_labels.threshold.value
    assert from_labels.calibration["left_out"] == "labelled rows: 200 rows"
    assert from_incidents.calibration["left_out"] == f"the confirmed incidents in {incidents} and labelled rows: 200 rows"


@pytest.mark.parametrize("row", ["pump-x,soon,5", "pump-x,9,5", ",1"])
def test_a_bad_incidents_row_is_one_line_naming_the_file_and_line(work, tmp_path, capsys, row):
    incidents = tmp_path / "incidents.csv"
    incidents.write_text(f"device,start,end\n{row}\n")
    assert main(["calibrate", "--model", str(work["model"]), "--out", str(tmp_path / "out"),
                 "--data", str(work["quiet"]), "--incidents", str(incidents)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{incidents}:2: expected columns device,start,end" in err[0], err
    assert not (tmp_path / "out").exists()
