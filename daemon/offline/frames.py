"""Load sensor history from CSV into a `Frame`: timestamps, named feature columns, labels.

One file is one *run*: windows are cut inside a frame and never across two frames, because
two CSV exports are not contiguous in time even when they look adjacent.
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
DEFAULT_LABEL_COLUMN = "anomaly"
NAN_POLICIES = ("fail", "drop")


@dataclass
class Frame:
    """A time-ordered block of readings from one source (a CSV file or one query)."""

    source: str
    timestamps: np.ndarray  # float64 epoch seconds, shape [n]
    values: np.ndarray  # float32, shape [n, len(features)]
    features: list[str]
    labels: np.ndarray | None = None  # int8 0/1, shape [n], when the data is labelled

    def __len__(self) -> int:
        return len(self.timestamps)

    def select(self, mask: np.ndarray) -> Frame:
        """Rows where `mask` is true, as a new frame from the same source."""
        labels = None if self.labels is None else self.labels[mask]
        return replace(self, timestamps=self.timestamps[mask], values=self.values[mask], labels=labels)

    def head(self, n: int) -> Frame:
        return self.select(np.arange(len(self)) < n)

    def tail_from(self, n: int) -> Frame:
        return self.select(np.arange(len(self)) >= n)


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
    """Read one CSV run.

    `features=None` takes every numeric column except time, label and `ignore_columns`; a
    column with no number in it is skipped, a mostly numeric one with a bad cell is an error.
    `label_column` is used when present (a missing default label column is not an error).
    Empty feature cells and cells that are not a finite float32 (NaN, inf, beyond +-3.4e38: the
    values live ingest rejects as `non_finite`) follow `nan_policy`: "fail" names the first bad
    cell, "drop" removes those rows and logs how many; neither guesses a value.
    """
    path = Path(path)
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
    body = [row for row in rows[1:] if any(cell.strip() for cell in row)]
    if not body:
        raise DataError(f"{path}: no data rows after the header")
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {number} has {len(row)} fields, header has {len(header)}")

    time_index = _pick_time_column(header, time_column, path)
    label_index = header.index(label_column) if label_column in header else None
    explicit = features is not None
    if explicit:
        missing = [name for name in features if name not in header]
        if missing:
            raise DataError(f"{path}: feature column(s) {', '.join(map(repr, missing))} not found "
                            f"(columns: {', '.join(header)})")
        feature_names = list(features)
    else:
        skip = {time_index, label_index} | {header.index(c) for c in ignore_columns if c in header}
        feature_names = [name for i, name in enumerate(header) if i not in skip]

    columns = list(zip(*body))
    timestamps = np.empty(len(body), dtype=np.float64)
    for i, cell in enumerate(columns[time_index]):
        try:
            timestamps[i] = parse_timestamp(cell)
        except ValueError:
            raise DataError(f"{path}: line {i + 2} column {header[time_index]!r}: "
                            f"cannot parse time {cell!r} (epoch seconds or ISO 8601)") from None

    backwards = np.flatnonzero(np.diff(timestamps) < 0)
    if len(backwards):
        raise DataError(f"{path}: line {backwards[0] + 3} column {header[time_index]!r}: time goes backwards "
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
            raise DataError(f"{path}: line {bad + 2} column {name!r}: not a number: {cells[bad]!r}") from None
        values[:, len(numeric_names)] = column
        numeric_names.append(name)
    if not numeric_names:
        raise DataError(f"{path}: no numeric feature columns (columns: {', '.join(header)})")
    values = values[:, : len(numeric_names)]

    labels = None
    if label_index is not None:
        try:
            labels = np.array([_to_float(c) for c in columns[label_index]], dtype=np.float64)
        except ValueError:
            raise DataError(f"{path}: label column {label_column!r} must hold 0/1 values") from None
        if not np.isin(labels, (0.0, 1.0)).all():
            raise DataError(f"{path}: label column {label_column!r} must hold only 0 and 1")
        labels = labels.astype(np.int8)

    with np.errstate(over="ignore"):  # beyond float32 becomes inf, which the nan policy handles
        frame = Frame(str(path), timestamps, values.astype(np.float32), numeric_names, labels)
    return _apply_nan_policy(frame, values, nan_policy, path)


def _is_number(cell: str) -> bool:
    try:
        _to_float(cell)
    except ValueError:
        return False
    return True


def _apply_nan_policy(frame: Frame, values: np.ndarray, policy: str, path: Path) -> Frame:
    """`values` are the cells as read (float64), `frame.values` the float32 the model reads."""
    finite = np.isfinite(frame.values).all(axis=1)
    if finite.all():
        return frame
    if policy == "fail":
        row, col = np.argwhere(~np.isfinite(frame.values))[0]
        raise DataError(f"{path}: line {row + 2} column {frame.features[col]!r}: non-finite value {values[row, col]} "
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
