"""Alert state follows a device when its Kafka partition moves (daemon/live/ingest/alert_state.py).

Each change of a device's alert state on a window scored for the first time is produced to a
compacted topic (key = device) on the partition number of the device's data partition; the
instance that takes the partition over reads it before it resumes and seeds the device's
hysteresis with the recorded change: windows before it step from the state before the change,
the change's own window is left in the recorded state, later ones step on. So an alert that
began long before the replayed span goes on without a second raise or a gap, and one that
cleared stays cleared.

The rule is specified first without a broker, then two anomalyd services hand devices over
through a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, ConfigResource  # noqa: E402
from servers import wait_until  # noqa: E402
from test_live_worker import FakeScorer, FakeSink, job  # noqa: E402

from daemon.core.postprocess import AlertSpec, Hysteresis  # noqa: E402
from daemon.live.alerting import AlertTracker  # noqa: E402
from daemon.live.config import build  # noqa: E402
from daemon.live.ingest.alert_state import AlertRecord, AlertStateTopic  # noqa: E402
from daemon.live.service import Service  # noqa: E402
from daemon.live.sinks.file import read_points  # noqa: E402
from daemon.live.telemetry.metrics import Metrics  # noqa: E402
from daemon.live.worker import ModelSlot, WindowQueue, Worker  # noqa: E402
from daemon.offline import synthetic  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"


def states(tracker: AlertTracker, device: str, windows: list[tuple[float, bool]]) -> str:
    """Feed (window end, anomalous) windows; 'A' in alert, '.' not, '!' raised, '-' cleared."""
    out = ""
    for alert, changed in tracker.update_batch([device] * len(windows), [a for _, a in windows],
                                               [ts for ts, _ in windows]):
        out += ("!" if alert else "-") if changed else ("A" if alert else ".")
    return out


# ---- the seeding rule -------------------------------------------------------------------------

def test_an_alert_raised_before_the_replayed_span_goes_on_without_a_second_raise():
    tracker = AlertTracker(3, 2)
    tracker.seed("pump", True, as_of=90.0, within=3600)
    assert tracker.active_count() == 0  # in force from the device's first window
    assert states(tracker, "pump", [(98, False), (99, True), (100, False)]) == "AAA"
    assert tracker.active_count() == 1
    assert states(tracker, "pump", [(101, False)]) == "-"
    assert tracker.active_count() == 0


def test_windows_before_the_recorded_change_step_from_the_state_before_it_and_the_change_lands_on_its_window():
    tracker = AlertTracker(3, 2)
    tracker.seed("pump", True, as_of=100.0, within=3600)  # raised at the window ending at 100
    # Before 100 the device was clear and its streak is rebuilt from the windows read again; the
    # window ending at 100 is in alert whatever that streak says (the streak began earlier), and
    # it is not a change here: the previous owner raised and recorded it.
    assert states(tracker, "pump", [(98, True), (99, False), (100, True), (101, False)]) == "..AA"
    assert states(tracker, "pump", [(102, False)]) == "-"


def test_a_change_read_again_after_a_crash_falls_on_the_window_it_fell_on():
    # The previous owner raised at 100 and recorded it, then died before committing 99..100:
    # those records are read again and must not be in alert before 100.
    tracker = AlertTracker(2, 5)
    tracker.seed("pump", True, as_of=100.0, within=3600)
    assert states(tracker, "pump", [(97, False), (98, False), (99, True), (100, True), (101, True)]) == "...AA"


def test_a_seeded_clear_is_not_raised_again_by_stale_anomalous_windows():
    tracker = AlertTracker(2, 2)
    tracker.seed("pump", False, as_of=100.0, within=3600)
    assert states(tracker, "pump", [(97, True), (98, True), (99, True), (100, True)]) == "AAA."
    assert states(tracker, "pump", [(101, True), (102, True)]) == ".!"  # a new episode raises as usual


def test_a_seed_whose_window_never_comes_back_holds_from_the_first_window_after_it():
    tracker = AlertTracker(1, 2)
    tracker.seed("pump", True, as_of=100.0, within=3600)
    assert states(tracker, "pump", [(105, False), (106, False)]) == "A-"  # stepped from the seeded alert


def test_a_seed_replaces_what_the_device_had_and_is_forgotten_with_it():
    tracker = AlertTracker(1, 5)
    tracker.update_batch(["pump"], [True], [50.0])
    tracker.seed("pump", False, as_of=60.0, within=3600)
    assert tracker.active_count() == 0
    tracker.seed("fan", True, as_of=50.0, within=3600)
    assert states(tracker, "fan", [(59.0, False)]) == "A"
    tracker.forget_devices({"fan", "never-seen"})  # its partition moved away
    assert tracker.active_count() == 0
    assert states(tracker, "fan", [(60.0, False)]) == "."


def test_a_seed_whose_device_stays_silent_too_long_is_dropped_as_its_previous_owner_would_have():
    tracker = AlertTracker(2, 2)
    tracker.seed("pump", True, as_of=90.0, within=0.0)  # limits.idle_evict_seconds passed without a reading
    assert states(tracker, "pump", [(99.0, True), (100.0, True)]) == ".!"  # a fresh start


def test_a_device_clock_set_back_steps_as_usual_and_never_freezes():
    tracker = AlertTracker(1, 1)
    tracker.seed("pump", True, as_of=100.0, within=3600)
    assert states(tracker, "pump", [(50.0, False), (51.0, True), (52.0, False)]) == ".!-"


def test_an_alert_record_reads_back_and_a_malformed_one_is_refused():
    record = AlertRecord(True, 1_750_000_000.5, "plant", 3)
    assert AlertRecord.decode(record.encode()) == record
    for bad in (b"[]", b'{"alert": 1, "ts": 1, "topic": "t", "partition": 0}', b'{"alert": true}'):
        with pytest.raises(ValueError):
            AlertRecord.decode(bad)


# ---- the worker records changes of first-time windows only --------------------------------------

class Receipt:
    def __init__(self, replay: bool = False, source: tuple[str, int] | None = ("plant", 1)) -> None:
        self.replay, self.source = replay, source

    def settle(self) -> None:
        pass


class Changes:
    def __init__(self) -> None:
        self.published: list[tuple[str, bool, float, tuple[str, int] | None]] = []

    def publish(self, device: str, alert: bool, ts: float, source: tuple[str, int] | None) -> None:
        self.published.append((device, alert, ts, source))


def test_replayed_windows_rebuild_the_alert_but_neither_count_nor_record_a_change():
    metrics, sink, changes = Metrics(), FakeSink(), Changes()
    queue = WindowQueue(100, metrics)
    served = ModelSlot(FakeScorer(threshold=1.0), AlertTracker(1, 1))
    shadow = ModelSlot(FakeScorer(threshold=1.0, name="candidate"), AlertTracker(1, 1))
    worker = Worker(queue, {"": served}, sink, metrics, shadow=shadow, alert_changes=changes)
    windows = [(1.0, 2.0, True), (2.0, 0.0, False), (3.0, 2.0, False)]  # (ts, score, replayed)
    for ts, value, replayed in windows:
        window = job("pump", value, ts=ts)
        window.receipt = Receipt(replayed)
        queue.put(window)
    worker.start()
    sink.wait_for(4)  # the two first-time windows, by the served model and the candidate
    worker.stop()
    assert changes.published == [("pump", False, 2.0, ("plant", 1)), ("pump", True, 3.0, ("plant", 1))]
    assert metrics.registry.get_sample_value("anomalyd_alerts_raised_total") == 1


# ---- against a broker -------------------------------------------------------------------------

def test_the_topic_is_created_compacted_with_the_data_topics_partitions(tansu):
    tansu.create_topic("plant", 3)
    metrics = Metrics()
    state = AlertStateTopic("alerts", {"bootstrap.servers": tansu.bootstrap_servers}, metrics)
    assert state.prepare(["plant"])
    admin = AdminClient({"bootstrap.servers": tansu.bootstrap_servers})
    assert len(admin.list_topics(timeout=10).topics["alerts"].partitions) == 3
    [config] = admin.describe_configs([ConfigResource("topic", "alerts")]).values()
    assert config.result(10)["cleanup.policy"].value == "compact"
    state.own([("plant", 2), ("plant", 0)])
    state.publish("pump-1", True, 10.0, ("plant", 2))
    state.publish("pump-2", True, 11.0, ("plant", 0))
    state.publish("pump-1", False, 12.0, ("plant", 2))
    state.publish("pump-3", True, 13.0, ("plant", 1))  # not owned: not recorded
    assert state.flush(10)
    assert state.load([("plant", 2)]) == {"pump-1": AlertRecord(False, 12.0, "plant", 2)}
    counts = {r: metrics.registry.get_sample_value("anomalyd_alert_state_records_total", {"result": r})
              for r in ("produced", "failed", "loaded")}
    assert counts == {"produced": 3, "failed": 0, "loaded": 1}
    state.close(5)


def test_a_topic_with_fewer_partitions_than_the_data_is_an_error_naming_it(tansu, caplog):
    tansu.create_topic("plant", 3)
    tansu.create_topic("alerts", 1, {"cleanup.policy": "compact"})
    metrics = Metrics()
    state = AlertStateTopic("alerts", {"bootstrap.servers": tansu.bootstrap_servers}, metrics)
    with caplog.at_level(logging.ERROR):
        assert not state.prepare(["plant"])
    assert "alert-state topic 'alerts' has 1 partitions, fewer than the 3 of plant" in caplog.text
    state.own([("plant", 2)])
    state.publish("pump-1", True, 10.0, ("plant", 2))
    assert metrics.registry.get_sample_value("anomalyd_alert_state_records_total", {"result": "failed"}) == 1
    state.close(5)


ALERT = AlertSpec(8, 8)  # longer than the replayed windows, so the replay alone cannot rebuild an alert
REPLAY_S = 24.0  # window (20 readings, 1 s apart) + 4: the replay scores 5 windows before the first new one
FIRST, SECOND = 140, 30  # readings per device before and after the move
LONG, CLEARED = "pump-long", "pump-cleared"


def service(tansu, tmp_path: Path, name: str) -> Service:
    config = {"source": "kafka",
              "kafka": {"bootstrap_servers": tansu.bootstrap_servers, "topics": "plant", "group_id": "fleet",
                        "session_timeout_ms": 6000, "commit_interval_ms": 200, "auto_offset_reset": "earliest",
                        "replay_seconds": REPLAY_S},
              "model": {"path": str(DEMO), "devices": {LONG: str(DEMO)}},  # each seeded in its own route
              "alerting": {"enter_after": ALERT.enter_after, "leave_after": ALERT.leave_after},
              "metrics": {"port": 0},
              "batching": {"max_wait_ms": 10},
              "local_store": {"path": str(tmp_path / f"{name}.lp")},
              "logging": {"level": "WARNING"}}
    return Service(build(config))


def readings(start: float) -> dict[str, list[tuple[float, bytes]]]:
    """Per device, (ts, payload): LONG has a level shift from its 10th reading to the end, CLEARED
    one that ends well before the move."""
    runs = {LONG: synthetic.inject(synthetic.normal(FIRST + SECOND, seed=1, start=start), "level_shift", 10,
                                   FIRST + SECOND - 10, seed=1),
            CLEARED: synthetic.inject(synthetic.normal(FIRST + SECOND, seed=2, start=start), "level_shift", 30,
                                      60, seed=2)}
    return {device: [(float(ts), json.dumps({"ts": float(ts), **dict(zip(synthetic.FEATURES, map(float, row)))})
                      .encode()) for ts, row in zip(run.timestamps, run.values)] for device, run in runs.items()}


def produce(tansu, data: dict[str, list[tuple[float, bytes]]], steps: range) -> None:
    producer = Producer({"bootstrap.servers": tansu.bootstrap_servers, "linger.ms": 5})
    for step in steps:
        for device, rows in data.items():
            ts, value = rows[step]
            producer.produce("plant", key=device.encode(), value=value, timestamp=int(ts * 1000))
    assert producer.flush(10) == 0


def wait_written(path: Path, ts: float) -> None:
    def done() -> bool:
        try:
            return {p["device"] for p in read_points(path) if p["ts"] == ts} == {LONG, CLEARED}
        except (FileNotFoundError, ValueError):  # not yet written, or a line being written
            return False
    wait_until(done, 30, f"both devices' windows up to {ts} in {path.name}")


def metric(svc: Service, name: str, **labels: str) -> float:
    return svc.metrics.registry.get_sample_value(name, labels or None) or 0.0


def test_alerts_continue_across_a_move_exactly_as_on_one_instance(tansu, tmp_path):
    tansu.create_topic("plant", 2)
    data = readings(float(int(time.time()) - 1000))  # whole seconds: the sink writes milliseconds
    last = {step: data[LONG][step - 1][0] for step in (FIRST, FIRST + SECOND)}

    first = service(tansu, tmp_path, "first")
    first.start()
    try:
        produce(tansu, data, range(FIRST))
        wait_written(tmp_path / "first.lp", last[FIRST])
    finally:
        first.shutdown()  # commits what its sink wrote, after its alert-state records are delivered
    raised_first = metric(first, "anomalyd_alerts_raised_total")

    second = service(tansu, tmp_path, "second")
    second.start()
    try:
        wait_until(lambda: second.ingest.assigned, 20, "the second instance assigned the partitions")
        produce(tansu, data, range(FIRST, FIRST + SECOND))
        wait_written(tmp_path / "second.lp", last[FIRST + SECOND])
        assert [r.alerts.active_count() for r in second.routes] == [1, 0]  # LONG's route, the default route
    finally:
        second.shutdown()

    points = sorted(read_points(tmp_path / "first.lp") + read_points(tmp_path / "second.lp"),
                    key=lambda p: p["ts"])
    for device in (LONG, CLEARED):
        mine = [p for p in points if p["device"] == device]
        assert len({p["ts"] for p in mine}) == FIRST + SECOND - 19  # every window once (stride 1, window 20)
        one_instance = Hysteresis(ALERT)
        expected = [one_instance.step(p["anomaly"]) for p in mine]
        assert [p["alert"] for p in mine] == expected, device
    long_alert = [p["alert"] for p in points if p["device"] == LONG and p["ts"] > last[FIRST]]
    assert all(long_alert)  # in alert before the move, and no gap after it
    assert not any(p["alert"] for p in points if p["device"] == CLEARED and p["ts"] > last[FIRST])
    assert raised_first == 2 and metric(second, "anomalyd_alerts_raised_total") == 0  # no second raise
    assert metric(second, "anomalyd_alert_state_records_total", result="loaded") == 2
    assert metric(second, "anomalyd_kafka_replayed_total") > 0


def test_a_route_added_by_a_reload_is_seeded_and_forgotten_like_the_others(tansu, tmp_path):
    import yaml

    from daemon.live.config import load_config

    path = tmp_path / "config.yaml"

    def configure(devices: dict[str, str]) -> None:
        path.write_text(yaml.safe_dump({
            "source": "kafka",
            "kafka": {"bootstrap_servers": tansu.bootstrap_servers, "topics": "plant", "replay_seconds": REPLAY_S},
            "model": {"path": str(DEMO), "devices": devices}, "metrics": {"enabled": False},
            "local_store": {"path": str(tmp_path / "scores.lp")}}))

    configure({})
    service = Service(load_config(path), str(path))
    configure({"fan-*": str(DEMO)})
    service.reload()
    fans = next(route for route in service.routes if route.key == "fan-*")
    service.route_table.seed_alerts({"fan-1": AlertRecord(True, 100.0, "plant", 0)})
    assert fans.alerts.update_batch(["fan-1"], [False], [101.0]) == [(True, False)]  # seeded in the new route
    service.route_table.drop_devices({"fan-1"})  # its partition moved away
    assert fans.alerts.active_count() == 0
    service.ingest.stop()
