"""The daemon at a fixed publishing rate: the highest rate it sustains, and its latency.

A probe publishes R msg/s for a while, round robin over a fleet of devices; the rate is
sustained when every message was accepted, no window was dropped, and everything was in the
sink within a grace time of the publisher's end. The highest sustained rate is bisected from
the rate of a short saturating blast. Latency is publish-to-sink: the publisher writes its
wall-clock send time as the reading's `ts`, the daemon stamps a window's score with the `ts` of
its last reading, the sink takes the time after its write and flush.
"""

from __future__ import annotations

import math
import time

from ..common import WINDOW
from ..harness import Harness
from ..processes import Child

DEVICES = 1000
GRACE = 0.5  # seconds after the publisher's end by which a sustained rate has caught up


class Fleet:
    """Readings sent so far per device of one topic prefix, to know how many windows the
    daemon must have written (device with n readings: 1 + (n - window) // stride windows)."""

    def __init__(self, prefix: str, devices: int, stride: int) -> None:
        self.prefix, self.devices, self.stride = prefix, devices, stride
        self.readings = [0] * devices

    def windows(self) -> int:
        w, s = WINDOW, self.stride
        return sum(1 + (n - w) // s for n in self.readings if n >= w)

    def add_each(self, per_device: int) -> int:
        """A blast: `per_device` readings for every device. Returns the windows it adds."""
        before = self.windows()
        self.readings = [n + per_device for n in self.readings]
        return self.windows() - before

    def add_round_robin(self, count: int) -> int:
        """A paced run: the publisher starts its round robin at device 0 every run."""
        before = self.windows()
        full, rest = divmod(count, self.devices)
        self.readings = [n + full + (1 if d < rest else 0) for d, n in enumerate(self.readings)]
        return self.windows() - before


def fill_windows(h: Harness, daemon: Child, fleet: Fleet) -> None:
    """Every device one reading short of a full window, so that probes score at once."""
    pub = h.publish(mode="blast", devices=fleet.devices, per_device=WINDOW - 1, ts0=time.time() - 900,
                    prefix=fleet.prefix)
    pub.wait_result(120)
    fleet.add_each(WINDOW - 1)
    h.wait_consumed(daemon, fleet.devices * (WINDOW - 1), None, 120)


def probe(h: Harness, daemon: Child, fleet: Fleet, rate: float, seconds: float, grace: float) -> tuple[bool, dict]:
    """Publish `rate` msg/s for `seconds` round robin over the fleet; record latencies."""
    before = h.wait_idle(daemon)
    daemon.ask("record", on=True)
    count = int(rate * seconds)
    pub = h.publish(mode="paced", devices=fleet.devices, rate=rate, count=count, prefix=fleet.prefix)
    sent = pub.wait_result(seconds * 4 + 60)
    windows = fleet.add_round_robin(count)
    target_ok, target_sink = before["ok"] + count, before["sink_events"] + windows

    def caught_up(stats: dict) -> bool:
        return stats["ok"] >= target_ok and stats["sink_events"] >= target_sink

    stats = daemon.ask("stats")
    while not caught_up(stats) and time.time() < sent["t_sent"] + grace:
        time.sleep(0.02)
        stats = daemon.ask("stats")
    in_time = caught_up(stats)
    if not in_time:
        h.wait_consumed(daemon, target_ok, None, 120)
        stats = h.wait_idle(daemon)
    latency = daemon.ask("latency")
    daemon.ask("record", on=False)
    detail = {"catch_up_s": max(stats["last_ok"], stats["last_write"]) - sent["t_sent"],
              "dropped": stats["dropped"] - before["dropped"], "accepted": stats["ok"] - before["ok"],
              "sent": count, "windows_expected": windows, "windows_written": stats["sink_events"] - before["sink_events"],
              "publisher_lag_s": sent["max_lag_s"], **latency}
    ok = (in_time and detail["dropped"] == 0 and detail["accepted"] == count and detail["windows_written"] == windows
          and sent["max_lag_s"] < 0.25)
    return ok, detail


def saturated_blast(h: Harness, daemon: Child, fleet: Fleet, per_device: int | None = None) -> dict:
    """A short blast of `per_device` readings a device as fast as the publisher goes (windows
    may be dropped here): the rates of ingest and of scoring at saturation, the starting point
    of the bisection, and the daemon's CPU a window scored."""
    before = h.wait_idle(daemon)
    per_device = per_device or (10 if h.quick else 20)
    pub = h.publish(mode="blast", devices=fleet.devices, per_device=per_device, ts0=time.time() - 300,
                    prefix=fleet.prefix)
    sent = pub.wait_result(120)
    fleet.add_each(per_device)
    h.wait_consumed(daemon, before["ok"] + fleet.devices * per_device, None, 120)
    after = h.wait_idle(daemon)
    elapsed = max(after["last_ok"], after["last_write"]) - sent["t_first"]
    scored = after["scored"] - before["scored"]
    return {"ingest": (after["ok"] - before["ok"]) / elapsed, "scored_windows": scored / elapsed,
            "dropped": after["dropped"] - before["dropped"], "seconds": elapsed,
            "cpu_us_per_window": 1e6 * (after["cpu_s"] - before["cpu_s"]) / max(scored, 1)}


def bisect(h: Harness, daemon: Child, fleet: Fleet, start: float) -> tuple[float, float, list[dict]]:
    """Probe from `start`: up by 25 % until a rate fails, then halve the interval. Returns the
    highest sustained rate, the lowest failed one (inf if none) and every probe."""
    seconds = 3.0 if h.quick else 8.0
    lo, hi = 0.0, math.inf
    rate = start
    probes = []
    for _ in range(3 if h.quick else 5):
        ok, detail = probe(h, daemon, fleet, rate, seconds, GRACE)
        probes.append({"rate": rate, "ok": ok, **detail})
        h.log(f"  probe {rate:,.0f} msg/s: {'sustained' if ok else 'NOT sustained'} "
              f"(caught up {detail['catch_up_s']:.2f} s after the publisher's end, dropped "
              f"{detail['dropped']:.0f}, p99 {detail.get('p99', float('nan')):.0f} ms)")
        if ok:
            lo = max(lo, rate)
        else:
            hi = min(hi, rate)
        if hi == math.inf:
            rate *= 1.25
        elif lo == 0:
            rate = hi * 0.8
        else:
            rate = (lo + hi) / 2
    return lo, hi, probes


def highest_sustained(h: Harness, arch: str, stride: int, runtime: str, sink: str = "file") -> dict:
    fleet = Fleet("s", DEVICES, stride)
    daemon = h.daemon(arch, stride, 0, runtime, sink)
    try:
        fill_windows(h, daemon, fleet)
        blast = saturated_blast(h, daemon, fleet)
        estimate = min(blast["scored_windows"] * stride, blast["ingest"])
        h.log(f"sustained {arch}/{runtime} stride {stride}: saturated blast {blast['ingest']:,.0f} msg/s ingested, "
              f"{blast['scored_windows']:,.0f} windows/s scored -> first probe near {0.9 * estimate:,.0f} msg/s")
        lo, hi, probes = bisect(h, daemon, fleet, 0.9 * estimate)
        final = daemon.ask("stats")
    finally:
        daemon.stop()
    return {"max_rate": lo, "not_sustained_at": None if hi == math.inf else hi, "probes": probes,
            "blast_ingest_rate": blast["ingest"], "blast_scored_windows_rate": blast["scored_windows"],
            "rss_mb": final["rss_mb"], "devices": DEVICES, "probe_seconds": 3.0 if h.quick else 8.0}


def sustained(h: Harness) -> dict:
    """LSTM at stride 1 and 10 on torch, stride 1 on ONNX Runtime, and (full runs) stride 1
    writing to VictoriaMetrics through the InfluxSink."""
    plan = [("lstm", 1, "torch"), ("lstm", 10, "torch")]
    if "onnx" in h.runtimes:
        plan.append(("lstm", 1, "onnx"))
    res = {f"{arch}_stride{stride}_{runtime}": highest_sustained(h, arch, stride, runtime)
           for arch, stride, runtime in plan}
    if "torch" in h.runtimes and not h.quick:
        res["lstm_stride1_torch-influx"] = highest_sustained(h, "lstm", 1, "torch", "influx")
    return res


def latency(h: Harness) -> dict:
    """Publish-to-sink latency at 1 000 devices x 1 Hz and 100 devices x 20 Hz, LSTM stride 1,
    one daemon."""
    seconds = 6.0 if h.quick else 30.0
    daemon = h.daemon("lstm", 1, 0, "torch")
    res = {}
    try:
        for devices, hz, prefix in ((1000, 1, "a"), (100, 20, "b")):
            fleet = Fleet(prefix, devices, 1)
            pub = h.publish(mode="blast", devices=devices, per_device=WINDOW - 1, ts0=time.time() - 900, prefix=prefix)
            pub.wait_result(120)
            fleet.add_each(WINDOW - 1)
            h.wait_idle(daemon)
            ok, detail = probe(h, daemon, fleet, devices * hz, seconds, 1.0)
            res[f"{devices}x{hz}hz"] = {"sustained": ok, **detail}
            h.log(f"latency {devices} devices x {hz} Hz: p50 {detail['p50']:.1f} ms, p95 {detail['p95']:.1f} ms, "
                  f"p99 {detail['p99']:.1f} ms over {detail['n']} windows")
    finally:
        daemon.stop()
    return res
