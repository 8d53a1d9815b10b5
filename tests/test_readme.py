"""The README's reference tables and layout say what the code does.

Each table is read back from README.md and compared with the module that defines the names:
a metric, a rejection reason, a line-protocol field, a config key or a module added without
its row fails here.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from daemon.cli import build_parser, main
from daemon.live.config import ENV_INFLUXDB_TOKEN, ENV_KAFKA_PASSWORD, ENV_MQTT_PASSWORD, Config, describe
from daemon.live.service import RELOADED_SECTIONS
from daemon.live.sinks.line_protocol import SCHEMA
from daemon.live.telemetry.metrics import MESSAGE_RESULTS, PREFIX, Metrics

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    """The text under a `##`/`###` heading, up to the next heading of any level."""
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ |\Z)", README, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def first_cells(text: str) -> list[str]:
    """The backquoted first cell of every table row."""
    return re.findall(r"^\| `([^`]+)` \|", text, re.M)


def test_the_metrics_table_lists_every_metric_the_service_exports():
    metrics = Metrics(CollectorRegistry())
    exported = set()
    for family in metrics.registry.collect():
        if family.name.startswith(PREFIX):
            exported.add(family.name + ("_total" if family.type == "counter" else ""))
    assert set(first_cells(section("Metrics (`/metrics`) and health (`/healthz`)"))) == exported


def test_the_input_rules_table_lists_every_message_result():
    assert set(first_cells(section("Input rules"))) == set(MESSAGE_RESULTS) - {"ok"}


def test_the_line_protocol_table_lists_every_tag_and_field():
    text = section("Line protocol written")
    rows = dict((name, kind) for kind, name in re.findall(r"^\| (tag|field) \| `([^`]+)` \|", text, re.M))
    expected = {**{tag: "tag" for tag in SCHEMA.tag_keys}, SCHEMA.reason_tag: "tag",
                SCHEMA.shadow_tag: "tag",
                **{name: "field" for name in SCHEMA.fixed_fields},
                SCHEMA.feature_field("<feature>"): "field"}
    assert rows == expected
    assert f"Measurement `{SCHEMA.measurement}`" in text


def test_the_configuration_table_names_every_key_in_its_section():
    rows = {match[0]: match[1] for match in re.findall(r"^\| `(\w+)` \| (.*) \|$", section("Configuration"), re.M)}
    for field in describe():
        top, *rest = field.path.split(".")
        assert top in rows, f"section {top} has no row"
        for part in rest:
            assert f"`{part}`" in rows[top], f"{field.path} is missing from the row of {top}"


def test_the_layout_names_every_module_and_no_module_that_is_gone():
    """commands/ is named as a folder: one module per subcommand, named after it."""
    layout = section("Layout")
    package = ROOT / "daemon"
    modules = {path.name for path in package.rglob("*.py")
               if path.name not in ("__init__.py", "__main__.py") and path.parent != package / "commands"}
    named = set(re.findall(r"\b(\w+\.py)\b", layout))
    assert modules - named == set(), "modules the layout does not name"
    assert named - modules == set(), "the layout names modules that do not exist"
    folders = {path.name for path in package.rglob("*") if path.is_dir() and path.name != "__pycache__"}
    assert all(f"{folder}/" in layout for folder in folders), "every package folder has its line"


def _help_defaults(command: str) -> dict[str, str]:
    """Each option of a command with the first word after "(default:" in its --help text."""
    parser = build_parser(command)
    sub = next(action for action in parser._actions if action.choices and command in action.choices)
    defaults = {}
    for action in sub.choices[command]._actions:
        text = " ".join((action.help or "").split()) % dict(vars(action), prog=command)
        match = re.search(r"\(default: ([^,;)]+)", text)
        for option in action.option_strings if match else ():
            defaults[option] = match.group(1)
    return defaults


def test_the_training_table_gives_the_defaults_train_help_prints():
    printed = _help_defaults("train")
    rows = re.findall(r"^\| (`--[^|]+) \| ([^|]+) \|", section("Train and evaluate a model"), re.M)
    checked = 0
    for options_cell, default_cell in rows:
        options = re.findall(r"`(--[\w-]+)", options_cell)
        if not any(option in printed for option in options):
            continue  # --param: its defaults are per architecture, listed under the options
        defaults = [value.strip().strip("`") for value in re.sub(r"\(.*?\)", "", default_cell).split(",")]
        assert len(defaults) == len(options), f"row {options_cell}: one default per option"
        for option, default in zip(options, defaults):
            assert printed[option] == default, f"README says {option} defaults to {default}, --help {printed[option]}"
            checked += 1
    assert checked >= 12


def test_the_secrets_paragraph_and_run_help_name_every_secret_variable(capsys):
    secrets = re.search(r"^\*\*Secrets\*\*(.*?)\n\n", README, re.S | re.M).group(1)
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    run_help = capsys.readouterr().out
    for variable in (ENV_MQTT_PASSWORD, ENV_KAFKA_PASSWORD, ENV_INFLUXDB_TOKEN):
        assert variable in secrets and variable in run_help, variable
    files = [field.path for field in describe() if field.path.endswith(("password_file", "token_file"))]
    assert files and all(f"`{path}`" in secrets for path in files), files


def test_the_signals_paragraph_names_what_a_reload_applies_and_what_needs_a_restart():
    sentence = re.search(r"A reload applies (.*?) sections; changes to (.*?) need a restart", README, re.S)
    applied, restart = (set(re.findall(r"`(\w+)`", part)) for part in sentence.groups())
    assert applied == set(RELOADED_SECTIONS)
    assert restart == {field.name for field in dataclasses.fields(Config)} - applied
