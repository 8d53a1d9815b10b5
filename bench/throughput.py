"""Throughput, latency and memory of the live daemon, each against its ceiling (issue 6).

    .venv/bin/python bench/throughput.py [--quick] [--json OUT] [--runtime torch|onnx|both]

Everything runs on this host, on 127.0.0.1 only, in separate processes so that CPU and RSS
belong to the process being measured:

    parent (this script: orchestration only, no torch)
      ├─ mosquitto           private broker on a free loopback port, max_queued_messages raised
      │                      (mosquitto drops messages to a slow subscriber beyond 1000 by default)
      ├─ publisher           raw MQTT 3.1.1 over a socket, packets encoded in bulk: a load generator
      │                      far faster than any Python subscriber, so it is never the ceiling
      ├─ bare subscriber     paho-mqtt, json.loads per message and nothing else: the client's ceiling
      ├─ daemon              the real `Service` (MqttIngest, MessagePipeline, Worker, FileSink) from a
      │                      generated config; the only bench addition is the FileSink's on_written
      │                      hook, noting when each event's line was written and flushed
      └─ scoring / train     the model's ceiling on pre-built tensors, the worker, a per-window loop

Sections of the report (window 60, 8 features, the default LSTM and Conv architectures, tiny
bundles trained for one epoch on generated data: weights quality is irrelevant to speed):

1. Ingest: messages/s of the daemon vs the bare subscriber under the same publisher load
   (N messages published as fast as the publisher can, QoS 0 and QoS 1; rate = N / (time the
   consumer finished the last message - time the first was published); the daemon has
   finished when every message is counted and every window is in the sink). Measured at a
   stride where inference is not the bottleneck (--ingest-stride, default 60). Then the highest
   sustained rate with the LSTM at stride 1 and 10: publish at a fixed rate for a while; the rate
   is sustained when every message is accepted, no window is dropped and the daemon has caught
   up within 0.5 s of the publisher's end; bisected.
2. Scoring: the bundle's model on pre-built, pre-scaled tensors at the daemon's batch size
   (the ceiling) vs windows/s through the real Worker (queue, scaling, scoring, thresholds,
   hysteresis, events, sink) vs a loop that scores one window per `score_windows` call.
3. Latency: publish-to-sink p50/p95/p99 at 1 000 devices x 1 Hz and 100 devices x 20 Hz, LSTM,
   stride 1. The publisher writes its wall-clock send time as the reading's `ts`; the daemon
   stamps a window's score with the `ts` of its last reading; the sink takes time.time()
   after its writer thread wrote and flushed the line (FileSink's on_written). So the figure
   includes the publisher's socket, mosquitto, paho, parsing, buffering, the worker's batching
   wait (max_wait_ms 50), inference, encoding and the file write. Same host, same clock.
4. Memory: daemon RSS (VmRSS) idle and with 10 000 devices holding full windows (all of them
   completing their first window in the same round, as after a restart: the window queue fills
   too). Growth: RSS after a warm-up that exercised every stage, then after each further
   100 000 messages up to 1 000 000 (--quick: 200 000), LSTM at stride 10.

The machine is shared and has 2 cores: numbers are noisy, ratios (measured back to back,
interleaved, medians of repeats) are the figures to trust. --quick runs the same sections
smaller and on torch only unless --runtime says otherwise (about 3 minutes instead of 13).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"
WINDOW = 60
FEATURES = [f"s{i}" for i in range(8)]
TOPIC = "sensors/{}/data"
MOSQUITTO = os.environ.get("ANOMALYD_MOSQUITTO", "/usr/sbin/mosquitto")
MAX_BATCH = 64
PART_LOAD = 0.25  # of the model's batch-64 rate: the worker at part load, where batching saves CPU
PYTHON_SWITCH_INTERVAL = 0.005  # sys.getswitchinterval() of a fresh interpreter


# =============================================================================================
# small helpers shared by every process
# =============================================================================================

def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process in MiB (VmRSS)."""
    return _status_kb(pid, "VmRSS") / 1024


def hwm_mb(pid: int | str = "self") -> float:
    """Peak resident set size (VmHWM) in MiB."""
    return _status_kb(pid, "VmHWM") / 1024


