"""The InfluxDB sink against a real VictoriaMetrics (writes through influxdb-client, reads back
through /api/v1/export), plus small fake HTTP servers for status codes VictoriaMetrics never
returns and a black-hole socket for a database that hangs."""

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry

from daemon.live.events import ScoreEvent
from daemon.live.config import InfluxdbConfig
from daemon.live.sinks.influx import Backoff, InfluxSink
from daemon.live.telemetry.metrics import Metrics
from daemon.live.sinks.spool import Spool
from servers import free_port, sample_count, wait_until

T0 = 1_700_000_000.0
FEATURES = ("temp", "vib_x")


def events(model: str, n: int, start: int = 0, devices: int = 4) -> list[ScoreEvent]:
    """n events spread over `devices`, each with its own millisecond timestamp."""
    now = time.time()
    return [ScoreEvent(device=f"dev-{i % devices}", model=model, ts=T0 + i / 1000, score=i / 100, threshold=1.0,
                       anomaly=i % 7 == 0, alert=i % 11 == 0, feature_errors={f: i / 1000 for f in FEATURES},
                       received=now)
            for i in range(start, start + n)]


def make_sink(url: str, spool_dir, metrics: Metrics, spool: Spool | None = None, max_queue: int | None = None,
              **settings) -> InfluxSink:
    """The sink as the service builds it, from the config's influxdb section, with a short back-off."""
    config = InfluxdbConfig(**{"enabled": True, "url": url, "org": "org", "bucket": "bucket", "token": "token",
                               "batch_size": 500, "flush_interval_ms": 50, "timeout_ms": 2000, **settings})
    return InfluxSink(config, spool or Spool(spool_dir, max_bytes=50_000_000), metrics, max_queue=max_queue,
                      backoff=Backoff(initial_s=0.05, max_s=0.4))


def count(metrics: Metrics, result: str) -> float:
    return metrics.registry.get_sample_value("anomalyd_sink_points_total", {"result": result})


def drained(sink: InfluxSink) -> bool:
    status = sink.status()
    return sink.healthy and status["queued_points"] == 0 and status["spool_bytes"] == 0


def scores(vm, model: str) -> list[dict]:
    vm.flush()
    return vm.query_export(f'{{__name__="anomaly_score",model="{model}"}}')


def timestamps(series: list[dict]) -> list[int]:
    return sorted(t for s in series for t in s["timestamps"])


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def test_every_event_is_written_once_with_its_timestamp_and_feature_errors(victoria_metrics_session, unique_name,
                                                                          metrics, tmp_path):
    vm = victoria_metrics_session
    sent = events(unique_name, 2000)
    sink = make_sink(vm.url, tmp_path / "spool", metrics)
    for i in range(0, len(sent), 100):
        sink.submit(sent[i:i + 100])
    assert sink.close()

    series = scores(vm, unique_name)
    assert sample_count(series) == 2000
    assert timestamps(series) == [round(e.ts * 1000) for e in sent]
    assert {s["metric"]["device"] for s in series} == {"dev-0", "dev-1", "dev-2", "dev-3"}
    names = {s["metric"]["__name__"] for s in vm.query_export(f'{{__name__=~"anomaly_.*",model="{unique_name}"}}')}
    assert names == {"anomaly_score", "anomaly_threshold", "anomaly_anomaly", "anomaly_alert",
                     "anomaly_err_temp", "anomaly_err_vib_x"}
    flags = vm.query_export(f'{{__name__="anomaly_anomaly",model="{unique_name}"}}')
    assert sum(sum(s["values"]) for s in flags) == sum(e.anomaly for e in sent)

    assert count(metrics, "written") == 2000
    assert count(metrics, "spooled") == count(metrics, "retried") == count(metrics, "dropped") == 0
    assert metrics.registry.get_sample_value("anomalyd_publish_to_sink_seconds_count") == 2000


def test_database_down_and_back_every_point_lands_exactly_once(victoria_metrics, unique_name, metrics, tmp_path):
    vm = victoria_metrics
    sink = make_sink(vm.url, tmp_path / "spool", metrics)
    sink.submit(events(unique_name, 1000, start=0))
    wait_until(lambda: count(metrics, "written") == 1000, 10, "first 1000 points written")

    vm.stop()
    for i in range(1000, 3000, 100):  # submit keeps returning while nothing answers
        sink.submit(events(unique_name, 100, start=i))
        time.sleep(0.01)
    wait_until(lambda: not sink.healthy, 10, "sink reports the database down")
    wait_until(lambda: sink.status()["queued_points"] == 0, 10, "queue moved to the spool")
    wait_until(lambda: count(metrics, "retried") > 0, 10, "spool replay attempted with back-off")
    assert sink.status()["spool_bytes"] > 0

    vm.start()
    sink.submit(events(unique_name, 1000, start=3000))
    wait_until(lambda: drained(sink), 20, "spool replayed after the database came back")
    assert sink.close()

    series = scores(vm, unique_name)
    assert timestamps(series) == [round(T0 * 1000) + i for i in range(4000)]  # all there, none twice
    assert count(metrics, "written") == 4000
    assert count(metrics, "dropped") == 0
    assert count(metrics, "spooled") >= 2000


