"""What every sink is, and the one buffered writer under the sinks that do I/O.

The scoring worker must never wait for a disk or a database, so a sink's `submit` only queues.
`BufferedWriter` owns what every such sink needs around its own write logic: the bounded
drop-oldest queue (`daemon.live.bounded_queue`), one writer thread that takes batches from it,
health and the last error for /healthz, and `close` with a timeout. A sink plugs in `write`
(deliver one batch) and `on_drop` (what becomes of items the writer cannot deliver: counted as
dropped, or moved to a spool), and optionally a `Backlog` of data it keeps outside the queue
and retries on its own schedule (the InfluxDB sink's spool).

Settlement: every queued item leaves through `write` or `on_drop`, exactly once; after either
returns, `settled` gets the items, so a sink settles its events' receipts there (Kafka commits
offsets only for windows the sink has written, spooled, or dropped and counted).

Failures: `write` reports the destination's state with `record_success` / `record_failure`;
an exception escaping `write` is a bug, so its batch goes to `on_drop` (nothing accepted is
lost uncounted), the sink is marked unhealthy and the writer carries on after a pause.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, Protocol, TypeVar

from daemon.live.bounded_queue import BoundedQueue
from daemon.live.events import ScoreEvent
from daemon.live.telemetry.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

T = TypeVar("T")

# After a bug in a sink's write, the writer waits this long before the next batch, so a
# persistent bug costs log lines and counted drops, not a busy loop.
PAUSE_AFTER_BUG_S = 1.0


class Sink(Protocol):
    """What the worker writes to: InfluxSink, FileSink, DiscardSink, or anything of this shape."""

    @property
    def healthy(self) -> bool:
        """False while writes fail (drives /healthz)."""

    def submit(self, events: list[ScoreEvent]) -> None:
        """Accept scored windows without blocking (buffer and write elsewhere)."""

    def status(self) -> dict[str, object]:
        """Details for /healthz."""

    def close(self, timeout: float = 10.0) -> bool:
        """Flush what was accepted and stop; True when everything was flushed."""


@dataclass(frozen=True)
class Backlog:
    """Data a sink keeps outside the queue (its spool), retried from the writer thread."""

    due_in: Callable[[], float | None]  # seconds until a retry is due (<= 0: now); None: nothing kept
    retry: Callable[[], None]  # one attempt at the oldest kept data


class BufferedWriter(Generic[T]):
    """A bounded queue drained by one writer thread that hands `write` batches of up to
    `batch_size` items, each once full or once its oldest item waited `max_wait_s`.

    `name` prefixes log lines ("file sink") and names the thread. `max_queued` bounds the
    queue in units of `size_of` (items by default); past it the oldest go to `on_drop`, which
    also gets the batch of a `write` that raised and whatever `close` could not flush in time.
    `on_drop` runs on the submitting thread for overflow, on the writer thread otherwise.
    `settled(items)` follows every `write` and `on_drop`, on the same thread, even when they raise."""

    def __init__(self, name: str, write: Callable[[list[T]], None], on_drop: Callable[[list[T]], None], *,
                 max_queued: int, batch_size: int, max_wait_s: float, size_of: Callable[[T], int] | None = None,
                 backlog: Backlog | None = None, settled: Callable[[list[T]], None] | None = None,
                 start: bool = True) -> None:
        """With `start=False` the writer thread waits for `start()`: a sink whose callbacks use
        the writer it is assigning (a backlog replayed at once) starts it once assigned."""
        if batch_size < 1 or max_wait_s < 0:
            raise ValueError(f"{name}: batch_size must be >= 1 and max_wait_s >= 0, got {batch_size} and {max_wait_s}")
        self.name = name
        self._write = write
        self._on_drop = on_drop
        self._settled = settled
        self._batch_size = batch_size
        self._max_wait_s = max_wait_s
        self._backlog = backlog
        self._queue: BoundedQueue[T] = BoundedQueue(max_queued, on_drop if settled is None
                                                    else _followed_by(on_drop, settled), size_of)
        self._healthy = True
        self._last_error: str | None = None
        self._failures = 0  # consecutive failed attempts
        self._ratelog = RateLimitedLog(log, interval=30.0)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="anomalyd-" + name.replace(" ", "-"), daemon=True)
        if start:
            self._thread.start()

    def start(self) -> None:
        """Start the writer thread of a writer built with `start=False`."""
        self._thread.start()

    # -- caller side ------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False from a failed attempt until the next successful one."""
        return self._healthy

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def queued(self) -> int:
        """What waits in memory, in units of `size_of`."""
        return self._queue.size

    def submit(self, items: Iterable[T]) -> None:
        """Queue items for the writer; never waits for it. Raises RuntimeError after `close`."""
        if self._closing.is_set():
            raise RuntimeError(f"{self.name} is closed: submit after close()")
        self._queue.put_many(items)

    def close(self, timeout: float = 10.0) -> bool:
        """Write what is queued, then stop the writer. Returns False if it was still busy after
        `timeout` seconds (a hanging write): what is still queued then goes to `on_drop` from
        here. Safe to call again."""
        self._closing.set()
        self._queue.close()
        self._thread.join(timeout)
        if self._thread.is_alive():
            left = self._queue.discard()
            log.warning("%s: writer still busy after %.1f s; %d queued items handed over undelivered",
                        self.name, timeout, left)
            return False
        return True

    # -- for `write` and the backlog (writer thread) ----------------------------------------

    def record_success(self) -> None:
        """The destination took an attempt."""
        if not self._healthy:
            log.info("%s: writes succeed again after %d failed attempts", self.name, self._failures)
        self._healthy = True
        self._failures = 0

    def record_failure(self, error: str) -> None:
        """The destination refused or failed an attempt: unhealthy until the next success. The
        first failure is logged at once, repeats rate-limited."""
        if self._healthy:
            log.warning("%s: %s", self.name, error)
        else:
            self._ratelog.warning("failing", "%s: still failing: %s", self.name, error)
        self._healthy = False
        self._last_error = error
        self._failures += 1

    # -- writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            due_in = self._backlog.due_in() if self._backlog is not None else None
            batch = self._queue.take(self._batch_size, self._max_wait_s,
                                     timeout=None if due_in is None else max(due_in, 0.0))
            if batch:
                self._attempt(self._write, batch)
            elif self._queue.closed:
                return  # closed and drained
            if self._backlog is not None and not self._queue.closed:
                due_in = self._backlog.due_in()
                if due_in is not None and due_in <= 0:
                    self._attempt(self._backlog.retry, None)

    def _attempt(self, action: Callable, batch: list[T] | None) -> None:
        try:
            action() if batch is None else action(batch)
        except Exception as exc:  # a bug: the writer must not die, and the batch is not lost uncounted
            self._healthy = False
            self._last_error = f"writer: {type(exc).__name__}: {exc}"
            self._ratelog.error("bug:" + type(exc).__name__, "%s: writer failed: %r", self.name, exc, exc_info=True)
            if batch:
                try:
                    self._on_drop(batch)
                except Exception:
                    log.exception("%s: %d items lost: on_drop failed", self.name, len(batch))
            self._closing.wait(PAUSE_AFTER_BUG_S)
        finally:
            if batch and self._settled is not None:
                self._settled(batch)


def _followed_by(action: Callable[[list[T]], None], then: Callable[[list[T]], None]) -> Callable[[list[T]], None]:
    """`action(items)`, then `then(items)` whether or not `action` raised."""
    def both(items: list[T]) -> None:
        try:
            action(items)
        finally:
            then(items)
    return both
