"""Per-device alert hysteresis for the live service.

The state machine itself is `daemon.core.postprocess.Hysteresis`, the one `anomalyd evaluate`
runs offline, so live alerts and offline metrics cannot disagree. This module adds what a
service with many devices needs: only devices in alert or part-way through a streak are
stored (a quiet device costs nothing), a count of active alerts, and a lock, because updates
come from the worker thread and `forget` from ingest (device eviction).

A device taken over from another instance (a Kafka partition that moved) is `seed`ed with the
alert state its previous owner recorded as of a window's end time: replayed windows (read
again to refill the window) ending up to that time hold the seeded state instead of stepping
it, so an alert that began long before the replayed span goes on without a second raise, and
one that cleared is not raised again from stale readings. Later windows step from the seeded
state; so does any window scored for the first time, whatever its time, so a device clock set
back cannot freeze the state. A seed takes effect at the device's first window: a device that
never sends again is not counted in alert here, and one silent longer than its previous owner
would have kept it (limits.idle_evict_seconds) starts afresh, as it would have there.

Each device's sensor-health memory (`daemon.core.sensor_health.HealthState`, the drift sums)
lives here too, beside its alert state, so eviction and a Kafka rebalance forget both at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from daemon.core.postprocess import AlertSpec, Hysteresis
from daemon.core.sensor_health import HealthState


@dataclass(slots=True)
class _Seed:
    """A device's alert state as recorded by its previous owner."""

    alert: bool
    as_of: float  # end time of the window the state is as of
    expires: float  # monotonic time after which it is dropped unused
    pending: bool = True  # not yet taken up by a window of the device


class AlertTracker:
    def __init__(self, enter_after: int, leave_after: int) -> None:
        self.spec = AlertSpec(enter_after, leave_after)
        self._states: dict[str, Hysteresis] = {}
        self._seeded: dict[str, _Seed] = {}
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

    def update_batch(self, devices: list[str], anomalies: list[bool],
                     replayed_ends: Sequence[float | None] | None = None) -> list[tuple[bool, bool]]:
        """Feed a batch of scored windows in time order (`devices[i]`'s window flagged
        `anomalies[i]`). Returns, per window, (device is in alert, its alert state changed
        just now: raised when in alert, cleared when not). `replayed_ends[i]` is the end time
        of a replayed window, None for one scored for the first time (no list: none is
        replayed). A replayed window of a seeded device ending at or before its seed's time
        holds the seeded state and changes nothing. One call and one lock per batch, so a
        quiet device costs a dict lookup."""
        quiet = (False, False)
        out = []
        append = out.append
        states = self._states
        seeded = self._seeded
        now = time.monotonic() if seeded else 0.0
        with self._lock:
            for i, (device, anomaly) in enumerate(zip(devices, anomalies)):
                seed = seeded.get(device) if seeded else None
                if seed is not None and self._take_up(device, seed, now):
                    end = None if replayed_ends is None else replayed_ends[i]
                    if end is not None and end <= seed.as_of:
                        append((seed.alert, False))
                        continue
                    del seeded[device]
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
                append((alert, alert != was))
        return out

    def seed(self, device: str, alert: bool, as_of: float, within: float) -> None:
        """Set `device`'s state to `alert` as of the window ending at `as_of` (what the device's
        previous owner recorded), from its first window on if that comes within `within`
        seconds: its replayed windows ending until `as_of` hold that state."""
        with self._lock:
            self._drop_state(device)
            self._seeded[device] = _Seed(alert, as_of, time.monotonic() + within)

    def _take_up(self, device: str, seed: _Seed, now: float) -> bool:
        """At a seeded device's window: put a pending seed in force, or drop it if it expired.
        Whether the seed is in force (lock held)."""
        if not seed.pending:
            return True
        if now >= seed.expires:
            del self._seeded[device]
            return False
        seed.pending = False
        if seed.alert:
            state = self._states[device] = Hysteresis(self.spec)
            state.alert = True
            self._active += 1
        return True

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
        self.forget_devices((device,))

    def forget_devices(self, devices: Iterable[str]) -> None:
        """Drop these devices' states (another instance scores them from now on, or they were
        evicted), clearing their alerts, seeded ones included."""
        with self._lock:
            for device in devices:
                self._health.pop(device, None)
                self._drop_state(device)

    def _drop_state(self, device: str) -> None:
        """Forget `device`'s alert and seed (lock held)."""
        self._seeded.pop(device, None)
        state = self._states.pop(device, None)
        if state is not None and state.alert:
            self._active -= 1

    def active_count(self) -> int:
        return self._active
