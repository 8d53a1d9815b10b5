"""Topic rules: which subscription filters can carry a device id, and the bounded memory of
what was decided per topic.

`topic_problem` is shared by config validation (so `check-config` names a bad `mqtt.topic`)
and the payload parser (so a parser cannot be built on one). It imports nothing heavy: the
config module loads it without numpy or paho.

`TopicMemory` is the one per-topic cache of the message path. The parser remembers each
topic's device id and the router each topic's route, because working either out again costs a
split and a regex (or a glob per route) on every message. The topics a service sees are
bounded by its devices, but a misbehaving client can publish endlessly many, so the memory is
emptied when full instead of growing: an honest topic is then worked out once more.
"""

from __future__ import annotations

from typing import Generic, TypeVar

TOPIC_MEMORY_SIZE = 16384  # topics remembered before the memory is emptied

V = TypeVar("V")


class TopicMemory(dict[str, V], Generic[V]):
    """topic -> what was worked out for it. Reads are plain `dict.get` (C speed on the hot
    path); `remember` is the only way in, and keeps the size bounded."""

    def remember(self, topic: str, value: V) -> V:
        if len(self) >= TOPIC_MEMORY_SIZE:
            self.clear()
        self[topic] = value
        return value


def topic_problem(pattern: str, device_level: int) -> str | None:
    """Why `pattern` (an MQTT subscription filter) cannot carry a device id at
    `device_level`, or None if it can."""
    levels = pattern.split("/")
    for i, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            return f"{pattern!r}: a wildcard must fill a whole topic level"
        if level == "#" and i != len(levels) - 1:
            return f"{pattern!r}: '#' must be the last topic level"
    if device_level < 0:
        return f"device level must be >= 0, got {device_level}"
    if device_level >= len(levels):
        if levels[-1] == "#":
            return None
        return f"{pattern!r} has {len(levels)} levels, so there is no level {device_level} for the device id"
    if levels[device_level] not in ("+", "#"):
        return f"level {device_level} of {pattern!r} is {levels[device_level]!r}, not a wildcard ('+' or '#')"
    return None
