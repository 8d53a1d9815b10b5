"""Score events as InfluxDB line protocol, and back.

One line per `ScoreEvent`:

    anomaly,device=<id>,model=<name>[,reason=<why>][,shadow=1] score=<f>,threshold=<f>,anomaly=<0|1>i,alert=<0|1>i,err_<feature>=<f>... <ms>

The `reason` tag is written only for a window flagged whatever its score, so a dashboard can
tell a broken sensor from a process anomaly: `out_of_range` or `non_finite_score` for a window
that could not be scored (daemon.core.scoring; its score is then the largest float32, a finite
number), or a sensor-health flag `<check>:<feature>` such as `stuck:flow`
(daemon.core.sensor_health; the score stays the model's). One tag holding check and sensor
keeps a flag one series per device and reason, readable as it stands. The `shadow=1` tag marks
the events of a candidate bundle scoring the same windows beside the served one (`model.candidate`),
so a query for the served model's alerts leaves them out by that tag.

Timestamps are integer milliseconds (write with precision `ms`): VictoriaMetrics stores
milliseconds anyway, and a window's end time never needs more. Floats are written with 9
significant digits (`%.9g`): scores and errors are float32 computations, and 9 digits tell
every float32 apart (float32(written value) is the value). `repr` would write 17 digits, 8 of
them noise, and cost more on a path that runs for every scored window. `SCHEMA` is the one place
the names live, so dashboards, alert rules and tests import them instead of copying strings.

Line protocol has no NaN or infinity: a non-finite float field is left out of the line
rather than failing the whole batch at the server. It cannot carry a newline either, nor an
empty tag value: `encode` raises `ValueError` naming the offending key for those.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterable

from daemon.live.events import ScoreEvent
from daemon.live.telemetry.ratelimit import RateLimitedLog

FLOAT = "%.9g"  # 9 significant digits tell every float32 apart (see the module docstring)


@dataclass(frozen=True)
class LineSchema:
    """Names written by `encode`. `metric_name` gives the name a Prometheus-style reader such as
    VictoriaMetrics shows for a field (`<measurement>_<field>`, e.g. `anomaly_score`)."""

    measurement: str = "anomaly"
    tag_keys: tuple[str, ...] = ("device", "model")
    reason_tag: str = "reason"  # written only when the event has a reason: unscorable, or <check>:<feature>
    shadow_tag: str = "shadow"  # written as shadow=1 only on a candidate's events (model.candidate)
    float_fields: tuple[str, ...] = ("score", "threshold")
    flag_fields: tuple[str, ...] = ("anomaly", "alert")  # written as integers 0/1
    feature_prefix: str = "err_"  # one float field per feature: err_<feature>
    precision: str = "ms"

    @property
    def fixed_fields(self) -> tuple[str, ...]:
        return self.float_fields + self.flag_fields

    def feature_field(self, feature: str) -> str:
        return self.feature_prefix + feature

    def metric_name(self, field: str) -> str:
        return f"{self.measurement}_{field}"


SCHEMA = LineSchema()
FIELD_NAMES = SCHEMA.fixed_fields

# Backslashes are escaped too, so a value ending in "\" cannot escape the delimiter after it.
_KEY_ESCAPES = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ "})
_MEASUREMENT_ESCAPES = str.maketrans({"\\": "\\\\", ",": "\\,", " ": "\\ "})
_MEASUREMENT = SCHEMA.measurement.translate(_MEASUREMENT_ESCAPES)


@dataclass(frozen=True)
class Point:
    """One parsed line: what `decode` returns."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, float | int]
    time_ms: int


def _escape(text: str, what: str) -> str:
    """Escape a tag key, tag value or field key; `what` names it in the error."""
    if "\n" in text or "\r" in text:
        raise ValueError(f"line protocol cannot carry a newline in {what}: {text!r}")
    return text.translate(_KEY_ESCAPES)


def _tag(key: str, value: str) -> str:
    if not value:
        raise ValueError(f"tag {key!r} is empty: line protocol cannot carry an empty tag value")
    return f"{key}={_escape(value, f'tag {key!r}')}"


# Device, model and feature names repeat on every event; escaping them once per name halves
# the cost of `encode`, which runs once per scored window. Bounded: ingest caps the devices.
@functools.lru_cache(maxsize=8192)
def _series_key(device: str, model: str, reason: str = "", shadow: bool = False) -> str:
    reason_tag = "," + _tag(SCHEMA.reason_tag, reason) if reason else ""
    shadow_tag = f",{SCHEMA.shadow_tag}=1" if shadow else ""
    return f"{_MEASUREMENT},{_tag('device', device)},{_tag('model', model)}{reason_tag}{shadow_tag} "


