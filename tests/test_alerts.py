"""`anomalyd alerts`: the served model's alert episodes as the CSV an alarm review turns into the
confirmed incidents, read from the points the service writes (the file sink's, or the store's)."""

from __future__ import annotations

import csv

from daemon.cli import main
from daemon.offline.incidents import read_incidents
from test_compare import START, points_file


def test_each_served_episode_is_one_row_in_time_order_and_the_candidates_are_not_listed(tmp_path, capsys):
    path = points_file(tmp_path / "scores.lp", {
        ("pump-2", False): [0, 0, 0, 1, 1, 1, 0, 0, 0, 1],  # the last episode is still open at the end
        ("pump-1", False): [1, 1, 0, 0, 0, 0, 0, 1, 0, 0],
        ("pump-1", True): [0, 0, 0, 0, 1, 1, 1, 1, 1, 1],
    })
    assert main(["alerts", "--points", str(path)]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows == [["device", "start", "end", "model"],
                    ["pump-1", f"{START:.3f}", f"{START + 1:.3f}", "served"],
                    ["pump-2", f"{START + 3:.3f}", f"{START + 5:.3f}", "served"],
                    ["pump-1", f"{START + 7:.3f}", f"{START + 7:.3f}", "served"],
                    ["pump-2", f"{START + 9:.3f}", f"{START + 9:.3f}", "served"]]


def test_the_reviewed_file_is_the_incidents_file_that_calibrate_and_compare_read(tmp_path, capsys):
    path = points_file(tmp_path / "scores.lp", {("pump-1", False): [0, 1, 1, 0, 0, 0, 1, 0, 0, 0]})
    review = tmp_path / "review.csv"
    assert main(["alerts", "--points", str(path), "--out", str(review)]) == 0
    assert f"wrote {review}: 2 alert episode(s) of 1 device(s)" in capsys.readouterr().err
    header, real_fault, _false_alarm = review.read_text().splitlines()
    incidents = tmp_path / "incidents.csv"
    incidents.write_text(f"{header}\n{real_fault}\n")  # the review keeps the fault, drops the false alarm
    assert read_incidents(incidents) == {"pump-1": [(START + 1, START + 2)]}
    assert main(["alerts", "--points", str(path), "--out", str(review)]) == 2, "a review file is never overwritten"
    assert "already exists" in capsys.readouterr().err


def test_alerts_reads_the_same_points_from_the_store(tmp_path, capsys, influxdb_session):
    database = "alerts_test"
    influxdb_session.create_database(database)
    lines = points_file(tmp_path / "scores.lp", {("pump-1", False): [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]}).read_text()
    influxdb_session.write_lines(database, lines.splitlines())
    assert main(["alerts", "--from-influx", influxdb_session.url, "--database", database, "--since", str(START)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [f"pump-1,{START + 1:.3f},{START + 2:.3f},served"]
