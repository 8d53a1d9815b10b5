"""Load sensor history from CSV into a `Frame`: timestamps, named feature columns, labels.

One file is one *run*, or one run per device when a device column names several (a fleet's
history in one file): windows are cut inside a frame and never across two frames, because two
CSV exports, or two devices' rows, are not contiguous in time even when they look adjacent.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from daemon.core.errors import DataError

log = logging.getLogger(__name__)

TIME_COLUMN_NAMES = ("timestamp", "time", "datetime", "ts", "date")
LABEL_AUTO = "auto"
DEFAULT_LABEL_COLUMN = LABEL_AUTO
# What labelled exports call their 0/1 anomaly column; with LABEL_AUTO the first of these (in
# this order) that holds only 0 and 1 is the label.
LABEL_COLUMN_NAMES = ("anomaly", "label", "labels", "is_anomaly", "anomaly_label", "attack")
# Columns that describe faults rather than measure the process (SKAB's changepoint, a fault
# number). They are never taken as sensors unless `features` names them: a model that reads
# the label scores its own answer, and its evaluation means nothing.
LABEL_LIKE_NAMES = (*LABEL_COLUMN_NAMES, "changepoint", "fault", "faultnumber", "fault_number", "fault_id",
                    "fault_type", "target")
DEFAULT_DEVICE_COLUMN = "device"
NAN_POLICIES = ("fail", "drop")


@dataclass
class Frame:
    """A time-ordered block of readings from one source (a CSV file or one query)."""

    source: str
    timestamps: np.ndarray  # float64 epoch seconds, shape [n]
    values: np.ndarray  # float32, shape [n, len(features)]
    features: list[str]
    labels: np.ndarray | None = None  # int8 0/1, shape [n], when the data is labelled
    device: str = ""  # the device the rows come from, when the data names one

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def name(self) -> str:
        """A short name for the run, fit for a file name: the file's stem, then its device."""
        stem = Path(self.source.removesuffix(f" [{self.device}]")).stem if self.device else Path(self.source).stem
        return f"{stem}-{self.device}" if self.device else stem

    def select(self, mask: np.ndarray) -> Frame:
        """Rows where `mask` is true, as a new frame from the same source."""
        labels = None if self.labels is None else self.labels[mask]
        return replace(self, timestamps=self.timestamps[mask], values=self.values[mask], labels=labels)

    def head(self, n: int) -> Frame:
        return self.select(np.arange(len(self)) < n)

    def tail_from(self, n: int) -> Frame:
        return self.select(np.arange(len(self)) >= n)


def in_intervals(timestamps: np.ndarray, intervals: list[tuple[float, float]], *, end_included: bool) -> np.ndarray:
    """Per timestamp, whether it falls in one of the (start, end) intervals: anomalyd's alert
    periods end where the next point says the alert is off (`end_included` False), an incident
    at the last time it was seen (True)."""
    inside = np.zeros(len(timestamps), dtype=bool)
    for start, end in intervals:
        inside |= (timestamps >= start) & ((timestamps <= end) if end_included else (timestamps < end))
    return inside


def median_sample_period(frames: list[Frame]) -> float | None:
    """The median step between consecutive timestamps within each frame (never across two: they
    are separate runs), in seconds; None when no frame has two timestamps a positive step apart."""
    steps = np.concatenate([np.diff(f.timestamps) for f in frames] or [np.empty(0)])
    steps = steps[np.isfinite(steps)]
    if not steps.size:
        return None
    period = float(np.median(steps))
    return period if period > 0 else None


def parse_timestamp(text: str) -> float:
    """Epoch seconds (milliseconds if the number is too large to be seconds) or ISO 8601.

    Naive ISO times are taken as UTC: edge boxes log in UTC far more often than not, and a
    silent local-time guess would shift every point by the box's offset.
    """
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ValueError(f"not a finite time: {text!r}")
        return number / 1000.0 if number > 1e11 else number
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _sniff_delimiter(header_line: str) -> str:
    return ";" if header_line.count(";") > header_line.count(",") else ","


