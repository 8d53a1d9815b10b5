"""Phases that measure the model and the worker in a child of their own, away from MQTT."""

from __future__ import annotations

import shutil

from ..common import MAX_BATCH
from ..harness import Harness

ARCHS = ("lstm", "conv")


def train(h: Harness) -> dict:
    """Train and export the bench's bundles; sets `h.bundles`."""
    h.log("training tiny LSTM and Conv bundles (window 60, 8 features, 1 epoch) and exporting ONNX")
    child = h.child("_train", {"dir": str(h.dir / "models"), "archs": list(ARCHS)}, "train.log")
    out = child.wait_result(600)
    h.bundles = {arch: info["path"] for arch, info in out.items()}
    return out


def scoring(h: Harness) -> dict:
    """The model alone vs the worker vs one window per call, per bundle and runtime."""
    seconds = 0.4 if h.quick else 0.6
    reps = 3 if h.quick else 7
    res = {}
    for runtime in h.runtimes:
        for arch in ARCHS:
            h.log(f"scoring: {arch} on {runtime} (raw batch {MAX_BATCH} / worker / one window per call)")
            tmp = h.dir / f"scoring-{arch}-{runtime}"
            tmp.mkdir()
            spec = {"bundle": h.bundles[arch], "runtime": runtime, "seconds": seconds, "reps": reps, "tmp": str(tmp)}
            res[f"{arch}_{runtime}"] = h.child("_scoring", spec, f"{h.name('scoring')}.log").wait_result(300)
            shutil.rmtree(tmp, ignore_errors=True)
    return res


def shapes(h: Harness) -> dict:
    """RSS growth once a live worker has met every batch size (uneven traffic does, over
    hours): the growth phase runs flat out, so its batches are all full."""
    res = {}
    for runtime in h.runtimes:
        for arch in ARCHS:
            child = h.child("_shapes", {"bundle": h.bundles[arch], "runtime": runtime}, "shapes.log")
            res[f"{arch}_{runtime}"] = out = child.wait_result(300)
            unpadded = f", unpadded model +{out['unpadded_mb']:.1f} MB" if "unpadded_mb" in out else ""
            h.log(f"every batch size 1-{MAX_BATCH}, {arch} on {runtime}: daemon +{out['daemon_mb']:.1f} MB" + unpadded)
    return res
