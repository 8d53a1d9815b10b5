"""The service configuration: YAML -> validated, frozen dataclasses.

Every field has a default, so a nearly empty file works. `validate` reports EVERY problem
with its dotted path ("batching.max_batch: must be an integer >= 1, got 0"), unknown keys
included, so `anomalyd check-config` shows a whole broken file in one run instead of one
error per restart. The field list below is the single source of truth: defaults, types,
ranges and the comments of the sample config (`example_yaml`) all come from it.

Secrets: `ANOMALYD_MQTT_PASSWORD`, `ANOMALYD_KAFKA_PASSWORD` and `ANOMALYD_INFLUXDB_TOKEN` (when set and non-empty)
override the YAML; otherwise `*_file` fields read the secret from a file (trailing newline
stripped), so secrets can come from systemd credentials or Kubernetes secrets rather than
a world-readable config. Relative paths are relative to the service's working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from daemon.core.errors import ConfigError
from daemon.live.ingest.topics import topic_problem

ENV_MQTT_PASSWORD = "ANOMALYD_MQTT_PASSWORD"
ENV_INFLUXDB_TOKEN = "ANOMALYD_INFLUXDB_TOKEN"
ENV_KAFKA_PASSWORD = "ANOMALYD_KAFKA_PASSWORD"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _opt(default: Any, doc: str, *, lo: float | None = None, hi: float | None = None, above: float | None = None,
         choices: tuple[str, ...] | None = None, readable_file: bool = False, secret: bool = False) -> Any:
    """A config field: default, the comment for the sample config, and its constraints
    (`lo`/`hi` inclusive bounds, `above` an exclusive lower bound)."""
    meta = {"doc": doc, "lo": lo, "hi": hi, "above": above, "choices": choices, "readable_file": readable_file}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


def _section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"doc": doc})


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = _opt(False, "Use TLS. Implied when any file below is set; without ca_file the "
                                "system CA store is used.")
    ca_file: str | None = _opt(None, "CA certificate(s) to verify the broker.", readable_file=True)
    cert_file: str | None = _opt(None, "Client certificate for mutual TLS (needs key_file).", readable_file=True)
    key_file: str | None = _opt(None, "Client private key for mutual TLS (needs cert_file).", readable_file=True)

    @property
    def active(self) -> bool:
        return self.enabled or any((self.ca_file, self.cert_file, self.key_file))


@dataclass(frozen=True)
class MqttConfig:
    host: str = _opt("127.0.0.1", "Broker host name or address.")
    port: int = _opt(1883, "Broker port (usually 8883 with TLS).", lo=1, hi=65535)
    topic: str = _opt("sensors/+/data", "Subscription filter; one '+' level carries the device id.")
    device_level: int = _opt(1, "Topic level (0-based) holding the device id.", lo=0)
    qos: int = _opt(1, "Subscription QoS: 0 = may lose messages, 1 = at least once.", lo=0, hi=2)
    client_id: str = _opt("anomalyd", "MQTT client id; must be unique per broker and fixed for a persistent "
                                      "session.")
    persistent_session: bool = _opt(True, "Keep the session (subscription and queued QoS>=1 messages) across "
                                          "restarts. mosquitto queues at most max_queued_messages (default 1000) "
                                          "per client: raise it on the broker.")
    keepalive: int = _opt(30, "Seconds between keepalive pings; a dead link is noticed after ~1.5x this.",
                          lo=1, hi=65535)
    username: str | None = _opt(None, "Broker user name (null = anonymous).")
    password: str | None = _opt(None, f"Broker password. Prefer password_file or ${ENV_MQTT_PASSWORD}.",
                                secret=True)
    password_file: str | None = _opt(None, "File holding the broker password.", readable_file=True)
    tls: TlsConfig = _section(TlsConfig, "TLS to the broker.")


# ---- Kafka input (source: kafka) ---------------------------------------------------------

KAFKA_SECURITY_PROTOCOLS = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = _opt("127.0.0.1:9092", "Comma-separated host:port list of brokers to start from.")
    topics: str = _opt("sensors", "Comma-separated topics. A record's key is the device id, its value the JSON "
                                  "payload the MQTT source takes.")
    group_id: str = _opt("anomalyd", "Consumer group: the instances with this id share the topics' partitions.")
    group_instance_id: str | None = _opt(None, "Static membership: an id unique and fixed per instance (e.g. the "
                                               "host name), so a restart within session_timeout_ms gets the same "
                                               "partitions back without a rebalance. null = dynamic membership.")
    client_id: str = _opt("anomalyd", "Client id in the broker's logs and quotas.")
    session_timeout_ms: int = _opt(10000, "A member silent this long leaves the group and its partitions move to "
                                          "the others.", lo=1000)
    batch_size: int = _opt(1000, "Most records taken per consume call.", lo=1)
    commit_interval_ms: int = _opt(1000, "How often the offsets of records handed to the pipeline are committed.",
                                   lo=10)
    replay_seconds: float | None = _opt(None, "How far back a newly assigned partition is read to refill its "
                                              "devices' windows (null = the longest model window x its sample "
                                              "period + replay_margin_seconds).", lo=0)
    replay_margin_seconds: float = _opt(10.0, "Added to the computed replay span for late and jittery "
                                              "readings.", lo=0)
    alert_state_topic: str | None = _opt("anomalyd-alert-state", "Compacted topic (key = device) where each change "
                                                                 "of a device's alert state is recorded, so the "
                                                                 "instance a partition moves to continues its "
                                                                 "alerts; created with the data topics' partition "
                                                                 "count when missing. Empty or null = not used.")
    device_field: str | None = _opt("device", "Payload field that, when present, must equal the record key "
                                              "(else the record counts as key_mismatch); null = not checked.")
    auto_offset_reset: str = _opt("latest", "Where a partition without a committed offset starts: latest (the "
                                            "replay span before now) or earliest (the whole retained log).",
                                  choices=("latest", "earliest"))
    security_protocol: str = _opt("plaintext", "plaintext, ssl, sasl_plaintext or sasl_ssl.",
                                  choices=KAFKA_SECURITY_PROTOCOLS)
    sasl_mechanism: str = _opt("SCRAM-SHA-512", "SASL mechanism with the sasl_* protocols.",
                               choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"))
    username: str | None = _opt(None, "SASL user name.")
    password: str | None = _opt(None, f"SASL password. Prefer password_file or ${ENV_KAFKA_PASSWORD}.", secret=True)
    password_file: str | None = _opt(None, "File holding the SASL password.", readable_file=True)
    tls: TlsConfig = _section(TlsConfig, "Certificates for the ssl and sasl_ssl protocols (enabled is implied "
                                         "by those protocols).")

    @property
    def topic_list(self) -> list[str]:
        return [t.strip() for t in self.topics.split(",") if t.strip()]


def _kafka_checks(v: dict[str, Any], problems: list[str]) -> None:
    """The Kafka section's cross-field rules (called from _cross_checks)."""
    kafka = v["kafka"]
    if kafka["topics"] is not _INVALID and not [t for t in kafka["topics"].split(",") if t.strip()]:
        problems.append("kafka.topics: names no topic")
    if kafka["bootstrap_servers"] is not _INVALID and not kafka["bootstrap_servers"].strip():
        problems.append("kafka.bootstrap_servers: names no broker")
    if kafka["password"] is not None and kafka["password_file"] is not None:
        problems.append("kafka.password_file: both password and password_file are set; keep one")
    protocol = kafka["security_protocol"]
    if protocol is _INVALID:
        return
    sasl = protocol.startswith("sasl_")
    if sasl and kafka["username"] is None:
        problems.append(f"kafka.username: required with security_protocol {protocol}")
    if not sasl and (kafka["username"] is not None or kafka["password"] is not None
                     or kafka["password_file"] is not None):
        problems.append(f"kafka.security_protocol: {protocol} sends no user name or password; use sasl_ssl "
                        "(or sasl_plaintext)")
    tls = kafka["tls"]
    if (tls["cert_file"] is None) != (tls["key_file"] is None):
        missing = "key_file" if tls["key_file"] is None else "cert_file"
        problems.append(f"kafka.tls.{missing}: cert_file and key_file go together")
    if not protocol.endswith("ssl") and any(tls[name] not in (None, False) for name in tls):
        problems.append(f"kafka.tls: set, but security_protocol {protocol} does not use TLS (use ssl or sasl_ssl)")