def _pick_time_column(header: list[str], requested: str | None, path: Path) -> int:
    if requested is not None:
        if requested not in header:
            raise DataError(f"{path}: time column {requested!r} not found (columns: {', '.join(header)})")
        return header.index(requested)
    lowered = [name.strip().lower() for name in header]
    for name in TIME_COLUMN_NAMES:
        if name in lowered:
            return lowered.index(name)
    return 0


def _to_float(text: str) -> float:
    return float(text) if text.strip() else math.nan


def load_csv(
    path: str | Path,
    features: list[str] | None = None,
    time_column: str | None = None,
    label_column: str | None = DEFAULT_LABEL_COLUMN,
    ignore_columns: tuple[str, ...] = (),
    nan_policy: str = "fail",
) -> Frame:
    """Read one CSV run: a file of one device's readings (a device column, if any, is ignored;
    `load_device_runs` splits a file by it).

    `features=None` takes every numeric column except time, label and `ignore_columns`; a
    column with no number in it is skipped, a mostly numeric one with a bad cell is an error.
    `label_column` is used when present (a missing one is not an error); LABEL_AUTO takes the
    first of LABEL_COLUMN_NAMES holding only 0/1. Columns named in LABEL_LIKE_NAMES are never
    features unless `features` names them.
    Empty feature cells and cells that are not a finite float32 (NaN, inf, beyond +-3.4e38: the
    values live ingest rejects as `non_finite`) follow `nan_policy`: "fail" names the first bad
    cell, "drop" removes those rows and logs how many; neither guesses a value.
    """
    path = Path(path)
    table = _read_table(path, nan_policy)
    label_column = _label_column(table, label_column)
    return _to_frame(table, table.rows, str(path), "", features, time_column, label_column, ignore_columns,
                     nan_policy)


def load_device_runs(
    path: str | Path,
    features: list[str] | None = None,
    time_column: str | None = None,
    label_column: str | None = DEFAULT_LABEL_COLUMN,
    ignore_columns: tuple[str, ...] = (),
    nan_policy: str = "fail",
    device_column: str | None = None,
) -> list[Frame]:
    """Read a CSV file as one run per device.

    A fleet's history exported in one file (long format, as a store with a device tag exports
    it) holds several devices' rows, interleaved or one after another. Read as one run, their
    windows would glue one pump's readings to another's and their times would go backwards, so
    each device's rows become a run of their own (`Frame.device`), in the order the devices
    first appear, each in time order on its own. `device_column=None` splits by a column named
    `device` (the live payload's and the store's name) when there is one, else reads the file as
    one run; a column named explicitly must exist. Everything else is as `load_csv`.
    """
    path = Path(path)
    table = _read_table(path, nan_policy)
    label_column = _label_column(table, label_column)
    name = DEFAULT_DEVICE_COLUMN if device_column is None else device_column
    if name not in table.header:
        if device_column is not None:
            raise DataError(f"{path}: device column {device_column!r} not found (columns: {', '.join(table.header)})")
        return [_to_frame(table, table.rows, str(path), "", features, time_column, label_column, ignore_columns,
                          nan_policy)]
    column = table.header.index(name)
    ignore_columns = (*ignore_columns, name)
    if features is None:  # judged on the whole file, so that every device's run has the same columns
        features = _numeric_columns(table, time_column, label_column, ignore_columns)
    devices: dict[str, list[int]] = {}
    for i, row in enumerate(table.body):
        device = row[column].strip()
        if not device:
            raise DataError(f"{path}: line {table.lines[i]} column {name!r}: no device id")
        devices.setdefault(device, []).append(i)
    return [_to_frame(table, rows, f"{path} [{device}]", device, features, time_column, label_column,
                      ignore_columns, nan_policy) for device, rows in devices.items()]