def _status_kb(pid: int | str, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return float(line.split()[1])
    return math.nan


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def reply(obj: dict) -> None:
    """One JSON line on stdout: how every child answers the parent."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# =============================================================================================
# publisher: raw MQTT 3.1.1 over a socket
# =============================================================================================

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _connect_packet(client_id: str, keepalive: int = 60) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02" + keepalive.to_bytes(2, "big") + len(cid).to_bytes(2, "big") + cid
    return b"\x10" + _varint(len(body)) + body


def _value_pool(size: int = 4096, seed: int = 1) -> list[bytes]:
    """Realistic sensor values (4 decimals): `"s0":0.8412,"s1":-0.1234,...` fragments."""
    import random
    rng = random.Random(seed)
    pool = []
    for i in range(size):
        parts = [f'"{name}":{math.sin(i / 50 + k) + rng.gauss(0, 0.1):.4f}' for k, name in enumerate(FEATURES)]
        pool.append(",".join(parts).encode())
    return pool


class RawPublisher:
    """Publishes pre-encoded MQTT packets; QoS 1 acks are counted by a reader thread and the
    number in flight is bounded (packet ids are 16-bit)."""

    MAX_IN_FLIGHT = 20000

    def __init__(self, port: int, qos: int, client_id: str) -> None:
        self.qos = qos
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(_connect_packet(client_id))
        connack = self._recv_exact(4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"broker refused the publisher: {connack!r}")
        self.sent = 0
        self.acked = 0
        self._pid = 0
        self._ack_cond = threading.Condition()
        self._closed = False
        self._last_ping = time.monotonic()
        self._reader = threading.Thread(target=self._read_acks, daemon=True)
        self._reader.start()

    def _recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            data += chunk
        return data

    def _read_acks(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
                acks = 0
                pos = 0
                while len(buf) - pos >= 2:
                    kind, length = buf[pos], buf[pos + 1]  # PUBACK (4 bytes) and PINGRESP (2) only
                    if len(buf) - pos < 2 + length:
                        break
                    acks += kind == 0x40
                    pos += 2 + length
                buf = buf[pos:]
                if acks:
                    with self._ack_cond:
                        self.acked += acks
                        self._ack_cond.notify_all()
        except OSError:
            return

    def packet(self, topic_header: bytes, payload: bytes) -> bytes:
        if self.qos:
            self._pid = self._pid % 65535 + 1
            rest = topic_header + self._pid.to_bytes(2, "big") + payload
            return b"\x32" + _varint(len(rest)) + rest
        rest = topic_header + payload
        return b"\x30" + _varint(len(rest)) + rest

    def send(self, packets: list[bytes]) -> None:
        if self.qos:
            with self._ack_cond:
                ok = self._ack_cond.wait_for(lambda: self.sent - self.acked <= self.MAX_IN_FLIGHT - len(packets), 60)
            if not ok:
                raise TimeoutError("publisher: no PUBACK for 60 s")
        self.sock.sendall(b"".join(packets))
        self.sent += len(packets)
        if time.monotonic() - self._last_ping > 20:
            self.sock.sendall(b"\xc0\x00")  # PINGREQ: keepalive is 60 s
            self._last_ping = time.monotonic()

    def close(self, timeout: float = 60.0) -> bool:
        """Wait for the outstanding acks (QoS 1), then disconnect. True when all were acked."""
        ok = True
        if self.qos:
            with self._ack_cond:
                ok = self._ack_cond.wait_for(lambda: self.acked >= self.sent, timeout)
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        return ok


def _topic_headers(prefix: str, devices: int) -> list[bytes]:
    headers = []
    for d in range(devices):
        topic = TOPIC.format(f"{prefix}{d}").encode()
        headers.append(len(topic).to_bytes(2, "big") + topic)
    return headers


def role_publish(spec: dict) -> None:
    """Publish per `spec` and print one JSON line with what happened.

    blast: `per_device` readings for each of `devices`, round robin, as fast as possible, with
           data timestamps `ts0 + j * period` (the past: late data is accepted).
    paced: `rate` messages/s for `count` messages, round robin, ts = wall clock at sending."""
    pub = RawPublisher(spec["port"], spec["qos"], f"bench-pub-{os.getpid()}")
    headers = _topic_headers(spec["prefix"], spec["devices"])
    pool = _value_pool()
    npool = len(pool)
    devices = spec["devices"]
    result: dict = {"mode": spec["mode"]}
    if spec["mode"] == "blast":
        ts0, period, per_device = spec["ts0"], spec.get("period", 1.0), spec["per_device"]
        chunk: list[bytes] = []
        first = None
        i = 0
        for j in range(per_device):
            ts = b"%.6f" % (ts0 + j * period)
            for d in range(devices):
                chunk.append(pub.packet(headers[d], b'{"ts":' + ts + b"," + pool[i % npool] + b"}"))
                i += 1
                if len(chunk) >= 2000:
                    if first is None:
                        first = time.time()
                    pub.send(chunk)
                    chunk = []
        if chunk:
            if first is None:
                first = time.time()
            pub.send(chunk)
        result.update(t_first=first, t_sent=time.time())
    else:
        rate, count = float(spec["rate"]), int(spec["count"])
        tick = 0.002
        start = time.time()
        next_tick = time.monotonic()
        mono0 = next_tick
        i = 0
        max_lag = 0.0
        while i < count:
            now_mono = time.monotonic()
            due = min(count, int((now_mono - mono0) * rate) + 1)
            max_lag = max(max_lag, (due - i) / rate)
            packets = []
            while i < due:
                ts = b"%.6f" % time.time()
                packets.append(pub.packet(headers[i % devices], b'{"ts":' + ts + b"," + pool[i % npool] + b"}"))
                i += 1
            if packets:
                pub.send(packets)
            next_tick += tick
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_tick = time.monotonic()
        result.update(t_first=start, t_sent=time.time(), max_lag_s=max_lag)
    result["acked"] = pub.close()
    result["sent"] = pub.sent
    reply(result)


# =============================================================================================
# consumers: the bare paho subscriber and the daemon, both driven by JSON lines on stdin
# =============================================================================================

def role_bare(spec: dict) -> None:
    """paho-mqtt client, created like MqttIngest's, whose on_message only decodes the JSON."""
    import paho.mqtt.client as mqtt

    state = {"count": 0, "last": 0.0}
    subscribed = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe(spec["topic"], spec["qos"])

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        subscribed.set()

    def on_message(client, userdata, msg):
        json.loads(msg.payload)
        state["count"] += 1
        state["last"] = time.time()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{os.getpid()}",
                         clean_session=True, protocol=mqtt.MQTTv311)
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect_async(HOST, spec["port"], 30)
    client.loop_start()
    if not subscribed.wait(15):
        reply({"error": "bare subscriber: no SUBACK within 15 s"})
        return
    reply({"ready": True, "rss_mb": rss_mb()})
    for line in sys.stdin:
        command = json.loads(line)["cmd"]
        stats = {"ok": state["count"], "last_ok": state["last"], "rss_mb": rss_mb(), "cpu_s": sum(os.times()[:2])}
        reply(stats)
        if command == "stop":
            break
    client.disconnect()
    client.loop_stop()


def timed_file_sink(path: str, target: int = 0) -> tuple:
    """The daemon's FileSink, noting when each batch of lines was written and flushed (its
    `on_written` hook, on the writer thread). With the publisher's send time in each reading's
    `ts`, now - event.ts is the publish-to-sink latency of that window. Latencies are kept
    only while `recording`. `reached` is set once `target` events are written (no polling
    thread to take the GIL from the worker being measured)."""
    from daemon.live.sinks.file import FileSink

    class Timing:
        def __init__(self) -> None:
            self.count = 0
            self.last_write = 0.0
            self.recording = False
            self.latencies = array("d")
            self.max_kept = 2_000_000
            self.reached = threading.Event()

        def __call__(self, events) -> None:
            now = time.time()
            self.count += len(events)
            self.last_write = now
            if target and self.count >= target:
                self.reached.set()
            if self.recording and len(self.latencies) < self.max_kept:
                self.latencies.extend([now - e.ts for e in events])

    timing = Timing()
    return FileSink(path, on_written=timing), timing


def role_daemon(spec: dict) -> None:
    """The real Service from a generated config, its FileSink timed by `timed_file_sink`."""
    from daemon.live.config import load_config
    from daemon.live.telemetry.logsetup import configure_logging
    from daemon.live.service import Service

    config = load_config(spec["config"])
    configure_logging(config.logging.level, config.logging.format)
    influx = config.influxdb.enabled
    if influx:  # the service's own InfluxSink; written points are read from its metrics
        timing = _MetricTiming()
        service = Service(config, spec["config"])
    else:
        sink, timing = timed_file_sink(config.local_store.path)
        service = Service(config, spec["config"], sink=sink)
    service.start()
    deadline = time.monotonic() + 20
    while not service.ingest.subscribed:
        if time.monotonic() > deadline:
            reply({"error": "daemon: not subscribed within 20 s"})
            service.shutdown(2)
            return
        time.sleep(0.02)
    registry = service.metrics.registry
    wanted = {"anomalyd_messages_total", "anomalyd_windows_scored_total", "anomalyd_windows_dropped_total",
              "anomalyd_sink_points_total"}

    def stats() -> dict:
        # One pass over the registry (what a scrape costs), not one per value.
        ok = rejected = scored = dropped = 0.0
        for metric in registry.collect():
            if metric.name + "_total" not in wanted and metric.name not in wanted:
                continue
            for sample in metric.samples:
                if not sample.name.endswith("_total"):
                    continue
                if sample.name == "anomalyd_messages_total":
                    if sample.labels["result"] == "ok":
                        ok = sample.value
                    else:
                        rejected += sample.value
                elif sample.name == "anomalyd_windows_scored_total":
                    scored = sample.value
                elif sample.name == "anomalyd_windows_dropped_total":
                    dropped += sample.value
                elif influx and sample.name == "anomalyd_sink_points_total" and sample.labels["result"] == "written":
                    timing.saw(sample.value)
        return {
            "ok": ok, "rejected": rejected, "scored": scored, "dropped": dropped,
            "sink_events": timing.count, "last_write": timing.last_write,
            "last_ok": service.default_route.pipeline.last_ok or 0.0,
            "queued": len(service.queue), "devices": len(service.default_route.buffers),
            "rss_mb": rss_mb(), "hwm_mb": hwm_mb(), "cpu_s": sum(os.times()[:2]),
            "torch_imported": "torch" in sys.modules,
        }

    reply({"ready": True, **stats()})
    for line in sys.stdin:
        command = json.loads(line)
        cmd = command["cmd"]
        if cmd == "record":
            timing.latencies = array("d")
            timing.recording = bool(command["on"])
            reply({"recording": timing.recording})
        elif cmd == "latency":
            import numpy as np
            lat = np.frombuffer(timing.latencies, dtype=np.float64) * 1000 if len(timing.latencies) else np.zeros(0)
            figures = {"n": int(len(lat))}
            if len(lat):
                figures.update({f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)})
                figures["max"] = float(lat.max())
            reply(figures)
        elif cmd == "stop":
            service.shutdown(10)
            reply(stats())
            break
        else:
            reply(stats())
    else:
        service.shutdown(5)