@dataclass(frozen=True)
class ModelConfig:
    path: str = _opt("models/demo", "Model bundle directory (holds bundle.json).")
    runtime: str = _opt("torch", "Inference runtime.", choices=("torch", "onnx"))
    devices: dict[str, str] = _opt({}, "Per-device bundles: device-id glob -> bundle directory, e.g. "
                                       "{\"compressor-*\": \"models/compressor\"}; the first matching entry "
                                       "wins, devices matching none use path.")
    candidate: str | None = _opt(None, "A candidate bundle directory scored in shadow on the windows of path's "
                                       "devices (same window and features as path): its events are written "
                                       "tagged shadow=1 and never alert (null = none).")


@dataclass(frozen=True)
class StreamConfig:
    stride: int | None = _opt(None, "Score every N new samples per device (null = the bundle's stride).", lo=1)
    sample_period_seconds: float | None = _opt(None, "Expected seconds between a device's samples (null = the "
                                                     "bundle's, learnt from its training data; no gap check "
                                                     "if the bundle has none).", above=0)
    gap_factor: float = _opt(5.0, "A gap longer than gap_factor x sample_period restarts the device's window.",
                             lo=1)
    max_future_seconds: float = _opt(300.0, "Reject readings stamped further than this ahead of this host's "
                                            "clock.", lo=0)
    clock_reset_seconds: float = _opt(300.0, "A reading stamped more than this before its device's previous one "
                                             "means the device clock was set back: its window restarts from it "
                                             "(smaller steps back are dropped as out_of_order).", above=0)


