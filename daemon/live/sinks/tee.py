"""A sink wrapper that also keeps every event in memory, for the demo's summary and plot."""

from __future__ import annotations

import threading
from collections import defaultdict

from daemon.live.events import ScoreEvent
from daemon.live.sinks.base import Sink


class RecordingSink:
    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self._events: dict[str, list[ScoreEvent]] = defaultdict(list)
        self._lock = threading.Lock()

    @property
    def healthy(self) -> bool:
        return self.inner.healthy

    def status(self) -> dict[str, object]:
        return self.inner.status()

    def submit(self, events: list[ScoreEvent]) -> None:
        with self._lock:
            for event in events:
                self._events[event.device].append(event)
        self.inner.submit(events)

    def close(self, timeout: float = 10.0) -> bool:
        return self.inner.close(timeout)

    def events_of(self, device: str) -> list[ScoreEvent]:
        with self._lock:
            return sorted(self._events.get(device, []), key=lambda e: e.ts)
