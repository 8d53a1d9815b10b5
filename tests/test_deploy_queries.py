"""Every query in deploy/ names only what the daemon really writes.

The names come from the code, not from a copied list: Prometheus metric names, their label
names and the bounded label values from a fresh `daemon.live.telemetry.metrics.Metrics` registry, and the
InfluxDB measurement, tags and fields from `daemon.live.sinks.line_protocol.SCHEMA`. Checked: the
Grafana dashboard (Flux and PromQL targets, template variables, annotations, legends,
overrides, transformations), the Grafana alert rule and the Prometheus alert rules. The
checkers are themselves tested on broken queries, so a check that silently matches nothing
cannot pass.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
import yaml
from prometheus_client import CollectorRegistry

from daemon.live.budget_watch import BudgetWatch
from daemon.live.sinks.line_protocol import SCHEMA
from daemon.live.staleness import ModelStaleness, StalenessTracker
from daemon.live.telemetry.metrics import Metrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
GRAFANA_ALERTS = DEPLOY / "grafana" / "provisioning" / "alerting" / "anomalyd.yaml"
GRAFANA_DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "anomalyd.yaml"
PROMETHEUS_RULES = DEPLOY / "prometheus" / "anomalyd.rules.yml"

# Labels Prometheus itself attaches to every scraped series, and the series it synthesises.
TARGET_LABELS = {"job", "instance"}
SYNTHETIC_SERIES = {"up": TARGET_LABELS}


# ---- what the daemon writes ---------------------------------------------------------------

@dataclass
class Exposition:
    """Sample names of a fresh registry -> label name -> the label values seen."""

    series: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def labels(self, name: str) -> set[str]:
        if name in SYNTHETIC_SERIES:
            return set(SYNTHETIC_SERIES[name])
        return set(self.series[name]) | TARGET_LABELS

    def known(self, name: str) -> bool:
        return name in self.series or name in SYNTHETIC_SERIES


class OneModelScored(StalenessTracker):
    """The staleness gauges have a series per model only once its windows are scored."""

    def snapshot(self) -> list[ModelStaleness]:
        return [ModelStaleness("m", 0.01, 0.01, 100, 0)]


@dataclass
class OneWatchedRoute:
    """The budget gauges have a series per route only while a service with a budget runs."""

    key: str = ""
    buffers: tuple = ()
    alerts: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(active_count=lambda: 0,
                                                                            standing_count=lambda: 0))
    pipeline: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(last_ok=None))
    budget: BudgetWatch = field(default_factory=lambda: BudgetWatch(1.0))


@pytest.fixture(scope="module")
def exposition() -> Exposition:
    metrics = Metrics(CollectorRegistry(), staleness=OneModelScored())
    metrics.live_state.read_from(SimpleNamespace(routes=[OneWatchedRoute()], queue=(),
                                                 sink=SimpleNamespace(status=lambda: {})))
    metrics.set_models([("m", "1", "mlp", "torch")])  # the info gauge has no sample until a model is set
    metrics.kafka_consumer_lag.labels(topic="t", partition="0")  # no sample until a partition is consumed
    found = Exposition()
    for family in metrics.registry.collect():
        for sample in family.samples:
            labels = found.series.setdefault(sample.name, {})
            for key, value in sample.labels.items():
                labels.setdefault(key, set()).add(value)
    assert "anomalyd_messages_total" in found.series, "the registry walk found no daemon metric"
    return found


# Label values that are free text (model name...) rather than a bounded set worth checking.
FREE_LABELS = {"name", "version", "architecture", "runtime", "le", "quantile", "route"} | TARGET_LABELS


# ---- PromQL --------------------------------------------------------------------------------

PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "count_over_time", "day_of_month", "day_of_week", "delta", "deriv", "exp", "floor", "histogram_quantile",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln",
    "log10", "log2", "max_over_time", "min_over_time", "minute", "month", "predict_linear", "present_over_time",
    "quantile_over_time", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt",
    "stddev_over_time", "sum_over_time", "time", "timestamp", "vector", "year",
    # aggregation operators
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset", "inf", "nan"}
_IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SELECTOR = re.compile(rf"({_IDENT})?\s*\{{([^}}]*)\}}")
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def promql_problems(expr: str, names: Exposition, legend: str = "") -> list[str]:
    """Why `expr` (with Grafana variables allowed) queries something the daemon does not expose."""
    problems: list[str] = []
    # Labels any metric of the query carries: what `by (...)` and legends may name.
    metric_labels: set[str] = set(TARGET_LABELS)
    for name in re.findall(_IDENT, re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)):
        if names.known(name):
            metric_labels |= names.labels(name)
    for match in _SELECTOR.finditer(expr):
        metric, matchers = match.group(1), match.group(2)
        if metric in PROMQL_FUNCTIONS | PROMQL_KEYWORDS:
            metric = None
        if metric is None:
            problems.append(f"selector without a metric name: {match.group(0)!r}")
            continue
        if not names.known(metric):
            continue  # reported below with the other unknown names
        allowed = names.labels(metric)
        rest = matchers
        for m in _MATCHER.finditer(matchers):
            rest = rest.replace(m.group(0), "", 1)
            label, op, value = m.groups()
            if label not in allowed:
                problems.append(f"{metric} has no label {label!r} (labels: {sorted(allowed)})")
                continue
            if label in FREE_LABELS or "$" in value:
                continue
            values = names.series.get(metric, {}).get(label, set())
            wanted = value.split("|") if op in ("=~", "!~") else [value]
            if op in ("=~", "!~") and not all(re.fullmatch(r"[a-z_]+", w) for w in wanted):
                continue  # a real regex: not a plain list of values
            for w in wanted:
                if w not in values:
                    problems.append(f"{metric}{{{label}{op}{value!r}}}: {w!r} is not a value anomalyd writes "
                                    f"({sorted(values)})")
        if rest.strip():
            problems.append(f"cannot parse matchers {rest.strip()!r} of {metric}")

    stripped = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", expr)
    for keyword, label_list in _GROUPING.findall(stripped):
        for label in filter(None, (x.strip() for x in label_list.split(","))):
            if label not in metric_labels and not label.startswith("$"):
                problems.append(f"{keyword} ({label}): no metric in the query has label {label!r}")
    stripped = _GROUPING.sub(" ", stripped)
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', " ", stripped)  # strings
    stripped = re.sub(r"\[[^\]]*\]", " ", stripped)  # range and subquery durations
    stripped = re.sub(r"\$\{[^}]*\}|\$\w+", " ", stripped)  # Grafana variables
    stripped = re.sub(r"(?<![\w.])\d+(\.\d+)?([eE][-+]?\d+)?[smhdwy]?\b", " ", stripped)  # numbers, durations
    for match in re.finditer(rf"({_IDENT})(\s*\()?", stripped):
        name, call = match.group(1), match.group(2)
        if call:
            if name not in PROMQL_FUNCTIONS:
                problems.append(f"unknown PromQL function {name}()")
        elif name in PROMQL_KEYWORDS:
            continue
        elif not names.known(name):
            problems.append(f"metric {name!r} is not exposed by anomalyd (nor synthesised by Prometheus)")
    for label in re.findall(r"\{\{\s*\.?(\w+)\s*\}\}", legend):
        if label not in metric_labels:
            problems.append(f"legend {{{{{label}}}}}: no metric in the query has label {label!r}")
    return problems


# ---- Flux ----------------------------------------------------------------------------------

FLUX_COLUMNS = {"_time", "_value", "_field", "_measurement", "_start", "_stop"}


def flux_problems(query: str) -> list[str]:
    """Why a Flux query reads a measurement, field, tag or column anomalyd does not write."""
    problems: list[str] = []
    tags, fields = set(SCHEMA.tag_keys) | {SCHEMA.reason_tag}, set(SCHEMA.fixed_fields)
    columns = FLUX_COLUMNS | tags | fields

    measurements = re.findall(r'r\._measurement\s*==\s*"([^"]*)"', query)
    measurements += re.findall(r'\bmeasurement:\s*"([^"]*)"', query)
    if not measurements:
        problems.append("the query does not select a measurement")
    problems += [f"measurement {m!r} is not {SCHEMA.measurement!r}" for m in measurements if m != SCHEMA.measurement]
    if re.search(r"r\._measurement\s*(!=|=~|!~)", query):
        problems.append("select the measurement with == only")

    for name in re.findall(r'r\._field\s*(?:==|!=)\s*"([^"]*)"', query):
        if name not in fields and not name.startswith(SCHEMA.feature_prefix):
            problems.append(f"field {name!r} is not written (fields: {sorted(fields)}, {SCHEMA.feature_prefix}<feature>)")
    for pattern in re.findall(r"r\._field\s*(?:=~|!~)\s*/([^/]*)/", query):
        if pattern != "^" + re.escape(SCHEMA.feature_prefix):
            problems.append(f"field regex /{pattern}/ is not the per-feature prefix /^{SCHEMA.feature_prefix}/")
    for name in re.findall(r"\br\.(\w+)", query):
        if name not in columns:
            problems.append(f"r.{name}: no such tag, field or column")
    for key in ("columns", "rowKey", "columnKey"):
        for listed in re.findall(rf"\b{key}:\s*\[([^\]]*)\]", query):
            for name in re.findall(r'"([^"]*)"', listed):
                if name not in columns:
                    problems.append(f"{key}: {name!r} is no tag, field or column")
    for name in re.findall(r'\b(?:tag|valueColumn):\s*"([^"]*)"', query):
        if name not in columns:
            problems.append(f"{name!r} is no tag or column")
    return problems


# ---- walking the files ---------------------------------------------------------------------

@dataclass
class Query:
    where: str
    language: str  # "flux" or "promql"
    text: str
    legend: str = ""


def datasource_types() -> dict[str, str]:
    provisioned = yaml.safe_load(GRAFANA_DATASOURCES.read_text())["datasources"]
    return {ds["uid"]: ds["type"] for ds in provisioned}


def _language(datasource: object, types: dict[str, str]) -> str:
    uid = datasource.get("uid") if isinstance(datasource, dict) else None
    kind = types.get(uid) if uid else None
    return {"influxdb": "flux", "prometheus": "promql"}.get(kind, f"unknown datasource {datasource!r}")


def _panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_queries(path: Path) -> Iterator[Query]:
    types = datasource_types()
    dashboard = json.loads(path.read_text())
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            where = f"{path.name} panel {panel['id']} {panel.get('title')!r} target {target.get('refId')}"
            language = _language(target.get("datasource", panel.get("datasource")), types)
            text = target.get("query") if language == "flux" else target.get("expr")
            yield Query(where, language, text or "", target.get("legendFormat", ""))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        language = _language(variable.get("datasource"), types)
        query = variable["query"]
        text = query.get("query", "") if isinstance(query, dict) else query
        if language == "promql":
            match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", text)
            assert match, f"variable {variable['name']}: only label_values(selector, label) is checked, got {text!r}"
            text = match.group(1)
            yield Query(f"{path.name} variable {variable['name']}", language, text, "{{%s}}" % match.group(2))
        else:
            yield Query(f"{path.name} variable {variable['name']}", language, text)
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("builtIn"):
            continue
        language = _language(annotation.get("datasource"), types)
        text = annotation.get("expr") if language == "promql" else annotation.get("query")
        yield Query(f"{path.name} annotation {annotation['name']}", language, text or "",
                    annotation.get("titleFormat", ""))


def grafana_alert_queries() -> Iterator[Query]:
    types = datasource_types()
    for group in yaml.safe_load(GRAFANA_ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            for step in rule["data"]:
                if step["datasourceUid"] == "__expr__":
                    continue
                language = _language({"uid": step["datasourceUid"]}, types)
                model = step["model"]
                yield Query(f"grafana rule {rule['uid']} {step['refId']}", language,
                            model.get("query") if language == "flux" else model.get("expr", ""))


def prometheus_rule_queries() -> Iterator[Query]:
    for group in yaml.safe_load(PROMETHEUS_RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield Query(f"prometheus rule {rule.get('alert') or rule.get('record')}", "promql", rule["expr"])


ALL_QUERIES = [*(q for path in DASHBOARDS for q in dashboard_queries(path)), *grafana_alert_queries(),
               *prometheus_rule_queries()]


# ---- the tests -----------------------------------------------------------------------------

def test_there_are_queries_of_both_languages_to_check():
    assert DASHBOARDS, "no dashboard JSON under deploy/grafana/dashboards"
    languages = {q.language for q in ALL_QUERIES}
    assert languages == {"flux", "promql"}, f"every query must target a provisioned datasource: {languages}"


@pytest.mark.parametrize("query", ALL_QUERIES, ids=lambda q: q.where)
def test_query_names_only_what_anomalyd_writes(query: Query, exposition: Exposition):
    assert query.text.strip(), f"{query.where}: empty query"
    if query.language == "flux":
        problems = flux_problems(query.text)
    else:
        problems = promql_problems(query.text, exposition, query.legend)
    assert not problems, f"{query.where}:\n  " + "\n  ".join(problems) + f"\nquery:\n{query.text}"


def test_dashboard_overrides_and_transformations_name_written_columns():
    written = set(SCHEMA.tag_keys) | set(SCHEMA.fixed_fields)
    for path in DASHBOARDS:
        for panel in _panels(json.loads(path.read_text())["panels"]):
            for override in panel.get("fieldConfig", {}).get("overrides", []):
                matcher = override["matcher"]
                if matcher["id"] == "byName":
                    assert matcher["options"] in written, f"panel {panel['id']}: override for {matcher['options']!r}"
            for transformation in panel.get("transformations", []):
                if transformation["id"] == "renameByRegex":
                    regex = transformation["options"]["regex"]
                    assert regex.startswith("^" + re.escape(SCHEMA.feature_prefix)), (panel["id"], regex)


def test_the_device_panels_show_score_threshold_alert_and_every_feature_error():
    """The dashboard must cover the whole line-protocol schema, not just avoid wrong names."""
    text = "\n".join(q.text for q in ALL_QUERIES if q.language == "flux")
    for name in SCHEMA.fixed_fields:
        assert f'r._field == "{name}"' in text, f"no panel or rule reads field {name!r}"
    assert f"r._field =~ /^{SCHEMA.feature_prefix}/" in text, "no panel shows the per-feature errors"
    for tag in SCHEMA.tag_keys:
        assert re.search(rf'\b{tag}\b', text), f"tag {tag!r} is never used"


def test_the_health_panels_cover_the_operational_metrics(exposition: Exposition):
    text = "\n".join(q.text for q in ALL_QUERIES if q.language == "promql")
    for name in ("anomalyd_messages_total", "anomalyd_inference_seconds_bucket", "anomalyd_queue_windows",
                 "anomalyd_sink_spool_bytes", "anomalyd_sink_points_total", "anomalyd_windows_dropped_total",
                 "anomalyd_mqtt_connected", "anomalyd_alerts_active", "anomalyd_model_info",
                 "anomalyd_false_alarm_budget_per_day", "anomalyd_devices_over_budget"):
        assert exposition.known(name)
        assert name in text, f"{name} is on no panel and in no rule"


# ---- the checkers catch mistakes -----------------------------------------------------------

@pytest.mark.parametrize("expr, expected", [
    ("rate(anomalyd_message_total[5m])", "anomalyd_message_total"),
    ('anomalyd_messages_total{result="invalid"}', "'invalid' is not a value"),
    ('anomalyd_messages_total{reason="queue_full"}', "no label 'reason'"),
    ('sum by (reason) (rate(anomalyd_messages_total[5m]))', "by (reason)"),
    ("rates(anomalyd_messages_total[5m])", "unknown PromQL function rates()"),
    ('anomalyd_windows_dropped_total{reason=~"queue_full|full"}', "'full' is not a value"),
    ('{__name__="anomalyd_devices"}', "selector without a metric name"),
    ("anomalyd_sink_spool_bytes > 0", None),
    ('histogram_quantile(0.99, sum by (instance, le) (rate(anomalyd_inference_seconds_bucket{instance=~"$instance"}'
     '[$__rate_interval])))', None),
])
def test_the_promql_checker_reports_names_the_daemon_does_not_write(expr, expected, exposition):
    problems = promql_problems(expr, exposition)
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


def test_the_promql_checker_checks_legend_labels(exposition):
    assert promql_problems("anomalyd_queue_windows", exposition, "{{instance}}") == []
    assert "no metric in the query has label 'reason'" in promql_problems(
        "anomalyd_queue_windows", exposition, "{{reason}}")[0]


@pytest.mark.parametrize("query, expected", [
    ('from(bucket: "b") |> filter(fn: (r) => r._measurement == "anomalies")', "measurement 'anomalies'"),
    ('from(bucket: "b") |> filter(fn: (r) => r._measurement == "anomaly" and r._field == "scores")', "'scores'"),
    ('from(bucket: "b") |> filter(fn: (r) => r._measurement == "anomaly" and r.host == "x")', "r.host"),
    ('from(bucket: "b") |> filter(fn: (r) => r._measurement == "anomaly" and r._field =~ /^error_/)', "/^error_/"),
    ('from(bucket: "b") |> filter(fn: (r) => r._measurement == "anomaly") |> group(columns: ["site"])', "'site'"),
    ('from(bucket: "b") |> filter(fn: (r) => r._field == "score")', "does not select a measurement"),
    ('from(bucket: "b") |> filter(fn: (r) => r._measurement == "anomaly" and r._field == "err_pressure")', None),
])
def test_the_flux_checker_reports_names_the_daemon_does_not_write(query, expected):
    problems = flux_problems(query)
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems
