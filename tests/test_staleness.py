"""See a model go stale: the share of windows above the calibration's 99th percentile, per model,
over a sliding hour; a level shift drives it past the alert's level and a `calibrate` run on the
shifted data, promoted with a reload, brings it back."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np
import pytest
import yaml

from daemon.cli import main
from daemon.core.bundle import BUNDLE_FILE, Bundle, load_bundle
from daemon.live.config import build
from daemon.live.events import WindowJob
from daemon.live.service import Service
from daemon.live.sinks.factory import DiscardSink
from daemon.core.score_reference import REFERENCE_QUANTILE, ScoreReference
from daemon.live.staleness import MIN_WINDOWS, STALE_RATIO, StalenessTracker
from daemon.live.telemetry.metrics import Metrics
from daemon.offline import synthetic
from datafiles import normal_csv, train_bundle
from test_deploy_prometheus import RULES

SHIFTED_SENSOR = synthetic.FEATURES.index("pressure")


def shifted(rows: int, seed: int) -> synthetic.Synthetic:
    """Normal readings of a pump whose pressure sits higher after a repair: the model's normal
    is off, nothing is broken."""
    data = synthetic.normal(rows, seed)
    values = data.values.copy()
    values[:, SHIFTED_SENSOR] += 0.3
    return synthetic.Synthetic(data.timestamps, values, data.labels)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def alert_ratio() -> float:
    """The share over expected at which deploy/prometheus's AnomalydModelStale fires."""
    [rule] = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
              if r.get("alert") == "AnomalydModelStale"]
    assert f"{STALE_RATIO:g} * anomalyd_model_drift_expected_share" in rule["expr"]
    return STALE_RATIO


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("staleness")
    return train_bundle(tmp, normal_csv(tmp))


def feed(service: Service, device: str, data: synthetic.Synthetic, windows: int) -> None:
    """Put `windows` consecutive windows of `data` for `device` in the service's queue and wait
    until the worker has scored them."""
    w = service.scorer.window
    scored = service.metrics.registry.get_sample_value("anomalyd_windows_scored_total")
    for i in range(windows):
        service.queue.put(WindowJob(device, float(data.timestamps[i + w - 1]), data.values[i:i + w].copy(), 0.0))
    deadline = time.monotonic() + 60
    while service.metrics.registry.get_sample_value("anomalyd_windows_scored_total") < scored + windows:
        assert time.monotonic() < deadline, "the worker did not score the windows"
        time.sleep(0.01)


def gauge(service: Service, name: str, model: str) -> float | None:
    return service.metrics.registry.get_sample_value("anomalyd_" + name, {"model": model})


def test_training_stores_the_99th_percentile_of_its_calibration_windows(model):
    bundle = load_bundle(model)
    reference = ScoreReference.of_bundle(bundle)
    assert reference is not None and reference.quantile == REFERENCE_QUANTILE
    assert 0 < reference.value < bundle.threshold.value  # the threshold is a higher quantile, with a margin
    assert reference.expected_share == pytest.approx(0.01)


def test_a_level_shift_makes_the_model_stale_and_calibrate_brings_it_back(model, tmp_path):
    live = tmp_path / "live"
    live.symlink_to(model)
    clock = Clock()
    service = Service(build({"model": {"path": str(live)}, "metrics": {"enabled": False}}),
                      metrics=Metrics(staleness=StalenessTracker(clock=clock)), sink=DiscardSink())
    name = service.scorer.bundle.name
    service.worker.start()
    try:
        # reported from the start, the share unknown until enough windows are in
        assert math.isnan(gauge(service, "model_drift_share", name))
        assert gauge(service, "model_drifted_devices", name) == 0
        # normal data the model never saw: about the expected share, no drifted device
        feed(service, "pump-1", synthetic.normal(700, seed=21), 600)
        assert gauge(service, "model_drift_expected_share", name) == pytest.approx(0.01)
        calm = gauge(service, "model_drift_share", name)
        assert calm < alert_ratio() * 0.01
        assert gauge(service, "model_drifted_devices", name) == 0

        # an hour later the pump's pressure sits higher: the old windows have left the window
        clock.now += 3600 + 60
        feed(service, "pump-1", shifted(700, seed=22), 600)
        stale = gauge(service, "model_drift_share", name)
        assert stale > alert_ratio() * 0.01
        assert gauge(service, "model_drifted_devices", name) == 1

        # re-threshold on the shifted data, promote it with the symlink + reload
        recent = shifted(2000, seed=23).write_csv(tmp_path / "recent.csv")
        candidate = tmp_path / "calibrated"
        assert main(["calibrate", "--model", str(model), "--data", str(recent), "--out", str(candidate)]) == 0
        live.unlink()
        live.symlink_to(candidate)
        service.reload()
        calibrated = service.scorer.bundle.name
        assert calibrated != name  # calibrate names the bundle after its directory
        assert gauge(service, "model_drift_share", name) is None  # a model no longer served is not reported

        clock.now += 60
        feed(service, "pump-1", shifted(700, seed=24), 600)
        recalibrated = gauge(service, "model_drift_share", calibrated)
        assert recalibrated < alert_ratio() * 0.01
        assert gauge(service, "model_drifted_devices", calibrated) == 0
    finally:
        service.worker.stop(drain=True, timeout=30)
    print(f"drift share: normal {calm:.3f}, shifted {stale:.3f}, recalibrated {recalibrated:.3f}")


