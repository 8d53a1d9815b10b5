"""The systemd units in deploy/systemd.

`systemd-analyze verify` checks a copy of each unit whose ExecStart is rewritten from the
install location (/opt/anomalyd/.venv/bin/anomalyd) to this repository's .venv/bin/anomalyd:
so "the command exists after install" is checked for real, and any complaint about the unit
(unknown key, bad value, missing executable) fails the test. Only environment noise that says
nothing about the unit (the anomalyd user or the dependency units do not exist on this host)
is tolerated. The ExecStart arguments are parsed by the real CLI, and the hardening settings the
issue asks for are asserted one by one. That the daemon keeps the Type=notify contract (READY=1,
WATCHDOG=1, RELOADING=1, STOPPING=1 from the main PID) is proved in test_deploy_service.py.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from daemon.cli import main as cli_main
from servers import binary_or_skip

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "deploy" / "systemd"
UNIT = SYSTEMD / "anomalyd.service"
TEMPLATE = SYSTEMD / "anomalyd@.service"
INSTALLED_BINARY = "/opt/anomalyd/.venv/bin/anomalyd"
REPO_BINARY = ROOT / ".venv" / "bin" / "anomalyd"

# Output of systemd-analyze verify that is about this host, not about the unit.
HARMLESS = [
    re.compile(r"(Failed to resolve|Failed to look up|Unknown) (user|group) .*anomalyd", re.I),
    re.compile(r"user .*anomalyd.* (does not exist|not found)", re.I),
    re.compile(r"(mosquitto|network-online)\.\w+: (Unit .* not found|.*not found)", re.I),
    re.compile(r"Cannot add dependency job .*(mosquitto|network-online)", re.I),
    re.compile(r"Failed to (connect to|open) (bus|system bus)", re.I),
]


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values in order (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path.name}: {line!r} before any section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict, key: str, section: str = "Service") -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"{section}.{key}: expected one value, got {values}"
    return values[0]


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    return binary_or_skip("/usr/bin/systemd-analyze", "systemd")


def installed_copy(source: Path, directory: Path, name: str | None = None) -> Path:
    """The unit as installed on a box where the venv lives at this repository's .venv."""
    text = source.read_text()
    assert INSTALLED_BINARY in text, f"{source.name} does not run {INSTALLED_BINARY}"
    copy = directory / (name or source.name)
    copy.write_text(text.replace(INSTALLED_BINARY, str(REPO_BINARY)))
    return copy


def verify(systemd_analyze: str, directory: Path, unit_name: str) -> list[str]:
    """Complaints of `systemd-analyze verify` about the unit; fails on a non-zero exit."""
    result = subprocess.run([systemd_analyze, "verify", "--man=no", f"./{unit_name}"], cwd=directory,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "cat"})
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    complaints = [line for line in lines if not any(p.search(line) for p in HARMLESS)]
    assert result.returncode == 0 or not complaints, f"systemd-analyze verify exit {result.returncode}:\n" + "\n".join(lines)
    return complaints


def test_the_exec_start_binary_exists_after_install():
    assert REPO_BINARY.is_file() and os.access(REPO_BINARY, os.X_OK), f"{REPO_BINARY}: run scripts/setup"
    for source in (UNIT, TEMPLATE):
        argv = shlex.split(one(parse_unit(source), "ExecStart"))
        assert argv[0] == INSTALLED_BINARY


