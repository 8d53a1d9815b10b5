"""`anomalyd inspect` prints what the bundle says, not what a default would be."""

from __future__ import annotations

from pathlib import Path

from daemon.cli import main
from daemon.core.bundle import load_bundle

DEMO = Path(__file__).parents[1] / "models" / "demo"


def test_inspect_shows_the_bundles_score_definition_and_alert_hysteresis(capsys):
    bundle = load_bundle(DEMO)
    assert main(["inspect", "--model", str(DEMO)]) == 0
    lines = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in capsys.readouterr().out.splitlines()}
    assert bundle.score.feature_scale  # the demo bundle has the default per-sensor weights
    assert lines["score"] == (f"{bundle.score.error} per feature, {bundle.score.reduction} over features "
                              f"(normalised per feature)")
    assert lines["alert"] == (f"after {bundle.alert.enter_after} anomalous window(s), "
                              f"clear after {bundle.alert.leave_after} normal")


def test_inspect_names_the_sensors_each_health_check_watches(capsys):
    assert main(["inspect", "--model", str(DEMO)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sensor health"))
    assert "stuck: vibration, current, pressure, flow, temperature" in line
    assert "envelope:" in line and "drift:" in line
