"""Sensor history from a time-series store over InfluxQL, as the `Frame`s training and
calibration read.

InfluxQL on the `/query` endpoint is what InfluxDB 1.x, 2.x (through a DBRP mapping) and 3.x all
answer, so one reader serves every version. Answers are requested with `epoch=ms` and
`chunked=true` (one JSON object per line, so a long answer is parsed as it arrives), and a
`--measurement` read walks its time range in pages, one request per page.

What comes back is shaped the way CSV files are:
- each device (the value of the device tag) is its own series, and a gap longer than
  `gap_factor` x the series' median sample period cuts it into runs (frames.split_at_gaps), as
  the end of a file does;
- rows inside a period where anomalyd itself had the device in alert (its own points: measurement
  `anomaly`, tag `device`, field `alert` = 1) are labelled 1, so training and calibration cut
  them out exactly as they cut labelled rows of a file: a fault the service caught is never
  learnt as normal. A period runs from the first point with alert 1 to the next point with
  alert 0 (of the same model), or to the end of the data while the device is still in alert;
- anything that cannot be used (no server, an error from the server, no rows, a missing field,
  a field holding strings) is a DataError naming it, one line.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from tqdm import tqdm

from daemon.core.errors import DataError, UserError
from daemon.live.config import ENV_INFLUXDB_TOKEN
from daemon.live.sinks.line_protocol import SCHEMA
from daemon.offline.frames import Frame, in_intervals, median_sample_period, parse_timestamp, split_at_gaps

log = logging.getLogger(__name__)

ENV_INFLUXDB_PASSWORD = "ANOMALYD_INFLUXDB_PASSWORD"
NUMERIC_FIELD_TYPES = ("float", "integer", "unsigned")
CHUNK_ROWS = 10_000
DEFAULT_PAGE = "1d"
# The live service's default `stream.gap_factor`: a gap that restarts a device's window live
# cuts a run here.
GAP_FACTOR = 5.0
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# anomalyd's own points, as the service writes them (daemon.live.sinks.line_protocol)
ALERT_MEASUREMENT = SCHEMA.measurement
ALERT_DEVICE_TAG, ALERT_MODEL_TAG = SCHEMA.tag_keys
ALERT_FIELD = SCHEMA.flag_fields[1]


@dataclass(frozen=True)
class Credentials:
    """A token (`Authorization: Token ...`: InfluxDB 2.x/3.x, 1.8+) or a user and password
    (basic auth: 1.x); neither for a server without authentication."""

    token: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def headers(self) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"Token {self.token}"}
        if self.username is not None:
            pair = f"{self.username}:{self.password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        return {}

    @classmethod
    def resolve(cls, token_file: str | None, username: str | None, password_file: str | None,
                environ: Mapping[str, str] = os.environ) -> Credentials:
        """Secrets from the environment (when set and non-empty) or from files, never from the
        command line, where every user of the box can read them in the process list."""
        if username is not None:
            if token_file is not None:
                raise UserError("--influx-token-file and --influx-user: give a token or a user, not both")
            password = environ.get(ENV_INFLUXDB_PASSWORD) or _read_secret(password_file, "--influx-password-file")
            if password is None:
                raise UserError(f"--influx-user {username}: no password (set ${ENV_INFLUXDB_PASSWORD} "
                                f"or pass --influx-password-file FILE)")
            return cls(username=username, password=password)
        if password_file is not None:
            raise UserError("--influx-password-file needs --influx-user USER")
        return cls(token=environ.get(ENV_INFLUXDB_TOKEN) or _read_secret(token_file, "--influx-token-file"))


def _read_secret(path: str | None, option: str) -> str | None:
    if path is None:
        return None
    try:
        secret = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{option} {path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if not secret:
        raise UserError(f"{option} {path}: file is empty")
    return secret


@dataclass
class Series:
    """One series of an InfluxQL answer: rows of [time in ms, value per column after time]."""

    name: str
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]]


class InfluxQL:
    """InfluxQL over HTTP: `query` returns every series a statement answers, the chunks of one
    series joined; every failure is a DataError naming the server."""

    def __init__(self, url: str, database: str, credentials: Credentials = Credentials(),
                 timeout_s: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"--from-influx {url!r}: expected http(s)://HOST[:PORT]")
        if parts.username or parts.password:
            raise UserError(f"--from-influx: credentials in the URL are visible to every user of this box; "
                            f"use --influx-token-file, ${ENV_INFLUXDB_TOKEN}, or --influx-user with "
                            f"${ENV_INFLUXDB_PASSWORD} / --influx-password-file")
        self.url = url.rstrip("/")
        self.database = database
        self.credentials = credentials
        self.timeout_s = timeout_s

    def query(self, statement: str) -> list[Series]:
        merged: dict[tuple, Series] = {}
        for chunk in self._chunks(statement):
            if chunk.get("error"):
                raise self._error(chunk["error"])
            for result in chunk.get("results", []):
                if result.get("error"):
                    raise self._error(result["error"])
                for s in result.get("series", []):
                    tags = s.get("tags") or {}
                    key = (s.get("name", ""), tuple(sorted(tags.items())))
                    if key in merged:
                        merged[key].values.extend(s.get("values") or [])
                    else:
                        merged[key] = Series(s.get("name", ""), dict(tags), list(s["columns"]), list(s.get("values") or []))
        return list(merged.values())

    def _chunks(self, statement: str) -> Iterator[dict]:
        params = urllib.parse.urlencode({"db": self.database, "q": statement, "epoch": "ms",
                                         "chunked": "true", "chunk_size": CHUNK_ROWS})
        request = urllib.request.Request(f"{self.url}/query?{params}", headers=self.credentials.headers())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                for line in response:
                    if line.strip():
                        yield _json(line, self.url)
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except (socket.timeout, TimeoutError):
            raise DataError(f"InfluxDB at {self.url}: no answer within {self.timeout_s:g} s") from None
        except urllib.error.URLError as exc:
            raise DataError(f"InfluxDB at {self.url}: cannot connect: {exc.reason}") from None
        except OSError as exc:
            raise DataError(f"InfluxDB at {self.url}: connection failed: {exc.strerror or exc}") from None

    def _http_error(self, exc: urllib.error.HTTPError) -> DataError:
        if exc.code in (401, 403):
            return DataError(f"InfluxDB at {self.url}: authentication failed (HTTP {exc.code}): check the token, "
                             f"or the user and password")
        if exc.code == 404:
            return DataError(f"InfluxDB at {self.url}: no /query endpoint (HTTP 404): not an InfluxQL server, "
                             f"or a 2.x bucket without a DBRP mapping for database {self.database!r}")
        try:
            detail = json.loads(exc.read() or b"{}").get("error", "")
        except (ValueError, OSError, AttributeError):
            detail = ""
        return self._error(detail or f"HTTP {exc.code} {exc.reason}")

    def _error(self, message: str) -> DataError:
        return DataError(f"InfluxDB at {self.url}, database {self.database!r}: {' '.join(str(message).split())}")


def _json(line: bytes, url: str) -> dict:
    try:
        data = json.loads(line)
    except ValueError:
        raise DataError(f"InfluxDB at {url}: answer is not JSON: {line[:80]!r}") from None
    if not isinstance(data, dict):
        raise DataError(f"InfluxDB at {url}: answer is not a JSON object: {line[:80]!r}")
    return data


def quote_identifier(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def time_literal(seconds: float) -> str:
    """An RFC 3339 time literal (UTC, microseconds), which every InfluxQL dialect reads."""
    return "'" + datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ") + "'"


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_duration(text: str, option: str) -> float:
    """Seconds in '90s', '30m', '12h', '7d', '2w'."""
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"{option} {text!r}: expected a positive duration such as 30m, 12h, 7d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_time(text: str, option: str, now: float) -> float:
    """'now', a duration before now ('7d', '12h'), epoch seconds or RFC 3339 / ISO 8601 (naive = UTC)."""
    text = text.strip()
    if text == "now":
        return now
    if _DURATION.match(text):
        return now - parse_duration(text, option)
    try:
        return parse_timestamp(text)
    except ValueError:
        raise UserError(f"{option} {text!r}: expected 'now', a duration before now (7d, 12h), epoch seconds "
                        f"or an RFC 3339 time") from None


@dataclass(frozen=True)
class HistoryQuery:
    """What to read: `measurement`'s `fields` (None: every numeric field) over [start, stop),
    only `devices` when given, in pages of `page_seconds`; or one InfluxQL `statement` as given
    (then `fields`, when given, picks and orders its columns). Either way the device of a
    series is its `device_tag` tag."""

    measurement: str | None = None
    fields: list[str] | None = None
    start: float | None = None
    stop: float | None = None
    devices: tuple[str, ...] = ()
    device_tag: str = "device"
    statement: str | None = None
    page_seconds: float = 86400.0

    def describe(self) -> str:
        if self.statement is not None:
            return f"query {self.statement!r}"
        devices = f", {self.device_tag} {', '.join(self.devices)}" if self.devices else ""
        return f"measurement {self.measurement!r} from {iso(self.start)} to {iso(self.stop)}{devices}"


@dataclass
class History:
    """Runs per device ("" where the data names no device), in time order; rows inside the
    device's alert periods are labelled 1 (no labels when alert periods are kept)."""

    runs: dict[str, list[Frame]]
    features: list[str]
    alert_periods: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def frames(self) -> list[Frame]:
        return [run for device in sorted(self.runs) for run in self.runs[device]]

    @property
    def rows(self) -> int:
        return sum(len(f) for f in self.frames())

    @property
    def rows_in_alert(self) -> int:
        return sum(int(f.labels.sum()) for f in self.frames() if f.labels is not None)

    @property
    def first(self) -> float:
        return min(float(f.timestamps[0]) for f in self.frames())

    @property
    def last(self) -> float:
        return max(float(f.timestamps[-1]) for f in self.frames())


