import logging
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from daemon.live.alerting import AlertTracker
from daemon.live.events import ScoreEvent, WindowJob
from daemon.live.telemetry.metrics import Metrics
from daemon.live.telemetry.ratelimit import RateLimitedLog
from daemon.live.worker import ModelSlot, WindowQueue, Worker
from daemon.core.runtime import MAX_MODEL_BATCH
from daemon.core.scoring import ModelInput, WindowScores

W, F = 4, 2


def job(device: str = "d", value: float = 0.0, ts: float = 1.0, shape=(W, F)) -> WindowJob:
    return WindowJob(device, ts, np.full(shape, value, dtype=np.float32), received=ts + 0.5)


class FakeScorer:
    """Score = the window's value; feature errors = value * (1, 2). The worker calls its
    stages as it calls the real Scorer's: model_input, then backend on the model thread, then
    finish. `hold(n)` makes the n-th backend call wait until `release()`."""

    def __init__(self, threshold: float = 1.0, name: str = "fake", fail: bool = False) -> None:
        self.features = ["a", "b"]
        self.window = W
        self.threshold = threshold
        self.bundle = SimpleNamespace(name=name, stride=1)
        self.fail = fail
        self.batches: list[tuple[int, ...]] = []
        self.calls = 0
        self._held_call: int | None = None
        self.holding = threading.Event()
        self._released = threading.Event()

    def hold(self, call: int) -> None:
        self._held_call = call

    def release(self) -> None:
        self._released.set()

    def model_input(self, raw: np.ndarray, health: list | None = None) -> ModelInput:
        self.batches.append(raw.shape)
        return ModelInput(raw)

    def backend(self, model_input: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == self._held_call:
            self.holding.set()
            assert self._released.wait(5), "held too long"
        if self.fail:
            raise RuntimeError("model exploded")
        return model_input

    def finish(self, model_input: ModelInput, reconstruction: np.ndarray) -> WindowScores:
        value = reconstruction[:, 0, 0]
        return WindowScores(value.copy(), np.stack([value, 2 * value], axis=1))


class FakeSink:
    def __init__(self, fail_first: bool = False) -> None:
        self.events: list[ScoreEvent] = []
        self.calls = 0
        self.fail_first = fail_first
        self._cond = threading.Condition()

    def submit(self, events: list[ScoreEvent]) -> None:
        with self._cond:
            self.calls += 1
            if self.fail_first and self.calls == 1:
                raise ConnectionError("sink down")
            self.events.extend(events)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[ScoreEvent]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.events) >= n, timeout), f"{len(self.events)} events < {n}"
            return list(self.events)


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels)


def dropped(metrics: Metrics, reason: str) -> float:
    return counter(metrics, "anomalyd_windows_dropped_total", reason=reason)


def make_worker(scorer=None, sink=None, enter_after=1, leave_after=1, queue_size=100, threshold_override=None,
                **kwargs):
    metrics = Metrics()
    queue = WindowQueue(queue_size, metrics)
    slot = ModelSlot(scorer or FakeScorer(), AlertTracker(enter_after, leave_after), threshold_override)
    worker = Worker(queue, {"": slot}, sink or FakeSink(), metrics, **kwargs)
    return worker, queue, metrics


# ---- WindowQueue (the bounded queue's behaviour: tests/test_live_bounded_queue.py) -------------

def test_full_queue_drops_the_oldest_window_and_counts_it(caplog):
    metrics = Metrics()
    q = WindowQueue(3, metrics)
    for i in range(5):
        q.put(job(value=i))
    assert len(q) == 3
    assert [j.window[0, 0] for j in q.take(10, 0)] == [2, 3, 4]
    assert dropped(metrics, "queue_full") == 2
    assert "window queue: dropped 1 windows" in caplog.text  # rate-limited: the second drop is held back


def test_windows_put_after_close_or_discarded_are_counted_as_dropped():
    metrics = Metrics()
    q = WindowQueue(100, metrics)
    q.put(job())
    q.put(job())
    assert q.discard() == 2
    q.close()
    q.put(job())
    assert len(q) == 0
    assert dropped(metrics, "queue_full") == 3


# ---- Worker -----------------------------------------------------------------------------------

