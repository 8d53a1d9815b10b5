"""Window flags -> alert state: the hysteresis every consumer of a bundle applies the same way.

A single window above threshold is usually noise, and an alert that flaps on and off pages
nobody usefully. `AlertSpec` (stored in bundle.json under `alert`) says how many consecutive
anomalous windows open an alert (`enter_after`) and how many consecutive normal windows close
it (`leave_after`). `Hysteresis` is the per-device state machine, one `step` per scored window
in time order; the live daemon keeps one per device, and offline evaluation (`alert_flags`)
runs the very same `step` over a file's windows, so the two cannot disagree.

Pure Python and numpy: no torch, no threads, no clocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class AlertSpec:
    """Hysteresis settings; the default (1, 1) means "alert = this window's flag"."""

    enter_after: int = 1
    leave_after: int = 1

    def __post_init__(self) -> None:
        for name in ("enter_after", "leave_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def to_dict(self) -> dict[str, int]:
        return {"enter_after": self.enter_after, "leave_after": self.leave_after}

    @classmethod
    def from_dict(cls, data: Any) -> AlertSpec:
        """Validate on load (bundle.json is edited by hand); missing keys take the defaults."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"enter_after", "leave_after"})
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)} (known: enter_after, leave_after)")
        return cls(data.get("enter_after", 1), data.get("leave_after", 1))


class Hysteresis:
    """One device's alert state. `step(anomalous)` consumes the next window's flag and
    returns whether the device is in alert after it."""

    __slots__ = ("spec", "alert", "streak")

    def __init__(self, spec: AlertSpec) -> None:
        self.spec = spec
        self.alert = False
        self.streak = 0  # consecutive windows disagreeing with `alert`

    def step(self, anomalous: bool) -> bool:
        if bool(anomalous) == self.alert:
            self.streak = 0
            return self.alert
        self.streak += 1
        if self.streak >= (self.spec.leave_after if self.alert else self.spec.enter_after):
            self.alert = not self.alert
            self.streak = 0
        return self.alert

    def reset(self) -> None:
        self.alert, self.streak = False, 0


def alert_flags(flags: np.ndarray, spec: AlertSpec) -> np.ndarray:
    """Alert state after each window of one device's time-ordered window flags (int8 0/1)."""
    flags = np.asarray(flags)
    if spec.enter_after == 1 and spec.leave_after == 1:
        return (flags != 0).astype(np.int8)
    state = Hysteresis(spec)
    return np.fromiter((state.step(f) for f in (flags != 0).tolist()), dtype=np.int8, count=len(flags))
