import logging
import math
import threading
import time

import numpy as np
import pytest

from daemon.live.events import ScoreEvent
from daemon.live.sinks.file import FileSink, read_points
from daemon.live.sinks.line_protocol import FIELD_NAMES, SCHEMA, decode, encode, encode_each
from daemon.live.telemetry.metrics import Metrics
from daemon.live.telemetry.ratelimit import RateLimitedLog


def event(**overrides) -> ScoreEvent:
    values = dict(device="press-7", model="ae-v3", ts=1_700_000_000.123, score=0.5, threshold=0.25,
                  anomaly=True, alert=False, feature_errors={"temp": 0.75, "vib_x": 0.125}, received=1_700_000_000.2)
    values.update(overrides)
    return ScoreEvent(**values)


def test_golden_line():
    assert encode(event()) == (
        "anomaly,device=press-7,model=ae-v3 "
        "score=0.5,threshold=0.25,anomaly=1i,alert=0i,err_temp=0.75,err_vib_x=0.125 "
        "1700000000123"
    )


def test_schema_names_what_encode_writes():
    point = decode(encode(event()))
    assert point.measurement == SCHEMA.measurement == "anomaly"
    assert tuple(point.tags) == SCHEMA.tag_keys == ("device", "model")
    assert FIELD_NAMES == ("score", "threshold", "anomaly", "alert")
    assert list(point.fields) == [*FIELD_NAMES, SCHEMA.feature_field("temp"), SCHEMA.feature_field("vib_x")]
    assert SCHEMA.metric_name("err_temp") == "anomaly_err_temp"  # as VictoriaMetrics names it


def test_timestamp_is_rounded_not_truncated_to_milliseconds():
    assert encode(event(ts=1.001)).endswith(" 1001")  # 1.001 * 1000 is 1000.9999999999999 in binary
    assert encode(event(ts=1_700_000_000.0)).endswith(" 1700000000000")


def test_flags_are_integers_and_floats_keep_float32_precision():
    rng = np.random.default_rng(0)
    values = [float(v) for v in np.concatenate([rng.random(500), rng.lognormal(0, 20, 500)]).astype(np.float32)]
    for value in values:
        point = decode(encode(event(anomaly=False, alert=True, score=value, threshold=2.0)))
        assert np.float32(point.fields["score"]) == np.float32(value)  # every float32 comes back exactly
    assert point.fields["anomaly"] == 0 and isinstance(point.fields["anomaly"], int)
    assert point.fields["alert"] == 1
    assert point.fields["threshold"] == 2.0 and isinstance(point.fields["threshold"], float)


def test_hostile_tag_values_are_escaped():
    line = encode(event(device="a,b=c d", model="m\\"))
    assert line.startswith("anomaly,device=a\\,b\\=c\\ d,model=m\\\\ ")
    point = decode(line)
    assert point.tags == {"device": "a,b=c d", "model": "m\\"}


def test_hostile_feature_names_are_escaped_as_field_keys():
    line = encode(event(feature_errors={"a,b=c d": 1.0, "x\\": 2.0}))
    assert "err_a\\,b\\=c\\ d=1," in line
    assert decode(line).fields["err_a,b=c d"] == 1.0
    assert decode(line).fields["err_x\\"] == 2.0


def test_non_finite_floats_are_left_out_because_line_protocol_has_no_nan():
    point = decode(encode(event(score=math.nan, feature_errors={"temp": math.inf, "vib_x": 0.5})))
    assert "score" not in point.fields and "err_temp" not in point.fields
    assert point.fields["err_vib_x"] == 0.5
    assert point.fields["anomaly"] == 1


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"device": "a\nb"}, "newline in tag 'device'"),
        ({"model": "m\r"}, "newline in tag 'model'"),
        ({"device": ""}, "tag 'device' is empty"),
        ({"feature_errors": {"t\n": 1.0}}, "newline in feature name 't\\n'"),
    ],
)
def test_values_line_protocol_cannot_carry_are_refused_by_name(overrides, fragment):
    with pytest.raises(ValueError) as err:
        encode(event(**overrides))
    assert fragment in str(err.value)


