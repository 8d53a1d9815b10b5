"""The one bounded FIFO between a producer that must never block and a consumer that batches.

Used between ingest and the scoring worker (`WindowQueue`) and under every sink
(`BufferedWriter`). When full, `put` makes room by dropping the OLDEST items: after an
overload, fresh data is worth more than stale data, and a producer such as the MQTT network
thread must never wait. Dropped items are handed to `on_drop` (outside the lock), so each user
decides what a drop means: count it, log it, or move it to disk.

`take` hands out batches: it returns as soon as `max_items` are queued (or the queue is full),
or once the oldest queued item has waited `max_wait_s`, so latency stays bounded under light
load while heavy load gets full batches.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


class BoundedQueue(Generic[T]):
    """Thread-safe for any number of producers and one consumer (`take` is the consumer's).

    `size_of(item)` weighs an item (default 1 each) and `maxsize` bounds the total weight; the
    newest item is always kept, even when it alone weighs more than `maxsize`."""

    def __init__(self, maxsize: int, on_drop: Callable[[list[T]], None],
                 size_of: Callable[[T], int] | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"queue maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._on_drop = on_drop
        self._size_of = size_of
        self._items: deque[tuple[float, T]] = deque()  # (monotonic enqueue time, item), oldest first
        self._size = 0  # total weight of _items
        self._cond = threading.Condition(threading.Lock())
        self._wanted = 1  # queue length at which a waiting `take` needs waking
        self._waiting = False  # a `take` is blocked in wait(): only then does `put` notify
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """Total weight queued (the number of items unless `size_of` is given)."""
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> None:
        """Enqueue without blocking; see `put_many`."""
        self.put_many((item,))

    def put_many(self, items: Iterable[T]) -> None:
        """Enqueue without blocking, in order. When over `maxsize`, the oldest items are dropped
        and passed to `on_drop`; after `close`, the new items themselves are."""
        with self._cond:
            if self._closed:
                dropped = list(items)
            else:
                now = time.monotonic()
                size_of = self._size_of
                for item in items:
                    self._items.append((now, item))
                    self._size += 1 if size_of is None else size_of(item)
                dropped = self._trim() if self._size > self.maxsize else []
                if self._waiting and len(self._items) >= self._wanted:
                    self._cond.notify()
        if dropped:
            self._on_drop(dropped)

    def take(self, max_items: int, max_wait_s: float, block: bool = True, timeout: float | None = None) -> list[T]:
        """Up to `max_items` items, oldest first, once a batch is ready: `max_items` queued, the
        queue full, the oldest item queued `max_wait_s` ago, or the queue closed. Blocks while
        no batch is ready; with `timeout` (seconds) gives up after that long and returns [],
        and with `block=False` returns at once. Returns [] when closed and empty."""
        with self._cond:
            give_up = None if block and timeout is None else time.monotonic() + (timeout if block else 0.0)
            try:
                while True:
                    now = time.monotonic()
                    if self._items:
                        ready_at = self._items[0][0] + max_wait_s
                        if (len(self._items) >= max_items or self._size >= self.maxsize or self._closed
                                or now >= ready_at):
                            return self._pop(max_items)
                        self._wanted, wake_at = min(max_items, self.maxsize), ready_at
                    elif self._closed:
                        return []
                    else:
                        self._wanted, wake_at = 1, None
                    if give_up is not None:
                        if now >= give_up:
                            return []
                        wake_at = give_up if wake_at is None else min(wake_at, give_up)
                    self._waiting = True
                    self._cond.wait(None if wake_at is None else wake_at - now)
            finally:
                self._waiting = False
                self._wanted = 1

    def close(self) -> None:
        """Stop accepting items and wake the consumer; queued items can still be taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def discard(self) -> int:
        """Remove every queued item and pass them to `on_drop`. Returns how many."""
        with self._cond:
            dropped = [item for _, item in self._items]
            self._items.clear()
            self._size = 0
        if dropped:
            self._on_drop(dropped)
        return len(dropped)

    # -- internals (called with the lock held) ----------------------------------------------

    def _pop(self, n: int) -> list[T]:
        taken = [self._items.popleft()[1] for _ in range(min(n, len(self._items)))]
        self._size = (len(self._items) if self._size_of is None
                      else self._size - sum(self._size_of(item) for item in taken))
        return taken

    def _trim(self) -> list[T]:
        """Drop the oldest items until within `maxsize`, keeping at least the newest one."""
        dropped = []
        size_of = self._size_of
        while self._size > self.maxsize and len(self._items) > 1:
            item = self._items.popleft()[1]
            self._size -= 1 if size_of is None else size_of(item)
            dropped.append(item)
        return dropped
