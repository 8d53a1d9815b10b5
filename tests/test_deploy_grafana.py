"""Grafana provisioning in deploy/grafana: every file parses, the dashboard has the schema basics
Grafana needs to import it (uid, title, unique panel ids, a sane grid), every datasource it uses
is one the provisioning file creates, every variable it uses is defined, and the alert rule is
wired correctly (its condition, its datasource, the panel it links to). Grafana itself is not
installable here; what each query reads is checked in test_deploy_queries.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from daemon.core.sensor_health import CHECKS

GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana"
PROVISIONING = GRAFANA / "provisioning"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
YAML_FILES = sorted(PROVISIONING.rglob("*.yaml")) + sorted(PROVISIONING.rglob("*.yml"))
BUILTIN_DATASOURCES = {"-- Grafana --", "grafana", "__expr__"}
GRID_WIDTH = 24


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def datasources() -> list[dict]:
    return load_yaml(PROVISIONING / "datasources" / "anomalyd.yaml")["datasources"]


def panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return out


@pytest.fixture(params=DASHBOARD_FILES, ids=lambda p: p.name)
def dashboard(request) -> dict:
    return json.loads(request.param.read_text())


def test_there_is_a_dashboard_and_provisioning_for_datasources_dashboards_and_alerts():
    assert DASHBOARD_FILES
    for kind in ("datasources", "dashboards", "alerting"):
        assert list((PROVISIONING / kind).glob("*.y*ml")), f"no provisioning file in {kind}/"


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(GRAFANA)))
def test_every_provisioning_file_parses_and_declares_api_version_1(path):
    document = load_yaml(path)
    assert isinstance(document, dict) and document.get("apiVersion") == 1


def test_datasources_are_an_influxdb_flux_and_a_prometheus_with_fixed_uids():
    by_type = {ds["type"]: ds for ds in datasources()}
    assert set(by_type) == {"influxdb", "prometheus"}
    uids = [ds["uid"] for ds in datasources()]
    assert len(set(uids)) == len(uids) and all(re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", uid) for uid in uids)
    influx = by_type["influxdb"]
    assert influx["jsonData"]["version"] == "Flux"
    assert {"organization", "defaultBucket"} <= set(influx["jsonData"])
    assert "token" in influx["secureJsonData"], "the token belongs in secureJsonData (encrypted), not jsonData"
    for ds in datasources():
        assert ds["access"] == "proxy" and ds["url"]


def test_datasource_secrets_come_from_the_environment_not_the_file():
    for ds in datasources():
        for key, value in ds.get("secureJsonData", {}).items():
            assert re.fullmatch(r"\$\{?[A-Z0-9_]+\}?", str(value)), f"{ds['name']}: {key} is a literal secret"


def test_the_dashboard_provider_loads_files_into_a_folder():
    providers = load_yaml(PROVISIONING / "dashboards" / "anomalyd.yaml")["providers"]
    assert [p["type"] for p in providers] == ["file"]
    assert providers[0]["options"]["path"].startswith("/")


def test_dashboard_has_uid_title_schema_version_and_time(dashboard):
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None, "a provisioned dashboard must not carry a database id"
    assert {"from", "to"} <= set(dashboard["time"])


def test_panel_ids_are_unique_and_every_panel_has_a_type_title_and_grid_position(dashboard):
    ids = [p["id"] for p in panels(dashboard)]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    for panel in panels(dashboard):
        assert panel["type"] and panel["title"], panel["id"]
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid), panel["id"]
        assert grid["w"] > 0 and grid["h"] > 0 and 0 <= grid["x"] and grid["x"] + grid["w"] <= GRID_WIDTH, panel["id"]


def test_panels_do_not_overlap(dashboard):
    cells: dict[tuple[int, int], int] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        for y in range(g["y"], g["y"] + g["h"]):
            for x in range(g["x"], g["x"] + g["w"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]} and {panel['id']} overlap at x={x} y={y}"
                cells[(x, y)] = panel["id"]


def _datasource_refs(dashboard: dict):
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        yield f"panel {panel['id']}", panel.get("datasource")
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} target {target['refId']}", target.get("datasource", panel.get("datasource"))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable.get("datasource")
    for annotation in dashboard["annotations"]["list"]:
        yield f"annotation {annotation['name']}", annotation.get("datasource")


def test_every_datasource_reference_resolves_to_a_provisioned_uid_of_the_right_type(dashboard):
    provisioned = {ds["uid"]: ds["type"] for ds in datasources()}
    for where, ref in _datasource_refs(dashboard):
        assert isinstance(ref, dict), f"{where}: datasource must be a {{type, uid}} reference, got {ref!r}"
        if ref["uid"] in BUILTIN_DATASOURCES:
            continue
        assert ref["uid"] in provisioned, f"{where}: datasource uid {ref['uid']!r} is not provisioned"
        assert ref.get("type") == provisioned[ref["uid"]], f"{where}: type {ref.get('type')!r} vs provisioned"


def test_every_template_variable_used_is_defined(dashboard):
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    text = json.dumps(dashboard["panels"]) + json.dumps(dashboard["annotations"]) + json.dumps(
        [v.get("query") for v in dashboard["templating"]["list"]])
    used = set(re.findall(r"\$\{(\w+)(?::\w+)?\}", text)) | set(re.findall(r"\$([A-Za-z_]\w*)", text))
    builtin = {"__rate_interval", "__interval", "__range", "__url_time_range", "__value", "__field", "__from", "__to"}
    missing = {name for name in used if name not in defined and name not in builtin and not name.startswith("__")}
    assert not missing, f"variables used but not defined: {sorted(missing)}"


def test_repeated_panels_repeat_over_a_multi_value_variable(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    repeated = [p for p in panels(dashboard) if p.get("repeat")]
    assert repeated, "the per-device panels should repeat per selected device"
    for panel in repeated:
        variable = variables[panel["repeat"]]
        assert variable.get("multi") or variable.get("includeAll"), panel["id"]


def test_the_dashboard_has_the_panels_operators_need(dashboard):
    titles = " | ".join(p["title"].lower() for p in panels(dashboard))
    for words in ("score vs threshold", "which sensor", "devices in alert", "messages per second",
                  "rejected", "latency", "queue", "spool", "model"):
        assert words in titles, f"no panel about {words!r}: {titles}"
    score = next(p for p in panels(dashboard) if p["type"] == "timeseries" and "score vs threshold" in p["title"].lower())
    shading = [o for o in score["fieldConfig"]["overrides"] if o["matcher"]["options"] == "alert"]
    assert shading, "alert periods are shaded by an override on the alert field"
    props = {p["id"]: p["value"] for p in shading[0]["properties"]}
    assert props["custom.fillOpacity"] > 0 and props["custom.lineInterpolation"] == "stepAfter"


def test_grafana_alert_rule_is_wired_to_its_query_datasource_and_panel():
    document = load_yaml(PROVISIONING / "alerting" / "anomalyd.yaml")
    provisioned = {ds["uid"] for ds in datasources()}
    dashboards = {d["uid"]: d for d in (json.loads(p.read_text()) for p in DASHBOARD_FILES)}
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert rules and len({r["uid"] for r in rules}) == len(rules)
    for group in document["groups"]:
        assert re.fullmatch(r"\d+[smh]", group["interval"]) and group["folder"]
    for rule in rules:
        ref_ids = [step["refId"] for step in rule["data"]]
        assert len(set(ref_ids)) == len(ref_ids) and rule["condition"] in ref_ids
        for step in rule["data"]:
            assert step["datasourceUid"] in provisioned | {"__expr__"}, step["datasourceUid"]
            assert step["model"]["refId"] == step["refId"]
            if step["datasourceUid"] == "__expr__":
                assert step["model"]["expression"] in ref_ids, f"{rule['uid']}: expression of {step['refId']}"
            else:
                assert step["relativeTimeRange"]["from"] > step["relativeTimeRange"]["to"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["noDataState"] in ("OK", "NoData", "Alerting") and rule["execErrState"] in ("Error", "Alerting", "OK")
        assert rule["labels"]["severity"]
        annotations = rule["annotations"]
        dashboard = dashboards[annotations["__dashboardUid__"]]
        assert int(annotations["__panelId__"]) in {p["id"] for p in panels(dashboard)}
        # one alert instance per device: the query groups by the device tag the summary names
        query = next(s["model"]["query"] for s in rule["data"] if s["datasourceUid"] != "__expr__")
        for label in re.findall(r"\$labels\.(\w+)", annotations["summary"] + annotations.get("description", "")):
            assert re.search(rf'group\(columns: \[[^\]]*"{label}"', query), f"the query does not keep label {label}"


def test_the_sensor_health_table_selects_the_reason_of_every_check(dashboard):
    selections = [re.search(r"r\.reason =~ /\^\(([^)]*)\):/", target.get("query", ""))
                  for panel in panels(dashboard) for target in panel.get("targets", [])]
    checks = [set(found.group(1).split("|")) for found in selections if found]
    assert checks == [set(CHECKS)]
