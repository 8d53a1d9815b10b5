"""The one bounded drop-oldest queue: between ingest and the worker, and under every sink."""

import threading
import time

import pytest

from daemon.live.bounded_queue import BoundedQueue


class Drops:
    """Records what the queue hands to `on_drop`, call by call."""

    def __init__(self) -> None:
        self.calls: list[list] = []

    def __call__(self, items: list) -> None:
        self.calls.append(list(items))

    @property
    def items(self) -> list:
        return [item for call in self.calls for item in call]


def queue(maxsize: int = 100, **kwargs) -> tuple[BoundedQueue, Drops]:
    drops = Drops()
    return BoundedQueue(maxsize, drops, **kwargs), drops


def test_a_full_queue_drops_the_oldest_items_and_hands_them_to_on_drop():
    q, drops = queue(3)
    for i in range(5):
        q.put(i)
    assert len(q) == 3 and q.size == 3
    assert drops.items == [0, 1]
    assert q.take(10, 0) == [2, 3, 4]


def test_put_many_keeps_the_order_and_drops_once_for_the_whole_overflow():
    q, drops = queue(4)
    q.put_many([0, 1, 2])
    q.put_many([3, 4, 5])
    assert drops.calls == [[0, 1]]
    assert q.take(10, 0) == [2, 3, 4, 5]


def test_weighted_items_are_bounded_by_their_total_and_the_newest_is_always_kept():
    q, drops = queue(10, size_of=len)
    q.put("aaaa")
    q.put("bbbb")
    assert q.size == 8 and drops.items == []
    q.put("cccc")  # 12 > 10: the oldest goes
    assert drops.items == ["aaaa"] and q.size == 8
    q.put("x" * 25)  # heavier than the bound on its own: kept, everything older dropped
    assert drops.items == ["aaaa", "bbbb", "cccc"] and q.size == 25
    assert q.take(10, 0) == ["x" * 25] and q.size == 0


def test_maxsize_below_one_is_refused():
    with pytest.raises(ValueError, match="maxsize must be >= 1, got 0"):
        BoundedQueue(0, Drops())


def test_take_returns_at_once_when_max_items_are_queued():
    q, _ = queue()
    q.put_many(range(5))
    started = time.monotonic()
    assert q.take(4, max_wait_s=10) == [0, 1, 2, 3]
    assert time.monotonic() - started < 1
    assert len(q) == 1


def test_a_full_queue_is_a_ready_batch_even_below_max_items():
    q, _ = queue(3)
    q.put_many(range(3))
    assert q.take(10, max_wait_s=10, block=False) == [0, 1, 2]


def test_a_take_that_must_not_block_returns_only_a_ready_batch():
    """The worker asks this while a batch is in the model: a full batch, or one whose oldest
    item has waited max_wait_s, is ready; a few fresh items are left to gather more."""
    q, _ = queue()
    q.put_many(range(3))
    assert q.take(4, max_wait_s=10, block=False) == []
    q.put(3)
    assert q.take(4, max_wait_s=10, block=False) == [0, 1, 2, 3]
    q.put(4)
    time.sleep(0.02)
    assert q.take(4, max_wait_s=0.01, block=False) == [4]
    assert q.take(4, max_wait_s=0.01, block=False) == []


def test_take_waits_at_most_max_wait_from_the_oldest_item():
    q, _ = queue()
    q.put("a")
    started = time.monotonic()
    assert q.take(10, max_wait_s=0.1) == ["a"]
    assert 0.05 < time.monotonic() - started < 2


def test_take_does_not_wait_again_for_an_item_that_already_waited():
    q, _ = queue()
    q.put("a")
    time.sleep(0.25)
    started = time.monotonic()
    assert q.take(10, max_wait_s=0.2) == ["a"]
    assert time.monotonic() - started < 0.15


def test_take_wakes_when_another_thread_fills_the_batch():
    q, _ = queue()
    threading.Timer(0.05, lambda: q.put_many(range(3))).start()
    started = time.monotonic()
    assert q.take(3, max_wait_s=10) == [0, 1, 2]
    assert time.monotonic() - started < 5


def test_take_with_a_timeout_gives_up_on_an_empty_queue_or_a_batch_not_yet_ready():
    q, _ = queue()
    assert q.take(10, max_wait_s=10, timeout=0.05) == []
    q.put("a")
    assert q.take(10, max_wait_s=10, timeout=0.05) == []
    assert len(q) == 1  # still queued for the next take


def test_close_wakes_a_waiting_take_and_later_puts_go_to_on_drop():
    q, drops = queue()
    threading.Timer(0.05, q.close).start()
    assert q.take(10, max_wait_s=10) == []
    assert q.closed
    q.put("late")
    assert len(q) == 0 and drops.items == ["late"]


def test_a_closed_queue_still_hands_out_what_it_holds_at_once():
    q, _ = queue()
    q.put_many(["a", "b", "c"])
    q.close()
    assert q.take(2, max_wait_s=10) == ["a", "b"]
    assert q.take(2, max_wait_s=10) == ["c"]
    assert q.take(2, max_wait_s=10) == []


def test_discard_hands_every_queued_item_to_on_drop():
    q, drops = queue(10, size_of=len)
    q.put_many(["ab", "cde"])
    assert q.discard() == 2
    assert drops.items == ["ab", "cde"] and len(q) == 0 and q.size == 0
    assert q.discard() == 0 and drops.calls == [["ab", "cde"]]
