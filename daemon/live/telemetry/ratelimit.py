"""Rate-limited logging for hot paths.

A broken device can send thousands of bad messages a second; logging each one would fill the
disk and slow the MQTT network thread. `RateLimitedLog` writes at most one line per key per
interval and reports how many similar lines it held back, so nothing is hidden, only summarised.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class _KeyState:
    last_logged: float
    suppressed: int = 0


class RateLimitedLog:
    """At most one record per `key` every `interval` seconds; the next record that gets through
    says how many were suppressed. Thread-safe: ingest and worker threads may share one.

    The key is the bounded thing being reported (a result label, an error class), never a
    device id from the wire, so the key table cannot grow without bound."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}
        self._lock = threading.Lock()

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log `msg % args` unless `key` was logged less than `interval` ago. Returns whether it
        was written."""
        now = self._clock()
        with self._lock:
            state = self._keys.get(key)
            if state is not None and now - state.last_logged < self._interval:
                state.suppressed += 1
                return False
            suppressed = state.suppressed if state is not None else 0
            self._keys[key] = _KeyState(now)
        if suppressed:
            msg = f"{msg} (+{suppressed} similar suppressed since the last report)"
        self._logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        return self.log(logging.ERROR, key, msg, *args, exc_info=exc_info)
