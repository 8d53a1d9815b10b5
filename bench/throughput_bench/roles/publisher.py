"""The load generator: raw MQTT 3.1.1 over a socket, packets encoded in bulk.

Far faster than any Python subscriber, so it is never the ceiling of what it measures.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import socket
import threading
import time

from ..common import FEATURES, HOST, TOPIC, reply

CHUNK = 2000  # packets per sendall in a blast
PACED_TICK = 0.002  # seconds between sends at a fixed rate


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


def value_pool(size: int = 4096, seed: int = 1) -> list[bytes]:
    """Realistic sensor values (4 decimals): `"s0":0.8412,"s1":-0.1234,...` fragments."""
    rng = random.Random(seed)
    pool = []
    for i in range(size):
        parts = [f'"{name}":{math.sin(i / 50 + k) + rng.gauss(0, 0.1):.4f}' for k, name in enumerate(FEATURES)]
        pool.append(",".join(parts).encode())
    return pool


def topic_headers(prefix: str, devices: int) -> list[bytes]:
    """The length-prefixed topic of each device, as a PUBLISH packet carries it."""
    headers = []
    for d in range(devices):
        topic = TOPIC.format(f"{prefix}{d}").encode()
        headers.append(len(topic).to_bytes(2, "big") + topic)
    return headers


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
            while chunk := self.sock.recv(65536):
                buf += chunk
                acks, pos = 0, 0
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


def _reading(ts: bytes, values: bytes) -> bytes:
    return b'{"ts":' + ts + b"," + values + b"}"


def blast(pub: RawPublisher, headers: list[bytes], spec: dict) -> dict:
    """`per_device` readings for each device, round robin, as fast as possible, with data
    timestamps `ts0 + j * period` (the past: late data is accepted)."""
    ts0, period, per_device = spec["ts0"], spec.get("period", 1.0), spec["per_device"]
    pool = value_pool()
    chunk: list[bytes] = []
    first = None
    i = 0
    for j in range(per_device):
        ts = b"%.6f" % (ts0 + j * period)
        for header in headers:
            chunk.append(pub.packet(header, _reading(ts, pool[i % len(pool)])))
            i += 1
            if len(chunk) >= CHUNK:
                first = first or time.time()
                pub.send(chunk)
                chunk = []
    if chunk:
        first = first or time.time()
        pub.send(chunk)
    return {"t_first": first, "t_sent": time.time()}


def paced(pub: RawPublisher, headers: list[bytes], spec: dict) -> dict:
    """`rate` messages/s for `count` messages, round robin, ts = wall clock at sending.
    `max_lag_s` is how far the publisher fell behind its schedule."""
    rate, count = float(spec["rate"]), int(spec["count"])
    pool = value_pool()
    start = time.time()
    mono0 = next_tick = time.monotonic()
    i = 0
    max_lag = 0.0
    while i < count:
        due = min(count, int((time.monotonic() - mono0) * rate) + 1)
        max_lag = max(max_lag, (due - i) / rate)
        packets = []
        while i < due:
            ts = b"%.6f" % time.time()
            packets.append(pub.packet(headers[i % len(headers)], _reading(ts, pool[i % len(pool)])))
            i += 1
        if packets:
            pub.send(packets)
        next_tick += PACED_TICK
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_tick = time.monotonic()
    return {"t_first": start, "t_sent": time.time(), "max_lag_s": max_lag}


def role_publish(spec: dict) -> None:
    """Publish per `spec` (mode "blast" or "paced") and answer with what happened."""
    pub = RawPublisher(spec["port"], spec["qos"], f"bench-pub-{os.getpid()}")
    headers = topic_headers(spec["prefix"], spec["devices"])
    send = blast if spec["mode"] == "blast" else paced
    result = {"mode": spec["mode"], **send(pub, headers, spec)}
    result["acked"] = pub.close()
    result["sent"] = pub.sent
    reply(result)
