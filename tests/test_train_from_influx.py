"""`anomalyd train --from-influx` and `anomalyd calibrate --from-influx` against a real InfluxDB 1.x.

Three days of generated readings of two pumps (one sample a minute) go into the store as
Telegraf would write them, with anomalyd's own `anomaly` points marking alert periods for
pump-1 (one of them open before the data starts, one reported through a `reason` point) and a
three-hour outage in pump-2's readings. Training from the store must give the bundle that
training on the same rows exported to CSV gives, one file per run with the alert rows labelled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from daemon.cli import main
from daemon.core.bundle import load_bundle
from daemon.offline import synthetic
from daemon.offline.frames import split_at_gaps, Frame
from daemon.offline.influx_source import (Credentials, HistoryQuery, InfluxQL, alert_periods, read_history)
from datafiles import FAST_TRAIN
from servers import free_port

START = 1_700_000_000.0
PERIOD = 60.0
ROWS = 3 * 24 * 60  # three days at one sample a minute
DATABASE = "plant"
MEASUREMENT = "pump"
FEATURES = synthetic.FEATURES
GAP_ROWS = slice(2000, 2180)  # pump-2's outage: three hours without readings


def ts(row: int) -> float:
    return START + row * PERIOD


# pump-1's alert periods as anomalyd wrote them, in rows: [first alert=1 point, next alert=0 point).
# The first opened before the data starts (the last point before START says alert=1).
ALERTS_PUMP1 = [(None, 30), (1005, 1203), (3010, 3105)]


@dataclass
class Plant:
    readings: dict[str, synthetic.Synthetic]  # device -> rows written (pump-2 without its outage)
    in_alert: dict[str, np.ndarray]  # device -> bool per row: inside one of anomalyd's alert periods


def _readings() -> dict[str, synthetic.Synthetic]:
    pump1 = synthetic.normal(ROWS, seed=11, start=START, period=PERIOD)
    pump1 = synthetic.inject(pump1, "level_shift", 1000, 200, seed=1)  # what the alerts caught
    pump1 = synthetic.inject(pump1, "spike", 3000, 100, seed=2)
    pump2 = synthetic.normal(ROWS, seed=12, start=START, period=PERIOD)
    keep = np.ones(ROWS, dtype=bool)
    keep[GAP_ROWS] = False
    pump2 = synthetic.Synthetic(pump2.timestamps[keep], pump2.values[keep], pump2.labels[keep])
    # Values as a CSV export holds them (5 decimals), so the store and the files hold the same numbers.
    return {name: synthetic.Synthetic(d.timestamps, np.round(d.values.astype(np.float64), 5).astype(np.float32),
                                      np.zeros(len(d.timestamps), dtype=np.int8))
            for name, d in {"pump-1": pump1, "pump-2": pump2}.items()}


def _reading_lines(device: str, data: synthetic.Synthetic) -> list[str]:
    return [f"{MEASUREMENT},device={device},host=edge1 " + ",".join(f"{f}={v:.5f}" for f, v in zip(FEATURES, row))
            + f" {int(round(t * 1000))}" for t, row in zip(data.timestamps, data.values)]


def _anomaly_lines() -> list[str]:
    """anomalyd's own points for pump-1 (one per window, as the service writes them) and a
    second model that never alerted on pump-2."""
    lines = [f"anomaly,device=pump-1,model=pump-v1 score=9,threshold=1,anomaly=1i,alert=1i {int((START - 600) * 1000)}"]
    alert = np.zeros(ROWS, dtype=bool)
    for start, end in ALERTS_PUMP1:
        alert[(start or 0):end] = True
    for row in range(0, ROWS, 5):
        flag = int(alert[row])
        lines.append(f"anomaly,device=pump-1,model=pump-v1 score=0.5,threshold=1,anomaly={flag}i,alert={flag}i "
                     f"{int(ts(row) * 1000)}")
        lines.append(f"anomaly,device=pump-2,model=pump-v1 score=0.2,threshold=1,anomaly=0i,alert=0i "
                     f"{int(ts(row) * 1000)}")
        # a shadow candidate (model.candidate) in alert throughout: it raised nothing, so no period
        lines.append(f"anomaly,device=pump-2,model=pump-v2,shadow=1 score=2,threshold=1,anomaly=1i,alert=1i "
                     f"{int(ts(row) * 1000)}")
    # a window flagged for a reason, inside the second period: its own series, the same model
    lines.append(f"anomaly,device=pump-1,model=pump-v1,reason=out_of_range score=3.4e38,threshold=1,anomaly=1i,"
                 f"alert=1i {int(ts(1100) * 1000) + 1}")
    return lines


def _expected_alert_rows(data: synthetic.Synthetic) -> np.ndarray:
    """Rows inside the periods above: from the first alert=1 point (rows are multiples of 5) to
    the next alert=0 point."""
    inside = np.zeros(len(data.timestamps), dtype=bool)
    for start, end in ALERTS_PUMP1:
        first = -math.inf if start is None else ts(math.ceil(start / 5) * 5)
        inside |= (data.timestamps >= first) & (data.timestamps < ts(math.ceil(end / 5) * 5))
    return inside


@pytest.fixture(scope="module")
def plant(influxdb_session) -> Plant:
    influxdb_session.create_database(DATABASE)
    readings = _readings()
    for device, data in readings.items():
        influxdb_session.write_lines(DATABASE, _reading_lines(device, data))
    influxdb_session.write_lines(DATABASE, _anomaly_lines())
    influxdb_session.write_lines(DATABASE, [f'{MEASUREMENT}_status,device=pump-1 vibration=0.1,state="running" '
                                            f"{int(ts(row) * 1000)}" for row in range(100)])
    return Plant(readings, {"pump-1": _expected_alert_rows(readings["pump-1"]),
                            "pump-2": np.zeros(len(readings["pump-2"].timestamps), dtype=bool)})


def _store_args(influxdb, *extra: str) -> list[str]:
    return ["--from-influx", influxdb.url, "--database", DATABASE, "--measurement", MEASUREMENT,
            "--fields", ",".join(FEATURES), "--start", str(START), "--stop", str(ts(ROWS)), *extra]


def _export_runs(plant: Plant, directory: Path) -> list[Path]:
    """The store's rows as CSV files, one per run (a gap ends a run), alert rows labelled 1."""
    paths = []
    for device in sorted(plant.readings):
        data = plant.readings[device]
        frame = Frame(device, data.timestamps, data.values, FEATURES, plant.in_alert[device].astype(np.int8))
        for i, run in enumerate(split_at_gaps(frame, 5 * PERIOD)):
            paths.append(synthetic.Synthetic(run.timestamps, run.values, run.labels)
                         .write_csv(directory / f"{device}-{i}.csv"))
    return paths