def test_queued_jobs_are_scored_in_one_batch_and_become_score_events():
    scorer, sink = FakeScorer(threshold=1.0), FakeSink()
    worker, queue, metrics = make_worker(scorer, sink)
    queue.put(job("a", 0.5, ts=10))
    queue.put(job("b", 2.0, ts=11))
    worker.start()
    events = sink.wait_for(2)
    worker.stop()
    assert scorer.batches == [(2, W, F)]
    assert events[0] == ScoreEvent("a", "fake", 10, 0.5, 1.0, False, False, {"a": 0.5, "b": 1.0}, 10.5)
    assert events[1] == ScoreEvent("b", "fake", 11, 2.0, 1.0, True, True, {"a": 2.0, "b": 4.0}, 11.5)
    assert counter(metrics, "anomalyd_windows_scored_total") == 2
    assert counter(metrics, "anomalyd_anomalous_windows_total") == 1
    assert counter(metrics, "anomalyd_alerts_raised_total") == 1
    assert counter(metrics, "anomalyd_inference_seconds_count") == 1
    assert counter(metrics, "anomalyd_batch_windows_sum") == 2


def test_batches_are_capped_at_max_batch():
    scorer = FakeScorer()
    worker, queue, _ = make_worker(scorer, max_batch=3)
    for i in range(7):
        queue.put(job(value=i))
    worker.start()
    worker.stop(drain=True)
    assert [shape[0] for shape in scorer.batches] == [3, 3, 1]


def test_a_batch_larger_than_the_model_takes_is_scored_in_pieces_of_max_model_batch():
    scorer, sink = FakeScorer(), FakeSink()
    worker, queue, _ = make_worker(scorer, sink, max_batch=1000, queue_size=1000)
    for i in range(MAX_MODEL_BATCH + 6):
        queue.put(job(value=i))
    worker.start()
    events = sink.wait_for(MAX_MODEL_BATCH + 6)
    worker.stop()
    assert scorer.batches == [(MAX_MODEL_BATCH, W, F), (6, W, F)]
    assert [e.score for e in events] == list(range(MAX_MODEL_BATCH + 6))


def test_alert_follows_hysteresis_across_batches():
    sink = FakeSink()
    worker, queue, _ = make_worker(sink=sink, enter_after=2, leave_after=2, max_wait_s=0)
    worker.start()
    for value in (5, 5, 0, 0):
        queue.put(job("d", value))
        sink.wait_for(len(sink.events) + 1)
    worker.stop()
    assert [(e.anomaly, e.alert) for e in sink.events] == [(True, False), (True, True), (False, True),
                                                           (False, False)]


def test_threshold_override_replaces_the_bundle_threshold():
    sink = FakeSink()
    worker, queue, _ = make_worker(FakeScorer(threshold=1.0), sink, threshold_override=3.0)
    queue.put(job(value=2.0))
    worker.start()
    event = sink.wait_for(1)[0]
    worker.stop()
    assert (event.threshold, event.anomaly) == (3.0, False)


def test_a_configured_threshold_of_zero_is_the_one_in_force():
    """0 is a threshold, not "unset": every window scoring above it is flagged."""
    sink = FakeSink()
    worker, queue, _ = make_worker(FakeScorer(threshold=1.0), sink, threshold_override=0.0)
    queue.put(job(value=0.5))
    worker.start()
    event = sink.wait_for(1)[0]
    worker.stop()
    assert (event.score, event.threshold, event.anomaly) == (0.5, 0.0, True)


def test_swapped_scorer_is_used_from_the_next_batch():
    sink = FakeSink()
    worker, queue, _ = make_worker(FakeScorer(name="old"), sink, max_wait_s=0)
    worker.start()
    queue.put(job())
    sink.wait_for(1)
    worker.swap_models({"": ModelSlot(FakeScorer(name="new", threshold=0.1), AlertTracker(1, 1), 7.0)})
    queue.put(job(value=1.0))
    events = sink.wait_for(2)
    worker.stop()
    assert [(e.model, e.threshold) for e in events] == [("old", 1.0), ("new", 7.0)]


def test_windows_that_do_not_fit_the_model_are_dropped_not_fatal():
    sink = FakeSink()
    worker, queue, metrics = make_worker(sink=sink)
    queue.put(job(shape=(W + 1, F)))
    queue.put(job("ok"))
    worker.start()
    worker.stop()
    assert [e.device for e in sink.events] == ["ok"]
    assert dropped(metrics, "model_mismatch") == 1


def test_scorer_exception_loses_the_batch_but_not_the_thread(caplog):
    scorer, sink = FakeScorer(fail=True), FakeSink()
    worker, queue, metrics = make_worker(scorer, sink, max_wait_s=0)
    worker.start()
    with caplog.at_level(logging.ERROR, logger="daemon.live.worker"):
        for n in (1, 2, 3):
            queue.put(job())
            wait_until(lambda: dropped(metrics, "scoring_error") == n)
    assert worker.is_alive()
    assert len([r for r in caplog.records if "model exploded" in r.getMessage()]) == 1  # rate-limited
    scorer.fail = False
    queue.put(job("after"))
    assert [e.device for e in sink.wait_for(1)] == ["after"]
    worker.stop()



