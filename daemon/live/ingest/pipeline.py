"""The per-message path every source feeds: parse -> ring buffer -> window queue.

A source (the MQTT client; any other broker client beside it) calls a `MessageHandler` with
the message's address, its raw payload and its arrival time, from its own network thread.
The address is the string that carries the device id (for MQTT, the topic); the parser's
topic rules say where in it the id sits. Nothing here knows which source delivered the
message, so every source shares one pipeline, one set of rules and one set of counters.

A source that must know when a window is safely stored (Kafka, which commits offsets only
then) also passes `claim`: called once for each window the message completes, it returns the
source's `Receipt`, which travels with the window to the sink (`daemon.live.events`).

The handler runs on the source's network thread, which must never block: the window queue
drops its oldest window instead of waiting, and each message ends in exactly one counted
result (`anomalyd_messages_total{result}`).
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

from daemon.live.events import Receipt, WindowJob
from daemon.live.ingest.buffers import DeviceBuffers
from daemon.live.ingest.payload import PayloadParser, Rejected
from daemon.live.telemetry.metrics import MessageCounts
from daemon.live.telemetry.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

Claim = Callable[[], Receipt]


class MessageHandler(Protocol):
    """(address, payload, arrival time in epoch seconds[, claim]) -> result; the result is
    informational."""

    def __call__(self, topic: str, payload: bytes, received: float, claim: Claim | None = None) -> object: ...


class Source(Protocol):
    """A broker client that feeds a `MessageHandler` from its own thread: `MqttIngest`,
    `KafkaSource`. The service starts, stops and health-checks it through this alone."""

    @property
    def connected(self) -> bool: ...

    @property
    def subscribed(self) -> bool:
        """True while messages can arrive (drives /healthz)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def swap_handler(self, handler: MessageHandler) -> None:
        """Hand the next messages to `handler` (a reload rebuilt the routes)."""


class MessagePipeline:
    """parse -> ring buffer -> `enqueue` for one message, counting its result. Source-free,
    so it is tested and benchmarked without a broker."""

    def __init__(self, parser: PayloadParser, buffers: DeviceBuffers, enqueue: Callable[[WindowJob], None],
                 messages: MessageCounts) -> None:
        """`enqueue` takes each completed window without blocking (the worker's queue `put`)."""
        self.parser = parser
        self.buffers = buffers
        # Bound methods looked up once: this runs for every message.
        self._parse = parser.parse_fields
        self._push = buffers.push_values
        self._enqueue = enqueue
        self._counts = messages.counts
        self._rejects = RateLimitedLog(log)
        self.last_ok: float | None = None  # arrival time of the last accepted reading

    def __call__(self, topic: str, payload: bytes, received: float, claim: Claim | None = None) -> str:
        """Handle one message; returns its result label. `claim()` gives the receipt of the
        window the message completes, if any."""
        parsed = self._parse(topic, payload, received)
        if type(parsed) is Rejected:
            return self._reject(parsed)
        device, ts, values = parsed
        job = self._push(device, ts, values, received)
        if job is not None:
            if type(job) is Rejected:
                return self._reject(job)
            if claim is not None:
                job.receipt = claim()
            self._enqueue(job)
        self._counts["ok"] += 1
        self.last_ok = received
        return "ok"

    def _reject(self, rejected: Rejected) -> str:
        self._counts[rejected.reason] += 1
        self._rejects.warning(rejected.reason, "message rejected (%s): %s", rejected.reason, rejected.detail)
        return rejected.reason