def test_spool_left_by_a_previous_run_is_replayed_first(victoria_metrics_session, unique_name, metrics, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    first_run = make_sink(down, tmp_path / "spool", metrics)
    first_run.submit(events(unique_name, 700))
    wait_until(lambda: count(metrics, "spooled") == 700, 10, "points spooled while the database is unreachable")
    assert first_run.close()

    second_metrics = Metrics(CollectorRegistry())
    second_run = make_sink(victoria_metrics_session.url, tmp_path / "spool", second_metrics)
    second_run.submit(events(unique_name, 300, start=700))
    wait_until(lambda: drained(second_run) and count(second_metrics, "written") == 1000, 10, "replay and live data")
    assert second_run.close()
    assert timestamps(scores(victoria_metrics_session, unique_name)) == [round(T0 * 1000) + i for i in range(1000)]


def test_spool_overflow_drops_the_oldest_points_and_counts_them(victoria_metrics_session, unique_name, metrics,
                                                                 tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    line_bytes = 200  # a little more than one encoded event
    sink = make_sink(down, tmp_path / "spool", metrics, spool=Spool(tmp_path / "spool", max_bytes=100 * line_bytes))
    for i in range(0, 1000, 100):
        sink.submit(events(unique_name, 100, start=i))
    assert sink.close()
    dropped = count(metrics, "dropped")
    assert 800 <= dropped < 1000
    assert count(metrics, "spooled") == 1000

    replay = make_sink(victoria_metrics_session.url, tmp_path / "spool", Metrics(CollectorRegistry()))
    wait_until(lambda: drained(replay), 10, "what survived replayed")
    assert replay.close()
    kept = timestamps(scores(victoria_metrics_session, unique_name))
    assert kept == [round(T0 * 1000) + i for i in range(int(dropped), 1000)]  # the newest survive


class FakeWriteServer:
    """Answers /api/v2/write with scripted statuses (then 204) and records the lines it stored."""

    def __init__(self, statuses: list[int]):
        self.statuses = list(statuses)
        self.requests = 0
        self.stored: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                fake.requests += 1
                status = fake.statuses.pop(0) if fake.statuses else 204
                if status == 204:
                    fake.stored += body.splitlines()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server(request):
    server = FakeWriteServer(request.param)
    yield server
    server.close()


@pytest.mark.parametrize("fake_server", [[400]], indirect=True)
def test_bad_data_rejected_with_4xx_is_dropped_not_retried(fake_server, metrics, tmp_path, caplog):
    sink = make_sink(fake_server.url, tmp_path / "spool", metrics)
    sink.submit(events("m", 10))
    wait_until(lambda: count(metrics, "dropped") == 10, 5, "rejected batch counted as dropped")
    assert sink.close()
    assert fake_server.requests == 1
    assert count(metrics, "retried") == count(metrics, "spooled") == count(metrics, "written") == 0
    assert "HTTP 400" in caplog.text


@pytest.mark.parametrize("fake_server", [[503, 429, 500]], indirect=True)
def test_server_errors_and_429_are_retried_until_written_once(fake_server, metrics, tmp_path):
    sink = make_sink(fake_server.url, tmp_path / "spool", metrics)
    sink.submit(events("m", 10))
    wait_until(lambda: count(metrics, "written") == 10, 10, "batch written after three failed attempts")
    assert sink.close()
    assert fake_server.requests == 4
    assert len(fake_server.stored) == 10
    assert count(metrics, "spooled") == 10
    assert count(metrics, "retried") == 20  # the two failed replays; the first failure spooled it


@pytest.mark.parametrize("fake_server", [[401] * 1000], indirect=True)
def test_a_rejected_token_keeps_the_points_spooled_and_reports_unhealthy(fake_server, metrics, tmp_path):
    sink = make_sink(fake_server.url, tmp_path / "spool", metrics)
    sink.submit(events("m", 10))
    wait_until(lambda: count(metrics, "retried") >= 10, 5, "401 retried")
    assert not sink.healthy
    assert "HTTP 401" in sink.status()["last_error"] and "token" in sink.status()["last_error"]
    assert count(metrics, "dropped") == 0
    assert sink.close()


@pytest.mark.parametrize("fake_server", [[]], indirect=True)
def test_an_event_that_cannot_be_encoded_is_dropped_and_the_rest_written(fake_server, metrics, tmp_path):
    sink = make_sink(fake_server.url, tmp_path / "spool", metrics)
    bad = events("m", 1)[0]
    bad.device = "two\nlines"
    sink.submit([*events("m", 5), bad])
    assert sink.close()
    assert (count(metrics, "written"), count(metrics, "dropped")) == (5, 1)
    assert len(fake_server.stored) == 5


def test_submit_never_waits_for_a_hanging_database(metrics, tmp_path):
    with socket.socket() as black_hole:  # accepts connections, never answers
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(100)
        url = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
        sink = make_sink(url, tmp_path / "spool", metrics, batch_size=100, max_queue=300, timeout_ms=3000)
        started = time.monotonic()
        for i in range(0, 2000, 100):
            sink.submit(events("m", 100, start=i))
        submitting = time.monotonic() - started
        assert submitting < 2.0, f"20 submits took {submitting:.1f} s while one write hangs for 3 s"
        assert count(metrics, "spooled") > 0  # the full queue spilled to disk
        assert not sink.close(timeout=0.2)  # the writer is still inside the hanging write...
    assert sink.status()["queued_points"] == 0  # ...but nothing queued is left in memory
    # Once the connection drops, the hanging write fails and the writer ends (within this test,
    # so its last log line is not written into a closed capture stream after it).
    wait_until(lambda: not any(t.name == "anomalyd-influx-sink" and t.is_alive() for t in threading.enumerate()), 10,
               "writer thread ended")


def test_submit_after_close_is_an_error(metrics, tmp_path):
    sink = make_sink(f"http://127.0.0.1:{free_port()}", tmp_path / "spool", metrics)
    assert sink.close()
    with pytest.raises(RuntimeError, match="closed"):
        sink.submit(events("m", 1))
