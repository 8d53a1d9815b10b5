"""Ingest: the daemon against the bare paho subscriber under the same publisher load.

N messages published as fast as the publisher can, QoS 0 and 1; rate = N / (time the consumer
finished the last message - time the first was published); the daemon has finished when every
message is counted and every window is in the sink. The stride is high enough that inference
is not the bottleneck. Bare and daemon runs alternate, and each daemon run is compared with
the bare run just before it.
"""

from __future__ import annotations

import statistics
import time

from ..common import WINDOW
from ..harness import Harness

DEVICES = 1000


def one_run(h: Harness, kind: str, qos: int, stride: int, per_device: int, prefix: str) -> dict:
    """One consumer ("bare" or "daemon") through one blast of `per_device` readings a device."""
    messages = DEVICES * per_device
    windows = DEVICES * (1 + (per_device - WINDOW) // stride)
    consumer = h.bare(qos) if kind == "bare" else h.daemon("lstm", stride, qos)
    try:
        start = consumer.ask("stats")
        pub = h.publish(mode="blast", qos=qos, devices=DEVICES, per_device=per_device,
                        ts0=time.time() - per_device - 60, prefix=prefix)
        sent = pub.wait_result(300)
        stats = h.wait_consumed(consumer, messages, windows if kind == "daemon" else None, 300)
    finally:
        final = consumer.stop()
    done = max(stats["last_ok"], stats.get("last_write", 0.0))
    rate = stats["ok"] / (done - sent["t_first"])
    cpu_us = (stats["cpu_s"] - start["cpu_s"]) / max(stats["ok"], 1) * 1e6
    run = {"rate": rate, "cpu_us_per_msg": cpu_us, "messages": stats["ok"],
           "incomplete": stats.get("incomplete", False), "dropped": stats.get("dropped", 0),
           "rss_mb": final["rss_mb"], "publisher_rate": sent["sent"] / (sent["t_sent"] - sent["t_first"])}
    h.log(f"ingest qos {qos} {kind}: {rate:,.0f} msg/s, {cpu_us:.1f} CPU-us/msg "
          f"({stats['ok']:,.0f}/{messages:,} messages{', INCOMPLETE' if run['incomplete'] else ''}; "
          f"publisher {run['publisher_rate']:,.0f} msg/s)")
    return run


def compare(runs: dict[str, list]) -> dict:
    """Medians of each kind, and the median of each daemon run against the bare run before it."""
    median = statistics.median
    pairs = list(zip(runs["bare"], runs["daemon"]))
    return {
        "bare": median(r["rate"] for r in runs["bare"]),
        "daemon": median(r["rate"] for r in runs["daemon"]),
        "ratio": median(d["rate"] / b["rate"] for b, d in pairs),
        "bare_cpu_us": median(r["cpu_us_per_msg"] for r in runs["bare"]),
        "daemon_cpu_us": median(r["cpu_us_per_msg"] for r in runs["daemon"]),
        "cpu_ratio": median(b["cpu_us_per_msg"] / d["cpu_us_per_msg"] for b, d in pairs),
        "runs": runs}


def ingest(h: Harness) -> dict:
    stride = h.args.ingest_stride
    per_device = WINDOW + stride * (1 if h.quick else 3)  # the last reading completes a window
    reps = 1 if h.quick else 3
    res: dict = {}
    for qos in (0, 1):
        runs: dict[str, list] = {"bare": [], "daemon": []}
        for rep in range(reps):
            for kind in ("bare", "daemon"):
                runs[kind].append(one_run(h, kind, qos, stride, per_device, f"i{rep}-"))
        res[f"qos{qos}"] = compare(runs)
    res.update(stride=stride, messages=DEVICES * per_device, devices=DEVICES,
               windows=DEVICES * (1 + (per_device - WINDOW) // stride))
    return res
