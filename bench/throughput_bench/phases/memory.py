"""The daemon's memory: RSS with many devices, and growth over a long stream of messages."""

from __future__ import annotations

import math
import time

from ..common import WINDOW
from ..harness import Harness


def memory(h: Harness) -> dict:
    """RSS idle and with 10 000 devices holding full windows, all of them completing their first
    window in the same round, as after a restart (the window queue fills too)."""
    res = {}
    devices = 10_000
    for runtime in h.runtimes:
        daemon = h.daemon("lstm", 1, 0, runtime)
        try:
            idle = daemon.ready
            pub = h.publish(mode="blast", devices=devices, per_device=WINDOW, ts0=time.time() - 600, prefix="m")
            pub.wait_result(300)
            h.wait_consumed(daemon, devices * WINDOW, devices, 300)
            full = h.wait_idle(daemon)
        finally:
            daemon.stop()
        res[runtime] = {"idle_rss_mb": idle["rss_mb"], "rss_mb_10k": full["rss_mb"], "hwm_mb": full["hwm_mb"],
                        "devices": full["devices"], "torch_imported": full["torch_imported"],
                        "incomplete": full.get("incomplete", False)}
        h.log(f"memory {runtime}: idle {idle['rss_mb']:.0f} MB, {full['devices']} devices with full windows "
              f"{full['rss_mb']:.0f} MB (peak {full['hwm_mb']:.0f} MB; torch imported: {full['torch_imported']})")
    return res


def _second_half_slope(samples: list[tuple[float, float]]) -> float:
    """MiB per million messages over the second half of the (messages, RSS) samples."""
    half = samples[len(samples) // 2:]
    if len(half) > 1 and half[-1][0] > half[0][0]:
        return (half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0]) * 1e6
    return math.nan


def growth(h: Harness) -> dict:
    """RSS before/after N messages (LSTM, stride 10, 1000 devices). `before` is taken once
    every stage has run at full load (windows scored and written), so first-use allocations
    (torch's buffers, the allocator's arenas) are not counted as growth. The messages then
    come in blasts of 100 000 (the daemon running flat out), RSS read after each."""
    total = 200_000 if h.quick else 1_000_000
    devices, stride, chunk = 1000, 10, 100
    warm_per_device = WINDOW + 5 * stride
    chunks = total // (devices * chunk)
    start_ts = time.time() - (warm_per_device + chunks * chunk) - 120
    daemon = h.daemon("lstm", stride, 0, "torch")
    samples = []
    try:
        pub = h.publish(mode="blast", devices=devices, per_device=warm_per_device, ts0=start_ts, prefix="g")
        pub.wait_result(300)
        h.wait_consumed(daemon, devices * warm_per_device, None, 300)
        before = after = h.wait_idle(daemon)
        for k in range(chunks):
            ts0 = start_ts + warm_per_device + k * chunk
            pub = h.publish(mode="blast", devices=devices, per_device=chunk, ts0=ts0, prefix="g")
            pub.wait_result(300)
            h.wait_consumed(daemon, before["ok"] + (k + 1) * devices * chunk, None, 300)
            after = h.wait_idle(daemon)
            samples.append((after["ok"] - before["ok"], after["rss_mb"]))
    finally:
        daemon.stop()
    res = {"messages": after["ok"] - before["ok"], "rss_before_mb": before["rss_mb"],
           "rss_after_mb": after["rss_mb"], "growth_mb": after["rss_mb"] - before["rss_mb"],
           "second_half_mb_per_1m": _second_half_slope(samples), "dropped": after["dropped"] - before["dropped"],
           "warmup_messages": devices * warm_per_device, "samples": samples}
    h.log(f"growth: {res['messages']:,.0f} messages after a {res['warmup_messages']:,} message warm-up: "
          f"RSS {before['rss_mb']:.1f} -> {after['rss_mb']:.1f} MB "
          f"(after each 100k: {', '.join(f'{r:.1f}' for _, r in samples)})")
    return res
