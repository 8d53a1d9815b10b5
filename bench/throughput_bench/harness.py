"""The parent's plumbing: the broker, the bundles, and children started and polled by name.

Every phase gets the one `Harness` of a run; it owns the work directory's names (each child's
config and log are numbered in the order they start) and what outlives a phase (the broker,
the trained bundles, the VictoriaMetrics started for the first InfluxSink run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .common import HOST, MAX_BATCH, TOPIC
from .processes import Child, Mosquitto


class Harness:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.dir = workdir
        self.broker = Mosquitto(workdir)
        self.bundles: dict[str, str] = {}  # arch -> bundle directory, set by the train phase
        self._database = None  # VictoriaMetrics, started for the first InfluxSink run
        self._runs = 0
        self.started = time.monotonic()

    @property
    def runtimes(self) -> list[str]:
        runtime = self.args.runtime or ("torch" if self.quick else "both")
        return ["torch", "onnx"] if runtime == "both" else [runtime]

    def close(self) -> None:
        self.broker.stop()
        if self._database is not None:
            self._database.stop()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def log(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {text}", file=sys.stderr, flush=True)

    def name(self, what: str) -> str:
        """A unique, ordered name for a child's files."""
        self._runs += 1
        return f"{self._runs:02d}-{what}"

    # ---- children ---------------------------------------------------------------------------

    def daemon(self, arch: str, stride: int, qos: int = 0, runtime: str = "torch", sink: str = "file",
               torch_threads: int = 1) -> Child:
        """The service in a child, answered "ready". sink "file": the FileSink, timed by its
        on_written hook; "influx": the InfluxSink writing to a private VictoriaMetrics (the
        production path), counted by its metrics."""
        name = self.name(f"daemon-{arch}-s{stride}-q{qos}-{runtime}-{sink}-t{torch_threads}")
        path = self.dir / f"{name}.yaml"
        config = self._daemon_config(name, arch, stride, qos, runtime, sink, torch_threads)
        path.write_text(json.dumps(config, indent=1))
        child = Child("_daemon", {"config": str(path)}, self.dir / f"{name}.log")
        child.ready = child.read(60)
        return child

    def _daemon_config(self, name: str, arch: str, stride: int, qos: int, runtime: str, sink: str,
                       torch_threads: int) -> dict:
        """The service's config (JSON is YAML)."""
        config = {
            "mqtt": {"host": HOST, "port": self.broker.port, "qos": qos, "client_id": f"bench-{name}",
                     "persistent_session": False},
            "model": {"path": self.bundles[arch], "runtime": runtime},
            # The phases' data time jumps (windows filled in the past, probes stamped with the wall
            # clock): the gap rule would restart every device's window at each phase and leave
            # nothing to score, so it is off here; it costs the same per reading either way.
            "stream": {"stride": stride, "gap_factor": 1e12},
            "batching": {"max_batch": MAX_BATCH, "max_wait_ms": 50, "queue_size": 10000,
                         "torch_threads": torch_threads},
            "local_store": {"path": str(self.dir / f"{name}.lp")},
            "metrics": {"enabled": True, "address": HOST, "port": 0},
            "logging": {"level": "WARNING"},
        }
        if sink == "influx":
            config["influxdb"] = {"enabled": True, "url": self.database().url, "org": "bench", "bucket": "bench",
                                  "token": "unused", "batch_size": 5000, "flush_interval_ms": 100,
                                  "spool_dir": str(self.dir / f"{name}-spool")}
        return config

    def database(self):
        """A private VictoriaMetrics (what the integration tests use for InfluxDB's write API)."""
        if self._database is None:
            from tests.servers import VictoriaMetrics

            self._database = VictoriaMetrics(self.dir / "victoria-metrics")
            self._database.start()
        return self._database

    def bare(self, qos: int) -> Child:
        """The bare paho subscriber, subscribed and answered "ready"."""
        name = self.name(f"bare-q{qos}")
        child = Child("_bare", {"port": self.broker.port, "qos": qos, "topic": TOPIC.format("+")},
                      self.dir / f"{name}.log")
        child.ready = child.read(30)
        return child

    def publish(self, **spec) -> Child:
        """A publisher child, already publishing; its `wait_result` says when it finished."""
        spec = {"port": self.broker.port, "qos": 0, "prefix": "d", **spec}
        return Child("_publish", spec, self.dir / f"{self.name('publisher')}.log", interactive=False)

    def child(self, role: str, spec: dict, log_name: str) -> Child:
        """A non-interactive child that answers once."""
        return Child(role, spec, self.dir / log_name, interactive=False)

    # ---- waiting for a consumer ---------------------------------------------------------------

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