def _numeric_columns(table: _Table, time_column: str | None, label_column: str | None,
                     ignore_columns: tuple[str, ...]) -> list[str]:
    """The columns `load_csv` takes as features when none are named: all but time, label and
    `ignore_columns`, less text columns (no number in any cell)."""
    header = table.header
    skip = _not_features(table, _pick_time_column(header, time_column, table.path), label_column, ignore_columns)
    columns = list(zip(*table.body))
    names = [name for i, name in enumerate(header)
             if i not in skip and any(_is_number(c) and c.strip() for c in columns[i])]
    if not names:
        raise DataError(f"{table.path}: no numeric feature columns (columns: {', '.join(header)})")
    return names


@dataclass
class _Table:
    """A CSV file's cells, before any column is interpreted."""

    path: Path
    header: list[str]
    body: list[list[str]]
    lines: list[int]  # each body row's line number in the file, for error messages

    @property
    def rows(self) -> list[int]:
        return list(range(len(self.body)))


def _read_table(path: Path, nan_policy: str) -> _Table:
    if nan_policy not in NAN_POLICIES:
        raise DataError(f"nan policy {nan_policy!r} unknown (use one of: {', '.join(NAN_POLICIES)})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: file is empty (expected a header row and data rows)")
    rows = list(csv.reader(lines, delimiter=_sniff_delimiter(lines[0])))
    header = [name.strip() for name in rows[0]]
    numbered = [(number, row) for number, row in enumerate(rows[1:], start=2) if any(cell.strip() for cell in row)]
    if not numbered:
        raise DataError(f"{path}: no data rows after the header")
    for number, row in numbered:
        if len(row) != len(header):
            raise DataError(f"{path}: line {number} has {len(row)} fields, header has {len(header)}")
    return _Table(path, header, [row for _, row in numbered], [number for number, _ in numbered])


def _label_column(table: _Table, label_column: str | None) -> str | None:
    """The label column's name (None: no labels); LABEL_AUTO resolved on the whole file."""
    if label_column != LABEL_AUTO:
        return label_column
    lowered = [name.lower() for name in table.header]
    for candidate in LABEL_COLUMN_NAMES:
        if candidate in lowered:
            index = lowered.index(candidate)
            if all(row[index].strip() in ("0", "1", "0.0", "1.0") for row in table.body):
                return table.header[index]
    return None


def _not_features(table: _Table, time_index: int, label_column: str | None,
                  ignore_columns: tuple[str, ...]) -> set[int]:
    """Columns that are no sensor: time, label, `ignore_columns` and label-like names (logged)."""
    header = table.header
    skip = {time_index} | {header.index(c) for c in (label_column, *ignore_columns) if c in header}
    label_like = [i for i, name in enumerate(header) if name.lower() in LABEL_LIKE_NAMES and i not in skip]
    if label_like:
        log.info("%s: column(s) %s left out of the features: named like labels (--features reads them as sensors)",
                 table.path, ", ".join(repr(header[i]) for i in label_like))
    return skip | set(label_like)