@pytest.mark.parametrize("source", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_exec_start_arguments_are_accepted_by_the_cli(source, tmp_path, capsys):
    """The real CLI parses the unit's arguments and gets as far as reading the config file."""
    argv = shlex.split(one(parse_unit(source), "ExecStart"))
    assert argv[1:3] == ["run", "--config"] and len(argv) == 4, "no --duration: the service runs until stopped"
    assert re.fullmatch(r"/etc/anomalyd/(config|%i)\.yaml", argv[3])
    missing = tmp_path / "config.yaml"
    assert cli_main([*argv[1:3], str(missing)]) == 2
    error = capsys.readouterr().err
    assert f"{missing}: no such config file" in error and "unrecognized arguments" not in error


def test_systemd_analyze_verify_accepts_the_unit(systemd_analyze, tmp_path):
    installed_copy(UNIT, tmp_path)
    assert verify(systemd_analyze, tmp_path, UNIT.name) == []


def test_systemd_analyze_verify_accepts_an_instance_of_the_template(systemd_analyze, tmp_path):
    installed_copy(TEMPLATE, tmp_path)
    assert verify(systemd_analyze, tmp_path, "anomalyd@shard0.service") == []


def test_verify_reports_a_broken_unit_so_the_checks_above_mean_something(systemd_analyze, tmp_path):
    copy = installed_copy(UNIT, tmp_path)
    copy.write_text(copy.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilegs=yes"))
    assert any("NoNewPrivilegs" in line for line in verify(systemd_analyze, tmp_path, UNIT.name))
    copy.write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(tmp_path / "missing" / "anomalyd")))
    result = subprocess.run([systemd_analyze, "verify", "--man=no", f"./{UNIT.name}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "missing" in result.stdout + result.stderr


@pytest.mark.parametrize("source", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_the_unit_uses_sd_notify_restart_reload_and_a_dedicated_user(source):
    unit = parse_unit(source)
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"
    assert int(one(unit, "WatchdogSec")) >= 10
    assert one(unit, "Restart") == "on-failure"
    assert one(unit, "User") == "anomalyd" and one(unit, "Group") == "anomalyd"
    reload = shlex.split(one(unit, "ExecReload"))
    assert reload[0] in ("/bin/kill", "/usr/bin/kill") and reload[1:] == ["-HUP", "$MAINPID"]
    env_files = unit["Service"]["EnvironmentFile"]
    assert env_files[0] == "/etc/anomalyd/anomalyd.env", "secrets come from a root-only environment file"
    assert not any(re.search(r"PASSWORD|TOKEN", value) for value in unit["Service"].get("Environment", []))
    assert one(unit, "WantedBy", "Install") == "multi-user.target"


@pytest.mark.parametrize("source", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_the_unit_is_hardened(source):
    unit = parse_unit(source)
    expected = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                "PrivateDevices": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
                "RestrictSUIDSGID": "yes", "LockPersonality": "yes", "ProtectKernelModules": "yes",
                "ProtectKernelTunables": "yes", "ProtectControlGroups": "yes"}
    for key, value in expected.items():
        assert one(unit, key) == value, key
    families = set(one(unit, "RestrictAddressFamilies").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}, "AF_UNIX for sd_notify and journald, INET for MQTT/HTTP"


def test_only_the_spool_is_writable():
    """The daemon writes only its InfluxDB spool; model bundles are read-only for it (see the
    unit's comment), and the template gives each instance its own spool directory."""
    assert parse_unit(UNIT)["Service"]["ReadWritePaths"] == ["/var/lib/anomalyd/spool"]
    assert parse_unit(TEMPLATE)["Service"]["ReadWritePaths"] == ["/var/lib/anomalyd/spool/%i"]
    config = (ROOT / "deploy" / "config" / "config.yaml").read_text()
    assert re.search(r'spool_dir: "/var/lib/anomalyd/spool"', config)
    assert re.search(r'path: "/var/lib/anomalyd/models/current"', config)


def test_the_template_differs_from_the_unit_only_where_instances_must():
    unit, template = parse_unit(UNIT)["Service"], parse_unit(TEMPLATE)["Service"]
    per_instance = {"ExecStart", "ReadWritePaths", "EnvironmentFile"}
    for key in set(unit) | set(template):
        if key not in per_instance:
            assert unit.get(key) == template.get(key), f"{key}: {unit.get(key)} vs {template.get(key)}"
    assert "%i" in one(parse_unit(TEMPLATE), "ExecStart")


# ---- the nightly retrain: anomalyd-retrain.service + .timer --------------------------------------

RETRAIN = SYSTEMD / "anomalyd-retrain.service"
RETRAIN_TIMER = SYSTEMD / "anomalyd-retrain.timer"
CANDIDATES = "/var/lib/anomalyd/candidate"


def test_systemd_analyze_verify_accepts_the_retrain_service_and_its_timer(systemd_analyze, tmp_path):
    installed_copy(RETRAIN, tmp_path)
    (tmp_path / RETRAIN_TIMER.name).write_text(RETRAIN_TIMER.read_text())
    assert verify(systemd_analyze, tmp_path, RETRAIN.name) == []
    assert verify(systemd_analyze, tmp_path, RETRAIN_TIMER.name) == []


def test_the_retrain_runs_nightly_as_the_service_user_writing_only_candidates():
    timer, unit = parse_unit(RETRAIN_TIMER), parse_unit(RETRAIN)
    assert one(timer, "OnCalendar", "Timer") == "*-*-* 02:30:00" and one(timer, "Persistent", "Timer") == "yes"
    assert one(timer, "WantedBy", "Install") == "timers.target"
    assert one(unit, "Type") == "oneshot"
    assert one(unit, "User") == "anomalyd" and one(unit, "ReadWritePaths") == CANDIDATES
    served = parse_unit(UNIT)["Service"]
    for key in ("NoNewPrivileges", "ProtectSystem", "CapabilityBoundingSet", "SystemCallFilter",
                "RestrictAddressFamilies", "EnvironmentFile"):
        assert unit["Service"][key] == served[key], key


def retrain_script(candidates: Path) -> tuple[list[str], dict[str, str]]:
    """The retrain's ExecStart as systemd runs it (continuations joined, quoting, `$$` and `%%`
    unescaped), installed with this repository's binary and `candidates` as its directory, and
    the unit's Environment= settings."""
    text = installed_copy(RETRAIN, candidates.parent, "unit").read_text().replace(CANDIDATES, str(candidates))
    text = re.sub(r"\\\n", " ", text)
    [command] = [line[len("ExecStart="):] for line in text.splitlines() if line.startswith("ExecStart=")]
    argv = [word.replace("$$", "$").replace("%%", "%") for word in shlex.split(command)]
    environment = {}
    for line in text.splitlines():
        if line.startswith("Environment="):
            environment.update(word.split("=", 1) for word in shlex.split(line[len("Environment="):]))
    return argv, environment


def run_retrain(candidates: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    argv, environment = retrain_script(candidates)
    assert argv[:2] == ["/bin/sh", "-ec"]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **environment, **settings}
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)


def test_a_failed_retrain_names_the_problem_and_leaves_no_candidate(tmp_path):
    candidates = tmp_path / "candidate"
    result = run_retrain(candidates, ANOMALYD_RETRAIN_URL="http://127.0.0.1:9")
    assert result.returncode == 2
    assert "InfluxDB at http://127.0.0.1:9: cannot connect" in result.stderr
    assert [p.name for p in candidates.iterdir() if not p.name.startswith(".")] == []


def test_the_retrain_trains_on_history_and_calibrates_on_the_recent_day(tmp_path, influxdb_session):
    import time as _time

    from daemon.core.bundle import load_bundle
    from daemon.offline import synthetic

    database, period = "retrain", 60.0
    start = _time.time() - 2 * 86400
    influxdb_session.create_database(database)
    for seed, device in enumerate(["pump-1", "pump-2"]):
        data = synthetic.normal(2 * 24 * 60 - 5, seed=30 + seed, start=start, period=period)
        influxdb_session.write_lines(database, [
            f"pump,device={device} " + ",".join(f"{f}={v:.5f}" for f, v in zip(synthetic.FEATURES, row))
            + f" {int(t * 1000)}" for t, row in zip(data.timestamps, data.values)])
    candidates = tmp_path / "candidate"
    result = run_retrain(candidates, ANOMALYD_RETRAIN_URL=influxdb_session.url, ANOMALYD_RETRAIN_DATABASE=database,
                         ANOMALYD_RETRAIN_HISTORY="3d", ANOMALYD_RETRAIN_RECENT="6h",
                         ANOMALYD_RETRAIN_TRAIN_ARGS="--arch mlp --window 20 --epochs 2 --seed 0 --no-onnx",
                         ANOMALYD_RETRAIN_CALIBRATE_ARGS="--per-device")
    assert result.returncode == 0, result.stderr[-2000:]
    [candidate] = list(candidates.iterdir())  # the work directory is gone
    assert re.fullmatch(r"pump-\d{8}", candidate.name)
    assert f"candidate bundle: {candidate}" in result.stdout
    bundle = load_bundle(candidate)
    assert bundle.name == candidate.name
    assert set(bundle.threshold.devices) == {"pump-1", "pump-2"}
    assert bundle.calibration["score_reference"]["value"] > 0  # what the staleness gauge compares with
    assert bundle.calibration["windows"] < bundle.training["windows_train"]  # the recent 6 h, not the history