def read_history(client: InfluxQL, query: HistoryQuery, *, exclude_alert_periods: bool = True,
                 gap_factor: float = GAP_FACTOR, nan_policy: str = "fail") -> History:
    if query.statement is not None:
        series, features = _read_statement(client, query)
    else:
        series, features = _read_measurement(client, query)
    what = query.describe()
    runs, periods = {}, {}
    for device in sorted(series):
        name, rows = series[device]
        source = f"influxdb:{client.database}/{name}" + (f"{{{query.device_tag}={device}}}" if device else "")
        frame = _frame(source, rows, features, nan_policy)
        if not len(frame):
            continue
        if exclude_alert_periods:
            if not device:
                raise DataError(f"{what}: rows without a {query.device_tag!r} tag, so anomalyd's alert periods "
                                f"cannot be matched to them: GROUP BY {quote_identifier(query.device_tag)}, pass "
                                f"--device-tag TAG, or --keep-alert-periods")
            periods[device] = alert_periods(client, device, float(frame.timestamps[0]), float(frame.timestamps[-1]))
            frame.labels = in_intervals(frame.timestamps, periods[device], end_included=False).astype(np.int8)
        period = median_sample_period([frame])
        runs[device] = split_at_gaps(frame, gap_factor * period) if period else [frame]
    if not runs:
        raise DataError(f"InfluxDB at {client.url}, database {client.database!r}: no rows for {what}")
    silent = [device for device in query.devices if device not in runs]
    if silent and query.statement is None:
        log.warning("no rows for %s %s in %s", query.device_tag, ", ".join(silent), what)
    return History(runs, features, periods)