def test_calibrate_stores_the_reference_of_its_own_data_pooled_and_per_device(model, tmp_path):
    quiet = synthetic.normal(1500, seed=5).write_csv(tmp_path / "a.csv")
    moved = shifted(1500, seed=6).write_csv(tmp_path / "b.csv")
    out = tmp_path / "per-device"
    assert main(["calibrate", "--model", str(model), "--per-device", "--out", str(out),
                 "--data", f"pump-a={quiet}", "--data", f"pump-b={moved}"]) == 0
    reference = ScoreReference.of_bundle(load_bundle(out))
    trained = ScoreReference.of_bundle(load_bundle(model))
    assert set(reference.devices) == {"pump-a", "pump-b"}
    assert reference.devices["pump-b"] > reference.devices["pump-a"]
    assert reference.value != trained.value  # the calibration's, not the training's


def test_a_bundle_without_a_reference_is_not_tracked(model, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for f in model.iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    doc = json.loads((old / BUNDLE_FILE).read_text())
    del doc["training"]["score_reference"]
    (old / BUNDLE_FILE).write_text(json.dumps(doc))
    tracker = StalenessTracker()
    tracker.observe(load_bundle(old), ["pump-1"] * 100, np.full(100, 1e9))
    assert tracker.snapshot() == []


def bundle_with(model, reference: ScoreReference, version: str = "1") -> Bundle:
    """The trained bundle with another reference (and version)."""
    return dataclasses.replace(load_bundle(model), version=version, calibration={},
                               training={"score_reference": reference.to_dict()})


def test_the_window_slides_in_ten_minute_buckets_and_forgets_quiet_devices(model):
    clock = Clock()  # at the start of a bucket
    tracker = StalenessTracker(clock=clock)
    bundle = bundle_with(model, ScoreReference(0.99, 1.0))
    for minute in range(60):  # one window above the reference every minute, for an hour
        tracker.observe(bundle, ["pump-1"] * 10, np.array([2.0] + [0.5] * 9))
        clock.now += 60
    [state] = tracker.snapshot()
    assert state.windows == 500 and state.share == pytest.approx(50 / 500)  # the first ten minutes have left
    assert state.drifted_devices == 1
    clock.now += 9 * 60  # nine minutes on: the same bucket, the same count
    assert tracker.snapshot()[0].windows == 500
    clock.now += 3600
    assert tracker.snapshot() == []


def test_each_device_is_compared_with_its_own_reference_and_counted_once_enough_windows_are_in(model):
    clock = Clock()
    tracker = StalenessTracker(clock=clock)
    bundle = bundle_with(model, ScoreReference(0.99, 1.0, {"pump-hot": 3.0}))
    scores = np.full(MIN_WINDOWS, 2.0)
    tracker.observe(bundle, ["pump-hot"] * MIN_WINDOWS, scores)  # below its own reference
    tracker.observe(bundle, ["pump-1"] * MIN_WINDOWS, scores)  # above the pooled one
    tracker.observe(bundle, ["pump-new"] * (MIN_WINDOWS - 1), scores[1:])  # too few windows to judge
    [state] = tracker.snapshot()
    assert state.drifted_devices == 1
    assert state.share == pytest.approx((2 * MIN_WINDOWS - 1) / (3 * MIN_WINDOWS - 1))


def test_non_finite_scores_are_not_counted_and_too_few_windows_read_as_nan(model):
    tracker = StalenessTracker()
    tracker.observe(bundle_with(model, ScoreReference(0.99, 1.0)), ["pump-1"] * 3, np.array([np.nan, np.inf, 2.0]))
    [state] = tracker.snapshot()
    assert state.windows == 1 and math.isnan(state.share)


def test_a_new_version_of_a_model_starts_a_fresh_count(model):
    tracker = StalenessTracker()
    tracker.observe(bundle_with(model, ScoreReference(0.99, 1.0), version="1"), ["pump-1"] * 100, np.full(100, 2.0))
    tracker.observe(bundle_with(model, ScoreReference(0.99, 3.0), version="2"), ["pump-1"] * 100, np.full(100, 2.0))
    [state] = tracker.snapshot()
    assert state.windows == 100 and state.share == 0.0


def test_a_failure_to_count_is_logged_and_never_reaches_the_worker(caplog):
    tracker = StalenessTracker()
    tracker.observe(object(), ["pump-1"], np.ones(1))  # not a bundle: nothing to read a reference from
    assert tracker.snapshot() == []
    assert "staleness of model ? not counted" in caplog.text
