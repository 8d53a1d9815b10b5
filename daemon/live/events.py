"""The data passed between the live stages. Plain dataclasses, so every stage can be
unit-tested with hand-made values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

import numpy as np


class Receipt(Protocol):
    """A source's claim on one window: settled once the sink has written or spooled the window,
    or once a stage dropped it (counted), so the source may commit past its reading (Kafka).
    `replay`: the window's readings were scored and stored before (a new owner refilling its
    windows); it is scored for the alert state only, never written, and needs no settling.
    `source`: the (topic, partition) the reading came from, where its device's alert changes
    are recorded (daemon.live.ingest.alert_state); None when unknown."""

    replay: bool
    source: tuple[str, int] | None

    def settle(self) -> None: ...


def settle(receipts: Iterable[Receipt | None]) -> None:
    """Settle every receipt given (None, from a source without receipts, is skipped)."""
    for receipt in receipts:
        if receipt is not None:
            receipt.settle()


@dataclass(slots=True)
class WindowJob:
    """A full window ready to score, copied out of the device's ring buffer."""

    device: str
    ts_end: float  # data time of the window's last sample
    window: np.ndarray  # float32 [window, features], raw (unscaled)
    received: float  # arrival time of the last sample, for publish-to-sink latency
    route: str = ""  # which model scores it: a key of model.devices, "" for model.path
    receipt: Receipt | None = None  # the Kafka source's claim on the window's last reading; None from MQTT


@dataclass(slots=True)
class ScoreEvent:
    """What the sinks write: one scored window of one device."""

    device: str
    model: str  # bundle name, written as the `model` tag
    ts: float  # data time of the window's last sample
    score: float
    threshold: float
    anomaly: bool  # raw flag: score > threshold
    alert: bool  # debounced state after hysteresis
    feature_errors: dict[str, float]  # feature name -> error, written as err_<feature>
    received: float  # arrival time of the last sample
    reason: str = ""  # why the window is anomalous whatever its score (unscorable or sensor health), or ""
    receipt: Receipt | None = None  # the window's `WindowJob.receipt`, settled by the sink
    shadow: bool = False  # scored by the candidate bundle (model.candidate): written, never alerted on
