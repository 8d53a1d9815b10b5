"""The report: the flat figures (printed as JSON and written by --json) and the table of rows.

The README and docs/performance.md quote these rows and keys; change them together.
"""

from __future__ import annotations

from .common import MAX_BATCH, PART_LOAD

Row = tuple[str, str, str, str, str]  # figure, value, ceiling / reference, ratio, goal


# ---- the flat figures -----------------------------------------------------------------------

def _ingest_figures(ing: dict) -> dict:
    out = {"ingest_ratio": min(ing["qos0"]["ratio"], ing["qos1"]["ratio"])}
    for q in (0, 1):
        out[f"ingest_ratio_qos{q}"] = ing[f"qos{q}"]["ratio"]
        out[f"ingest_msgs_per_s_qos{q}_daemon"] = ing[f"qos{q}"]["daemon"]
        out[f"ingest_msgs_per_s_qos{q}_bare"] = ing[f"qos{q}"]["bare"]
        out[f"ingest_cpu_ratio_qos{q}"] = ing[f"qos{q}"]["cpu_ratio"]
    return out


def _scoring_figures(sc: dict) -> dict:
    main = sc["lstm_torch"] if "lstm_torch" in sc else next(iter(sc.values()))
    out = {"worker_ratio": main["worker_ratio"], "naive_speedup": main["naive_speedup"]}
    for key, val in sc.items():
        out[f"worker_ratio_{key}"] = val["worker_ratio"]
        out[f"naive_speedup_{key}"] = val["naive_speedup"]
        out[f"naive_speedup_ceiling_{key}"] = val["naive_speedup_ceiling"]
        out[f"worker_ratio_cpu_{key}"] = val["worker_ratio_cpu"]
        out[f"worker_model_share_{key}"] = val["worker_model_share"]
        out[f"model_batching_gain_{key}"] = val["model_batching_gain"]
        out[f"gil_contended_ratio_{key}"] = val["gil_contended_ratio"]
        out[f"gil_contended_ratio_python_default_{key}"] = val["gil_contended_ratio_python_default"]
        out[f"raw_windows_per_s_{key}"] = val["median"]["raw"]
        out[f"worker_windows_per_s_{key}"] = val["median"]["worker"]
        out[f"part_load_cpu_ratio_{key}"] = val["part_load"]["cpu_ratio"]
        out[f"part_load_mean_batch_{key}"] = val["part_load"]["mean_batch"]
    return out


def _sustained_figures(su: dict) -> dict:
    out = {}
    for key, val in su.items():
        arch, stride, runtime = key.split("_")
        suffix = "" if runtime == "torch" else "_" + runtime.replace("-", "_")
        out[f"max_msgs_per_s_{arch}_{stride}{suffix}"] = val["max_rate"]
    return out


def _latency_figures(lat: dict) -> dict:
    return {"p99_ms_1k_devices": lat["1000x1hz"]["p99"], "p99_ms_100_devices_20hz": lat["100x20hz"]["p99"],
            "p50_ms_1k_devices": lat["1000x1hz"]["p50"], "p50_ms_100_devices_20hz": lat["100x20hz"]["p50"]}


def _memory_figures(mem: dict) -> dict:
    out = {}
    for runtime, val in mem.items():
        suffix = "" if runtime == "torch" else "_onnx"
        out[f"rss_mb_10k_devices{suffix}"] = val["rss_mb_10k"]
        out[f"rss_mb_idle{suffix}"] = val["idle_rss_mb"]
    return out


def _growth_figures(gr: dict) -> dict:
    return {"rss_growth_mb_1m_messages": gr["growth_mb"],  # measured over rss_growth_messages_measured
            "rss_growth_messages_measured": gr["messages"]}


def _shapes_figures(shapes: dict) -> dict:
    out = {}
    for key, val in shapes.items():
        out[f"rss_growth_mb_every_batch_size_{key}"] = val["daemon_mb"]
        if "unpadded_mb" in val:
            out[f"rss_growth_mb_every_batch_size_{key}_unpadded"] = val["unpadded_mb"]
    return out


