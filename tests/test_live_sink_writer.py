"""The buffered writer under every sink: one writer thread, batches, health, close."""

import logging
import threading
import time

import pytest

from daemon.live.sinks.base import Backlog, BufferedWriter


class Destination:
    """A sink's write logic: records the batches it gets; `fail_with` makes attempts fail,
    `bug` makes the next one raise, `stall` holds the writer inside a write until released."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.dropped: list = []
        self.fail_with: str | None = None
        self.bug = False
        self.stall = threading.Event()
        self.stall.set()
        self.writer: BufferedWriter | None = None

    def write(self, batch: list) -> None:
        self.stall.wait(10)
        if self.bug:
            self.bug = False
            raise TypeError("sink bug")
        if self.fail_with:
            self.writer.record_failure(self.fail_with)
            return
        self.batches.append(list(batch))
        self.writer.record_success()

    def on_drop(self, items: list) -> None:
        self.dropped.extend(items)

    @property
    def written(self) -> list:
        return [item for batch in self.batches for item in batch]


def writer_for(destination: Destination, **options) -> BufferedWriter:
    settings = dict(max_queued=100, batch_size=10, max_wait_s=0.05)
    settings.update(options)
    destination.writer = BufferedWriter("test sink", destination.write, destination.on_drop, **settings)
    return destination.writer


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_submitted_items_are_written_in_order_in_batches_of_at_most_batch_size():
    destination = Destination()
    writer = writer_for(destination, batch_size=10)
    writer.submit(range(25))
    assert writer.close()
    assert destination.written == list(range(25))
    assert all(len(batch) <= 10 for batch in destination.batches)


def test_a_partial_batch_is_written_once_its_oldest_item_waited_max_wait():
    destination = Destination()
    writer = writer_for(destination, batch_size=1000, max_wait_s=0.05)
    writer.submit(["a"])
    wait_until(lambda: destination.written == ["a"])
    assert writer.close()


def test_a_failed_attempt_makes_the_writer_unhealthy_until_the_next_success(caplog):
    caplog.set_level(logging.INFO)
    destination = Destination()
    writer = writer_for(destination)
    destination.fail_with = "disk full"
    writer.submit(["a"])
    wait_until(lambda: not writer.healthy)
    assert writer.last_error == "disk full"
    assert "test sink: disk full" in caplog.text
    destination.fail_with = None
    writer.submit(["b"])
    wait_until(lambda: writer.healthy)
    assert "test sink: writes succeed again after 1 failed attempts" in caplog.text
    assert writer.close()


def test_a_bug_in_write_hands_the_batch_to_on_drop_and_the_writer_carries_on(caplog):
    destination = Destination()
    writer = writer_for(destination, max_wait_s=0)
    destination.bug = True
    writer.submit(["lost"])
    wait_until(lambda: destination.dropped == ["lost"])
    assert not writer.healthy and "TypeError: sink bug" in writer.last_error
    writer.submit(["kept"])
    assert writer.close()
    assert destination.written == ["kept"] and writer.healthy
    assert "test sink: writer failed" in caplog.text


def test_overflow_while_the_writer_is_stuck_drops_the_oldest_to_on_drop():
    destination = Destination()
    writer = writer_for(destination, max_queued=5, batch_size=1, max_wait_s=0)
    destination.stall.clear()
    writer.submit(["first"])
    wait_until(lambda: writer.queued == 0)  # the writer holds "first", stuck in write
    writer.submit(range(8))
    assert destination.dropped == [0, 1, 2] and writer.queued == 5
    destination.stall.set()
    assert writer.close()
    assert destination.written == ["first", 3, 4, 5, 6, 7]


def test_close_that_times_out_hands_what_is_queued_to_on_drop_and_says_so():
    destination = Destination()
    writer = writer_for(destination, batch_size=1, max_wait_s=0)
    destination.stall.clear()
    writer.submit(["stuck"])
    wait_until(lambda: writer.queued == 0)
    writer.submit(["a", "b"])
    assert not writer.close(timeout=0.1)
    assert destination.dropped == ["a", "b"] and writer.queued == 0
    destination.stall.set()
    assert writer.close()
    assert destination.written == ["stuck"]


def test_submit_after_close_is_an_error():
    writer = writer_for(Destination())
    assert writer.close()
    with pytest.raises(RuntimeError, match="test sink is closed"):
        writer.submit(["late"])


def test_the_backlog_is_retried_when_due_without_new_data_and_not_after_close():
    retries: list[float] = []
    kept = {"due_at": None}  # monotonic time the kept data is due for a retry; None: nothing kept

    def due_in():
        return None if kept["due_at"] is None else kept["due_at"] - time.monotonic()

    def retry():
        retries.append(time.monotonic())
        kept["due_at"] = None

    writer = writer_for(Destination(), backlog=Backlog(due_in, retry))
    time.sleep(0.05)
    assert retries == []  # nothing kept: the writer sleeps until data arrives
    due_at = kept["due_at"] = time.monotonic() + 0.1
    writer.submit(["wake"])  # the writer reads due_in each time round, then waits for it
    wait_until(lambda: len(retries) == 1)
    assert retries[0] >= due_at
    assert writer.close()
    kept["due_at"] = time.monotonic()
    time.sleep(0.05)
    assert len(retries) == 1
