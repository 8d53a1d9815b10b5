"""Per-device alert hysteresis for the live service.

The state machine itself is `daemon.core.postprocess.Hysteresis`, the one `anomalyd evaluate`
runs offline, so live alerts and offline metrics cannot disagree. This module adds what a
service with many devices needs: only devices in alert or part-way through a streak are
stored (a quiet device costs nothing), a count of active alerts, and a lock, because updates
come from the worker thread and `forget` from ingest (device eviction).

Each device's sensor-health memory (`daemon.core.sensor_health.HealthState`, the drift sums)
lives here too, beside its alert state, so eviction and a Kafka rebalance forget both at once.
"""

from __future__ import annotations

import threading

from daemon.core.postprocess import AlertSpec, Hysteresis
from daemon.core.sensor_health import HealthState


class AlertTracker:
    def __init__(self, enter_after: int, leave_after: int) -> None:
        self.spec = AlertSpec(enter_after, leave_after)
        self._states: dict[str, Hysteresis] = {}
        self._health: dict[str, HealthState] = {}
        self._active = 0
        self._lock = threading.Lock()

    def set_spec(self, enter_after: int, leave_after: int) -> None:
        """New hysteresis settings (reload); devices keep their current state."""
        spec = AlertSpec(enter_after, leave_after)
        with self._lock:
            self.spec = spec
            for state in self._states.values():
                state.spec = spec

    def update_batch(self, devices: list[str], anomalies: list[bool]) -> list[tuple[bool, bool]]:
        """Feed a batch of scored windows in time order (`devices[i]`'s window flagged
        `anomalies[i]`). Returns, per window, (device is in alert, it entered alert just now).
        One call and one lock per batch, so a quiet device costs a dict lookup."""
        quiet = (False, False)
        out = []
        append = out.append
        states = self._states
        with self._lock:
            for device, anomaly in zip(devices, anomalies):
                state = states.get(device)
                if state is None:
                    if not anomaly:
                        append(quiet)
                        continue
                    state = states[device] = Hysteresis(self.spec)
                was = state.alert
                alert = state.step(anomaly)
                if alert != was:
                    self._active += 1 if alert else -1
                if not alert and state.streak == 0:
                    del states[device]
                append((alert, alert and not was))
        return out

    def health_states(self, devices: list[str]) -> list[HealthState]:
        """Each device's sensor-health memory, a new one for a device not seen before. Only the
        worker thread advances them; `forget` may drop one it still holds, which is harmless."""
        health = self._health
        with self._lock:
            out = []
            for device in devices:
                state = health.get(device)
                if state is None:
                    state = health[device] = HealthState()
                out.append(state)
        return out

    def forget(self, device: str) -> None:
        """Drop a device's state (it was evicted as idle), clearing its alert if any."""
        with self._lock:
            self._health.pop(device, None)
            state = self._states.pop(device, None)
            if state is not None and state.alert:
                self._active -= 1

    def active_count(self) -> int:
        return self._active
