"""The message path every source feeds: parse -> ring buffer -> window queue.

A source (the MQTT client; any other broker client beside it) hands a `MessageHandler` the
messages it received, from its own network thread: one at a time (`handler(address, payload,
arrival time)`, MQTT delivers them so) or as a batch (`handler.handle_batch(records, arrival
time, claim)`, Kafka's consumer takes about a thousand a call). A batch is handled with one
set of local lookups and one count per result, so each message costs fewer Python steps; a
single message is a batch of one, so both ways run the same code. The address is the string
that carries the device id (for MQTT, the topic); the parser's topic rules say where in it the
id sits. Nothing here knows which source delivered a message, so every source shares one
pipeline, one set of rules and one set of counters.

A source that must know when a window is safely stored (Kafka, which commits offsets only
then) passes `claim`: called with the tag of each record that completes a window, in record
order, it returns the source's `Receipt`, which travels with the window to the sink
(`daemon.live.events`).

The handler runs on the source's network thread, which must never block: the window queue
drops its oldest window instead of waiting, and each message ends in exactly one counted
result (`anomalyd_messages_total{result}`), a bug in handling it included (`internal_error`).
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol, Sequence

from daemon.live.events import Receipt, WindowJob
from daemon.live.ingest.buffers import DeviceBuffers
from daemon.live.ingest.payload import PayloadParser, Rejected
from daemon.live.telemetry.metrics import MessageCounts
from daemon.live.telemetry.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

Record = tuple[str, bytes, object]
"""One message of a batch: (address, payload, tag). The tag is the source's own (Kafka: the
record), handed back to `claim` when the message completes a window."""

Claim = Callable[[object], Receipt]


class MessageHandler(Protocol):
    """What a source feeds: `MessagePipeline`, or `DeviceRouter` in front of several. The
    results are informational."""

    def __call__(self, topic: str, payload: bytes, received: float) -> object:
        """One message (address, payload, arrival time in epoch seconds)."""

    def handle_batch(self, records: Sequence[Record], received: float, claim: Claim | None = None) -> int:
        """Messages that arrived together at `received`, handled in order; returns how many were
        accepted."""


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
    """parse -> ring buffer -> `enqueue` for each message, counting its result. Source-free,
    so it is tested and benchmarked without a broker."""

    def __init__(self, parser: PayloadParser, buffers: DeviceBuffers, enqueue: Callable[[WindowJob], None],
                 messages: MessageCounts) -> None:
        """`enqueue` takes each completed window without blocking (the worker's queue `put`)."""
        self.parser = parser
        self.buffers = buffers
        # Bound methods looked up once: a single message is a batch of one.
        self._parse = parser.parse_fields
        self._push = buffers.push_values
        self._enqueue = enqueue
        self._counts = messages.counts
        self._rejects = RateLimitedLog(log)
        self._bugs = RateLimitedLog(log, interval=30.0)
        self.last_ok: float | None = None  # arrival time of the last accepted reading
        self._last_refusal = ""  # the result of the last message refused: a single message's label

    def __call__(self, topic: str, payload: bytes, received: float) -> str:
        """Handle one message; returns its result label."""
        if self.handle_batch(((topic, payload, None),), received):
            return "ok"
        return self._last_refusal

    def handle_batch(self, records: Sequence[Record], received: float, claim: Claim | None = None) -> int:
        """Handle `records` in order, all received at `received`; `claim(tag)` gives the receipt
        of the window a record completes, if any. Returns how many were accepted."""
        # Looked up once a batch, not once a message; the refused are counted as they come and
        # the accepted once, at the end.
        parse = self._parse
        push = self._push
        enqueue = self._enqueue
        reject = self._reject
        refused = 0
        for topic, payload, tag in records:
            try:
                parsed = parse(topic, payload, received)
                if type(parsed) is Rejected:
                    reject(parsed)
                    refused += 1
                    continue
                device, ts, values = parsed
                job = push(device, ts, values, received)
                if job is not None:
                    if type(job) is Rejected:
                        reject(job)
                        refused += 1
                        continue
                    if claim is not None:
                        job.receipt = claim(tag)
                    enqueue(job)
            except Exception as exc:  # a bug must cost one counted message, not the rest of the batch
                refused += 1
                self._counts["internal_error"] += 1
                self._last_refusal = "internal_error"
                self._bugs.error("internal", "bug handling a message on %r: %r", topic[:120], exc, exc_info=True)
        accepted = len(records) - refused
        if accepted:
            self._counts["ok"] += accepted
            self.last_ok = received
        return accepted

    def _reject(self, rejected: Rejected) -> None:
        # Logged before counted: whoever sees the count (an operator, a test waiting on it) can
        # rely on the log line being written.
        self._rejects.warning(rejected.reason, "message rejected (%s): %s", rejected.reason, rejected.detail)
        self._last_refusal = rejected.reason
        self._counts[rejected.reason] += 1