def test_training_from_the_store_gives_the_bundle_training_on_its_csv_export_gives(plant, influxdb_session, tmp_path):
    csv_paths = _export_runs(plant, tmp_path / "export")
    assert len(csv_paths) == 3  # pump-1 whole, pump-2 cut by its outage

    from_csv, from_store = tmp_path / "from-csv", tmp_path / "from-store"
    assert main(["train", *[a for p in csv_paths for a in ("--data", str(p))], "--out", str(from_csv),
                 *FAST_TRAIN]) == 0
    assert main(["train", *_store_args(influxdb_session, "--page", "12h"), "--out", str(from_store),
                 *FAST_TRAIN]) == 0

    a, b = load_bundle(from_csv), load_bundle(from_store)
    assert b.features == a.features == FEATURES
    assert b.weights_sha256 == a.weights_sha256  # same rows, same seed: the same model
    np.testing.assert_allclose(b.scaler.offset, a.scaler.offset, rtol=1e-6)
    np.testing.assert_allclose(b.scaler.scale, a.scaler.scale, rtol=1e-6)
    assert b.threshold.value == pytest.approx(a.threshold.value, rel=1e-5)
    assert b.sample_period_seconds == a.sample_period_seconds == PERIOD
    for key in ("rows_train", "rows_validation", "windows_train", "windows_validation"):
        assert b.training[key] == a.training[key], key
    # the alert periods are left out: every row outside them is trained on, none inside
    normal_rows = sum(int((~inside).sum()) for inside in plant.in_alert.values())
    assert b.training["rows_train"] + b.training["rows_validation"] == normal_rows


def test_alert_periods_are_kept_only_when_asked(plant, influxdb_session, tmp_path):
    client = InfluxQL(influxdb_session.url, DATABASE)
    query = HistoryQuery(MEASUREMENT, FEATURES, START, ts(ROWS), devices=("pump-1",))
    excluded = read_history(client, query)
    kept = read_history(client, query, exclude_alert_periods=False)
    labels = np.concatenate([f.labels for f in excluded.frames()])
    np.testing.assert_array_equal(labels.astype(bool), plant.in_alert["pump-1"])
    assert excluded.rows_in_alert == int(plant.in_alert["pump-1"].sum()) > 300
    assert kept.rows == excluded.rows and kept.rows_in_alert == 0
    assert all(f.labels is None for f in kept.frames())


