"""Publish readings to MQTT: the `replay` command, the demo and the benchmarks share it.

A QoS 1 publisher must bound what it has in flight: paho numbers packets with 16-bit ids
and queues without limit, so a fast replay would otherwise grow memory and wrap ids.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque

import numpy as np
import paho.mqtt.client as mqtt

from daemon.core.errors import UserError

MAX_IN_FLIGHT = 1000


def payload(ts: float, features: list[str], values: np.ndarray) -> bytes:
    """The wire format of DESIGN.md: `{"ts": epoch seconds, "<feature>": number, ...}`."""
    body = {"ts": round(float(ts), 3)}
    body.update(zip(features, (float(v) for v in values)))
    return json.dumps(body, separators=(",", ":")).encode()


class Publisher:
    def __init__(self, host: str, port: int, qos: int = 1, client_id: str | None = None,
                 connect_timeout: float = 10.0) -> None:
        self.qos = qos
        self._pending: deque[mqtt.MQTTMessageInfo] = deque()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=client_id or f"anomalyd-pub-{uuid.uuid4().hex[:8]}")
        self._client.max_inflight_messages_set(100)
        try:
            self._client.connect(host, port, keepalive=30)
        except OSError as exc:
            raise UserError(f"cannot connect to MQTT broker {host}:{port} ({exc})") from None
        self._client.loop_start()
        deadline = time.monotonic() + connect_timeout
        while not self._client.is_connected():
            if time.monotonic() > deadline:
                raise UserError(f"MQTT broker {host}:{port} did not accept the connection "
                                f"within {connect_timeout:.0f} s")
            time.sleep(0.01)

    def publish(self, topic: str, body: bytes) -> None:
        info = self._client.publish(topic, body, qos=self.qos)
        if self.qos > 0:
            self._pending.append(info)
            while len(self._pending) > MAX_IN_FLIGHT:
                self._pending.popleft().wait_for_publish(timeout=30)

    def close(self) -> None:
        """Wait for what is in flight, then disconnect."""
        while self._pending:
            self._pending.popleft().wait_for_publish(timeout=30)
        self._client.disconnect()
        self._client.loop_stop()
