"""The live service against a real mosquitto and a real VictoriaMetrics (InfluxDB write API).

Each test replays generated devices through MQTT and checks what lands in the store, the
metrics and the health endpoint. Waits poll with deadlines; nothing asserts a wall-clock time.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from daemon.cli import main
from daemon.core.errors import UserError
from daemon.live.assembly import assemble
from daemon.live.telemetry.metrics import Metrics
from daemon.offline import synthetic
from daemon.live.config import build
from daemon.live.sinks.file import read_points
from daemon.live.service import Service
from daemon.offline.publisher import Publisher, payload
from datafiles import normal_csv, train_bundle
from servers import merged_points, sample_count, wait_until

WINDOW = 20  # tests/datafiles.FAST_TRAIN
ROWS = 400


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("svc-bundle")
    return train_bundle(tmp, normal_csv(tmp, rows=3000))


def make_service(bundle: Path, broker, tmp_path: Path, **sections) -> Service:
    raw = {"mqtt": {"host": broker.host, "port": broker.port, "client_id": f"anomalyd-{tmp_path.name}"[:60]},
           "model": {"path": str(bundle)},
           "metrics": {"port": 0},
           "batching": {"max_wait_ms": 10},
           "logging": {"level": "WARNING"}}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    service = Service(build(raw))
    service.start()
    wait_until(lambda: service.ingest.subscribed, 15, "service subscribed")
    return service


def metric(service: Service, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


def wait_scored(service: Service, count: int, timeout: float = 30) -> None:
    wait_until(lambda: metric(service, "anomalyd_windows_scored_total") >= count, timeout, f"{count} windows scored")


def device_runs(names: list[str], faulty: str | None, rows: int = ROWS) -> dict[str, synthetic.Synthetic]:
    start = 1_750_000_000.0
    runs = {}
    for i, name in enumerate(names):
        run = synthetic.normal(rows, seed=10 + i, start=start)
        if name == faulty:
            run = synthetic.inject(run, "level_shift", rows // 2, 80)
        runs[name] = run
    return runs


def publish(broker, runs: dict[str, synthetic.Synthetic], rows: slice = slice(None), qos: int = 1) -> None:
    publisher = Publisher(broker.host, broker.port, qos=qos)
    try:
        first = next(iter(runs.values()))
        for r in range(len(first.timestamps))[rows]:
            for device, run in runs.items():
                publisher.publish(f"sensors/{device}/data", payload(run.timestamps[r], synthetic.FEATURES,
                                                                    run.values[r]))
    finally:
        publisher.close()


def windows_per_device(rows: int = ROWS) -> int:
    return rows - WINDOW + 1


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def influx(vm, tmp_path: Path, **extra) -> dict:
    return {"enabled": True, "url": vm.url, "org": "test", "bucket": "test", "token": "unused",
            "batch_size": 200, "flush_interval_ms": 100, "spool_dir": str(tmp_path / "spool"), **extra}


def test_faulty_device_is_flagged_inside_its_fault_and_the_others_stay_quiet(
        bundle, mosquitto_session, victoria_metrics_session, tmp_path, unique_name):
    names = [f"{unique_name[:40]}-{i}" for i in range(3)]
    runs = device_runs(names, faulty=names[1])
    service = make_service(bundle, mosquitto_session, tmp_path, influxdb=influx(victoria_metrics_session, tmp_path))
    publish(mosquitto_session, runs)
    wait_scored(service, 3 * windows_per_device())
    service.shutdown()

    vm = victoria_metrics_session
    for name, run in runs.items():
        series = vm.wait_for_points(f'anomaly_anomaly{{device="{name}"}}', windows_per_device())
        assert sample_count(series) == windows_per_device()
        stamps, flags = merged_points(series)
        np.testing.assert_array_equal(stamps, np.round(run.timestamps[WINDOW - 1:] * 1000).astype(np.int64))
        fault_rows = run.labels[WINDOW - 1:].astype(bool)
        # a window is "inside the fault" while any of its rows is faulty
        touched = np.convolve(run.labels, np.ones(WINDOW), mode="full")[WINDOW - 1:len(run.labels)] > 0
        if name == names[1]:
            assert flags[fault_rows].sum() > 0.5 * fault_rows.sum()
        assert flags[~touched].mean() <= 0.05, f"{name}: false alarm share above the 5 % bound"
        assert series[0]["metric"]["model"] == "model"
        errors = vm.query_export(f'{{__name__=~"anomaly_err_.*", device="{name}"}}')
        assert {s["metric"]["__name__"] for s in errors} == {f"anomaly_err_{f}" for f in synthetic.FEATURES}


def test_metrics_move_and_health_follows_the_broker(bundle, mosquitto, tmp_path, unique_name):
    service = make_service(bundle, mosquitto, tmp_path, local_store={"path": str(tmp_path / "scores.lp")})
    base = service.http.url
    try:
        assert http_get(base + "/healthz")[0] == 200
        publish(mosquitto, device_runs([unique_name[:40]], None, rows=100))
        wait_scored(service, windows_per_device(100))
        status, text = http_get(base + "/metrics")
        assert status == 200
        assert 'anomalyd_messages_total{result="ok"} 100.0' in text
        assert f"anomalyd_windows_scored_total {float(windows_per_device(100))}" in text
        assert 'anomalyd_model_info{architecture="mlp",name="model",runtime="torch",version="1"} 1.0' in text

        mosquitto.stop()
        wait_until(lambda: http_get(base + "/healthz")[0] == 503, 15, "unhealthy after broker stop")
        assert json.loads(http_get(base + "/healthz")[1])["broker_connected"] is False
        mosquitto.start()
        wait_until(lambda: http_get(base + "/healthz")[0] == 200, 40, "healthy after broker start")
    finally:
        service.shutdown()


def test_the_service_sets_the_configured_thread_switch_interval(bundle, mosquitto_session, tmp_path):
    before = sys.getswitchinterval()
    service = make_service(bundle, mosquitto_session, tmp_path, batching={"switch_interval_us": 300},
                           local_store={"path": str(tmp_path / "scores.lp")})
    try:
        assert sys.getswitchinterval() == pytest.approx(300e-6)
    finally:
        service.shutdown()
        sys.setswitchinterval(before)


BAD_MESSAGES = [
    ("sensors/{good}/data", b"not json", "invalid_json"),
    ("sensors/{good}/data", b'{"ts": 1750000000, "vibration": "high"}', "invalid_value"),
    ("sensors/{good}/data", b'{"vibration": NaN, "current": 1, "pressure": 1, "flow": 1, "temperature": 1}',
     "non_finite"),
    ("sensors/{good}/data", b'{"vibration": 1}', "missing_feature"),
    ("sensors/{good}/data", b'{"ts": "yesterday", "vibration": 1}', "bad_timestamp"),
    ("sensors/{good}/data", b"x" * 1_000_000, "oversized"),
    ("sensors", b"{}", "bad_topic"),
    ("sensors/a,b=c d/data", b"{}", "bad_device_id"),
    ("sensors/../etc/data", b"{}", "bad_device_id"),
]


def test_malformed_messages_are_counted_by_reason_and_good_devices_keep_scoring(
        bundle, mosquitto_session, tmp_path, unique_name):
    good = unique_name[:40]
    store = tmp_path / "scores.lp"
    service = make_service(bundle, mosquitto_session, tmp_path, mqtt={"topic": "sensors/#"},
                           local_store={"path": str(store)})
    runs = device_runs([good], None, rows=100)
    publisher = Publisher(mosquitto_session.host, mosquitto_session.port)
    try:
        for r in range(100):
            publisher.publish(f"sensors/{good}/data", payload(runs[good].timestamps[r], synthetic.FEATURES,
                                                              runs[good].values[r]))
            if r % 10 == 0:
                topic, body, _ = BAD_MESSAGES[(r // 10) % len(BAD_MESSAGES)]
                publisher.publish(topic.format(good=good), body)
    finally:
        publisher.close()
    wait_scored(service, windows_per_device(100))
    expected: dict[str, int] = {}
    for r in range(0, 100, 10):
        reason = BAD_MESSAGES[(r // 10) % len(BAD_MESSAGES)][2]
        expected[reason] = expected.get(reason, 0) + 1
    wait_until(lambda: all(metric(service, "anomalyd_messages_total", result=r) >= n for r, n in expected.items()),
               10, "every bad message counted")
    service.shutdown()
    for reason, count in expected.items():
        assert metric(service, "anomalyd_messages_total", result=reason) == count, reason
    assert metric(service, "anomalyd_messages_total", result="ok") == 100
    assert metric(service, "anomalyd_messages_total", result="internal_error") == 0
    points = read_points(store)
    assert {p["device"] for p in points} == {good}
    assert len(points) == windows_per_device(100)


def test_database_outage_loses_nothing_and_writes_nothing_twice(bundle, mosquitto_session, victoria_metrics,
                                                                tmp_path, unique_name):
    device = unique_name[:40]
    runs = device_runs([device], None)
    service = make_service(bundle, mosquitto_session, tmp_path, influxdb=influx(victoria_metrics, tmp_path))
    publish(mosquitto_session, runs, slice(0, ROWS // 2))
    wait_scored(service, ROWS // 2 - WINDOW + 1)
    victoria_metrics.stop()
    publish(mosquitto_session, runs, slice(ROWS // 2, None))
    wait_scored(service, windows_per_device())
    wait_until(lambda: metric(service, "anomalyd_sink_points_total", result="spooled") > 0, 15, "points spooled")
    victoria_metrics.start()
    wait_until(lambda: metric(service, "anomalyd_sink_points_total", result="written") >= windows_per_device(),
               60, "spool replayed")
    service.shutdown()
    series = victoria_metrics.wait_for_points(f'anomaly_score{{device="{device}"}}', windows_per_device())
    stamps, _ = merged_points(series)
    assert len(stamps) == windows_per_device() and len(set(stamps.tolist())) == len(stamps)
    assert metric(service, "anomalyd_sink_points_total", result="dropped") == 0


def test_daemon_reconnects_after_broker_restart_and_gets_what_was_queued_while_it_was_away(
        bundle, mosquitto, tmp_path, unique_name):
    device = unique_name[:40]
    runs = device_runs([device], None, rows=300)
    store = tmp_path / "scores.lp"
    sections = {"local_store": {"path": str(store)}, "mqtt": {"persistent_session": True, "qos": 1}}
    service = make_service(bundle, mosquitto, tmp_path, **sections)
    publish(mosquitto, runs, slice(0, 100))
    wait_scored(service, 100 - WINDOW + 1)

    mosquitto.restart()  # broker restart: the daemon must reconnect and resubscribe by itself
    wait_until(lambda: service.ingest.subscribed, 40, "resubscribed after broker restart")
    publish(mosquitto, runs, slice(100, 200))
    wait_scored(service, 200 - WINDOW + 1)
    service.shutdown()

    publish(mosquitto, runs, slice(200, 300))  # daemon away: the broker queues for its session
    service = make_service(bundle, mosquitto, tmp_path, **sections)
    wait_scored(service, 100 - WINDOW + 1)  # a fresh process starts a fresh window
    service.shutdown()
    stamps = sorted(p["ts"] for p in read_points(store))
    assert stamps[-1] == pytest.approx(runs[device].timestamps[-1], abs=1e-3)
    assert len(stamps) == (200 - WINDOW + 1) + (100 - WINDOW + 1)


def test_a_device_that_alarms_again_and_again_is_reported_over_its_false_alarm_budget(
        bundle, mosquitto_session, tmp_path, unique_name, caplog):
    noisy, quiet = f"{unique_name[:36]}-noisy", f"{unique_name[:36]}-quiet"
    runs = device_runs([noisy, quiet], None)
    for start in (60, 160, 260):  # three faults in under seven minutes of data: three alert episodes
        runs[noisy] = synthetic.inject(runs[noisy], "level_shift", start, 40)
    service = make_service(bundle, mosquitto_session, tmp_path, alerting={"false_alarms_per_day": 1.0},
                           local_store={"path": str(tmp_path / "scores.lp")})
    try:
        with caplog.at_level(logging.WARNING, logger="daemon.live.budget_watch"):
            publish(mosquitto_session, runs)
            wait_until(lambda: metric(service, "anomalyd_devices_over_budget", route="*") == 1, 30,
                       "the noisy device over budget")
            wait_scored(service, 2 * windows_per_device())
        assert metric(service, "anomalyd_false_alarm_budget_per_day", route="*") == 1.0
        assert metric(service, "anomalyd_devices_over_budget", route="*") == 1
        assert metric(service, "anomalyd_alerts_raised_total") >= 2
        [line] = [r.getMessage() for r in caplog.records if r.name == "daemon.live.budget_watch"]
        assert f"device {noisy!r} is over its false-alarm budget" in line
        assert "days watched, where 1 per device-day allows 0.0417" in line  # an hour at least: 1/24 day
        assert "anomalyd calibrate --per-device" in line
    finally:
        service.shutdown()


def scraped(service: Service, name: str) -> float | None:
    """One unlabelled sample from the service's own /metrics endpoint."""
    status, text = http_get(service.http.url + "/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split(" ", 1)[1])
    return None


def test_metrics_read_the_state_of_every_model_devices_route(bundle, mosquitto_session, tmp_path, unique_name):
    fan, pump = f"fan-{unique_name[:30]}", f"pump-{unique_name[:30]}"
    service = make_service(bundle, mosquitto_session, tmp_path, model={"devices": {"fan-*": str(bundle)}},
                           local_store={"path": str(tmp_path / "scores.lp")})
    try:
        assert len(service.routes) == 2
        assert np.isnan(scraped(service, "anomalyd_last_message_age_seconds"))
        publish(mosquitto_session, device_runs([fan], None, rows=30))  # the model.devices route only
        wait_until(lambda: metric(service, "anomalyd_messages_total", result="ok") >= 30, 15, "fan readings")
        assert 0 <= scraped(service, "anomalyd_last_message_age_seconds") < 60
        publish(mosquitto_session, device_runs([pump], None, rows=30))  # the model.path route
        wait_until(lambda: metric(service, "anomalyd_messages_total", result="ok") >= 60, 15, "pump readings")
        assert 0 <= scraped(service, "anomalyd_last_message_age_seconds") < 60
        assert scraped(service, "anomalyd_devices") == 2
    finally:
        service.shutdown()


def candidate_copy(bundle: Path, directory: Path, name: str, threshold: float) -> Path:
    """The served bundle under another name and threshold: a candidate to shadow it."""
    out = directory / name
    shutil.copytree(bundle, out)
    spec = json.loads((out / "bundle.json").read_text())
    spec["name"] = name
    spec["threshold"]["value"] = threshold
    (out / "bundle.json").write_text(json.dumps(spec))
    return out


def test_a_candidate_scores_the_same_windows_in_shadow_and_moves_no_alert_metric(
        bundle, mosquitto_session, tmp_path, unique_name, capsys):
    candidate = candidate_copy(bundle, tmp_path, "eager", threshold=0.0)  # every window anomalous
    points_file = tmp_path / "scores.lp"
    service = make_service(bundle, mosquitto_session, tmp_path, model={"candidate": str(candidate)},
                           local_store={"path": str(points_file)})
    device = unique_name[:40]
    try:
        publish(mosquitto_session, device_runs([device], None, rows=100))
        wait_scored(service, windows_per_device(100))
        before = service.worker.shadow
        service.reload()  # SIGHUP: the candidate is loaded again and keeps its alert states
        assert service.worker.shadow.scorer is not before.scorer and service.worker.shadow.alerts is before.alerts
    finally:
        service.shutdown()
    points = [p for p in read_points(points_file) if p["device"] == device]
    served = [p for p in points if "shadow" not in p]
    shadow = [p for p in points if p.get("shadow") == "1"]
    assert len(served) == len(shadow) == windows_per_device(100)
    assert {p["model"] for p in served} == {"model"} and {p["model"] for p in shadow} == {"eager"}
    assert sorted(p["ts"] for p in shadow) == sorted(p["ts"] for p in served)
    assert all(p["alert"] == 1 for p in shadow[WINDOW:])  # its own hysteresis, in alert throughout
    assert not any(p["alert"] for p in served)
    assert metric(service, "anomalyd_alerts_raised_total") == 0
    assert metric(service, "anomalyd_anomalous_windows_total") == 0
    assert metric(service, "anomalyd_windows_scored_total") == windows_per_device(100)
    assert metric(service, "anomalyd_alerts_active") == 0

    assert main(["compare", "--points", str(points_file)]) == 0
    total = capsys.readouterr().out.splitlines()[-1].split()
    assert total[:3] == ["total", "0", "1"]  # episodes: the served model none, the candidate one
    assert main(["alerts", "--points", str(points_file)]) == 0
    assert capsys.readouterr().out.splitlines() == ["device,start,end,model"], "a candidate's episodes are no alarms"


def test_a_candidate_that_takes_other_windows_is_refused_naming_the_field(bundle, tmp_path):
    candidate = candidate_copy(bundle, tmp_path, "other", threshold=1.0)
    spec = json.loads((candidate / "bundle.json").read_text())
    spec["window"] = spec["window"] * 2
    (candidate / "bundle.json").write_text(json.dumps(spec))
    config = build({"model": {"path": str(bundle), "candidate": str(candidate)}})
    with pytest.raises(UserError, match="model.candidate"):
        assemble(config, Metrics())