def test_a_candidate_that_fails_in_shadow_loses_only_its_own_events_and_counts_them(caplog):
    sink = FakeSink()
    shadow = ModelSlot(FakeScorer(name="candidate", fail=True), AlertTracker(1, 1), None)
    worker, queue, metrics = make_worker(sink=sink, max_wait_s=0, shadow=shadow)
    worker.start()
    with caplog.at_level(logging.ERROR, logger="daemon.live.worker"):
        for n in (1, 2, 3):
            queue.put(job(f"d{n}"))
            wait_until(lambda: counter(metrics, "anomalyd_shadow_windows_lost_total") == n)
    assert [e.device for e in sink.wait_for(3)] == ["d1", "d2", "d3"]  # the served model's, all of them
    assert not any(e.shadow for e in sink.events)
    assert dropped(metrics, "scoring_error") == 0
    assert len([r for r in caplog.records if "candidate candidate" in r.getMessage()]) == 1  # rate-limited
    worker.stop()

def test_sink_exception_counts_dropped_points_and_the_worker_continues():
    sink = FakeSink(fail_first=True)
    worker, queue, metrics = make_worker(sink=sink, max_wait_s=0)
    worker.start()
    queue.put(job("lost"))
    wait_until(lambda: sink.calls == 1)
    queue.put(job("kept"))
    assert [e.device for e in sink.wait_for(1)] == ["kept"]
    worker.stop()
    assert metrics.registry.get_sample_value("anomalyd_sink_points_total", {"result": "dropped"}) == 1


def test_the_next_batch_is_prepared_while_the_model_computes_the_previous_one():
    scorer, sink = FakeScorer(), FakeSink()
    scorer.hold(1)
    worker, queue, _ = make_worker(scorer, sink, max_batch=1)
    queue.put(job("first"))
    queue.put(job("second"))
    worker.start()
    assert scorer.holding.wait(5)
    wait_until(lambda: len(scorer.batches) == 2)  # "second" scaled while "first" is in the model
    assert sink.events == []
    scorer.release()
    assert [e.device for e in sink.wait_for(2)] == ["first", "second"]
    worker.stop()


def run_to_drain(jobs: int, max_batch: int, sink: FakeSink | None = None) -> tuple[Worker, FakeSink]:
    """Queue `jobs` windows, start the worker, stop it with drain."""
    sink = sink or FakeSink()
    worker, queue, _ = make_worker(sink=sink, max_batch=max_batch)
    for i in range(jobs):
        queue.put(job(str(i)))
    worker.start()
    worker.stop(drain=True, timeout=5)
    return worker, sink


def test_stop_with_drain_scores_everything_queued():
    worker, sink = run_to_drain(5, max_batch=2)
    assert not worker.is_alive()
    assert [e.device for e in sink.events] == ["0", "1", "2", "3", "4"]


def test_freed_memory_is_returned_to_the_os_once_the_queue_empties_after_many_windows(monkeypatch):
    import daemon.live.worker as worker_module

    sink, trims = FakeSink(), []
    monkeypatch.setattr(worker_module, "TRIM_EVERY_WINDOWS", 4)
    monkeypatch.setattr(worker_module, "release_free_memory", lambda: trims.append(len(sink.events)))
    run_to_drain(6, max_batch=2, sink=sink)
    assert trims == [6]  # after the third batch of 2, which emptied the queue; not after 4 windows


def test_release_free_memory_works_on_this_c_library():
    from daemon.live.telemetry.memory import release_free_memory

    assert release_free_memory() is True


def test_stop_without_drain_drops_and_counts_what_is_queued():
    sink = FakeSink()
    worker, queue, metrics = make_worker(sink=sink)
    for i in range(5):
        queue.put(job(str(i)))
    worker.stop(drain=False)
    assert sink.events == []
    assert dropped(metrics, "queue_full") == 5


# ---- RateLimitedLog ---------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def limited(caplog):
    clock = Clock()
    caplog.set_level(logging.WARNING, logger="test.ratelimit")
    return RateLimitedLog(logging.getLogger("test.ratelimit"), interval=10, clock=clock), clock, caplog


def test_rate_limited_log_writes_one_line_per_key_per_interval(limited):
    rl, clock, caplog = limited
    assert rl.warning("bad", "bad message %d", 1)
    assert not rl.warning("bad", "bad message %d", 2)
    clock.now = 9.9
    assert not rl.warning("bad", "bad message %d", 3)
    assert [r.getMessage() for r in caplog.records] == ["bad message 1"]


def test_rate_limited_log_reports_how_many_lines_it_suppressed(limited):
    rl, clock, caplog = limited
    for i in range(4):
        rl.warning("bad", "bad message %d", i)
    clock.now = 10
    rl.warning("bad", "bad message %d", 99)
    assert caplog.records[-1].getMessage() == "bad message 99 (+3 similar suppressed since the last report)"