@functools.lru_cache(maxsize=1024)
def _feature_key(feature: str) -> str:
    return "," + _escape(SCHEMA.feature_field(feature), f"feature name {feature!r}") + "="


# The usual event (every value finite) is one %-format of a cached template, cheaper than
# assembling the parts, which matters because the sinks encode on the scoring thread.
# Literal "%" in names is escaped as "%%".
@functools.lru_cache(maxsize=8192)
def _series_template(device: str, model: str, reason: str = "", shadow: bool = False) -> str:
    return _series_key(device, model, reason, shadow).replace("%", "%%")


@functools.lru_cache(maxsize=64)
def _fields_template(features: tuple[str, ...]) -> str:
    keys = "".join(_feature_key(f).replace("%", "%%") + FLOAT for f in features)
    return f"score={FLOAT},threshold={FLOAT},anomaly=%di,alert=%di" + keys + " %d"


def encode(event: ScoreEvent) -> str:
    """The event as one line of line protocol, without a trailing newline."""
    errors = event.feature_errors
    try:
        score, threshold = float(event.score), float(event.threshold)
        values = [*map(float, errors.values())]
        total = score + threshold + sum(values)
    except TypeError:  # e.g. a None score: the step-by-step encoder raises the error
        return _encode_parts(event)
    if total - total != 0.0:  # some value is NaN or infinite (or the sum overflowed): leave fields out
        return _encode_parts(event)
    return (_series_template(event.device, event.model, event.reason, event.shadow) + _fields_template(tuple(errors))) % (
        score, threshold, 1 if event.anomaly else 0, 1 if event.alert else 0, *values, round(float(event.ts) * 1000))


def encode_each(events: Iterable[ScoreEvent], ratelog: RateLimitedLog, sink: str) -> list[tuple[str, ScoreEvent]]:
    """(line, event) for every event that can be encoded, in order; each one that cannot (a
    newline in a device id, a None score) is logged, rate-limited, as dropped by `sink`."""
    encoded = []
    for event in events:
        try:
            encoded.append((encode(event), event))
        except (ValueError, TypeError) as err:
            ratelog.error("encode", "%s: dropped a score event of device %r: %s", sink, event.device, err)
    return encoded


def _encode_parts(event: ScoreEvent) -> str:
    """`encode` field by field, leaving out non-finite floats."""
    parts = [_series_key(event.device, event.model, event.reason, event.shadow)]
    for name, value in (("score=", float(event.score)), ("threshold=", float(event.threshold))):
        if math.isfinite(value):
            parts += (name, FLOAT % value, ",")
    parts.append(f"anomaly={int(bool(event.anomaly))}i,alert={int(bool(event.alert))}i")
    for feature, error in event.feature_errors.items():
        error = float(error)
        if math.isfinite(error):
            parts += (_feature_key(feature), FLOAT % error)
    parts.append(f" {round(float(event.ts) * 1000)}")
    return "".join(parts)


def _split(text: str, separator: str, limit: int = -1) -> list[str]:
    """Split at `separator` where it is not escaped by a backslash; escapes are kept."""
    parts: list[str] = []
    start = i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == separator and limit != 0:
            parts.append(text[start:i])
            start = i + 1
            limit -= 1
        i += 1
    parts.append(text[start:])
    return parts


def _unescape(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "\\, =":
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def _key_value(text: str, what: str, line: str) -> tuple[str, str]:
    parts = _split(text, "=", 1)
    if len(parts) != 2:
        raise ValueError(f"{what} {text!r} has no '=' in line {line!r}")
    return _unescape(parts[0]), parts[1]


def _field_value(text: str, line: str) -> float | int:
    try:
        return int(text[:-1]) if text.endswith("i") else float(text)
    except ValueError:
        raise ValueError(f"field value {text!r} is neither a float nor an integer in line {line!r}") from None


def decode(line: str) -> Point:
    """Parse one line written by `encode` (floats and integers only, millisecond timestamp)."""
    sections = _split(line.strip(), " ")
    if len(sections) != 3:
        raise ValueError(f"expected 'measurement,tags fields timestamp', got {len(sections)} sections in {line!r}")
    series, field_text, time_text = sections
    measurement, *tag_texts = _split(series, ",")
    tags = {}
    for tag in tag_texts:
        key, value = _key_value(tag, "tag", line)
        tags[key] = _unescape(value)
    fields = {}
    for field in _split(field_text, ","):
        key, value = _key_value(field, "field", line)
        fields[key] = _field_value(value, line)
    try:
        time_ms = int(time_text)
    except ValueError:
        raise ValueError(f"timestamp {time_text!r} is not an integer in line {line!r}") from None
    return Point(_unescape(measurement), tags, fields, time_ms)