def test_alert_periods_come_from_each_models_own_points(plant, influxdb_session):
    client = InfluxQL(influxdb_session.url, DATABASE)
    periods = alert_periods(client, "pump-1", START, ts(ROWS))
    assert periods == [(-math.inf, ts(30)), (ts(1005), ts(1205)), (ts(3010), ts(3105))]
    assert alert_periods(client, "pump-2", START, ts(ROWS)) == []


def test_a_query_reads_the_same_rows_as_a_measurement_and_gaps_cut_runs(plant, influxdb_session):
    client = InfluxQL(influxdb_session.url, DATABASE)
    by_measurement = read_history(client, HistoryQuery(MEASUREMENT, None, START, ts(ROWS), page_seconds=7 * 3600))
    by_query = read_history(client, HistoryQuery(
        statement=f'SELECT {",".join(FEATURES)} FROM "{MEASUREMENT}" WHERE time >= {int(START)}s GROUP BY "device"'))
    assert sorted(by_measurement.features) == sorted(FEATURES)  # every numeric field, in the store's order
    assert by_query.features == FEATURES
    assert [len(f) for f in by_query.frames()] == [ROWS, GAP_ROWS.start, ROWS - GAP_ROWS.stop]
    for a, b in zip(by_query.frames(), by_measurement.frames()):
        np.testing.assert_array_equal(a.timestamps, b.timestamps)
        np.testing.assert_array_equal(a.values, b.values[:, [b.features.index(f) for f in FEATURES]])
    np.testing.assert_array_equal(by_query.frames()[0].values, plant.readings["pump-1"].values)


def test_calibrate_from_the_store_per_device(plant, influxdb_session, tmp_path, capsys):
    export = _export_runs(plant, tmp_path / "export")
    model = tmp_path / "model"
    assert main(["train", "--data", str(export[1]), "--out", str(model), *FAST_TRAIN]) == 0
    out = tmp_path / "model-cal"
    assert main(["calibrate", "--model", str(model), "--out", str(out), "--per-device",
                 *_store_args(influxdb_session)]) == 0
    assert "per device" in capsys.readouterr().out
    new, old = load_bundle(out), load_bundle(model)
    assert new.weights_sha256 == old.weights_sha256
    assert set(new.threshold.devices) == {"pump-1", "pump-2"}
    assert new.threshold.devices["pump-1"] != new.threshold.devices["pump-2"]
    record = json.loads((out / "bundle.json").read_text())["calibration"]
    assert record["previous_threshold"]["value"] == old.threshold.value
    assert record["data_start"] == "2023-11-14T22:13:20Z"
    # pump-1's alert rows are not calibrated on: its windows are those of its normal runs
    normal_pump1 = int((~plant.in_alert["pump-1"]).sum())
    assert record["windows_per_device"]["pump-1"] <= normal_pump1 - 19
    assert record["windows_per_device"]["pump-1"] > normal_pump1 - 19 * 4
    assert record["left_out"] == f"anomalyd's alert periods: {int(plant.in_alert['pump-1'].sum())} rows"


def test_train_with_incidents_learns_from_the_alert_periods_no_incident_confirms(plant, influxdb_session, tmp_path):
    first, end = ALERTS_PUMP1[1]  # confirmed: the level shift; the other two alert periods were false alarms
    incidents = tmp_path / "incidents.csv"
    incidents.write_text(f"device,start,end\npump-1,{ts(first)},{ts(end - 1)}\n")

    def rows(*extra: str) -> int:
        out = tmp_path / f"model-{len(extra)}"
        assert main(["train", *_store_args(influxdb_session), "--out", str(out), *FAST_TRAIN, *extra]) == 0
        training = json.loads((out / "bundle.json").read_text())["training"]
        return training["rows_train"] + training["rows_validation"]

    false_alarm_rows = int(plant.in_alert["pump-1"].sum()) - (end - first)  # in alert, in no incident
    assert rows("--incidents", str(incidents)) - rows() == false_alarm_rows
    training = json.loads((tmp_path / "model-2" / "bundle.json").read_text())["training"]
    assert training["left_out"] == f"the confirmed incidents in {incidents} (anomalyd's other alert periods kept): " \
                                  f"{end - first} rows"


