"""`anomalyd compare`: the served model's alert episodes beside its shadow candidate's, read
from the points the file sink writes."""

from __future__ import annotations

from pathlib import Path

from daemon.cli import main
from daemon.live.events import ScoreEvent
from daemon.live.sinks.line_protocol import encode

START = 1_750_000_000.0


def points_file(path: Path, alerts: dict[tuple[str, bool], list[int]]) -> Path:
    """A file of points whose `alert` field per (device, shadow) follows the given 0/1 list."""
    lines = []
    for (device, shadow), states in alerts.items():
        model = "candidate" if shadow else "served"
        for i, alert in enumerate(states):
            lines.append(encode(ScoreEvent(device, model, START + i, 0.5, 1.0, bool(alert), bool(alert),
                                           {"flow": 0.1}, START + i, shadow=shadow)))
    path.write_text("\n".join(lines) + "\n")
    return path


def table(output: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in output.splitlines()[3:]}


def test_compare_counts_each_models_episodes_and_their_agreement_per_device_and_in_total(tmp_path, capsys):
    path = points_file(tmp_path / "scores.lp", {
        ("pump-1", False): [0, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        ("pump-1", True): [0, 1, 1, 0, 0, 1, 0, 1, 0, 0],
        ("pump-2", False): [0] * 10,
        ("pump-2", True): [0] * 10,
    })
    assert main(["compare", "--points", str(path)]) == 0
    rows = table(capsys.readouterr().out)
    assert rows["pump-1"] == ["1", "3", "80.0%", "10"]
    assert rows["pump-2"] == ["0", "0", "100.0%", "10"]
    assert rows["total"] == ["1", "3", "90.0%", "20"]


def test_with_labels_an_episode_outside_every_incident_is_a_false_alarm(tmp_path, capsys):
    path = points_file(tmp_path / "scores.lp", {
        ("pump-1", False): [0, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        ("pump-1", True): [0, 1, 1, 0, 0, 1, 0, 1, 0, 0],
    })
    labels = tmp_path / "incidents.csv"
    labels.write_text(f"device,start,end\npump-1,{START + 2},{START + 3}\n")
    assert main(["compare", "--points", str(path), "--labels", str(labels)]) == 0
    assert table(capsys.readouterr().out)["pump-1"] == ["1", "3", "80.0%", "10", "0", "2"]


def test_a_file_without_candidate_points_is_refused_naming_the_setting(tmp_path, capsys):
    path = points_file(tmp_path / "scores.lp", {("pump-1", False): [0, 1]})
    assert main(["compare", "--points", str(path)]) == 2
    assert "model.candidate" in capsys.readouterr().err


def test_compare_reads_the_points_from_influxdb_since_the_given_time(influxdb_session, tmp_path, capsys):
    database = "compare_" + tmp_path.name[-12:].replace("-", "_")
    influxdb_session.create_database(database)
    lines = points_file(tmp_path / "scores.lp", {
        ("pump-1", False): [0, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        ("pump-1", True): [0, 1, 1, 0, 0, 1, 0, 1, 0, 0],
    }).read_text().splitlines()
    influxdb_session.write_lines(database, lines)
    assert main(["compare", "--from-influx", influxdb_session.url, "--database", database,
                 "--since", str(START)]) == 0
    assert table(capsys.readouterr().out)["pump-1"] == ["1", "3", "80.0%", "10"]


def test_check_refuses_a_candidate_that_alarms_more_and_passes_one_that_does_not(tmp_path, capsys):
    noisier = points_file(tmp_path / "noisier.lp", {
        ("pump-1", False): [0, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        ("pump-1", True): [0, 1, 1, 0, 0, 1, 0, 1, 0, 0],
    })
    assert main(["compare", "--points", str(noisier), "--check"]) == 1
    assert "do not promote" in capsys.readouterr().out
    quieter = points_file(tmp_path / "quieter.lp", {
        ("pump-1", False): [0, 1, 1, 0, 0, 1, 0, 1, 0, 0],
        ("pump-1", True): [0, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    })
    assert main(["compare", "--points", str(quieter), "--check"]) == 0


def test_with_labels_check_compares_false_alarms_not_catches(tmp_path, capsys):
    path = points_file(tmp_path / "scores.lp", {
        ("pump-1", False): [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ("pump-1", True): [0, 0, 0, 0, 0, 1, 1, 0, 0, 0],  # catches the incident the served model misses
    })
    labels = tmp_path / "incidents.csv"
    labels.write_text(f"device,start,end\npump-1,{START + 5},{START + 6}\n")
    assert main(["compare", "--points", str(path), "--labels", str(labels), "--check"]) == 0