def _read_measurement(client: InfluxQL, query: HistoryQuery) -> tuple[dict[str, tuple[str, list]], list[str]]:
    assert query.measurement and query.start is not None and query.stop is not None
    if query.stop <= query.start:
        raise UserError(f"--start {iso(query.start)} is not before --stop {iso(query.stop)}")
    measurement = query.measurement
    types = field_types(client, measurement)
    if query.fields is None:
        features = [name for name, kind in types.items() if kind in NUMERIC_FIELD_TYPES]
        if not features:
            raise DataError(f"measurement {measurement!r} has no numeric field (fields: {_listing(types)})")
    else:
        features = list(query.fields)
        missing = [name for name in features if name not in types]
        if missing:
            raise DataError(f"measurement {measurement!r} has no field {', '.join(map(repr, missing))} "
                            f"(fields: {_listing(types)})")
        wrong = [f"{name!r} ({types[name]})" for name in features if types[name] not in NUMERIC_FIELD_TYPES]
        if wrong:
            raise DataError(f"measurement {measurement!r}: field {', '.join(wrong)} holds no numbers "
                            f"(a sensor field must be float or integer)")
    tag = quote_identifier(query.device_tag)
    select = f"SELECT {', '.join(map(quote_identifier, features))} FROM {quote_identifier(measurement)}"
    only = (" AND (" + " OR ".join(f"{tag} = {quote_literal(d)}" for d in query.devices) + ")"
            if query.devices else "")
    bounds = [*np.arange(query.start, query.stop, query.page_seconds).tolist(), query.stop]
    literals = [time_literal(b) for b in bounds]
    series: dict[str, tuple[str, list]] = {}
    hours = (query.stop - query.start) / 3600
    with tqdm(total=round(hours, 3), desc="read", unit="h", file=sys.stderr, disable=None,
              bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} h [{elapsed}<{remaining}]") as bar:
        for (a, b), (lo, hi) in zip(zip(bounds, bounds[1:]), zip(literals, literals[1:])):
            statement = f"{select} WHERE time >= {lo} AND time < {hi}{only} GROUP BY {tag}"
            for s in client.query(statement):
                series.setdefault(s.tags.get(query.device_tag, ""), (measurement, []))[1].extend(s.values)
            bar.update((b - a) / 3600)
    return series, features