def test_calibrate_with_incidents_keeps_the_alert_periods_no_incident_confirms(plant, influxdb_session, tmp_path):
    """An alert period that no confirmed incident overlaps was a false alarm: its rows are
    calibrated on; only the incident's rows are left out."""
    export = _export_runs(plant, tmp_path / "export")
    model = tmp_path / "model"
    assert main(["train", "--data", str(export[1]), "--out", str(model), *FAST_TRAIN]) == 0
    first, end = ALERTS_PUMP1[1]  # the level shift, confirmed; the other two alert periods were not
    incidents = tmp_path / "incidents.csv"
    incidents.write_text(f"device,start,end\npump-1,{ts(first)},{ts(end - 1)}\n")
    out = tmp_path / "model-cal"
    assert main(["calibrate", "--model", str(model), "--out", str(out), "--per-device",
                 "--incidents", str(incidents), *_store_args(influxdb_session)]) == 0
    record = json.loads((out / "bundle.json").read_text())["calibration"]
    window = load_bundle(model).window
    assert record["windows_per_device"]["pump-1"] == (first - window + 1) + (ROWS - end - window + 1)
    assert record["left_out"] == f"the confirmed incidents in {incidents} (anomalyd's other alert periods kept): " \
                                f"{end - first} rows"


@pytest.mark.parametrize("args, message", [
    (["--fields", "vibration,nosuch"], "has no field 'nosuch'"),
    (["--measurement", "pumps"], "has no measurement 'pumps'"),
    (["--start", "2001-01-01T00:00:00Z", "--stop", "2001-01-02T00:00:00Z"], "no rows for measurement 'pump'"),
    (["--measurement", "pump_status", "--fields", "vibration,state"], "field 'state' (string) holds no numbers"),
    (["--database", "nosuch"], "database 'nosuch'"),
])
def test_bad_store_input_is_one_line_and_exit_2(plant, influxdb_session, tmp_path, capsys, args, message):
    argv = ["train", *_store_args(influxdb_session), *args, "--out", str(tmp_path / "m"), *FAST_TRAIN]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_query_returning_strings_or_nothing_is_one_line_and_exit_2(plant, influxdb_session, tmp_path, capsys):
    base = ["train", "--from-influx", influxdb_session.url, "--database", DATABASE, "--out", str(tmp_path / "m")]
    for query, message in [(f'SELECT vibration, state FROM "{MEASUREMENT}_status" GROUP BY "device"',
                            "field 'state' holds str values"),
                           (f'SELECT vibration FROM "{MEASUREMENT}" WHERE time < 0 GROUP BY "device"', "no rows for query")]:
        assert main([*base, "--query", query]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_an_unreachable_store_is_one_line_and_exit_2(tmp_path, capsys):
    argv = ["train", "--from-influx", f"http://127.0.0.1:{free_port()}", "--database", DATABASE,
            "--measurement", MEASUREMENT, "--start", "7d", "--out", str(tmp_path / "m")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot connect" in err[0], err


def test_user_and_password_come_from_the_environment_never_the_command_line(influxdb_auth, tmp_path, capsys,
                                                                             monkeypatch):
    influxdb_auth.create_database(DATABASE)
    influxdb_auth.write_lines(DATABASE, _reading_lines("pump-9", synthetic.normal(200, seed=3, start=START)))
    argv = ["train", "--from-influx", influxdb_auth.url, "--database", DATABASE, "--measurement", MEASUREMENT,
            "--start", str(START), "--stop", str(START + 200), "--keep-alert-periods", "--influx-user", "admin",
            "--out", str(tmp_path / "m"), *FAST_TRAIN]
    monkeypatch.setenv("ANOMALYD_INFLUXDB_PASSWORD", "wrong")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "authentication failed" in err[0], err
    monkeypatch.setenv("ANOMALYD_INFLUXDB_PASSWORD", influxdb_auth.admin_password)
    assert main(argv) == 0
    assert load_bundle(tmp_path / "m").training["rows_train"] > 0


def test_credentials_never_come_from_the_url(capsys, tmp_path):
    assert main(["train", "--from-influx", "http://admin:secret@127.0.0.1:8086", "--database", "x",
                 "--measurement", "m", "--start", "1d", "--out", str(tmp_path / "m")]) == 2
    assert "credentials in the URL" in capsys.readouterr().err


def test_a_token_is_sent_as_a_token_header(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    assert Credentials.resolve(str(token_file), None, None, environ={}).headers() == {"Authorization": "Token s3cret"}
    assert Credentials.resolve(None, None, None, environ={"ANOMALYD_INFLUXDB_TOKEN": "t"}).headers() == {
        "Authorization": "Token t"}
    assert Credentials.resolve(None, None, None, environ={}).headers() == {}