def _threads_figures(th: dict) -> dict:
    out = {}
    for key in ("scored_ratio", "ingest_ratio", "cpu_ratio"):
        for stat in ("median", "min", "max"):
            out[f"torch_threads_2_vs_1_{key}_{stat}"] = th[key][stat]
    for stat in ("median", "min", "max"):
        out[f"torch_threads_2_vs_1_model_alone_ratio_{stat}"] = th["model_alone"]["ratio"][stat]
    return out


_FIGURES = {"ingest": _ingest_figures, "scoring": _scoring_figures, "sustained": _sustained_figures,
            "latency": _latency_figures, "memory": _memory_figures, "growth": _growth_figures,
            "shapes": _shapes_figures, "threads": _threads_figures}


def summary(results: dict, quick: bool) -> dict:
    """The flat figures of every phase that ran, in the report's order."""
    out: dict = {"quick": quick}
    for phase, figures in _FIGURES.items():
        if results.get(phase):
            out.update(figures(results[phase]))
    return out


# ---- the table ------------------------------------------------------------------------------

def _ingest_rows(ing: dict) -> list[Row]:
    rows = []
    for q in (0, 1):
        r = ing[f"qos{q}"]
        rows.append((f"ingest QoS {q} (msg/s, stride {ing['stride']})", f"{r['daemon']:,.0f}",
                     f"{r['bare']:,.0f} bare paho", f"{r['ratio']:.2f}", ">= 0.80"))
        rows.append((f"  CPU per message QoS {q} (us)", f"{r['daemon_cpu_us']:.1f}", f"{r['bare_cpu_us']:.1f} bare paho",
                     f"{r['cpu_ratio']:.2f}", ""))
    return rows


def _sustained_rows(su: dict) -> list[Row]:
    rows = []
    for key, val in su.items():
        arch, stride, runtime = key.split("_")
        rows.append((f"max sustained {arch} {stride} {runtime} (msg/s)", f"{val['max_rate']:,.0f}",
                     f"{val['blast_ingest_rate']:,.0f} saturated", "", f"= {val['max_rate']:,.0f} devices at 1 Hz"))
    return rows


def _scoring_rows(key: str, val: dict) -> list[Row]:
    m, pl = val["median"], val["part_load"]
    return [
        (f"worker {key} (windows/s)", f"{m['worker']:,.0f}", f"{m['raw']:,.0f} raw batch {MAX_BATCH}",
         f"{val['worker_ratio']:.2f}", ">= 0.90"),
        ("  same, per CPU-second", "", "", f"{val['worker_ratio_cpu']:.2f}", ""),
        ("  share of the worker's time in the model", "", "", f"{val['worker_model_share']:.2f}", ""),
        ("  worker, sink that only counts", f"{m['worker_nosink']:,.0f}", f"{m['raw']:,.0f}",
         f"{val['worker_nosink_ratio']:.2f}", ""),
        ("  share of its time in the model", "", "", f"{val['worker_nosink_model_share']:.2f}", ""),
        ("  worker vs one window per call", f"{m['worker']:,.0f}", f"{m['naive']:,.0f} naive",
         f"{val['naive_speedup']:.1f}x", ">= 20x"),
        ("  the most any worker can be: raw batch 64 vs one window per call", f"{m['raw']:,.0f}",
         f"{m['naive']:,.0f} naive", f"{val['naive_speedup_ceiling']:.1f}x", ""),
        ("  model alone: batch 64 vs batch 1", f"{m['raw']:,.0f}", f"{m['raw_batch1']:,.0f} raw batch 1",
         f"{val['model_batching_gain']:.1f}x", ""),
        (f"  worker at {PART_LOAD:.0%} load: CPU-us a window (batch)",
         f"{pl['cpu_us_per_window']:.0f} ({pl['mean_batch']:.0f})",
         f"{pl['raw_cpu_us_per_window']:.0f} raw batch {MAX_BATCH}", f"{pl['cpu_ratio']:.2f}", ""),
        ("  model beside a busy Python thread", f"{m['raw_gil_contended']:,.0f}", f"{m['raw']:,.0f} alone",
         f"{val['gil_contended_ratio']:.2f}", ""),
        ("  same, Python's 5 ms switch interval", f"{m['raw_gil_contended_python_default']:,.0f}",
         f"{m['raw']:,.0f} alone", f"{val['gil_contended_ratio_python_default']:.2f}", ""),
    ]


