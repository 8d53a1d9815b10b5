"""The daemon under load: the real Service from a generated config, driven by JSON lines on stdin.

The only bench addition is the FileSink's `on_written` hook (`WriteTiming`), noting when each
event's line was written and flushed; with InfluxDB enabled the service's own InfluxSink runs
unchanged and its written points are read from the metrics.
"""

from __future__ import annotations

import json
import sys
from array import array

from .. import daemon_api
from ..common import cpu_seconds, hwm_mb, reply, rss_mb
from .timing import MetricTiming, WriteTiming


def stats(service: daemon_api.Service, timing: WriteTiming | MetricTiming) -> dict:
    """Counters, sink progress and the process's memory and CPU, as one answer."""
    c = daemon_api.read_counters(service)
    if isinstance(timing, MetricTiming):
        timing.saw(c.sink_written)
    return {
        "ok": c.ok, "rejected": c.rejected, "scored": c.scored, "dropped": c.dropped,
        "sink_events": timing.count, "last_write": timing.last_write,
        "last_ok": c.last_ok, "queued": c.queued, "devices": c.devices,
        "rss_mb": rss_mb(), "hwm_mb": hwm_mb(), "cpu_s": cpu_seconds(),
        "torch_imported": "torch" in sys.modules,
    }


def latency_figures(timing: WriteTiming | MetricTiming) -> dict:
    """Percentiles in ms of the publish-to-sink latencies recorded so far."""
    import numpy as np

    lat = np.frombuffer(timing.latencies, dtype=np.float64) * 1000 if len(timing.latencies) else np.zeros(0)
    figures: dict = {"n": int(len(lat))}
    if len(lat):
        figures.update({f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)})
        figures["max"] = float(lat.max())
    return figures


def serve_commands(service: daemon_api.Service, timing: WriteTiming | MetricTiming) -> None:
    """"record" (on/off) starts or stops keeping latencies, "latency" answers their
    percentiles, "stop" shuts the service down; anything else answers the stats."""
    for line in sys.stdin:
        command = json.loads(line)
        cmd = command["cmd"]
        if cmd == "record":
            timing.latencies = array("d")
            timing.recording = bool(command["on"])
            reply({"recording": timing.recording})
        elif cmd == "latency":
            reply(latency_figures(timing))
        elif cmd == "stop":
            service.shutdown(10)
            reply(stats(service, timing))
            return
        else:
            reply(stats(service, timing))
    service.shutdown(5)


def role_daemon(spec: dict) -> None:
    write_timing = WriteTiming()
    service, writes_influx = daemon_api.build_service(spec["config"], write_timing)
    timing = MetricTiming() if writes_influx else write_timing
    service.start()
    if not daemon_api.wait_subscribed(service, 20):
        reply({"error": "daemon: not subscribed within 20 s"})
        service.shutdown(2)
        return
    reply({"ready": True, **stats(service, timing)})
    serve_commands(service, timing)