@dataclass(frozen=True)
class BatchingConfig:
    max_batch: int = _opt(64, "Most windows the worker scores together; the model takes them 64 at a time, "
                                  "past which it gets no faster.", lo=1)
    max_wait_ms: int = _opt(50, "Longest wait for a batch to fill, from its oldest window.", lo=0)
    queue_size: int = _opt(10000, "Windows waiting for the model; beyond this the oldest are dropped.", lo=1)
    torch_threads: int = _opt(1, "Threads per forward pass; 1 is the most robust under CPU contention.", lo=1)
    switch_interval_us: int = _opt(200, "Python's thread switch interval (sys.setswitchinterval). Python's own "
                                        "5000 lets a busy ingest thread hold the model up to 5 ms at each "
                                        "return from inference.", lo=1, hi=100_000)

    @property
    def switch_interval_s(self) -> float:
        """`switch_interval_us` in the seconds `sys.setswitchinterval` takes."""
        return self.switch_interval_us / 1e6


@dataclass(frozen=True)
class AlertingConfig:
    enter_after: int | None = _opt(None, "Consecutive anomalous windows before a device enters alert "
                                         "(null = the bundle's alert.enter_after).", lo=1)
    leave_after: int | None = _opt(None, "Consecutive normal windows before a device leaves alert "
                                         "(null = the bundle's alert.leave_after).", lo=1)
    threshold: float | None = _opt(None, "Score threshold (null = the bundle's calibrated threshold).", lo=0)
    false_alarms_per_day: float | None = _opt(None, "The false-alarm budget each device is watched against: alert "
                                                    "episodes per device per day (null = the bundle's, set by train "
                                                    "--false-alarms-per-day; a bundle without one is not watched).",
                                              above=0)


@dataclass(frozen=True)
class InfluxdbConfig:
    enabled: bool = _opt(False, "Write scores to InfluxDB 2.x/3.x (or anything speaking /api/v2/write).")
    url: str | None = _opt(None, "Server URL, e.g. http://127.0.0.1:8086.")
    org: str | None = _opt(None, "Organisation (InfluxDB 2.x).")
    bucket: str | None = _opt(None, "Bucket (database) to write to.")
    token: str | None = _opt(None, f"API token. Prefer token_file or ${ENV_INFLUXDB_TOKEN}.", secret=True)
    token_file: str | None = _opt(None, "File holding the API token.", readable_file=True)
    batch_size: int = _opt(500, "Points per write request.", lo=1)
    flush_interval_ms: int = _opt(1000, "Longest time a point waits before being written.", lo=1)
    spool_dir: str = _opt("/var/lib/anomalyd/spool", "Where points wait on disk while the server is down.")
    spool_max_bytes: int = _opt(100_000_000, "Spool size limit; beyond it the oldest points are dropped.", lo=1)
    timeout_ms: int = _opt(5000, "HTTP timeout of one write.", lo=1)

    @property
    def flush_interval_s(self) -> float:
        """`flush_interval_ms` in seconds, the unit of the sink's clocks."""
        return self.flush_interval_ms / 1000