def test_rate_limited_log_keys_are_independent(limited):
    rl, _, caplog = limited
    rl.warning("a", "first")
    rl.warning("b", "second")
    assert [r.getMessage() for r in caplog.records] == ["first", "second"]


def test_each_route_is_scored_by_its_own_model_and_alert_states():
    sink, metrics = FakeSink(), Metrics()
    queue = WindowQueue(100, metrics)
    pump, fan = FakeScorer(name="pump", threshold=1.0), FakeScorer(name="fan", threshold=5.0)
    models = {"": ModelSlot(pump, AlertTracker(1, 1)), "fan-*": ModelSlot(fan, AlertTracker(2, 1))}
    worker = Worker(queue, models, sink, metrics, max_wait_s=0)
    for route, device, value in [("", "p", 2.0), ("fan-*", "f", 2.0), ("", "p", 2.0), ("fan-*", "f", 6.0)]:
        j = job(device, value)
        j.route = route
        queue.put(j)
    worker.start()
    events = sink.wait_for(4)
    worker.stop()
    assert sorted((e.device, e.model, e.anomaly, e.alert) for e in events) == [
        ("f", "fan", False, False), ("f", "fan", True, False), ("p", "pump", True, True), ("p", "pump", True, True)]
    assert pump.batches == [(2, W, F)] and fan.batches == [(2, W, F)]
    assert sum(slot.alerts.active_count() for slot in models.values()) == 1


def test_windows_of_a_route_that_lost_its_model_are_dropped_and_counted():
    sink = FakeSink()
    worker, queue, metrics = make_worker(sink=sink)
    gone = job("old")
    gone.route = "removed-*"
    queue.put(gone)
    queue.put(job("ok"))
    worker.start()
    worker.stop()
    assert [e.device for e in sink.events] == ["ok"]
    assert dropped(metrics, "model_mismatch") == 1


# ---- windows that cannot be scored ------------------------------------------------------------

def test_a_window_holding_a_fault_code_is_written_as_an_anomaly_with_its_reason_and_counted():
    """Issue 15's repro live: the window was written with anomaly=0 and no score."""
    from pathlib import Path

    from daemon.core.scoring import MAX_SCORE, OUT_OF_RANGE, Scorer
    from daemon.live.sinks.line_protocol import decode, encode
    from daemon.offline import synthetic

    scorer = Scorer.load(Path(__file__).resolve().parents[1] / "models" / "demo")
    readings = synthetic.normal(20, seed=5).values
    broken = readings.copy()
    broken[-1, 2] = 3.4028234e38
    sink = FakeSink()
    worker, queue, metrics = make_worker(scorer, sink, max_wait_s=0)
    queue.put(WindowJob("healthy", 1.0, readings, 1.0))
    queue.put(WindowJob("broken", 1.0, broken, 1.0))
    worker.start()
    healthy, faulty = sink.wait_for(2)
    worker.stop()
    assert (healthy.anomaly, healthy.reason) == (False, "")
    assert (faulty.anomaly, faulty.alert, faulty.reason, faulty.score) == (True, True, OUT_OF_RANGE, MAX_SCORE)
    point = decode(encode(faulty))
    assert point.tags["reason"] == OUT_OF_RANGE
    assert point.fields["anomaly"] == 1 and point.fields["score"] >= MAX_SCORE
    assert point.fields["err_pressure"] >= MAX_SCORE
    assert "reason" not in decode(encode(healthy)).tags
    assert counter(metrics, "anomalyd_unscorable_windows_total", reason=OUT_OF_RANGE) == 1
    assert counter(metrics, "anomalyd_anomalous_windows_total") == 1


def test_live_and_offline_scoring_give_the_same_scores_flags_and_reasons():
    from pathlib import Path

    from daemon.core.scoring import Scorer
    from daemon.offline import synthetic

    scorer = Scorer.load(Path(__file__).resolve().parents[1] / "models" / "demo")
    windows = synthetic.normal(20 * 4, seed=7).values.reshape(4, 20, 5).copy()
    windows[1, 3, 0] = -3.4028234e38
    windows[3, :, 4] = 1e25
    offline = scorer.score_windows(windows)
    sink = FakeSink()
    worker, queue, _ = make_worker(scorer, sink)
    for i, window in enumerate(windows):
        queue.put(WindowJob(f"d{i}", 1.0, window, 1.0))
    worker.start()
    events = sink.wait_for(4)
    worker.stop()
    assert [e.score for e in events] == offline.scores.tolist()
    assert [e.anomaly for e in events] == offline.flags(scorer.threshold).tolist()
    assert [e.reason for e in events] == offline.reasons
