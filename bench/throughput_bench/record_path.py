"""Instructions per record of the ingest record path, counted by callgrind, without a broker.

    .venv/bin/python bench/throughput_bench/record_path.py kafka --device-field   # ~1 min
    .venv/bin/python bench/throughput_bench/record_path.py bare

In-memory records of the Kafka bench's shape (`bench/kafka_throughput.py`: 5 features,
~120-byte payloads, keyed by device) go through one path, run under valgrind's callgrind, which
collects only inside `sys.call_tracing` (the path itself, not the interpreter's start, the
imports or building the records):

    kafka   `KafkaSource._hand_over` of batches of 1,000 `confluent_kafka.Message` records into
            the `MessagePipeline` (window 20, stride 60): the Kafka source's whole record path
            after `consume()`
    mqtt    the same pipeline handed one message at a time, as the MQTT client does
    bare    `json.loads` of each record's value and nothing else: the bare consumer's loop

`--device-field` adds `"device": <the record's key>` to every payload, as a bridge that names
the device in the payload does. Instruction counts do not move with other load on the box, so
they compare code paths where wall-clock rates on a shared box cannot; they leave out cache
misses and everything around the record path (`consume()`, the worker, the sink).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ["vibration", "current", "pressure", "flow", "temperature"]
TOPIC = "bench"
PARTITIONS = 6
BATCH = 1000


def payloads(records: int, devices: int, device_field: bool) -> list[tuple[int, str, bytes]]:
    """(device number, device id, value) round robin over `devices`, one reading a second per
    device."""
    start = time.time() - records // devices - 10
    out = []
    for i in range(records):
        step, device = divmod(i, devices)
        name = f"pump-{device:05d}"
        named = f', "device": "{name}"' if device_field else ""
        value = (f'{{"ts": {start + step:.1f}, "vibration": 0.026, "current": {1.4 + (i % 7) * 0.01:.3f}, '
                 f'"pressure": 2.9, "flow": 25.2, "temperature": 59.9{named}}}')
        out.append((device, name, value.encode()))
    return out


def kafka_batches(records: list[tuple[int, str, bytes]]) -> list[list]:
    """Consume-call batches of `Message` records, each sorted by partition as librdkafka returns
    them (device number modulo the partitions), with offsets counting up per partition."""
    from confluent_kafka import Message

    offsets = [0] * PARTITIONS
    batches = []
    for first in range(0, len(records), BATCH):
        batch = []
        for number, device, value in sorted(records[first:first + BATCH], key=lambda r: r[0] % PARTITIONS):
            partition = number % PARTITIONS
            batch.append(Message(topic=TOPIC, partition=partition, offset=offsets[partition], key=device.encode(),
                                 value=value))
            offsets[partition] += 1
        batches.append(batch)
    return batches


def pipeline(device_field: str | None):
    from daemon.live.config import LimitsConfig, StreamConfig
    from daemon.live.ingest.buffers import DeviceBuffers
    from daemon.live.ingest.payload import PayloadParser
    from daemon.live.ingest.pipeline import MessagePipeline
    from daemon.live.telemetry.metrics import Metrics

    metrics = Metrics()
    jobs: list = []
    buffers = DeviceBuffers(20, len(FEATURES), StreamConfig(stride=60), LimitsConfig(max_devices=100_000), metrics)
    parser = PayloadParser(FEATURES, device_field=device_field)
    return MessagePipeline(parser, buffers, jobs.append, metrics.messages), metrics


def kafka_source(settings, handler, metrics):
    from daemon.live.ingest.kafka import KafkaSource, PartitionLedger, device_topic

    source = KafkaSource(settings, handler, metrics, topic_of=device_topic("sensors/+/data", 1), replay_seconds=0,
                         drop_devices=lambda devices: None)
    for partition in range(PARTITIONS):
        source._ledgers[(TOPIC, partition)] = PartitionLedger(source=(TOPIC, partition))
    return source


def run_path(path: str, records: int, devices: int, device_field: bool) -> None:
    """Build the records and the path, then run the path inside `sys.call_tracing` (where
    callgrind collects)."""
    readings = payloads(records, devices, device_field)
    now = time.time()
    counts = None
    if path == "bare":
        values = [value for _, _, value in readings]

        def run() -> None:
            loads = json.loads
            for value in values:
                loads(value)
    elif path == "mqtt":
        handle, metrics = pipeline(None)
        counts = metrics.messages.counts
        messages = [(f"sensors/{device}/data", value) for _, device, value in readings]

        def run() -> None:
            for topic, value in messages:
                handle(topic, value, now)
    else:
        from daemon.live.config import KafkaConfig

        settings = KafkaConfig(bootstrap_servers="127.0.0.1:9", topics=TOPIC, group_id="bench")  # device_field "device"
        handle, metrics = pipeline(settings.device_field)
        counts = metrics.messages.counts
        source = kafka_source(settings, handle, metrics)
        batches = kafka_batches(readings)

        def run() -> None:
            for batch in batches:
                source._hand_over(batch, now)
    sys.call_tracing(run, ())
    if counts is not None and counts["ok"] != records:
        sys.exit(f"{path}: only {counts['ok']} of {records} records accepted: {dict(counts)}")


def count_instructions(args: argparse.Namespace) -> int:
    """Run this script's path under callgrind; the instructions it collected."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("valgrind not found: install the Debian package valgrind")
    command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", "--toggle-collect=sys_call_tracing*",
               sys.executable, __file__, args.path, "--records", str(args.records), "--devices", str(args.devices),
               "--inside"] + (["--device-field"] if args.device_field else [])
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    collected = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or collected is None:
        sys.exit(f"callgrind run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(collected.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("path", choices=("kafka", "mqtt", "bare"), help="which record path (module docstring)")
    parser.add_argument("--device-field", action="store_true", help="payloads carry the device field")
    parser.add_argument("--records", type=int, default=24000, help="records run through the path")
    parser.add_argument("--devices", type=int, default=200, help="devices they come from, round robin")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)  # the run under callgrind
    args = parser.parse_args()
    if args.inside:
        sys.path.insert(0, str(ROOT))
        run_path(args.path, args.records, args.devices, args.device_field)
        return
    instructions = count_instructions(args)
    field = "with" if args.device_field else "without"
    print(f"{args.path}, payloads {field} the device field: {instructions / args.records:,.0f} instructions a record "
          f"({args.records} records of {args.devices} devices)")


if __name__ == "__main__":
    main()