# =============================================================================================
# scoring: the model's ceiling vs the worker vs one window per call (one process per bundle)
# =============================================================================================

class _MetricTiming:
    """For the InfluxSink: events written, from `anomalyd_sink_points_total{result="written"}`,
    and when that count last grew (as seen by the stats polls, every ~20 ms). No per-event
    latencies: the sink's own histogram (`anomalyd_publish_to_sink_seconds`) has them."""

    def __init__(self) -> None:
        self.count = 0
        self.last_write = 0.0
        self.recording = False
        self.latencies = array("d")

    def saw(self, written: float) -> None:
        if written > self.count:
            self.count, self.last_write = int(written), time.time()


class _CountingSink:
    """A sink that only counts: the worker without any sink cost."""

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.reached = threading.Event()
        self.healthy = True

    def submit(self, events) -> None:
        self.count += len(events)
        if self.count >= self.target:
            self.reached.set()

    def status(self) -> dict:
        return {}

    def close(self, timeout: float = 10.0) -> bool:
        return True


def role_scoring(spec: dict) -> None:
    import numpy as np

    from daemon.live.alerting import AlertTracker
    from daemon.live.config import BatchingConfig
    from daemon.live.events import WindowJob
    from daemon.live.telemetry.metrics import Metrics
    from daemon.live.worker import ModelSlot, WindowQueue, Worker
    from daemon.core.scoring import Scorer

    daemon_switch = BatchingConfig().switch_interval_s  # what Service.start sets
    sys.setswitchinterval(daemon_switch)
    scorer = Scorer.load(spec["bundle"], spec["runtime"], 1)
    duration = spec["seconds"]
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(4096, WINDOW, len(FEATURES))).astype(np.float32)
    batch = np.ascontiguousarray(scorer.bundle.scaler.transform(pool[:MAX_BATCH]))
    single = np.ascontiguousarray(batch[:1])
    scorer.backend(batch)  # warm up (allocations, lazy init)
    scorer.backend(single)

    def timed(loop) -> tuple[float, float]:
        """windows/s by the wall clock and per CPU-second of this process."""
        wall, cpu = time.perf_counter(), time.process_time()
        n = loop()
        return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)

    def raw(x):
        def loop() -> int:
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < duration:
                scorer.backend(x)
                n += len(x)
            return n
        return timed(loop)

    def contended(switch_interval: float):
        """raw(batch) while another thread runs pure Python, as the MQTT thread does at full
        ingest load: every return of the model to Python must win the GIL back, waiting up to
        the switch interval each time."""
        stop = threading.Event()
        sys.setswitchinterval(switch_interval)

        def spin() -> None:
            while not stop.is_set():
                pass

        spinner = threading.Thread(target=spin, daemon=True)
        spinner.start()
        try:
            return raw(batch)
        finally:
            stop.set()
            spinner.join()
            sys.setswitchinterval(daemon_switch)

    def naive():
        def loop() -> int:
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < duration:
                scorer.score_windows(pool[n % 4096][None])
                n += 1
            return n
        return timed(loop)

    backend = scorer.backend
    in_model = [0.0]  # seconds the worker spent inside the model call

    def timed_backend(x):
        started = time.perf_counter()
        try:
            return backend(x)
        finally:
            in_model[0] += time.perf_counter() - started

    def job(i: int) -> WindowJob:
        return WindowJob(f"dev{i % 1000}", 1.7e9 + i, pool[i % 4096], 1.7e9 + i)

    def daemon_worker(queue_size: int, sink) -> tuple[Metrics, WindowQueue, Worker]:
        """A Worker as the service builds it, on a queue of its own."""
        metrics = Metrics()
        queue = WindowQueue(queue_size, metrics)
        return metrics, queue, Worker(queue, {"": ModelSlot(scorer, AlertTracker(3, 5))}, sink, metrics, MAX_BATCH,
                                      0.05)

    def worker(sink_path: str | None, count: int):
        """(windows/s by the wall clock, per CPU-second, share of the wall time in the model)."""
        sink, timing = timed_file_sink(sink_path, count) if sink_path else (_CountingSink(count),) * 2
        _, queue, work = daemon_worker(count, sink)
        for i in range(count):
            queue.put(job(i))

        def loop() -> int:
            work.start()
            timing.reached.wait(60)
            return timing.count
        in_model[0] = 0.0
        scorer.backend = timed_backend
        wall = time.perf_counter()
        try:
            result = timed(loop)
        finally:
            wall = time.perf_counter() - wall
            scorer.backend = backend
        work.stop(drain=False, timeout=5)
        sink.close()
        return (*result, in_model[0] / wall)

    def paced(rate: float) -> dict:
        """The worker fed `rate` windows/s from this thread, as ingest would at part load:
        CPU-us per window (the feeding loop's few us included) and windows per forward pass."""
        sink = _CountingSink(0)
        metrics, queue, work = daemon_worker(100_000, sink)
        work.start()
        cpu, start, n = time.process_time(), time.perf_counter(), 0
        while (elapsed := time.perf_counter() - start) < 4 * duration:
            for _ in range(int(elapsed * rate) - n):
                queue.put(job(n))
                n += 1
            time.sleep(0.005)
        while sink.count < n:
            time.sleep(0.001)
        cpu = time.process_time() - cpu
        work.stop(drain=False, timeout=5)
        batches = metrics.registry.get_sample_value("anomalyd_batch_windows_count")
        return {"rate": rate, "windows": n, "cpu_us_per_window": cpu / n * 1e6, "mean_batch": n / batches}

    kinds = ("raw", "raw_batch1", "raw_gil_contended", "raw_gil_contended_python_default", "worker", "worker_nosink",
             "naive")
    runs: dict[str, list] = {k: [] for k in kinds}
    cpu: dict[str, list] = {k: [] for k in kinds}
    ratios: dict[str, list] = {k: [] for k in ("worker", "worker_nosink", "worker_cpu", "worker_nosink_cpu",
                                                "naive", "naive_cpu", "naive_ceiling", "batching", "contended",
                                                "contended_python_default")}
    model_share: dict[str, list] = {"worker": [], "worker_nosink": []}

    def pair(a: tuple, b: tuple) -> tuple:
        return tuple((x + y) / 2 for x, y in zip(a, b))

    for rep in range(spec["reps"]):
        # Each worker run sits between two raw runs and is compared with their mean: the speed
        # of this shared box drifts by tens of percent within seconds, and a ratio against a
        # raw run taken several seconds earlier measured the drift as much as the worker.
        before = raw(batch)
        count = max(1000, int(before[0] * duration))
        *with_file, file_share = worker(os.path.join(spec["tmp"], f"scores-{rep}.lp"), count)
        middle = raw(batch)
        *counting, counting_share = worker(None, count)
        after = raw(batch)
        single_r, contended_r, naive_r = raw(single), contended(daemon_switch), naive()
        contended_default_r = contended(PYTHON_SWITCH_INTERVAL)
        last = raw(batch)
        measured = {"raw": pair(before, after), "raw_batch1": single_r, "raw_gil_contended": contended_r,
                    "raw_gil_contended_python_default": contended_default_r,
                    "worker": tuple(with_file), "worker_nosink": tuple(counting), "naive": naive_r}
        for k, (wall, per_cpu) in measured.items():
            runs[k].append(wall)
            cpu[k].append(per_cpu)
        around_file, around_counting, around_rest = pair(before, middle), pair(middle, after), pair(after, last)
        for name, value, base in (("worker", with_file, around_file), ("worker_nosink", counting, around_counting)):
            ratios[name].append(value[0] / base[0])
            ratios[name + "_cpu"].append(value[1] / base[1])
        ratios["naive"].append(with_file[0] / naive_r[0])
        ratios["naive_cpu"].append(with_file[1] / naive_r[1])
        ratios["naive_ceiling"].append(around_rest[0] / naive_r[0])  # a worker as fast as the model
        ratios["batching"].append(around_rest[0] / single_r[0])
        ratios["contended"].append(contended_r[0] / around_rest[0])
        ratios["contended_python_default"].append(contended_default_r[0] / around_rest[0])
        model_share["worker"].append(file_share)
        model_share["worker_nosink"].append(counting_share)

    median = statistics.median
    raw_cpu_us = 1e6 / median(cpu["raw"])
    part_load = paced(PART_LOAD * median(runs["raw"]))
    part_load["raw_cpu_us_per_window"] = raw_cpu_us
    part_load["cpu_ratio"] = raw_cpu_us / part_load["cpu_us_per_window"]
    reply({"median": {k: median(v) for k, v in runs.items()}, "part_load": part_load,
           "median_per_cpu_s": {k: median(v) for k, v in cpu.items()},
           "runs": runs, "runs_per_cpu_s": cpu, "ratios": ratios,
           "worker_ratio": median(ratios["worker"]),
           "worker_nosink_ratio": median(ratios["worker_nosink"]),
           "naive_speedup": median(ratios["naive"]),
           "naive_speedup_ceiling": median(ratios["naive_ceiling"]),
           "model_batching_gain": median(ratios["batching"]),
           "gil_contended_ratio": median(ratios["contended"]),
           "gil_contended_ratio_python_default": median(ratios["contended_python_default"]),
           "worker_ratio_cpu": median(ratios["worker_cpu"]),
           "worker_nosink_ratio_cpu": median(ratios["worker_nosink_cpu"]),
           "naive_speedup_cpu": median(ratios["naive_cpu"]),
           "worker_model_share": median(model_share["worker"]),
           "worker_nosink_model_share": median(model_share["worker_nosink"]),
           "torch_imported": "torch" in sys.modules})


