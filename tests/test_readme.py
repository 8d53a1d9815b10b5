"""The README's reference tables and layout say what the code does.

Each table is read back from README.md and compared with the module that defines the names:
a metric, a rejection reason, a line-protocol field, a config key or a module added without
its row fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from daemon.live.config import describe
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