@dataclass(frozen=True)
class LocalStoreConfig:
    path: str | None = _opt(None, "Local file for scores when InfluxDB is not configured (null = off).")


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = _opt(True, "Serve Prometheus /metrics and /healthz.")
    address: str = _opt("127.0.0.1", "Listen address (0.0.0.0 to expose beyond this host).")
    port: int = _opt(9108, "Listen port (0 = any free port, logged at start).", lo=0, hi=65535)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = _opt("INFO", "Log level.", choices=LOG_LEVELS)
    format: str = _opt("text", "text for humans, json for log shippers.", choices=("text", "json"))


@dataclass(frozen=True)
class LimitsConfig:
    max_devices: int = _opt(10000, "Devices with a live ring buffer; new devices beyond are rejected.", lo=1)
    idle_evict_seconds: float = _opt(3600.0, "Forget a device (buffer and alert state) after this much "
                                             "silence.", above=0)
    max_payload_bytes: int = _opt(65536, "Larger MQTT payloads are rejected before decoding.", lo=1)


@dataclass(frozen=True)
class Config:
    source: str = _opt("mqtt", "Where readings come from: mqtt (the edge default) or kafka (instances in one "
                               "consumer group share a topic keyed by device).", choices=("mqtt", "kafka"))
    mqtt: MqttConfig = _section(MqttConfig, "MQTT input.")
    kafka: KafkaConfig = _section(KafkaConfig, "Kafka input (source: kafka). Payloads follow the MQTT source's "
                                               "rules; mqtt.topic and mqtt.device_level are not used.")
    model: ModelConfig = _section(ModelConfig, "The model bundle to serve.")
    stream: StreamConfig = _section(StreamConfig, "Windowing of each device's stream.")
    batching: BatchingConfig = _section(BatchingConfig, "Batching for the model.")
    alerting: AlertingConfig = _section(AlertingConfig, "Per-device alert hysteresis.")
    influxdb: InfluxdbConfig = _section(InfluxdbConfig, "InfluxDB output.")
    local_store: LocalStoreConfig = _section(LocalStoreConfig, "Local score file (demo without InfluxDB).")
    metrics: MetricsConfig = _section(MetricsConfig, "Prometheus endpoint.")
    logging: LoggingConfig = _section(LoggingConfig, "Logging.")
    limits: LimitsConfig = _section(LimitsConfig, "Protection against misbehaving devices.")


@dataclass(frozen=True)
class FieldDoc:
    path: str  # dotted, e.g. "batching.max_batch"
    default: Any
    doc: str


_INVALID = object()  # a field value that failed validation, so cross-field checks skip it


# ---- schema walking -------------------------------------------------------------------------