def role_shapes(spec: dict) -> None:
    """RSS as batches of every size from 1 to MAX_BATCH windows go through the model: first as
    the daemon runs it (loaded and warmed up like `load_scorers`, then `score_windows`), then
    the same batches straight into the model, unpadded (torch only), in the same process."""
    import numpy as np

    from daemon.core.scoring import Scorer

    scorer = Scorer.load(spec["bundle"], spec["runtime"], 1)
    scorer.warm_up(MAX_BATCH)
    pool = np.random.default_rng(0).normal(size=(MAX_BATCH, WINDOW, len(FEATURES))).astype(np.float32)
    sizes = range(1, MAX_BATCH + 1)

    def growth(run) -> float:
        run(pool)  # first-use allocations of the path itself are not growth
        before = rss_mb()
        for _ in range(2):
            for n in sizes:
                run(pool[:n])
        return rss_mb() - before

    out = {"daemon_mb": growth(scorer.score_windows)}
    if spec["runtime"] == "torch":
        import torch

        from daemon.core.runtime import load_torch_model, trace_for_inference

        graph = trace_for_inference(load_torch_model(scorer.bundle))

        def unpadded(x):
            with torch.inference_mode():
                graph(torch.from_numpy(np.ascontiguousarray(scorer.bundle.scaler.transform(x))))
        out["unpadded_mb"] = growth(unpadded)
    reply(out)


# =============================================================================================
# training the bench bundles (a child, so the parent never imports torch)
# =============================================================================================

def role_train(spec: dict) -> None:
    import numpy as np

    from daemon.offline.frames import Frame
    from daemon.offline.onnx_export import export_onnx
    from daemon.offline.training import TrainConfig, save, train

    rng = np.random.default_rng(0)
    n = 2000
    t = np.arange(n, dtype=np.float64)
    values = (np.sin(t[:, None] / 20 + np.arange(len(FEATURES))) + 0.1 * rng.normal(size=(n, len(FEATURES))))
    frame = Frame("generated", 1.7e9 + t, values.astype(np.float32), list(FEATURES))
    out = {}
    for arch in spec["archs"]:
        directory = Path(spec["dir"]) / arch
        started = time.time()
        result = train([frame], TrainConfig(arch=arch, window=WINDOW, stride=1, epochs=1, name=f"bench-{arch}"))
        save(result, directory)
        export_onnx(directory)
        out[arch] = {"path": str(directory), "seconds": round(time.time() - started, 1)}
    reply(out)


ROLES = {"_publish": role_publish, "_bare": role_bare, "_daemon": role_daemon, "_scoring": role_scoring,
         "_shapes": role_shapes, "_train": role_train}


# =============================================================================================
# the parent: orchestration
# =============================================================================================