def test_encode_each_keeps_the_good_events_in_order_and_logs_the_bad_one_by_sink(caplog):
    good, bad, later = event(device="a"), event(device="b\nc"), event(device="d")
    encoded = encode_each([good, bad, later], RateLimitedLog(logging.getLogger("test")), "file sink")
    assert encoded == [(encode(good), good), (encode(later), later)]
    assert "file sink: dropped a score event of device 'b\\nc'" in caplog.text


def test_decode_names_what_is_wrong():
    with pytest.raises(ValueError, match="got 2 sections"):
        decode("anomaly score=1")
    with pytest.raises(ValueError, match="field value 'abc'"):
        decode("anomaly,device=d score=abc 1")
    with pytest.raises(ValueError, match="timestamp '1.5'"):
        decode("anomaly,device=d score=1 1.5")


def test_file_sink_round_trips_events_through_read_points(tmp_path):
    path = tmp_path / "store" / "scores.lp"
    sink = FileSink(path)
    sink.submit([event(), event(device="a,b=c d", ts=1_700_000_001.0, anomaly=False)])
    sink.submit([event(device="")])  # cannot be encoded: logged and skipped, the rest still lands
    assert sink.healthy
    assert sink.close()

    first, second = read_points(path)
    assert first == {"measurement": "anomaly", "device": "press-7", "model": "ae-v3", "score": 0.5,
                     "threshold": 0.25, "anomaly": 1, "alert": 0, "err_temp": 0.75, "err_vib_x": 0.125,
                     "ts": 1_700_000_000.123}
    assert (second["device"], second["ts"], second["anomaly"]) == ("a,b=c d", 1_700_000_001.0, 0)


def test_file_sink_appends_across_reopen_and_refuses_submit_after_close(tmp_path):
    path = tmp_path / "scores.lp"
    for ts in (1.0, 2.0):
        sink = FileSink(path)
        sink.submit([event(ts=ts)])
        sink.close()
    assert [p["ts"] for p in read_points(path)] == [1.0, 2.0]
    with pytest.raises(RuntimeError, match="closed"):
        sink.submit([event()])


class StalledDisk:
    """Hangs the sink's writer thread after its first write, until `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.writes = 0

    def __call__(self, events) -> None:
        self.writes += 1
        self.release.wait(10)


def points_counted(metrics: Metrics, result: str) -> float:
    return metrics.registry.get_sample_value("anomalyd_sink_points_total", {"result": result})


def stalled_sink(path, metrics: Metrics, **kwargs) -> tuple[FileSink, StalledDisk]:
    disk = StalledDisk()
    sink = FileSink(path, metrics, on_written=disk, **kwargs)
    sink.submit([event(ts=0.0)])
    deadline = time.monotonic() + 5
    while not disk.writes and time.monotonic() < deadline:  # the writer is now stuck
        time.sleep(0.001)
    return sink, disk


def test_file_sink_submit_never_waits_for_the_disk_and_close_writes_everything(tmp_path):
    metrics = Metrics()
    sink, disk = stalled_sink(tmp_path / "scores.lp", metrics)
    started = time.monotonic()
    for ts in range(1, 100):
        sink.submit([event(ts=float(ts))])
    assert time.monotonic() - started < 5  # the writer is stalled for 10 s: submit did not wait for it
    disk.release.set()
    assert sink.close()
    assert [p["ts"] for p in read_points(tmp_path / "scores.lp")] == [float(ts) for ts in range(100)]
    assert points_counted(metrics, "written") == 100


def test_file_sink_drops_the_oldest_points_past_its_queue_bound_and_counts_them(tmp_path):
    metrics = Metrics()
    sink, disk = stalled_sink(tmp_path / "scores.lp", metrics, max_queue=10)
    for ts in range(1, 16):
        sink.submit([event(ts=float(ts))])
    disk.release.set()
    assert sink.close()
    assert [p["ts"] for p in read_points(tmp_path / "scores.lp")] == [0.0, *map(float, range(6, 16))]
    assert (points_counted(metrics, "written"), points_counted(metrics, "dropped")) == (11, 5)


def test_read_points_names_the_file_and_line_of_a_bad_line(tmp_path):
    path = tmp_path / "scores.lp"
    path.write_text(encode(event()) + "\nnot line protocol\n")
    with pytest.raises(ValueError, match=r"scores.lp:2: "):
        read_points(path)
