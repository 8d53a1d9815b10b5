"""Per-device alert hysteresis.

A single window above threshold is usually noise; an alert that flaps on and off every
window pages nobody usefully. A device enters alert after `enter_after` consecutive anomalous
windows and leaves it after `leave_after` consecutive normal ones.

Only devices in alert or part-way through a streak are stored: a quiet device costs nothing,
so the table stays small however many devices there are. Updates come from the worker
thread and `forget` from ingest (device eviction), hence the lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class _State:
    alert: bool = False
    streak: int = 0  # consecutive windows that disagree with `alert`


class AlertTracker:
    def __init__(self, enter_after: int, leave_after: int) -> None:
        if enter_after < 1 or leave_after < 1:
            raise ValueError(f"enter_after and leave_after must be >= 1, got {enter_after}, {leave_after}")
        self.enter_after = enter_after
        self.leave_after = leave_after
        self._states: dict[str, _State] = {}
        self._active = 0
        self._lock = threading.Lock()

    def update(self, device: str, anomaly: bool) -> tuple[bool, bool]:
        """Feed one scored window. Returns (device is in alert, it entered alert just now)."""
        with self._lock:
            state = self._states.get(device)
            if state is None:
                if not anomaly:
                    return False, False
                state = self._states[device] = _State()
            if anomaly != state.alert:
                state.streak += 1
                if state.streak >= (self.leave_after if state.alert else self.enter_after):
                    state.alert = anomaly
                    state.streak = 0
                    self._active += 1 if anomaly else -1
                    if anomaly:
                        return True, True
            else:
                state.streak = 0
            if not state.alert and state.streak == 0:
                del self._states[device]
            return state.alert, False

    def forget(self, device: str) -> None:
        """Drop a device's state (it was evicted as idle), clearing its alert if any."""
        with self._lock:
            state = self._states.pop(device, None)
            if state is not None and state.alert:
                self._active -= 1

    def active_count(self) -> int:
        return self._active