class Child:
    """A role of this script in its own process, spoken to with JSON lines."""

    def __init__(self, role: str, spec: dict, log: Path, interactive: bool = True) -> None:
        self.role = role
        self._log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, __file__, role, json.dumps(spec)],
                                     stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=ROOT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self, timeout: float) -> dict:
        """The child's next JSON line, or an error after `timeout` seconds."""
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            self.kill()
            raise RuntimeError(f"{self.role} (pid {self.pid}) gave no answer within {timeout:.0f} s; "
                               f"see {self._log.name}")
        answer = json.loads(result[0])
        if "error" in answer:
            raise RuntimeError(f"{self.role}: {answer['error']}")
        return answer

    def ask(self, cmd: str, timeout: float = 30.0, **extra) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **extra}) + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def stop(self, timeout: float = 30.0) -> dict:
        try:
            answer = self.ask("stop", timeout)
        finally:
            self.close()
        return answer

    def wait_result(self, timeout: float) -> dict:
        try:
            return self.read(timeout)
        finally:
            self.close()

    def close(self) -> None:
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()
        self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Mosquitto:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        lines = [f"listener {self.port} {HOST}", "allow_anonymous true", "persistence false",
                 # The default of 1000 silently drops messages to a subscriber that falls behind.
                 "max_queued_messages 10000000", f"log_dest file {workdir / 'mosquitto.log'}"]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.2):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not start on port {self.port} (see {workdir / 'mosquitto.log'})")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Fleet:
    """Readings sent so far per device of one topic prefix, to know how many windows the
    daemon must have written (device with n readings: 1 + (n - window) // stride windows)."""

    def __init__(self, prefix: str, devices: int, stride: int) -> None:
        self.prefix, self.devices, self.stride = prefix, devices, stride
        self.readings = [0] * devices
        self.next = 0  # the paced publisher starts its round robin at device 0 every run

    def windows(self) -> int:
        w, s = WINDOW, self.stride
        return sum(1 + (n - w) // s for n in self.readings if n >= w)

    def add_each(self, per_device: int) -> int:
        """A blast: `per_device` readings for every device. Returns the windows it adds."""
        before = self.windows()
        self.readings = [n + per_device for n in self.readings]
        return self.windows() - before

    def add_round_robin(self, count: int) -> int:
        before = self.windows()
        full, rest = divmod(count, self.devices)
        self.readings = [n + full + (1 if d < rest else 0) for d, n in enumerate(self.readings)]
        return self.windows() - before


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.quick = args.quick
        self.dir = workdir
        self.broker: Mosquitto | None = None
        self._database = None  # VictoriaMetrics, started for the first InfluxSink run
        self.bundles: dict[str, str] = {}
        self.results: dict = {}
        self._runs = 0
        self.started = time.monotonic()

    # ---- plumbing ---------------------------------------------------------------------------

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=sys.stderr, flush=True)

    def _name(self, what: str) -> str:
        self._runs += 1
        return f"{self._runs:02d}-{what}"

    def daemon(self, arch: str, stride: int, qos: int = 0, runtime: str = "torch", sink: str = "file") -> Child:
        """sink "file": the FileSink, timed by its on_written hook; "influx": the InfluxSink writing
        to a private VictoriaMetrics (the production path), counted by its metrics."""
        name = self._name(f"daemon-{arch}-s{stride}-q{qos}-{runtime}-{sink}")
        config = {
            "mqtt": {"host": HOST, "port": self.broker.port, "qos": qos, "client_id": f"bench-{name}",
                     "persistent_session": False},
            "model": {"path": self.bundles[arch], "runtime": runtime},
            "stream": {"stride": stride},
            "batching": {"max_batch": MAX_BATCH, "max_wait_ms": 50, "queue_size": 10000, "torch_threads": 1},
            "local_store": {"path": str(self.dir / f"{name}.lp")},
            "metrics": {"enabled": True, "address": HOST, "port": 0},
            "logging": {"level": "WARNING"},
        }
        if sink == "influx":
            config["influxdb"] = {"enabled": True, "url": self.database().url, "org": "bench", "bucket": "bench",
                                  "token": "unused", "batch_size": 5000, "flush_interval_ms": 100,
                                  "spool_dir": str(self.dir / f"{name}-spool")}
        path = self.dir / f"{name}.yaml"
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        child = Child("_daemon", {"config": str(path)}, self.dir / f"{name}.log")
        child.ready = child.read(60)
        return child

    def database(self):
        """A private VictoriaMetrics (what the integration tests use for InfluxDB's write API)."""
        if self._database is None:
            from tests.servers import VictoriaMetrics

            self._database = VictoriaMetrics(self.dir / "victoria-metrics")
            self._database.start()
        return self._database

    def bare(self, qos: int) -> Child:
        name = self._name(f"bare-q{qos}")
        child = Child("_bare", {"port": self.broker.port, "qos": qos, "topic": TOPIC.format("+")},
                      self.dir / f"{name}.log")
        child.ready = child.read(30)
        return child

    def publish(self, **spec) -> Child:
        spec = {"port": self.broker.port, "qos": 0, "prefix": "d", **spec}
        return Child("_publish", spec, self.dir / f"{self._name('publisher')}.log", interactive=False)

    def wait_consumed(self, consumer: Child, messages: float, windows: float | None, timeout: float) -> dict:
        """Poll until the consumer has accepted `messages` in total (and, for the daemon, has
        written `windows` events to the sink and has an empty queue), or progress stalls for
        10 s, or `timeout`. Marks the answer "incomplete" when it gave up."""
        deadline = time.monotonic() + timeout
        last_progress, last_seen = time.monotonic(), -1.0
        while True:
            stats = consumer.ask("stats")
            done = stats["ok"] >= messages and (windows is None or (stats["sink_events"] >= windows
                                                                    and stats["queued"] == 0))
            if done:
                return stats
            progress = stats["ok"] + stats.get("sink_events", 0)
            if progress != last_seen:
                last_seen, last_progress = progress, time.monotonic()
            if time.monotonic() > deadline or time.monotonic() - last_progress > 10:
                stats["incomplete"] = True
                return stats
            time.sleep(0.25)

    # ---- phases -----------------------------------------------------------------------------

    def train(self) -> None:
        self.log("training tiny LSTM and Conv bundles (window 60, 8 features, 1 epoch) and exporting ONNX")
        child = Child("_train", {"dir": str(self.dir / "models"), "archs": ["lstm", "conv"]},
                      self.dir / "train.log", interactive=False)
        out = child.wait_result(600)
        self.bundles = {arch: info["path"] for arch, info in out.items()}

    def scoring(self) -> None:
        seconds = 0.4 if self.quick else 0.6
        reps = 3 if self.quick else 7
        res = {}
        for runtime in self.runtimes:
            for arch in ("lstm", "conv"):
                self.log(f"scoring: {arch} on {runtime} (raw batch {MAX_BATCH} / worker / one window per call)")
                tmp = self.dir / f"scoring-{arch}-{runtime}"
                tmp.mkdir()
                child = Child("_scoring", {"bundle": self.bundles[arch], "runtime": runtime, "seconds": seconds,
                                           "reps": reps, "tmp": str(tmp)},
                              self.dir / f"{self._name('scoring')}.log", interactive=False)
                res[f"{arch}_{runtime}"] = child.wait_result(300)
                shutil.rmtree(tmp, ignore_errors=True)
        self.results["scoring"] = res

    def shapes(self) -> None:
        """RSS growth once a live worker has met every batch size (uneven traffic does, over
        hours): the 1M-message growth phase runs flat out, so its batches are all full."""
        res = {}
        for runtime in self.runtimes:
            for arch in ("lstm", "conv"):
                child = Child("_shapes", {"bundle": self.bundles[arch], "runtime": runtime},
                              self.dir / "shapes.log", interactive=False)
                res[f"{arch}_{runtime}"] = out = child.wait_result(300)
                unpadded = f", unpadded model +{out['unpadded_mb']:.1f} MB" if "unpadded_mb" in out else ""
                self.log(f"every batch size 1-{MAX_BATCH}, {arch} on {runtime}: daemon +{out['daemon_mb']:.1f} MB"
                         + unpadded)
        self.results["shapes"] = res

    def ingest(self) -> None:
        """Bare paho subscriber vs the daemon, same publisher load, QoS 0 and 1, interleaved."""
        stride = self.args.ingest_stride
        devices = 1000
        per_device = WINDOW + stride * (1 if self.quick else 3)  # the last reading completes a window
        messages = devices * per_device
        windows = devices * (1 + (per_device - WINDOW) // stride)
        reps = 1 if self.quick else 3
        res: dict = {}
        for qos in (0, 1):
            runs: dict[str, list] = {"bare": [], "daemon": []}
            for rep in range(reps):
                for kind in ("bare", "daemon"):
                    consumer = self.bare(qos) if kind == "bare" else self.daemon("lstm", stride, qos)
                    try:
                        start = consumer.ask("stats")
                        pub = self.publish(mode="blast", qos=qos, devices=devices, per_device=per_device,
                                           ts0=time.time() - per_device - 60, prefix=f"i{rep}-")
                        sent = pub.wait_result(300)
                        stats = self.wait_consumed(consumer, messages, windows if kind == "daemon" else None, 300)
                    finally:
                        final = consumer.stop()
                    done = max(stats["last_ok"], stats.get("last_write", 0.0))
                    rate = stats["ok"] / (done - sent["t_first"])
                    cpu_us = (stats["cpu_s"] - start["cpu_s"]) / max(stats["ok"], 1) * 1e6
                    runs[kind].append({"rate": rate, "cpu_us_per_msg": cpu_us, "messages": stats["ok"],
                                       "incomplete": stats.get("incomplete", False),
                                       "dropped": stats.get("dropped", 0), "rss_mb": final["rss_mb"],
                                       "publisher_rate": sent["sent"] / (sent["t_sent"] - sent["t_first"])})
                    self.log(f"ingest qos {qos} {kind}: {rate:,.0f} msg/s, {cpu_us:.1f} CPU-us/msg "
                             f"({stats['ok']:,.0f}/{messages:,} messages{', INCOMPLETE' if stats.get('incomplete') else ''}; "
                             f"publisher {runs[kind][-1]['publisher_rate']:,.0f} msg/s)")
            pairs = list(zip(runs["bare"], runs["daemon"]))
            res[f"qos{qos}"] = {
                "bare": statistics.median(r["rate"] for r in runs["bare"]),
                "daemon": statistics.median(r["rate"] for r in runs["daemon"]),
                # Each daemon run against the bare run just before it, then the median.
                "ratio": statistics.median(d["rate"] / b["rate"] for b, d in pairs),
                "bare_cpu_us": statistics.median(r["cpu_us_per_msg"] for r in runs["bare"]),
                "daemon_cpu_us": statistics.median(r["cpu_us_per_msg"] for r in runs["daemon"]),
                "cpu_ratio": statistics.median(b["cpu_us_per_msg"] / d["cpu_us_per_msg"] for b, d in pairs),
                "runs": runs}
        res.update(stride=stride, messages=messages, devices=devices, windows=windows)
        self.results["ingest"] = res

    def sustained(self, arch: str, stride: int, runtime: str, sink: str = "file") -> dict:
        """Bisect the highest rate the daemon keeps up with: publish at R msg/s for a while; it
        passes when every message was accepted, no window was dropped, and everything was in
        the sink within `grace` seconds of the publisher's end."""
        devices = 1000
        seconds = 3.0 if self.quick else 8.0
        grace = 0.5
        fleet = Fleet("s", devices, stride)
        daemon = self.daemon(arch, stride, 0, runtime, sink)
        probes = []
        try:
            # Warm-up: every device one reading short of a full window, so probes score at once.
            pub = self.publish(mode="blast", devices=devices, per_device=WINDOW - 1, ts0=time.time() - 900,
                               prefix=fleet.prefix)
            pub.wait_result(120)
            fleet.add_each(WINDOW - 1)
            self.wait_consumed(daemon, devices * (WINDOW - 1), None, 120)
            # A short saturating blast gives the starting estimate (windows may be dropped here).
            before = self.wait_idle(daemon)
            blast_n = 10 if self.quick else 20
            pub = self.publish(mode="blast", devices=devices, per_device=blast_n, ts0=time.time() - 300,
                               prefix=fleet.prefix)
            sent = pub.wait_result(120)
            fleet.add_each(blast_n)
            self.wait_consumed(daemon, before["ok"] + devices * blast_n, None, 120)
            after = self.wait_idle(daemon)
            elapsed = max(after["last_ok"], after["last_write"]) - sent["t_first"]
            scored_rate = (after["scored"] - before["scored"]) * stride / elapsed
            ingest_rate = (after["ok"] - before["ok"]) / elapsed
            estimate = min(scored_rate, ingest_rate)
            self.log(f"sustained {arch}/{runtime} stride {stride}: saturated blast {ingest_rate:,.0f} msg/s ingested, "
                     f"{scored_rate / stride:,.0f} windows/s scored -> first probe near {0.9 * estimate:,.0f} msg/s")
            lo, hi = 0.0, math.inf
            rate = estimate * 0.9
            for _ in range(3 if self.quick else 5):
                ok, detail = self.probe(daemon, fleet, rate, seconds, grace)
                probes.append({"rate": rate, "ok": ok, **detail})
                self.log(f"  probe {rate:,.0f} msg/s: {'sustained' if ok else 'NOT sustained'} "
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
            final = daemon.ask("stats")
        finally:
            daemon.stop()
        return {"max_rate": lo, "not_sustained_at": None if hi == math.inf else hi, "probes": probes,
                "blast_ingest_rate": ingest_rate, "blast_scored_windows_rate": scored_rate / stride,
                "rss_mb": final["rss_mb"], "devices": devices, "probe_seconds": seconds}

    def wait_idle(self, daemon: Child, timeout: float = 60) -> dict:
        """Poll until the queue is empty and nothing moved between two polls 0.3 s apart."""
        deadline = time.monotonic() + timeout
        previous = daemon.ask("stats")
        while time.monotonic() < deadline:
            time.sleep(0.3)
            stats = daemon.ask("stats")
            if stats["queued"] == 0 and stats["ok"] == previous["ok"] and stats["sink_events"] == previous["sink_events"]:
                return stats
            previous = stats
        previous["incomplete"] = True
        return previous

    def probe(self, daemon: Child, fleet: Fleet, rate: float, seconds: float, grace: float) -> tuple[bool, dict]:
        """Publish `rate` msg/s for `seconds` round robin over the fleet; record latencies."""
        before = self.wait_idle(daemon)
        daemon.ask("record", on=True)
        count = int(rate * seconds)
        pub = self.publish(mode="paced", devices=fleet.devices, rate=rate, count=count, prefix=fleet.prefix)
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
            stats = self.wait_consumed(daemon, target_ok, None, 120)
            stats = self.wait_idle(daemon)
        catch_up = max(stats["last_ok"], stats["last_write"]) - sent["t_sent"]
        latency = daemon.ask("latency")
        daemon.ask("record", on=False)
        dropped = stats["dropped"] - before["dropped"]
        accepted = stats["ok"] - before["ok"]
        written = stats["sink_events"] - before["sink_events"]
        detail = {"catch_up_s": catch_up, "dropped": dropped, "accepted": accepted, "sent": count,
                  "windows_expected": windows, "windows_written": written,
                  "publisher_lag_s": sent["max_lag_s"], **latency}
        ok = in_time and dropped == 0 and accepted == count and written == windows and sent["max_lag_s"] < 0.25
        return ok, detail

    def sustained_all(self) -> None:
        res = {}
        plan = [("lstm", 1, "torch"), ("lstm", 10, "torch")]
        if "onnx" in self.runtimes:
            plan.append(("lstm", 1, "onnx"))
        for arch, stride, runtime in plan:
            res[f"{arch}_stride{stride}_{runtime}"] = self.sustained(arch, stride, runtime)
        if "torch" in self.runtimes and not self.quick:
            res["lstm_stride1_torch-influx"] = self.sustained("lstm", 1, "torch", "influx")
        self.results["sustained"] = res

    def latency(self) -> None:
        """Publish-to-sink latency at two loads, LSTM stride 1, one daemon."""
        seconds = 6.0 if self.quick else 30.0
        daemon = self.daemon("lstm", 1, 0, "torch")
        res = {}
        try:
            for devices, hz, prefix in ((1000, 1, "a"), (100, 20, "b")):
                fleet = Fleet(prefix, devices, 1)
                pub = self.publish(mode="blast", devices=devices, per_device=WINDOW - 1, ts0=time.time() - 900,
                                   prefix=prefix)
                pub.wait_result(120)
                fleet.add_each(WINDOW - 1)
                self.wait_idle(daemon)
                ok, detail = self.probe(daemon, fleet, devices * hz, seconds, 1.0)
                res[f"{devices}x{hz}hz"] = {"sustained": ok, **detail}
                self.log(f"latency {devices} devices x {hz} Hz: p50 {detail['p50']:.1f} ms, p95 {detail['p95']:.1f} ms, "
                         f"p99 {detail['p99']:.1f} ms over {detail['n']} windows")
        finally:
            daemon.stop()
        self.results["latency"] = res

    def memory(self) -> None:
        res = {}
        devices = 10_000
        for runtime in self.runtimes:
            daemon = self.daemon("lstm", 1, 0, runtime)
            try:
                idle = daemon.ready
                pub = self.publish(mode="blast", devices=devices, per_device=WINDOW, ts0=time.time() - 600,
                                   prefix="m")
                pub.wait_result(300)
                full = self.wait_consumed(daemon, devices * WINDOW, devices, 300)
                full = self.wait_idle(daemon)
            finally:
                daemon.stop()
            res[runtime] = {"idle_rss_mb": idle["rss_mb"], "rss_mb_10k": full["rss_mb"], "hwm_mb": full["hwm_mb"],
                            "devices": full["devices"], "torch_imported": full["torch_imported"],
                            "incomplete": full.get("incomplete", False)}
            self.log(f"memory {runtime}: idle {idle['rss_mb']:.0f} MB, {full['devices']} devices with full windows "
                     f"{full['rss_mb']:.0f} MB (peak {full['hwm_mb']:.0f} MB; torch imported: {full['torch_imported']})")
        self.results["memory"] = res

    def growth(self) -> None:
        """RSS before/after N messages (LSTM, stride 10, 1000 devices). `before` is taken once
        every stage has run at full load (windows scored and written), so first-use allocations
        (torch's buffers, the allocator's arenas) are not counted as growth. The messages then
        come in blasts of 100 000 (the daemon running flat out), RSS read after each."""
        total = 200_000 if self.quick else 1_000_000
        devices, stride, chunk = 1000, 10, 100
        warm_per_device = WINDOW + 5 * stride
        chunks = total // (devices * chunk)
        start_ts = time.time() - (warm_per_device + chunks * chunk) - 120
        daemon = self.daemon("lstm", stride, 0, "torch")
        samples = []
        try:
            pub = self.publish(mode="blast", devices=devices, per_device=warm_per_device, ts0=start_ts, prefix="g")
            pub.wait_result(300)
            self.wait_consumed(daemon, devices * warm_per_device, None, 300)
            before = self.wait_idle(daemon)
            for k in range(chunks):
                ts0 = start_ts + warm_per_device + k * chunk
                pub = self.publish(mode="blast", devices=devices, per_device=chunk, ts0=ts0, prefix="g")
                pub.wait_result(300)
                self.wait_consumed(daemon, before["ok"] + (k + 1) * devices * chunk, None, 300)
                stats = self.wait_idle(daemon)
                samples.append((stats["ok"] - before["ok"], stats["rss_mb"]))
            after = stats if samples else before
        finally:
            daemon.stop()
        half = samples[len(samples) // 2:]
        slope = ((half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0]) * 1e6
                 if len(half) > 1 and half[-1][0] > half[0][0] else math.nan)
        res = {"messages": after["ok"] - before["ok"], "rss_before_mb": before["rss_mb"],
               "rss_after_mb": after["rss_mb"], "growth_mb": after["rss_mb"] - before["rss_mb"],
               "second_half_mb_per_1m": slope, "dropped": after["dropped"] - before["dropped"],
               "warmup_messages": devices * warm_per_device, "samples": samples}
        self.log(f"growth: {res['messages']:,.0f} messages after a {res['warmup_messages']:,} message warm-up: "
                 f"RSS {before['rss_mb']:.1f} -> {after['rss_mb']:.1f} MB "
                 f"(after each 100k: {', '.join(f'{r:.1f}' for _, r in samples)})")
        self.results["growth"] = res

    # ---- report -----------------------------------------------------------------------------

    @property
    def runtimes(self) -> list[str]:
        runtime = self.args.runtime or ("torch" if self.quick else "both")
        return ["torch", "onnx"] if runtime == "both" else [runtime]

    def run(self) -> dict:
        self.broker = Mosquitto(self.dir)
        try:
            self.train()
            phases = {"scoring": self.scoring, "ingest": self.ingest, "sustained": self.sustained_all,
                      "latency": self.latency, "memory": self.memory, "growth": self.growth,
                      "shapes": self.shapes}
            for name in self.args.only or phases:
                phases[name]()
        finally:
            self.broker.stop()
            if self._database is not None:
                self._database.stop()
        self.results["seconds"] = round(time.monotonic() - self.started, 1)
        return self.results


def summary(results: dict, quick: bool) -> dict:
    """The flat figures promised by the issue (plus a few more)."""
    out: dict = {"quick": quick}
    ing = results.get("ingest")
    if ing:
        out["ingest_ratio"] = min(ing["qos0"]["ratio"], ing["qos1"]["ratio"])
        for q in (0, 1):
            out[f"ingest_ratio_qos{q}"] = ing[f"qos{q}"]["ratio"]
            out[f"ingest_msgs_per_s_qos{q}_daemon"] = ing[f"qos{q}"]["daemon"]
            out[f"ingest_msgs_per_s_qos{q}_bare"] = ing[f"qos{q}"]["bare"]
            out[f"ingest_cpu_ratio_qos{q}"] = ing[f"qos{q}"]["cpu_ratio"]
    sc = results.get("scoring")
    if sc:
        main = sc["lstm_torch"]
        out["worker_ratio"] = main["worker_ratio"]
        out["naive_speedup"] = main["naive_speedup"]
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
    su = results.get("sustained")
    if su:
        for key, val in su.items():
            arch, stride, runtime = key.split("_")
            suffix = "" if runtime == "torch" else "_" + runtime.replace("-", "_")
            out[f"max_msgs_per_s_{arch}_{stride}{suffix}"] = val["max_rate"]
    lat = results.get("latency")
    if lat:
        out["p99_ms_1k_devices"] = lat["1000x1hz"]["p99"]
        out["p99_ms_100_devices_20hz"] = lat["100x20hz"]["p99"]
        out["p50_ms_1k_devices"] = lat["1000x1hz"]["p50"]
        out["p50_ms_100_devices_20hz"] = lat["100x20hz"]["p50"]
    mem = results.get("memory")
    if mem:
        for runtime, val in mem.items():
            suffix = "" if runtime == "torch" else "_onnx"
            out[f"rss_mb_10k_devices{suffix}"] = val["rss_mb_10k"]
            out[f"rss_mb_idle{suffix}"] = val["idle_rss_mb"]
    gr = results.get("growth")
    if gr:
        out["rss_growth_mb_1m_messages"] = gr["growth_mb"]  # measured over rss_growth_messages_measured
        out["rss_growth_messages_measured"] = gr["messages"]
    for key, val in results.get("shapes", {}).items():
        out[f"rss_growth_mb_every_batch_size_{key}"] = val["daemon_mb"]
        if "unpadded_mb" in val:
            out[f"rss_growth_mb_every_batch_size_{key}_unpadded"] = val["unpadded_mb"]
    return out


def table(results: dict, flat: dict) -> str:
    rows: list[tuple[str, str, str, str, str]] = []

    def add(what: str, value: str, ceiling: str = "", ratio: str = "", goal: str = "") -> None:
        rows.append((what, value, ceiling, ratio, goal))

    ing = results.get("ingest")
    if ing:
        for q in (0, 1):
            r = ing[f"qos{q}"]
            add(f"ingest QoS {q} (msg/s, stride {ing['stride']})", f"{r['daemon']:,.0f}", f"{r['bare']:,.0f} bare paho",
                f"{r['ratio']:.2f}", ">= 0.80")
            add(f"  CPU per message QoS {q} (us)", f"{r['daemon_cpu_us']:.1f}", f"{r['bare_cpu_us']:.1f} bare paho",
                f"{r['cpu_ratio']:.2f}", "")
    su = results.get("sustained")
    if su:
        for key, val in su.items():
            arch, stride, runtime = key.split("_")
            add(f"max sustained {arch} {stride} {runtime} (msg/s)", f"{val['max_rate']:,.0f}",
                f"{val['blast_ingest_rate']:,.0f} saturated", "", f"= {val['max_rate']:,.0f} devices at 1 Hz")
    sc = results.get("scoring")
    if sc:
        for key, val in sc.items():
            m = val["median"]
            add(f"worker {key} (windows/s)", f"{m['worker']:,.0f}", f"{m['raw']:,.0f} raw batch {MAX_BATCH}",
                f"{val['worker_ratio']:.2f}", ">= 0.90")
            add("  same, per CPU-second", "", "", f"{val['worker_ratio_cpu']:.2f}", "")
            add("  share of the worker's time in the model", "", "", f"{val['worker_model_share']:.2f}", "")
            add("  worker, sink that only counts", f"{m['worker_nosink']:,.0f}", f"{m['raw']:,.0f}",
                f"{val['worker_nosink_ratio']:.2f}", "")
            add("  share of its time in the model", "", "", f"{val['worker_nosink_model_share']:.2f}", "")
            add("  worker vs one window per call", f"{m['worker']:,.0f}", f"{m['naive']:,.0f} naive",
                f"{val['naive_speedup']:.1f}x", ">= 20x")
            add("  the most any worker can be: raw batch 64 vs one window per call", f"{m['raw']:,.0f}",
                f"{m['naive']:,.0f} naive", f"{val['naive_speedup_ceiling']:.1f}x", "")
            add("  model alone: batch 64 vs batch 1", f"{m['raw']:,.0f}", f"{m['raw_batch1']:,.0f} raw batch 1",
                f"{val['model_batching_gain']:.1f}x", "")
            pl = val["part_load"]
            add(f"  worker at {PART_LOAD:.0%} load: CPU-us a window (batch)",
                f"{pl['cpu_us_per_window']:.0f} ({pl['mean_batch']:.0f})",
                f"{pl['raw_cpu_us_per_window']:.0f} raw batch {MAX_BATCH}", f"{pl['cpu_ratio']:.2f}", "")
            add("  model beside a busy Python thread", f"{m['raw_gil_contended']:,.0f}", f"{m['raw']:,.0f} alone",
                f"{val['gil_contended_ratio']:.2f}", "")
            add("  same, Python's 5 ms switch interval", f"{m['raw_gil_contended_python_default']:,.0f}",
                f"{m['raw']:,.0f} alone", f"{val['gil_contended_ratio_python_default']:.2f}", "")
    lat = results.get("latency")
    if lat:
        for key, goal in (("1000x1hz", "p99 <= 100 ms"), ("100x20hz", "")):
            val = lat[key]
            add(f"publish-to-sink {key} (ms)", f"p50 {val['p50']:.1f} p95 {val['p95']:.1f} p99 {val['p99']:.1f}",
                f"n={val['n']}", "", goal)
    mem = results.get("memory")
    if mem:
        for runtime, val in mem.items():
            goal = "<= 300 MB" if runtime == "torch" else "<= 150 MB"
            add(f"RSS 10k devices, {runtime} (MB)", f"{val['rss_mb_10k']:.0f}", f"idle {val['idle_rss_mb']:.0f}", "", goal)
    gr = results.get("growth")
    if gr:
        add(f"RSS growth over {gr['messages']:,.0f} messages (MB)", f"{gr['growth_mb']:+.1f}",
            f"{gr['rss_before_mb']:.0f} -> {gr['rss_after_mb']:.0f}", "", "~0")
    for key, val in results.get("shapes", {}).items():
        reference = f"+{val['unpadded_mb']:.1f} unpadded" if "unpadded_mb" in val else ""
        add(f"RSS growth, every batch size 1-{MAX_BATCH}, {key} (MB)", f"{val['daemon_mb']:+.1f}", reference, "", "~0")
    headers = ("figure", "value", "ceiling / reference", "ratio", "goal")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ROLES:
        ROLES[argv[0]](json.loads(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs, about 3 minutes instead of 13")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures (and the raw results) here")
    parser.add_argument("--runtime", choices=("torch", "onnx", "both"),
                        help="inference runtime(s) to measure (default: both; torch only with --quick)")
    parser.add_argument("--ingest-stride", type=int, default=60,
                        help="stride for the ingest comparison, high enough that inference is not the "
                             "bottleneck (default: %(default)s)")
    parser.add_argument("--only", type=lambda s: s.split(","), metavar="PHASES",
                        help="comma list of: scoring, ingest, sustained, latency, memory, growth, shapes")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    args = parser.parse_args(argv)
    if not os.access(MOSQUITTO, os.X_OK):
        print(f"{MOSQUITTO} not found: install the Debian package mosquitto", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="anomalyd-bench-"))
    try:
        results = Bench(args, workdir).run()
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    flat = summary(results, args.quick)
    print(table(results, flat))
    print()
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in flat.items()}, indent=1))
    if args.json:
        args.json.write_text(json.dumps({**flat, "details": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
