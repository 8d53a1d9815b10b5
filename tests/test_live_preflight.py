"""What `run` needs from the host at start: `check-config` finds it, `run` reports it as one line.

Each case runs the command line on a config that passes `validate` but cannot start on this
host, and expects exit 2 with one line naming the field. The CLI's `main` runs in this process
(the checks come before anything starts); one case runs the real process to show there is no
traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from daemon.cli import main
from daemon.live.config import Config, validate
from daemon.live.sinks.spool import Spool
from servers import free_port

ROOT = Path(__file__).parents[1]
DEMO_MODEL = str(ROOT / "models" / "demo")


def anomalyd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "daemon", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def write_config(tmp_path: Path, **sections: dict) -> Path:
    raw = {"model": {"path": DEMO_MODEL}, "metrics": {"port": 0}, "local_store": {"path": str(tmp_path / "s.lp")},
           **sections}
    assert validate(raw) == [], "each case is valid on paper: only the host can refuse it"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def influx(spool_dir: Path | str) -> dict:
    return {"enabled": True, "url": "http://127.0.0.1:1", "bucket": "b", "spool_dir": str(spool_dir)}


def assert_refused(capsys, config: Path, field: str) -> None:
    """`run` stops with one line naming `field`; `check-config` names it too."""
    assert main(["run", "--config", str(config), "--duration", "0"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith(f"anomalyd run: error: {config}: {field}: "), stderr
    assert main(["check-config", str(config)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith(f"{config}: {field}: "), stderr


def check_config_beside_the_service(capsys, config: Path) -> tuple[int, str]:
    code = main(["check-config", "--running", str(config)])
    return code, capsys.readouterr().err


def test_a_metrics_port_in_use_stops_the_process_with_one_line_and_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = write_config(tmp_path, metrics={"port": taken.getsockname()[1]})
        run = anomalyd("run", "--config", str(config))
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1, f"one line, no traceback:\n{run.stderr}"
    assert run.stderr.startswith(f"anomalyd run: error: {config}: metrics.port: "), run.stderr


def test_a_metrics_port_in_use_is_named_and_check_config_beside_the_running_service_skips_it(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = write_config(tmp_path, metrics={"port": taken.getsockname()[1]})
        assert_refused(capsys, config, "metrics.port")
        assert check_config_beside_the_service(capsys, config) == (0, "")


@pytest.mark.parametrize("address", ["999.1.1.1", "192.0.2.1"], ids=["not-an-address", "not-this-host"])
def test_a_metrics_address_that_cannot_be_listened_on_is_named(tmp_path, capsys, address):
    config = write_config(tmp_path, metrics={"address": address, "port": free_port()})
    assert_refused(capsys, config, "metrics.address")


def test_an_unresolvable_metrics_address_fails_check_config_even_beside_a_running_service(tmp_path, capsys):
    config = write_config(tmp_path, metrics={"address": "999.1.1.1"})
    code, stderr = check_config_beside_the_service(capsys, config)
    assert code == 2 and stderr.startswith(f"{config}: metrics.address: "), stderr


def test_a_spool_dir_under_a_regular_file_is_named(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    config = write_config(tmp_path, influxdb=influx(tmp_path / "file" / "spool"))
    assert_refused(capsys, config, "influxdb.spool_dir")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_spool_dir_that_is_not_writable_is_named(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert_refused(capsys, write_config(tmp_path, influxdb=influx(locked / "spool")), "influxdb.spool_dir")


def test_a_spool_another_process_holds_is_named(tmp_path, capsys):
    spool = Spool(tmp_path / "spool", 1000)
    try:
        config = write_config(tmp_path, influxdb=influx(tmp_path / "spool"))
        assert_refused(capsys, config, "influxdb.spool_dir")
        assert check_config_beside_the_service(capsys, config) == (0, "")
    finally:
        spool.close()


def test_a_score_file_under_a_regular_file_is_named(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    config = write_config(tmp_path, local_store={"path": str(tmp_path / "file" / "scores.lp")})
    assert_refused(capsys, config, "local_store.path")


def test_a_zero_spool_size_is_refused_by_validation_not_by_the_spool(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"influxdb": {**influx(tmp_path / "spool"), "spool_max_bytes": 0}}))
    assert main(["run", "--config", str(path)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1, stderr
    assert f"{path}: influxdb.spool_max_bytes: must be an integer >= 1, got 0" in stderr


def lowest_accepted(cls: type = Config, prefix: str = "") -> dict:
    """Every numeric field of the config at the lowest value `validate` accepts."""
    section: dict = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            if (nested := lowest_accepted(hint, f"{prefix}{f.name}.")):
                section[f.name] = nested
            continue
        base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        if base not in (int, float):
            continue
        lo, above = f.metadata.get("lo"), f.metadata.get("above")
        if lo is not None:
            section[f.name] = base(lo)
        elif above is not None:
            section[f.name] = above + 1 if base is int else above + 0.001
    return section


def test_run_starts_with_every_numeric_field_at_the_lowest_value_validation_accepts(tmp_path):
    """A bound `run` enforces beyond `validate` would fail here: validation is the one gate."""
    raw = lowest_accepted()
    raw["mqtt"]["topic"] = "+/data"  # device_level 0 needs the device id in the first level
    raw["model"] = {"path": DEMO_MODEL}
    raw["influxdb"].update(influx(tmp_path / "spool"))
    assert validate(raw) == []
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    check = anomalyd("check-config", str(path))
    assert check.returncode == 0, check.stderr
    run = anomalyd("run", "--config", str(path), "--duration", "0.5")
    assert run.returncode == 0, run.stderr[-3000:]



def assert_candidate_refused(capsys, config: Path, why: str) -> None:
    """check-config names model.candidate; run stops with one line naming it too (the bundles
    load after the host checks, so its line does not start with the config file)."""
    assert main(["check-config", str(config)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith(f"{config}: model.candidate: ") and why in stderr, stderr
    assert main(["run", "--config", str(config), "--duration", "0"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "model.candidate: " in stderr and why in stderr, stderr


def test_a_candidate_bundle_that_does_not_load_is_named_by_check_config_and_run(tmp_path, capsys):
    config = write_config(tmp_path, model={"path": DEMO_MODEL, "candidate": str(tmp_path / "no-such-candidate")})
    assert_candidate_refused(capsys, config, "not found")


def test_a_candidate_that_takes_other_windows_is_named_by_check_config_and_run(tmp_path, capsys):
    candidate = tmp_path / "candidate"
    shutil.copytree(DEMO_MODEL, candidate)
    spec = json.loads((candidate / "bundle.json").read_text())
    spec["window"] *= 2
    (candidate / "bundle.json").write_text(json.dumps(spec))
    config = write_config(tmp_path, model={"path": DEMO_MODEL, "candidate": str(candidate)})
    assert_candidate_refused(capsys, config, "both must match")
