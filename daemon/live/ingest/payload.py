"""Turn one message into (device, ts, values) or a `Rejected` with a bounded reason.

This runs on the ingest thread for every message, so the common case is kept short (the
message path's cost is measured by bench/throughput.py):
- the device id comes from the topic by splitting on "/" and one regex, once per topic:
  topics that passed are remembered (`TopicMemory`), so a known topic is one dict lookup;
- a UTF-8 JSON object is decoded by the json module's C scanner directly, skipping the
  encoding detection and wrapper layers of `json.loads`; anything unusual (another encoding,
  a BOM, trailing data, an error) goes through `json.loads` itself, so what is accepted and
  every error message stay exactly its own;
- features are fetched with one `itemgetter` and checked in one loop; a value that fails
  the check sends the message through the step-by-step validation, which names the first
  offending feature.

Wire format: topic `sensors/<device>/data` (configurable), payload
`{"ts": <epoch seconds or RFC 3339>, "<feature>": <number>, ...}`. A missing `ts` means the
arrival time; extra fields are ignored; booleans are not numbers. With a `device_field` (the
Kafka source's `kafka.device_field`), a payload that names a device in that field must name the
one its address does (else `key_mismatch`): checked on the one decode of the payload, so a
bridge that adds the device to every payload costs a dict lookup, not a second decode.

Clock rule: a device clock may lag (late data is accepted, the ring buffer orders it), but
a timestamp before 1970 or more than `max_future_seconds` ahead of this host's clock is
rejected as `bad_timestamp`. One device with a clock set to 2099 would otherwise poison its
own window ordering (every later, correct reading would look out of order) and the sink's
time axis.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter

import numpy as np

from daemon.live.ingest.topics import TopicMemory, topic_problem

DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_MIN = -FLOAT32_MAX
_MISSING = object()
# Epoch seconds this large are almost certainly milliseconds (year 33658 in seconds).
_MILLIS_HINT = 1e12
_EPOCH_LIMIT = 1e18  # far beyond any clock, but large enough to recognise milliseconds
_scan_json = json.JSONDecoder().scan_once  # the C scanner behind json.loads


def decode_json(payload: bytes) -> object:
    """`json.loads(payload)`, faster for the usual UTF-8 document: same result, same errors.

    The scan runs on the UTF-8 reading of any payload, with no check of its first bytes first:
    whatever json.loads would read otherwise (a BOM, UTF-16/32, which put a NUL among the first
    two bytes) fails as UTF-8 or stops the scan short of the end (JSON allows no NUL outside
    strings, nor control characters inside them), so it goes to json.loads itself."""
    try:
        text = payload.decode("utf-8", "surrogatepass")  # what json.loads does for UTF-8
        doc, end = _scan_json(text, 0)
    except Exception:  # noqa: BLE001 - json.loads below raises the real error, message and all
        pass
    else:
        if end == len(text):
            return doc
    return json.loads(payload)  # whitespace around the document, BOM, UTF-16/32, errors


@dataclass(frozen=True)
class Rejected:
    """Why a message (or a reading) was refused. `reason` is one of metrics.MESSAGE_RESULTS,
    `detail` is for the log line and may quote the offending input."""

    reason: str
    detail: str


def _parse_timestamp(value: object, now: float, max_future_seconds: float) -> float | str:
    """Epoch seconds from a JSON `ts`, or the reason it is unusable."""
    kind = type(value)
    if kind is int or kind is float:
        if not 0 <= value < _EPOCH_LIMIT:  # NaN, inf, negatives and ints too big for a float all fail
            return f"ts {value!r:.40} is not epoch seconds since 1970"
        ts = float(value)
    elif kind is str:
        text = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return f"ts {value[:40]!r} is not RFC 3339"
        if parsed.tzinfo is None:
            return f"ts {value[:40]!r} has no UTC offset (RFC 3339 needs 'Z' or '+hh:mm')"
        ts = parsed.timestamp()
        if ts < 0:
            return f"ts {value[:40]!r} is before 1970"
    else:
        return f"ts must be epoch seconds or an RFC 3339 string, got {kind.__name__}"
    if ts > now + max_future_seconds:
        hint = " (milliseconds? ts must be in seconds)" if ts > _MILLIS_HINT else ""
        return f"ts {ts:.3f} is {ts - now:.0f}s in the future (limit {max_future_seconds:g}s){hint}"
    return ts


# A parsed reading: (device id, data time in epoch seconds, feature values in model order).
Fields = tuple[str, float, tuple[float, ...]]


class PayloadParser:
    """Validates topic and payload against the model's features, in model order."""

    def __init__(self, features: list[str], topic: str = "sensors/+/data", device_level: int = 1,
                 max_payload_bytes: int = 65536, max_future_seconds: float = 300.0,
                 device_field: str | None = None) -> None:
        """`device_field`: the payload field that, when present and not null, must equal the
        device id of the address (None: no such field; MQTT has none)."""
        problem = topic_problem(topic, device_level)
        if problem is not None:
            raise ValueError(f"topic: {problem}")
        if not features:
            raise ValueError("features: the model has no features")
        self.features = tuple(features)
        self.max_payload_bytes = max_payload_bytes
        self.max_future_seconds = max_future_seconds
        self.device_field = device_field
        self._device_level = device_level
        levels = topic.split("/")
        self._open_ended = levels[-1] == "#"
        self._n_levels = len(levels) - 1 if self._open_ended else len(levels)
        self._literals = tuple((i, level) for i, level in enumerate(levels) if level not in ("+", "#"))
        self._topic = topic
        self._devices: TopicMemory[str] = TopicMemory()  # topic -> device id, for topics that passed
        self._device_of_known = self._devices.get
        get = itemgetter(*self.features)
        self._get_values = get if len(self.features) > 1 else (lambda doc: (get(doc),))

    def parse_fields(self, topic: str, payload: bytes, now: float) -> Fields | Rejected:
        """The reading a message carries, or why it is refused. The values tuple goes to
        `DeviceBuffers.push_values` as it is."""
        if len(payload) > self.max_payload_bytes:
            return Rejected("oversized", f"{len(payload)} bytes > limit {self.max_payload_bytes}")
        device = self._device_of_known(topic)
        if device is None:
            device = self.device_of(topic)
            if type(device) is Rejected:
                return device
        try:
            doc = decode_json(payload)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            return Rejected("invalid_json", f"device {device}: {type(exc).__name__}: {str(exc)[:120]}")
        if type(doc) is not dict:
            return Rejected("invalid_json", f"device {device}: payload is a JSON {type(doc).__name__}, not an object")
        if self.device_field is not None:
            named = doc.get(self.device_field)
            if named is not None and named != device:
                return Rejected("key_mismatch", f"device {device}: the payload's {self.device_field!r} names "
                                                f"{str(named)[:80]!r}")

        raw_ts = doc.get("ts", _MISSING)
        if type(raw_ts) is float and 0.0 <= raw_ts <= now + self.max_future_seconds:
            ts = raw_ts  # the usual case, decided exactly as _parse_timestamp would
        elif raw_ts is _MISSING:
            ts = now
        else:
            ts = _parse_timestamp(raw_ts, now, self.max_future_seconds)
            if type(ts) is str:
                return Rejected("bad_timestamp", f"device {device}: {ts}")

        try:
            values = self._get_values(doc)
        except KeyError:
            return self._check_values(device, doc)
        for v in values:
            # Exact types (bool is not a number); NaN fails both comparisons, inf and float32
            # overflow fail one.
            if (type(v) is not float and type(v) is not int) or not _FLOAT32_MIN <= v <= FLOAT32_MAX:
                return self._check_values(device, doc)
        return device, ts, values

    def device_of(self, topic: str) -> str | Rejected:
        """The device id of a topic not seen before, or why the topic is unusable."""
        levels = topic.split("/")
        if len(levels) < self._n_levels if self._open_ended else len(levels) != self._n_levels:
            return Rejected("bad_topic", f"topic {topic[:120]!r} does not match {self._topic!r}")
        for i, literal in self._literals:
            if levels[i] != literal:
                return Rejected("bad_topic", f"topic {topic[:120]!r} does not match {self._topic!r}")
        if self._device_level >= len(levels):
            return Rejected("bad_topic", f"topic {topic[:120]!r} has no device level")
        device = levels[self._device_level]
        if DEVICE_ID.fullmatch(device) is None:
            return Rejected("bad_device_id", f"device id {device[:80]!r} is not [A-Za-z0-9][A-Za-z0-9_.:-]{{0,63}}")
        return self._devices.remember(topic, device)

    def _check_values(self, device: str, doc: dict) -> Rejected:
        """Why the features of `doc` are unusable: the first offending one, in model order."""
        values = []
        for name in self.features:
            v = doc.get(name, _MISSING)
            kind = type(v)
            if kind is float or kind is int:
                # NaN fails both comparisons; inf and float32 overflow fail one.
                if not -FLOAT32_MAX <= v <= FLOAT32_MAX:
                    return Rejected("non_finite", f"device {device}: {name}={v!r:.40} is not a finite float32")
            elif v is _MISSING:
                return Rejected("missing_feature", f"device {device}: no {name!r}")
            else:
                return Rejected("invalid_value", f"device {device}: {name} is a {kind.__name__}, not a number")
            values.append(v)
        raise AssertionError(f"device {device}: features passed the step-by-step check but not the fast one")