def _latency_rows(lat: dict) -> list[Row]:
    rows = []
    for key, goal in (("1000x1hz", "p99 <= 100 ms"), ("100x20hz", "")):
        val = lat[key]
        rows.append((f"publish-to-sink {key} (ms)", f"p50 {val['p50']:.1f} p95 {val['p95']:.1f} p99 {val['p99']:.1f}",
                     f"n={val['n']}", "", goal))
    return rows


def _memory_rows(mem: dict) -> list[Row]:
    return [(f"RSS 10k devices, {runtime} (MB)", f"{val['rss_mb_10k']:.0f}", f"idle {val['idle_rss_mb']:.0f}", "",
             "<= 300 MB" if runtime == "torch" else "<= 150 MB") for runtime, val in mem.items()]


def _growth_rows(gr: dict) -> list[Row]:
    return [(f"RSS growth over {gr['messages']:,.0f} messages (MB)", f"{gr['growth_mb']:+.1f}",
             f"{gr['rss_before_mb']:.0f} -> {gr['rss_after_mb']:.0f}", "", "~0")]


def _shapes_rows(shapes: dict) -> list[Row]:
    return [(f"RSS growth, every batch size 1-{MAX_BATCH}, {key} (MB)", f"{val['daemon_mb']:+.1f}",
             f"+{val['unpadded_mb']:.1f} unpadded" if "unpadded_mb" in val else "", "", "~0")
            for key, val in shapes.items()]


def _threads_rows(th: dict) -> list[Row]:
    one, two = th["median"]["threads_1"], th["median"]["threads_2"]
    sc, ing, cpu, ma = th["scored_ratio"], th["ingest_ratio"], th["cpu_ratio"], th["model_alone"]["ratio"]
    alone = th["model_alone"]["windows_per_s"]
    pairs = f"{len(th['pairs'])} pairs"
    return [
        ("torch_threads 2 vs 1, LSTM stride 1 saturated: windows/s scored", f"{two['scored_windows']:,.0f}",
         f"{one['scored_windows']:,.0f} on 1 thread", f"{sc['median']:.2f} ({sc['min']:.2f}-{sc['max']:.2f})",
         pairs),
        ("  msg/s ingested", f"{two['ingest']:,.0f}", f"{one['ingest']:,.0f}",
         f"{ing['median']:.2f} ({ing['min']:.2f}-{ing['max']:.2f})", ""),
        ("  CPU-us a window scored", f"{two['cpu_us_per_window']:.0f}", f"{one['cpu_us_per_window']:.0f}",
         f"{cpu['median']:.2f} ({cpu['min']:.2f}-{cpu['max']:.2f})", ""),
        ("  the model alone at batch 64 (windows/s)", f"{alone['threads_2']:,.0f}", f"{alone['threads_1']:,.0f}",
         f"{ma['median']:.2f} ({ma['min']:.2f}-{ma['max']:.2f})", ""),
    ]


def rows(results: dict) -> list[Row]:
    out: list[Row] = []
    if results.get("ingest"):
        out += _ingest_rows(results["ingest"])
    if results.get("sustained"):
        out += _sustained_rows(results["sustained"])
    for key, val in (results.get("scoring") or {}).items():
        out += _scoring_rows(key, val)
    if results.get("latency"):
        out += _latency_rows(results["latency"])
    if results.get("memory"):
        out += _memory_rows(results["memory"])
    if results.get("growth"):
        out += _growth_rows(results["growth"])
    out += _shapes_rows(results.get("shapes", {}))
    if results.get("threads"):
        out += _threads_rows(results["threads"])
    return out


def table(results: dict) -> str:
    """The rows as aligned text: the figure left-aligned, every other column right-aligned."""
    body = rows(results)
    headers = ("figure", "value", "ceiling / reference", "ratio", "goal")
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in body]
    return "\n".join(lines)
