"""Per-device ring buffers that turn a stream of readings into model windows.

Windows follow `daemon.core.windowing` exactly: the first window ends at a device's `window`-th
sample, then one every `stride` samples, so live scores line up with offline evaluation.

Each device owns a preallocated ring of `window` float32 rows in a bytearray (window x
features x 4 bytes). Sample `i` goes to row `i % window`: it is packed to float32 bytes once
(`struct`, the same round-to-nearest as numpy's cast) straight into its row (`pack_into`),
cheaper than a numpy row assignment from a tuple. Emitting a window joins the two halves of
the ring, oldest first, into a new bytearray viewed as a `[window, features]` float32 array
(one `np.ndarray` call over the buffer): about as cheap as copying one contiguous slice, so
the ring needs no second copy of each sample.

Gap rule: when `stream.sample_period_seconds` is set and a reading arrives more than
`gap_factor * sample_period_seconds` (data time) after the device's previous one, the device's
window restarts from that reading. A window spanning the gap would glue two unrelated stretches
of signal together and score as an anomaly that is only a network outage.

Clock reset rule: a reading stamped before the device's previous one is dropped as
`out_of_order` (or `duplicate` when equal), unless it is more than `clock_reset_seconds`
earlier. Then the device's clock was set back (an RTC reset, an NTP step after a wrong time):
the reading is accepted, the window restarts from it and `anomalyd_clock_resets_total` counts
it. Without the rule such a device would be dropped silently until its clock caught up with
the wrong time again, minutes or years later.

Threading: `push_values` runs on the ingest thread, the only one that adds devices;
`evict_idle` and `drop_devices` may run on any thread. The device table needs no lock of its
own: each of its changes is one dict operation (atomic), a device removed while a reading is
being written to its ring loses that reading as if it had arrived just before the removal
(its window restarts either way), and a lock taken for every reading would cost about a tenth
of the message path. `push_values` itself sweeps idle devices about every
`idle_evict_seconds / 4` (arrival time), so silent devices free their slots even if nobody
calls `evict_idle`.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from daemon.live.config import LimitsConfig, StreamConfig
from daemon.live.events import WindowJob
from daemon.live.ingest.payload import Rejected
from daemon.live.telemetry.metrics import Metrics
from daemon.live.telemetry.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)
_FLOAT32 = np.dtype(np.float32)


@dataclass(slots=True)
class _Device:
    ring: bytearray  # float32 [window, features]; the row at byte `at` is the next to write
    at: int = 0  # byte offset of the next write (the oldest row), in [0, len(ring))
    until_emit: int = 0  # samples still needed before the next window
    last_ts: float = float("-inf")  # data time of the previous reading
    last_seen: float = 0.0  # arrival time of the previous reading, for idle eviction


class DeviceBuffers:
    def __init__(self, window: int, n_features: int, stream: StreamConfig, limits: LimitsConfig, metrics: Metrics,
                 *, on_evict: Callable[[str], None] | None = None, route: str = "") -> None:
        """`stream` is the route's stream settings with `stride` resolved (the config's, else
        the bundle's) and `sample_period_seconds` None when gaps are not checked; `limits`
        bounds the device table. `on_evict(device)` lets per-device state elsewhere (alert
        hysteresis) forget a device together with its buffer. `route` is stamped on every
        window, so the worker knows which model scores it. `len()` is the device count."""
        if stream.stride is None:
            raise ValueError("stream.stride must be resolved to the bundle's stride before building buffers")
        if window < 1 or stream.stride < 1 or n_features < 1:
            raise ValueError(f"window, stride and n_features must be >= 1, got {window}, {stream.stride}, "
                             f"{n_features}")
        self.window = window
        self.stride = stream.stride
        self.n_features = n_features
        self.stream = stream
        period = stream.sample_period_seconds
        self.max_gap = None if period is None else stream.gap_factor * period
        self.clock_reset_seconds = stream.clock_reset_seconds
        self.max_devices = limits.max_devices
        self.idle_evict_seconds = limits.idle_evict_seconds
        self._log = RateLimitedLog(log)
        self._metrics = metrics
        self._on_evict = on_evict
        self._devices: dict[str, _Device] = {}
        # Devices of the buffers these replace (`carry_over`) not heard from since, by arrival time
        # of their last reading: evicted like idle devices, so their state elsewhere goes too.
        self._carried: dict[str, float] = {}
        self._pack_into = struct.Struct(f"={n_features}f").pack_into
        self._row_bytes = 4 * n_features
        self._ring_bytes = window * n_features * 4
        self._shape = (window, n_features)
        self._sweep_every = limits.idle_evict_seconds / 4
        self._next_sweep = float("-inf")  # arrival time of the next sweep: the first reading
        self._route = route

    def __len__(self) -> int:
        return len(self._devices)

    def push_values(self, device: str, ts: float, values: Sequence[float], received: float
                    ) -> WindowJob | Rejected | None:
        """Append one reading (`values`: `n_features` numbers in model order, as the parser
        returns them; `ts` data time and `received` arrival time, epoch seconds). Returns a
        window when this reading completes one."""
        if received >= self._next_sweep:
            self._next_sweep = received + self._sweep_every
            self.evict_idle(received)
        dev = self._devices.get(device)
        if dev is None:
            if len(self._devices) >= self.max_devices:
                return Rejected("too_many_devices", f"device {device}: {self.max_devices} devices already")
            dev = self._devices[device] = _Device(bytearray(self._ring_bytes), until_emit=self.window)
            if self._carried:
                self._carried.pop(device, None)
        elif ts <= dev.last_ts:
            if ts == dev.last_ts:
                return Rejected("duplicate", f"device {device}: ts {ts} repeated")
            if dev.last_ts - ts <= self.clock_reset_seconds:
                return Rejected("out_of_order", f"device {device}: ts {ts} < previous {dev.last_ts}")
            dev.until_emit = self.window
            self._metrics.clock_resets.inc()
            self._log.warning("clock_reset", "device %s: clock set back by %.0f s; its window restarts",
                              device, dev.last_ts - ts)
        elif self.max_gap is not None and ts - dev.last_ts > self.max_gap:
            dev.until_emit = self.window
            self._metrics.window_restarts.inc()
        dev.last_ts = ts
        dev.last_seen = received
        ring = dev.ring
        at = dev.at
        self._pack_into(ring, at, *values)  # float32 bytes; the parser checked the range
        at += self._row_bytes  # the oldest sample's row: where the next one will go
        if at == self._ring_bytes:
            at = 0
        dev.at = at
        left = dev.until_emit - 1
        if left:
            dev.until_emit = left
            return None
        dev.until_emit = self.stride
        window = np.ndarray(self._shape, _FLOAT32, ring[at:] + ring[:at])  # one call: frombuffer + reshape
        return WindowJob(device, ts, window, received, self._route)

    def carry_over(self, old: DeviceBuffers) -> None:
        """Take over the idle tracking of the buffers these replace (a reload changed the
        route's window, features or stream settings: every window restarts). Their devices'
        alert states live on, so a device that never sends again must still be evicted, with
        its state, once it has been silent `idle_evict_seconds` since its last reading there."""
        carried = dict(_snapshot(old._carried))
        carried.update((device, dev.last_seen) for device, dev in _snapshot(old._devices))
        self._carried = carried

    def drop_devices(self, devices: Iterable[str]) -> int:
        """Forget `devices` (buffer, and alert state through `on_evict`) because another instance
        scores them from now on (a Kafka partition moved away). Not counted as evictions: their
        readings are read again by the new owner. Returns how many it knew (with a buffer, or
        carried over by `carry_over`)."""
        devices = list(devices)
        dropped = [device for device in devices if self._devices.pop(device, None) is not None]
        dropped += [device for device in devices if self._carried.pop(device, None) is not None]
        if self._on_evict is not None:
            for device in dropped:
                self._on_evict(device)
        return len(dropped)

    def evict_idle(self, now: float) -> int:
        """Drop devices whose last reading arrived more than `idle_evict_seconds` before `now`
        (arrival time, epoch seconds). Returns how many were dropped."""
        cutoff = now - self.idle_evict_seconds
        table = self._devices
        # Scan a snapshot, so a device added meanwhile does not break the scan; pop, so a device
        # another thread removed meanwhile is not counted twice.
        idle = [device for device, dev in _snapshot(table) if dev.last_seen < cutoff]
        idle = [device for device in idle if table.pop(device, None) is not None]
        if self._carried:
            gone = [device for device, seen in _snapshot(self._carried) if seen < cutoff]
            idle += [device for device in gone if self._carried.pop(device, None) is not None]
        if idle:
            self._metrics.devices_evicted.inc(len(idle))
            if self._on_evict is not None:
                for device in idle:
                    self._on_evict(device)
        return len(idle)


def _snapshot(table: dict) -> list:
    """`table`'s items as a list, taken again if another thread changed the table meanwhile:
    copying is C code, but it allocates, and a garbage collection it sets off can run Python code
    and let another thread in."""
    while True:
        try:
            return list(table.items())
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
