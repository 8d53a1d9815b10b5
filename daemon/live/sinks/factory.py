"""The sink a config asks for: InfluxDB, else a local file, else none (metrics only)."""

from __future__ import annotations

import logging
from pathlib import Path

from daemon.live.config import Config
from daemon.live.events import ScoreEvent, settle
from daemon.live.sinks.base import Sink
from daemon.live.sinks.file import FileSink
from daemon.live.sinks.influx import InfluxSink
from daemon.live.sinks.spool import Spool
from daemon.live.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class DiscardSink:
    """No store configured: scores only move the metrics. Logged once at start."""

    healthy = True

    def submit(self, events: list[ScoreEvent]) -> None:
        settle(event.receipt for event in events)

    def status(self) -> dict[str, object]:
        return {"healthy": True, "sink": "none"}

    def close(self, timeout: float = 10.0) -> bool:
        return True


def build_sink(config: Config, metrics: Metrics) -> Sink:
    influx = config.influxdb
    if influx.enabled:
        return InfluxSink(influx, Spool(Path(influx.spool_dir), influx.spool_max_bytes), metrics)
    if config.local_store.path:
        return FileSink(config.local_store.path, metrics)
    log.warning("neither influxdb.enabled nor local_store.path is set: scores go to metrics only")
    return DiscardSink()