def _to_frame(table: _Table, rows: list[int], source: str, device: str, features: list[str] | None,
              time_column: str | None, label_column: str | None, ignore_columns: tuple[str, ...],
              nan_policy: str) -> Frame:
    """The frame of the table's `rows` (indices into its body); errors name `source`."""
    header = table.header
    body = [table.body[i] for i in rows]
    lines = [table.lines[i] for i in rows]
    time_index = _pick_time_column(header, time_column, table.path)
    label_index = header.index(label_column) if label_column in header else None
    explicit = features is not None
    if explicit:
        missing = [name for name in features if name not in header]
        if missing:
            raise DataError(f"{source}: feature column(s) {', '.join(map(repr, missing))} not found "
                            f"(columns: {', '.join(header)})")
        feature_names = list(features)
    else:
        skip = _not_features(table, time_index, label_column, ignore_columns)
        feature_names = [name for i, name in enumerate(header) if i not in skip]

    columns = list(zip(*body))
    timestamps = np.empty(len(body), dtype=np.float64)
    for i, cell in enumerate(columns[time_index]):
        try:
            timestamps[i] = parse_timestamp(cell)
        except ValueError:
            raise DataError(f"{source}: line {lines[i]} column {header[time_index]!r}: "
                            f"cannot parse time {cell!r} (epoch seconds or ISO 8601)") from None

    backwards = np.flatnonzero(np.diff(timestamps) < 0)
    if len(backwards):
        raise DataError(f"{source}: line {lines[backwards[0] + 1]} column {header[time_index]!r}: time goes backwards "
                        f"(rows must be in time order; sort the file first)")

    values = np.empty((len(body), len(feature_names)), dtype=np.float64)
    numeric_names = []
    for name in feature_names:
        cells = columns[header.index(name)]
        try:
            column = np.array([_to_float(c) for c in cells], dtype=np.float64)
        except ValueError:
            if not explicit and not any(_is_number(c) and c.strip() for c in cells):
                continue  # a text column (ids, comments): not a feature
            bad = next(i for i, c in enumerate(cells) if not _is_number(c))
            raise DataError(f"{source}: line {lines[bad]} column {name!r}: not a number: {cells[bad]!r}") from None
        values[:, len(numeric_names)] = column
        numeric_names.append(name)
    if not numeric_names:
        raise DataError(f"{source}: no numeric feature columns (columns: {', '.join(header)})")
    values = values[:, : len(numeric_names)]

    labels = None
    if label_index is not None:
        try:
            labels = np.array([_to_float(c) for c in columns[label_index]], dtype=np.float64)
        except ValueError:
            raise DataError(f"{source}: label column {label_column!r} must hold 0/1 values") from None
        if not np.isin(labels, (0.0, 1.0)).all():
            raise DataError(f"{source}: label column {label_column!r} must hold only 0 and 1")
        labels = labels.astype(np.int8)

    with np.errstate(over="ignore"):  # beyond float32 becomes inf, which the nan policy handles
        frame = Frame(source, timestamps, values.astype(np.float32), numeric_names, labels, device)
    return _apply_nan_policy(frame, values, nan_policy, lines, source)


def _is_number(cell: str) -> bool:
    try:
        _to_float(cell)
    except ValueError:
        return False
    return True


def _apply_nan_policy(frame: Frame, values: np.ndarray, policy: str, lines: list[int], path: str) -> Frame:
    """`values` are the cells as read (float64), `frame.values` the float32 the model reads."""
    finite = np.isfinite(frame.values).all(axis=1)
    if finite.all():
        return frame
    if policy == "fail":
        row, col = np.argwhere(~np.isfinite(frame.values))[0]
        raise DataError(f"{path}: line {lines[row]} column {frame.features[col]!r}: non-finite value {values[row, col]} "
                        f"(NaN, inf or beyond float32's range; fix the data or pass --nan drop to skip such rows)")
    log.warning("%s: dropped %d row(s) with NaN/inf feature values", path, int((~finite).sum()))
    return frame.select(finite)



def split_at_gaps(frame: Frame, max_gap: float) -> list[Frame]:
    """The runs of `frame` between steps longer than `max_gap` seconds: a window glued across
    a gap in the history (an outage, a stopped logger) would teach the model a jump, so a gap
    ends a run as the end of a CSV file does (the live service restarts a device's window at
    such a gap likewise: `stream.gap_factor`)."""
    cuts = np.flatnonzero(np.diff(frame.timestamps) > max_gap) + 1
    if not len(cuts):
        return [frame]
    rows = np.arange(len(frame))
    bounds = [0, *cuts.tolist(), len(frame)]
    return [frame.select((rows >= start) & (rows < end)) for start, end in zip(bounds, bounds[1:])]