def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _is_section(hint: Any) -> bool:
    return dataclasses.is_dataclass(hint)


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(type without None, whether None is allowed)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def _expectation(base: Any, meta: Mapping[str, Any], optional: bool) -> str:
    if meta.get("choices"):
        text = "must be one of " + ", ".join(meta["choices"])
    elif base is dict or typing.get_origin(base) is dict:
        text = "must be a mapping of strings to strings"
    else:
        text = "must be " + {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[base]
        lo, hi, above = meta.get("lo"), meta.get("hi"), meta.get("above")
        if lo is not None and hi is not None:
            text += f" between {lo:g} and {hi:g}"
        elif lo is not None:
            text += f" >= {lo:g}"
        elif above is not None:
            text += f" > {above:g}"
    return text + (" or null" if optional else "")


def _coerce(value: Any, base: Any, meta: Mapping[str, Any]) -> Any:
    """The typed value, or _INVALID if it has the wrong type or is out of range."""
    if base is bool:
        return value if type(value) is bool else _INVALID
    if base is str:
        if type(value) is not str:
            return _INVALID
        if meta.get("choices"):  # matched case-insensitively, stored as spelled in `choices`
            return next((c for c in meta["choices"] if c.lower() == value.lower()), _INVALID)
        return value
    if typing.get_origin(base) is dict:
        if not isinstance(value, dict) or not all(type(k) is str and type(v) is str for k, v in value.items()):
            return _INVALID
        return dict(value)
    if type(value) is int or (base is float and type(value) is float):
        number = base(value)
    else:
        return _INVALID
    if base is float and not math.isfinite(number):
        return _INVALID
    lo, hi, above = meta.get("lo"), meta.get("hi"), meta.get("above")
    if (lo is not None and number < lo) or (hi is not None and number > hi) or (above is not None and number <= above):
        return _INVALID
    return number


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_secret_file(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").rstrip("\r\n")


def _file_problem(path: str) -> str | None:
    try:
        content = _read_secret_file(path)
    except FileNotFoundError:
        return f"no such file: {path}"
    except IsADirectoryError:
        return f"is a directory, not a file: {path}"
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}"
    return None if content else f"file is empty: {path}"


def _walk(cls: type, raw: Any, path: str, problems: list[str]) -> dict[str, Any]:
    """Check one section; return its field values (invalid ones as _INVALID, nested sections
    as dicts) and append problems."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{path or 'config'}: must be a mapping, got {_show(raw)}")
        raw = {}
    known = {f.name: (f, hint) for f, hint in _fields(cls)}
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            problems.append(f"{path + '.' if path else ''}{key}: unknown key{hint}")
    values: dict[str, Any] = {}
    for name, (f, hint) in known.items():
        where = f"{path}.{name}" if path else name
        if _is_section(hint):
            values[name] = _walk(hint, raw.get(name), where, problems)
            continue
        if name not in raw:
            values[name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            continue
        value = raw[name]
        base, optional = _base_type(hint)
        if value is None and optional:
            values[name] = None
            continue
        coerced = _INVALID if value is None else _coerce(value, base, f.metadata)
        if coerced is _INVALID:
            problems.append(f"{where}: {_expectation(base, f.metadata, optional)}, got {_show(value)}")
        elif f.metadata.get("readable_file"):
            problem = _file_problem(coerced)
            if problem is not None:
                problems.append(f"{where}: {problem}")
        values[name] = coerced
    return values


def _cross_checks(v: dict[str, Any], problems: list[str]) -> None:
    """Rules that involve more than one field; fields already reported invalid are skipped."""
    mqtt, influx = v["mqtt"], v["influxdb"]

    def ok(*values: Any) -> bool:
        return all(x is not _INVALID for x in values)

    if ok(mqtt["topic"], mqtt["device_level"]):
        problem = topic_problem(mqtt["topic"], mqtt["device_level"])
        if problem is not None:
            problems.append(f"mqtt.topic: {problem} (see mqtt.device_level)")
    if ok(mqtt["persistent_session"], mqtt["client_id"]) and mqtt["persistent_session"] and not mqtt["client_id"]:
        problems.append("mqtt.client_id: must be set when mqtt.persistent_session is true")
    if mqtt["password"] is not None and mqtt["password_file"] is not None:
        problems.append("mqtt.password_file: both password and password_file are set; keep one")
    if (mqtt["password"] is not None or mqtt["password_file"] is not None) and mqtt["username"] is None:
        problems.append("mqtt.username: must be set when a password is configured")
    tls = mqtt["tls"]
    if (tls["cert_file"] is None) != (tls["key_file"] is None):
        missing = "key_file" if tls["key_file"] is None else "cert_file"
        problems.append(f"mqtt.tls.{missing}: cert_file and key_file go together")

    devices = v["model"]["devices"]
    if devices is not _INVALID and "" in devices:
        problems.append("model.devices: a device glob must not be empty")

    if influx["token"] is not None and influx["token_file"] is not None:
        problems.append("influxdb.token_file: both token and token_file are set; keep one")
    if influx["enabled"] is True:
        for name in ("url", "bucket"):
            if influx[name] is None:
                problems.append(f"influxdb.{name}: required when influxdb.enabled is true")
    url = influx["url"]
    if url not in (None, _INVALID) and not url.startswith(("http://", "https://")):
        problems.append(f"influxdb.url: must start with http:// or https://, got {_show(url)}")
    _kafka_checks(v, problems)


def validate(raw: Any) -> list[str]:
    """Every problem of a parsed YAML document, as "field.path: message"."""
    problems: list[str] = []
    values = _walk(Config, raw, "", problems)
    _cross_checks(values, problems)
    return problems


# ---- building -----------------------------------------------------------------------------

def _build(cls: type, values: dict[str, Any]) -> Any:
    kwargs = {f.name: _build(hint, values[f.name]) if _is_section(hint) else values[f.name]
              for f, hint in _fields(cls)}
    return cls(**kwargs)


def _secret(env: Mapping[str, str], var: str, file: str | None, inline: str | None) -> str | None:
    if env.get(var):
        return env[var]
    if file is not None:
        return _read_secret_file(file)
    return inline


def first_problem(problems: list[str]) -> str:
    """One line for a command that stops at the first problem: it, and how many more there are
    (`check-config` lists them all)."""
    more = len(problems) - 1
    if not more:
        return problems[0]
    return f"{problems[0]} (and {more} more problem{'s' if more > 1 else ''}; run anomalyd check-config)"


def build(raw: Any, environ: Mapping[str, str] = os.environ) -> Config:
    """A Config from a parsed YAML document, secrets resolved. Raises ConfigError listing the
    first problem and how many more there are."""
    problems = validate(raw)
    if problems:
        raise ConfigError(first_problem(problems))
    config = _build(Config, _walk(Config, raw, "", []))
    mqtt = dataclasses.replace(config.mqtt, password=_secret(environ, ENV_MQTT_PASSWORD, config.mqtt.password_file,
                                                             config.mqtt.password))
    influx = dataclasses.replace(config.influxdb, token=_secret(environ, ENV_INFLUXDB_TOKEN,
                                                                config.influxdb.token_file, config.influxdb.token))
    kafka = dataclasses.replace(config.kafka, password=_secret(environ, ENV_KAFKA_PASSWORD, config.kafka.password_file,
                                                               config.kafka.password))
    return dataclasses.replace(config, mqtt=mqtt, influxdb=influx, kafka=kafka)


def read_yaml(path: str | Path) -> Any:
    """The parsed document; ConfigError naming the file for unreadable files and YAML syntax."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None


def load_config(path: str | Path, environ: Mapping[str, str] = os.environ) -> Config:
    """Read, validate and build the config; every ConfigError message starts with `path`."""
    raw = read_yaml(path)
    try:
        return build(raw, environ)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# ---- documentation ------------------------------------------------------------------------

def describe(cls: type = Config, prefix: str = "") -> list[FieldDoc]:
    """Every leaf field with its default and comment, in file order."""
    docs: list[FieldDoc] = []
    for f, hint in _fields(cls):
        path = f"{prefix}{f.name}"
        if _is_section(hint):
            docs.extend(describe(hint, path + "."))
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            docs.append(FieldDoc(path, default, f.metadata["doc"]))
    return docs


def example_yaml() -> str:
    """A complete, commented config with every default, valid as it stands."""
    lines = ["# anomalyd configuration. Every key is optional; shown values are the defaults.",
             f"# Secrets: ${ENV_MQTT_PASSWORD}, ${ENV_KAFKA_PASSWORD} and ${ENV_INFLUXDB_TOKEN} override the values "
             "below."]

    def emit(cls: type, indent: str) -> None:
        for f, hint in _fields(cls):
            doc = f.metadata["doc"]
            if _is_section(hint):
                if not indent:
                    lines.append("")
                lines.extend([f"{indent}# {doc}", f"{indent}{f.name}:"])
                emit(hint, indent + "  ")
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            lines.append(f"{indent}# {doc}")
            lines.append(f"{indent}{f.name}: {json.dumps(default)}")

    emit(Config, "")
    return "\n".join(lines) + "\n"

