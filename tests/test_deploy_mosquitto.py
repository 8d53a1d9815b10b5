"""The example broker setup in deploy/mosquitto, run for real.

The test starts mosquitto with deploy/mosquitto/mosquitto.conf and deploy/mosquitto/acl, rewritten
only where a test must differ from an edge box (free loopback ports, files in a temp directory,
log to stdout), with a password file made by mosquitto_passwd and, when openssl is there, a
throw-away CA and server certificate for the TLS listener. It proves:
- the broker accepts the config; anonymous clients and wrong passwords are refused;
- the daemon's own MQTT client (MqttIngest, password from $ANOMALYD_MQTT_PASSWORD as the unit's
  EnvironmentFile provides it) subscribes and receives device readings;
- the daemon user cannot publish, neither to a device's topic nor as a device named "anomalyd";
- a device may publish only its own topic;
- the daemon's persistent session keeps more than mosquitto's default 1000 queued messages
  across a broker restart (max_queued_messages and persistence of the deploy config).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import paho.mqtt.client as mqtt
import pytest

from daemon.live.config import build
from daemon.live.telemetry.metrics import Metrics
from daemon.live.ingest.mqtt import MqttIngest
from servers import HOST, MOSQUITTO_BIN, ServerProcess, find_binary, free_port, wait_until

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"
PASSWORDS = {"anomalyd": "daemon-secret", "pump-001": "device-1-secret", "pump-002": "device-2-secret"}
DEFAULT_MAX_QUEUED = 1000  # mosquitto's default max_queued_messages


class DeployBroker(ServerProcess):
    name = "mosquitto"

    def __init__(self, binary: str, workdir: Path, tls: bool) -> None:
        super().__init__(binary, workdir)
        self.host = HOST
        self.tls_port = free_port() if tls else None
        self.conf_path = self.workdir / "mosquitto.conf"

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf_path)]

    def ready(self) -> bool:
        if not self._tcp_open():
            return False
        if self.tls_port is None:
            return True
        plain = self.port
        try:
            self.port = self.tls_port
            return self._tcp_open()
        finally:
            self.port = plain


def substitute(text: str, directive: str, replacement: str) -> str:
    """Replace the one line starting with `directive`; a changed deploy file fails loudly here."""
    pattern = re.compile(rf"^{re.escape(directive)}([ \t].*)?$", re.M)
    found = pattern.findall(text)
    assert len(found) == 1, f"expected one {directive!r} line in mosquitto.conf, found {len(found)}"
    return pattern.sub(replacement, text)


def make_certificates(openssl: str, directory: Path) -> None:
    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=anomalyd-test-ca")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={HOST}")
    (directory / "san.ext").write_text(f"subjectAltName=IP:{HOST}\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")


def deploy_config(broker: DeployBroker, tls: bool) -> str:
    w = broker.workdir
    text = (DEPLOY / "mosquitto.conf").read_text()
    for directive, line in {
        "password_file": f"password_file {w / 'passwd'}",
        "acl_file": f"acl_file {w / 'acl'}",
        "persistence_location": f"persistence_location {w / 'persistence'}/",
        "pid_file": "",
        "log_dest": "log_dest stdout",
        "listener 1883": f"listener {broker.port} {HOST}",
    }.items():
        text = substitute(text, directive, line)
    if tls:
        for directive, line in {"listener 8883": f"listener {broker.tls_port} {HOST}",
                                "certfile": f"certfile {w / 'server.crt'}", "keyfile": f"keyfile {w / 'server.key'}",
                                "cafile": f"cafile {w / 'ca.crt'}"}.items():
            text = substitute(text, directive, line)
    else:
        text = text[:text.index("\nlistener 8883")] + "\n"
    if os.geteuid() == 0:
        text += "user root\n"  # else mosquitto switches to user mosquitto, who cannot read the temp dir
    return text


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[DeployBroker]:
    binary = find_binary(MOSQUITTO_BIN)
    passwd_tool = find_binary("/usr/bin/mosquitto_passwd")
    if binary is None or passwd_tool is None:
        pytest.skip("mosquitto / mosquitto_passwd not found: install the Debian package 'mosquitto' (scripts/setup)")
    openssl = find_binary("/usr/bin/openssl")
    workdir = tmp_path_factory.mktemp("deploy-mosquitto")
    (workdir / "persistence").mkdir()
    server = DeployBroker(binary, workdir, tls=openssl is not None)
    if openssl is not None:
        make_certificates(openssl, workdir)
    passwd = workdir / "passwd"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run([passwd_tool, *(["-c"] if i == 0 else []), "-b", str(passwd), user, password],
                       check=True, capture_output=True, timeout=30)
    passwd.chmod(0o600)
    shutil.copy(DEPLOY / "acl", workdir / "acl")
    server.conf_path.write_text(deploy_config(server, tls=openssl is not None))
    try:
        server.start()
        yield server
    finally:
        server.kill()


class Client:
    """A paho client that records what it receives and the broker's answers."""

    def __init__(self, broker: DeployBroker, user: str | None, password: str | None, *, client_id: str,
                 protocol: int = mqtt.MQTTv311, tls: bool = False) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.connack: list[mqtt.ReasonCode] = []
        self.pubacks: dict[int, mqtt.ReasonCode] = {}
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if user is not None:
            c.username_pw_set(user, password)
        if tls:
            c.tls_set(ca_certs=str(broker.workdir / "ca.crt"))
        c.reconnect_delay_set(0.1, 0.1)  # a refused client is stopped quickly at teardown
        c.on_connect = lambda _c, _u, _f, rc, _p: self.connack.append(rc)
        c.on_message = lambda _c, _u, msg: self.messages.append((msg.topic, msg.payload))
        c.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc)
        self.client = c
        c.connect(broker.host, broker.tls_port if tls else broker.port, keepalive=30)
        c.loop_start()
        wait_until(lambda: bool(self.connack), 10, f"CONNACK for {user!r}")

    @property
    def accepted(self) -> bool:
        return not self.connack[0].is_failure

    def publish(self, topic: str, payload: bytes) -> mqtt.ReasonCode | None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        return self.pubacks.get(info.mid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


def connect(clients: list[Client], broker: DeployBroker, user: str | None, password: str | None = None,
            **kwargs) -> Client:
    client = Client(broker, user, password, client_id=kwargs.pop("client_id", f"t-{user}-{len(clients)}"), **kwargs)
    clients.append(client)
    return client


def daemon_ingest(broker: DeployBroker, client_id: str, received: list) -> MqttIngest:
    """The daemon's MQTT client, configured as deploy/config/config.yaml does, the password coming
    from the environment variable the unit's EnvironmentFile sets."""
    config = build({"mqtt": {"host": broker.host, "port": broker.port, "client_id": client_id,
                             "username": "anomalyd", "persistent_session": True, "qos": 1}},
                   environ={"ANOMALYD_MQTT_PASSWORD": PASSWORDS["anomalyd"]})
    ingest = MqttIngest(config.mqtt, lambda topic, payload, now: received.append((topic, payload)), Metrics())
    ingest.start()
    wait_until(lambda: ingest.subscribed, 10, "anomalyd subscribed")
    return ingest


def wait_for_quiet(received: list, count: int, quiet: float = 2.0, timeout: float = 30.0) -> None:
    """Until `count` messages are in, or none has come for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    seen, since = -1, time.monotonic()
    while len(received) < count and time.monotonic() < deadline:
        if len(received) != seen:
            seen, since = len(received), time.monotonic()
        elif time.monotonic() - since > quiet:
            return
        time.sleep(0.05)


def test_mosquitto_accepts_the_deploy_config(broker):
    """mosquitto exits at once on a config error (it has no test mode); this one stays up and
    listens on both listeners."""
    assert broker.running and broker.ready(), broker.log_tail()
    assert "Error" not in broker.log_tail(50)


def test_anonymous_clients_and_wrong_passwords_are_refused(broker, clients):
    assert not connect(clients, broker, None).accepted
    assert not connect(clients, broker, "anomalyd", "wrong").accepted
    assert connect(clients, broker, "anomalyd", PASSWORDS["anomalyd"]).accepted


def test_the_daemon_subscribes_and_receives_device_readings(broker, clients):
    received: list = []
    ingest = daemon_ingest(broker, "anomalyd-test-receive", received)
    try:
        device = connect(clients, broker, "pump-001", PASSWORDS["pump-001"])
        assert device.publish("sensors/pump-001/data", b'{"ts": 1, "x": 1}').value == 0
        wait_until(lambda: received, 10, "reading delivered to anomalyd")
        assert received == [("sensors/pump-001/data", b'{"ts": 1, "x": 1}')]
    finally:
        ingest.stop()


def test_the_daemon_user_cannot_publish(broker, clients):
    received: list = []
    ingest = daemon_ingest(broker, "anomalyd-test-publish", received)
    try:
        # MQTT 3.1.1 (what the daemon speaks): a denied publish is dropped silently, so look at
        # what a subscriber to every sensor topic gets: its own spoofed readings would arrive.
        spoofer = connect(clients, broker, "anomalyd", PASSWORDS["anomalyd"], client_id="anomalyd-spoofer")
        spoofer.publish("sensors/pump-001/data", b"spoofed device reading")
        spoofer.publish("sensors/anomalyd/data", b"reading of a fake device named anomalyd")
        device = connect(clients, broker, "pump-001", PASSWORDS["pump-001"])
        device.publish("sensors/pump-001/data", b"genuine")  # ordered after the spoofs
        wait_until(lambda: received, 10, "the genuine reading")
        time.sleep(0.2)
        assert [payload for _, payload in received] == [b"genuine"]
        # MQTT 5 says so in the PUBACK.
        v5 = connect(clients, broker, "anomalyd", PASSWORDS["anomalyd"], client_id="anomalyd-v5",
                     protocol=mqtt.MQTTv5)
        for topic in ("sensors/pump-001/data", "sensors/anomalyd/data", "sensors/pump-001/cmd"):
            assert v5.publish(topic, b"x") == mqtt.ReasonCode(mqtt.PacketTypes.PUBACK, "Not authorized"), topic
    finally:
        ingest.stop()


def test_a_device_publishes_only_its_own_topic(broker, clients):
    received: list = []
    ingest = daemon_ingest(broker, "anomalyd-test-devices", received)
    try:
        device = connect(clients, broker, "pump-001", PASSWORDS["pump-001"])
        device.publish("sensors/pump-002/data", b"impersonating pump-002")
        device.publish("sensors/pump-001/data", b"own")
        wait_until(lambda: received, 10, "the device's own reading")
        time.sleep(0.2)
        assert received == [("sensors/pump-001/data", b"own")]
    finally:
        ingest.stop()


def test_the_tls_listener_serves_devices_with_the_ca_certificate(broker, clients):
    if broker.tls_port is None:
        pytest.skip("openssl not found: install the Debian package 'openssl' to test the TLS listener")
    received: list = []
    ingest = daemon_ingest(broker, "anomalyd-test-tls", received)
    try:
        device = connect(clients, broker, "pump-002", PASSWORDS["pump-002"], tls=True)
        assert device.accepted
        device.publish("sensors/pump-002/data", b"over tls")
        wait_until(lambda: received, 10, "the TLS device's reading")
        assert received == [("sensors/pump-002/data", b"over tls")]
    finally:
        ingest.stop()


def test_the_daemon_session_keeps_more_than_1000_messages_across_a_broker_restart(broker, clients):
    """While anomalyd is away (restart, upgrade), the broker queues its QoS 1 readings; the
    deploy config keeps more than the default 1000 and persists them across its own restart."""
    received: list = []
    ingest = daemon_ingest(broker, "anomalyd-test-session", received)
    ingest.stop()  # disconnect; the persistent session stays on the broker
    count = DEFAULT_MAX_QUEUED + 500
    device = connect(clients, broker, "pump-001", PASSWORDS["pump-001"])
    infos = [device.client.publish("sensors/pump-001/data", str(i).encode(), qos=1) for i in range(count)]
    for info in infos:
        info.wait_for_publish(30)
    device.close()
    clients.remove(device)

    broker.stop()  # SIGTERM: mosquitto writes its persistence file
    broker.start()
    ingest = daemon_ingest(broker, "anomalyd-test-session", received)
    try:
        wait_for_quiet(received, count)
        delivered = [int(payload) for _, payload in received]
        assert len(delivered) == count, f"the broker kept {len(delivered)} of {count} queued readings"
        assert delivered == list(range(count))
    finally:
        ingest.stop()
