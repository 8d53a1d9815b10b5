"""`anomalyd demo`: the whole live path on one machine.

Starts a broker when none is configured (mosquitto if installed, else the embedded amqtt),
runs the real service with the shipped demo bundle, replays generated data for a few devices
(faults injected into some), then prints a per-device summary and writes a PNG of score vs
threshold per device.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from daemon.offline import synthetic
from daemon.commands.common import formatter
from daemon.demo.broker import local_broker
from daemon.demo.report import DeviceRun, plot_devices, summary_table
from daemon.core.errors import UserError
from daemon.offline.evaluation import segments
from daemon.live.config import build, read_yaml
from daemon.live.telemetry.logsetup import configure_logging
from daemon.live.telemetry.metrics import Metrics
from daemon.live.service import Service
from daemon.live.sinks.factory import build_sink
from daemon.live.sinks.tee import RecordingSink
from daemon.offline.publisher import Publisher, payload

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "demo"
FAULT_PLAN = (("stuck", "level_shift"), (), ("decorrelation", "spike"), ("level_shift",))

EPILOG = """\
Without --config the demo uses embedded defaults: a private broker on a free loopback port,
the bundle in models/demo, scores appended as line protocol to OUT/scores.lp. With --config,
its mqtt / influxdb / local_store sections are used instead (e.g. to write to a real
InfluxDB and watch the Grafana dashboard from deploy/grafana fill up).

examples:
  anomalyd demo
  anomalyd demo --devices 6 --rows 1200 --out /tmp/demo
  anomalyd demo --config config.yaml
"""


def add_parser(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser("demo", help=summary, formatter_class=formatter,
                       description="Demonstrate the live service on generated data.", epilog=EPILOG)
    p.add_argument("--config", metavar="YAML", help="use this config's broker and sinks instead of the embedded ones")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, metavar="DIR", help="bundle (default: models/demo)")
    p.add_argument("--devices", type=int, default=4, help="devices to simulate (default: %(default)s)")
    p.add_argument("--rows", type=int, default=900, help="readings per device (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("demo-out"), metavar="DIR",
                   help="where the scores, summary and PNG go (default: %(default)s)")
    p.add_argument("--seed", type=int, default=7, help="(default: %(default)s)")
    p.set_defaults(run=run)


def _config(args: argparse.Namespace, broker: tuple[str, int] | None):
    raw = read_yaml(args.config) if args.config else {}
    raw = dict(raw or {})
    raw["model"] = {**raw.get("model", {}), "path": str(args.model)}
    if broker is not None:
        raw["mqtt"] = {**raw.get("mqtt", {}), "host": broker[0], "port": broker[1],
                       "client_id": "anomalyd-demo", "persistent_session": False}
    if not args.config:
        raw["local_store"] = {"path": str(args.out / "scores.lp")}
        raw["metrics"] = {"port": 0}
        raw["logging"] = {"level": "WARNING"}
    return build(raw)


def _device_data(args: argparse.Namespace) -> dict[str, synthetic.Synthetic]:
    start = time.time() - args.rows  # recent, so any database retention keeps it
    data = {}
    for i in range(args.devices):
        faults = FAULT_PLAN[i % len(FAULT_PLAN)]
        run = synthetic.normal(args.rows, args.seed + i, start)
        for j, fault in enumerate(faults):
            at = args.rows * (j + 1) // (len(faults) + 1)
            run = synthetic.inject(run, fault, at, max(30, args.rows // 8), args.seed + 10 * i + j)
        data[f"pump-{i + 1}"] = run
    return data


def _publish(data: dict[str, synthetic.Synthetic], host: str, port: int) -> None:
    publisher = Publisher(host, port, qos=1)
    rows = len(next(iter(data.values())).timestamps)
    try:
        for r in tqdm(range(rows), desc="replay", unit="row", file=sys.stderr, disable=None):
            for device, run in data.items():
                publisher.publish(f"sensors/{device}/data",
                                  payload(run.timestamps[r], synthetic.FEATURES, run.values[r]))
    finally:
        publisher.close()


def _wait_scored(service: Service, expected: int, timeout: float) -> int:
    counter = service.metrics.registry
    deadline = time.monotonic() + timeout
    scored = 0.0
    while time.monotonic() < deadline:
        scored = counter.get_sample_value("anomalyd_windows_scored_total") or 0.0
        if scored >= expected:
            break
        time.sleep(0.2)
    return int(scored)


def run(args: argparse.Namespace) -> int:
    if args.devices < 1 or args.rows < 100:
        raise UserError("--devices must be >= 1 and --rows >= 100")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scores.lp").unlink(missing_ok=True)
    configure_logging("WARNING", "text")
    with local_broker(None if args.config else args.out) as broker:
        config = _config(args, broker)
        metrics = Metrics()
        recorder = RecordingSink(build_sink(config, metrics))
        service = Service(config, metrics=metrics, sink=recorder)
        service.start()
        deadline = time.monotonic() + 15
        while not service.ingest.subscribed:
            if time.monotonic() > deadline:
                raise UserError(f"demo: service did not connect to the broker at {config.mqtt.host}:{config.mqtt.port}")
            time.sleep(0.05)
        data = _device_data(args)
        window = service.scorer.window
        stride = config.stream.stride or service.scorer.bundle.stride
        expected = len(data) * ((args.rows - window) // stride + 1)
        _publish(data, config.mqtt.host, config.mqtt.port)
        scored = _wait_scored(service, expected, timeout=120)
        service.shutdown()
    runs = [DeviceRun(device, run, recorder.events_of(device)) for device, run in data.items()]
    table = summary_table(runs, service.scorer.bundle.name, service.scorer.bundle.score)
    (args.out / "summary.txt").write_text(table + "\n")
    png = plot_devices(runs, args.out / "scores.png")
    print(table)
    print(f"\n{scored} of {expected} windows scored; scores in {config.local_store.path or 'the configured sinks'}; "
          f"plot: {png}")
    labelled = sum(len(segments(r.data.labels)) for r in runs)
    detected = sum(r.faults_detected for r in runs)
    print(f"faults detected: {detected} of {labelled}; devices without faults alerted: "
          f"{sum(1 for r in runs if not r.data.labels.any() and r.alert_windows)}")
    return 0 if scored >= expected and np.isfinite(scored) else 1
