"""Per-device alert hysteresis for the live service.

The state machine itself is `daemon.core.postprocess.Hysteresis`, the one `anomalyd evaluate`
runs offline, so live alerts and offline metrics cannot disagree. This module adds what a
service with many devices needs: only devices in alert or part-way through a streak are
stored (a quiet device costs nothing), a count of active alerts, and a lock, because updates
come from the worker thread and `forget` from ingest (device eviction).

A device taken over from another instance (a Kafka partition that moved) is `seed`ed with the
last change of alert state its previous owner recorded: "it became S at the window ending at
T". A record is a change, so before T the device was in the other state: its windows ending
before T (replayed to refill the window, or read again after a crash) step the hysteresis from
not-S, rebuilding the streak as they go; its window ending at T (or the first after it, if that
one never comes back) leaves it in S whatever that streak says; later windows step on. So an
alert that began long before the replayed span goes on without a second raise, one that cleared
is not raised again from stale readings, and a change the previous owner made in records read
again falls on the same window as there. The seed's own change is not reported as a change:
the previous owner counted and recorded it. A seed takes effect at the device's first window:
a device that never sends again is not counted in alert here, and one silent longer than its
previous owner would have kept it (limits.idle_evict_seconds) starts afresh, as it would have
there.

Each device in alert also keeps the data time its alert began and its latest window's, so the
service can count alerts that have stood over `STANDING_SECONDS` (a stale alarm in ISA-18.2's
terms: an alert nobody acts on, which the false-alarm budget counts as one episode however long
it stands). A seeded alert began at its seed's time.

Each device's sensor-health memory (`daemon.core.sensor_health.HealthState`, the drift sums)
lives here too, beside its alert state, so eviction and a Kafka rebalance forget both at once.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from daemon.core.postprocess import AlertSpec, Hysteresis
from daemon.core.sensor_health import HealthState


_QUIET = (False, False)
# A day of data time: ISA-18.2 calls an alarm standing longer a stale alarm.
STANDING_SECONDS = 86_400.0


@dataclass(slots=True)
class _Seed:
    """A device's alert state as recorded by its previous owner."""

    alert: bool  # the state the device changed to
    as_of: float  # end time of the window that changed it
    expires: float  # monotonic time after which it is dropped unused
    pending: bool = True  # not yet taken up by a window of the device


class AlertTracker:
    def __init__(self, enter_after: int, leave_after: int) -> None:
        self.spec = AlertSpec(enter_after, leave_after)
        self._states: dict[str, Hysteresis] = {}
        self._seeded: dict[str, _Seed] = {}
        self._health: dict[str, HealthState] = {}
        self._in_alert: dict[str, list[float]] = {}  # device in alert -> [data time it began, latest window's]
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
                     ends: Sequence[float] | None = None) -> list[tuple[bool, bool]]:
        """Feed a batch of scored windows in time order (`devices[i]`'s window flagged
        `anomalies[i]`, ending at `ends[i]`; the end times matter only to seeded devices).
        Returns, per window, (device is in alert, its alert state changed just now: raised
        when in alert, cleared when not). One call and one lock per batch, so a quiet device
        costs a dict lookup."""
        out = []
        append = out.append
        seeded = self._seeded
        now = time.monotonic() if seeded else 0.0
        with self._lock:
            for i, (device, anomaly) in enumerate(zip(devices, anomalies)):
                seed = seeded.get(device) if seeded else None
                end = math.nan if ends is None else ends[i]
                if seed is not None and self._take_up(device, seed, now):
                    append(self._step_seeded(device, seed, anomaly, math.inf if ends is None else end))
                else:
                    append(self._step(device, anomaly))
                if out[-1][0]:
                    self._note_in_alert(device, end)
        return out

    def _note_in_alert(self, device: str, end: float) -> None:
        """Keep the times of a device's standing alert (lock held): its start, from the window
        that raised it (or the seed's time), and its latest window."""
        times = self._in_alert.get(device)
        if times is None:
            self._in_alert[device] = [end, end]
        else:
            times[1] = end

    def standing_count(self) -> int:
        """Devices whose alert has stood over `STANDING_SECONDS` of data time."""
        with self._lock:
            return sum(1 for began, latest in self._in_alert.values() if latest - began > STANDING_SECONDS)

    def _step(self, device: str, anomaly: bool) -> tuple[bool, bool]:
        """One window of `device` through its hysteresis (lock held)."""
        state = self._states.get(device)
        if state is None:
            if not anomaly:
                return _QUIET
            state = self._states[device] = Hysteresis(self.spec)
        was = state.alert
        alert = state.step(anomaly)
        if alert != was:
            self._active += 1 if alert else -1
            if not alert:
                self._in_alert.pop(device, None)
        if not alert and state.streak == 0:
            del self._states[device]
        return alert, alert != was

    def _step_seeded(self, device: str, seed: _Seed, anomaly: bool, end: float) -> tuple[bool, bool]:
        """A window of a device whose seed is in force (lock held): one ending before the
        seed's time steps; the one ending at it is left in the seeded state; one ending after
        it (the seed's window never came) steps from the seeded state. Then the seed is done."""
        if end < seed.as_of:
            return self._step(device, anomaly)
        del self._seeded[device]
        if end > seed.as_of:
            self._set(device, seed.alert, seed.as_of)
            return self._step(device, anomaly)
        self._step(device, anomaly)
        self._set(device, seed.alert, seed.as_of)
        return seed.alert, False

    def seed(self, device: str, alert: bool, as_of: float, within: float) -> None:
        """Record that `device` changed to `alert` at the window ending at `as_of` (what its
        previous owner recorded), in force from its first window if that comes within `within`
        seconds."""
        with self._lock:
            self._drop_state(device)
            self._seeded[device] = _Seed(alert, as_of, time.monotonic() + within)

    def _take_up(self, device: str, seed: _Seed, now: float) -> bool:
        """At a seeded device's window: put a pending seed in force, starting the device in the
        state before the recorded change, or drop the seed if it expired. Whether the seed is in
        force (lock held)."""
        if not seed.pending:
            return True
        if now >= seed.expires:
            del self._seeded[device]
            return False
        seed.pending = False
        self._set(device, not seed.alert)
        return True

    def _set(self, device: str, alert: bool, since: float = math.nan) -> None:
        """Put `device` in `alert` with no streak (lock held), an alert begun at `since`."""
        self._drop_state(device, keep_seed=True)
        if alert:
            state = self._states[device] = Hysteresis(self.spec)
            state.alert = True
            self._active += 1
            self._in_alert[device] = [since, since]

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

    def _drop_state(self, device: str, keep_seed: bool = False) -> None:
        """Forget `device`'s alert and, unless told, its seed (lock held)."""
        if not keep_seed:
            self._seeded.pop(device, None)
        state = self._states.pop(device, None)
        self._in_alert.pop(device, None)
        if state is not None and state.alert:
            self._active -= 1

    def active_count(self) -> int:
        return self._active