def _read_statement(client: InfluxQL, query: HistoryQuery) -> tuple[dict[str, tuple[str, list]], list[str]]:
    assert query.statement is not None
    found = client.query(query.statement)
    if not found:
        raise DataError(f"InfluxDB at {client.url}, database {client.database!r}: no rows for {query.describe()}")
    columns = found[0].columns
    if not columns or columns[0] != "time" or len(columns) < 2:
        raise DataError(f"{query.describe()}: answers columns {columns}, expected time and at least one field")
    features = list(query.fields) if query.fields is not None else columns[1:]
    series: dict[str, tuple[str, list]] = {}
    for s in found:
        missing = [name for name in features if name not in s.columns]
        if missing:
            raise DataError(f"{query.describe()}: no column {', '.join(map(repr, missing))} in its answer "
                            f"(columns: {', '.join(s.columns[1:])})")
        device = s.tags.get(query.device_tag) or (query.devices[0] if len(query.devices) == 1 else "")
        if device in series:
            raise DataError(f"{query.describe()}: several series for {query.device_tag} {device!r} "
                            f"(tags {s.tags}): GROUP BY the device tag alone")
        picks = [0] + [s.columns.index(name) for name in features]
        series[device] = (s.name, [[row[i] for i in picks] for row in s.values])
    return series, features


def field_types(client: InfluxQL, measurement: str) -> dict[str, str]:
    """Field name -> InfluxDB type (float, integer, unsigned, string, boolean)."""
    found = client.query(f"SHOW FIELD KEYS FROM {quote_identifier(measurement)}")
    types = {row[0]: row[1] for s in found for row in s.values}
    if not types:
        names = [row[0] for s in client.query("SHOW MEASUREMENTS") for row in s.values]
        raise DataError(f"InfluxDB at {client.url}: database {client.database!r} has no measurement "
                        f"{measurement!r} (measurements: {_listing(names)})")
    return types


def _listing(names: Any, most: int = 12) -> str:
    names = list(names)
    shown = ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")
    return shown or "none"


def _frame(source: str, rows: list[list[Any]], features: list[str], nan_policy: str) -> Frame:
    """Rows of [ms, value...] as a frame; strings are an error, missing values follow `nan_policy`."""
    rows = sorted(rows, key=lambda row: row[0])
    times = np.array([row[0] for row in rows], dtype=np.float64) / 1000.0
    values = np.full((len(rows), len(features)), np.nan, dtype=np.float64)
    for j, name in enumerate(features):
        column = [row[j + 1] for row in rows]
        bad = next((i for i, v in enumerate(column) if isinstance(v, (str, bool))), None)
        if bad is not None:
            raise DataError(f"{source}: field {name!r} holds {type(column[bad]).__name__} values "
                            f"({column[bad]!r} at {iso(times[bad])}), not numbers")
        values[:, j] = [math.nan if v is None else v for v in column]
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, which the nan policy handles
        scaled = values.astype(np.float32)
    finite = np.isfinite(scaled).all(axis=1)
    frame = Frame(source, times, scaled, list(features))
    if finite.all():
        return frame
    if nan_policy == "fail":
        row, col = np.argwhere(~np.isfinite(scaled))[0]
        raise DataError(f"{source}: field {features[col]!r} has no finite value at {iso(times[row])} "
                        f"({'missing' if math.isnan(values[row, col]) else values[row, col]}; pass --nan drop "
                        f"to skip such rows)")
    log.warning("%s: dropped %d row(s) with missing or non-finite values", source, int((~finite).sum()))
    return frame.select(finite)


def alert_periods(client: InfluxQL, device: str, first: float, last: float) -> list[tuple[float, float]]:
    """[start, end) periods in seconds in which any served model had `device` in alert, as seen in
    anomalyd's own points, over the data from `first` to `last` (a period open before `first`
    starts at -inf, one still open after `last` ends at +inf)."""
    # A shadow candidate's alerts (model.candidate) raised nothing and may be wrong: not its periods.
    where = (f"{quote_identifier(ALERT_DEVICE_TAG)} = {quote_literal(device)} "
             f"AND {quote_identifier(SCHEMA.shadow_tag)} != '1'")
    source = quote_identifier(ALERT_MEASUREMENT)
    alert, model = quote_identifier(ALERT_FIELD), quote_identifier(ALERT_MODEL_TAG)
    before = client.query(f"SELECT last({alert}) FROM {source} WHERE {where} AND time < {time_literal(first)} "
                          f"GROUP BY {model}")
    during = client.query(f"SELECT {alert} FROM {source} WHERE {where} AND time >= {time_literal(first)} "
                          f"AND time <= {time_literal(last)} GROUP BY {model}")
    initial = {s.tags.get(ALERT_MODEL_TAG, ""): bool(s.values[-1][1]) for s in before if s.values}
    points = {s.tags.get(ALERT_MODEL_TAG, ""): s.values for s in during}
    periods = []
    for name in sorted(set(initial) | set(points)):
        opened = -math.inf if initial.get(name) else None
        for ms, value in sorted(points.get(name, []), key=lambda row: row[0]):
            if value is None:
                continue
            if value and opened is None:
                opened = ms / 1000.0
            elif not value and opened is not None:
                periods.append((opened, ms / 1000.0))
                opened = None
        if opened is not None:
            periods.append((opened, math.inf))
    return periods

