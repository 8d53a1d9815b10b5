import json
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from daemon.live.telemetry.http_server import MetricsServer
from daemon.live.telemetry.metrics import Metrics


def get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


@pytest.fixture
def health_state():
    return {"ok": True, "details": {"sink": {"healthy": True}}}


@pytest.fixture
def server(health_state):
    metrics = Metrics(CollectorRegistry())
    metrics.windows_scored.inc(3)
    with MetricsServer("127.0.0.1", 0, metrics.registry, lambda: (health_state["ok"], health_state["details"])) as s:
        yield s


def test_port_zero_binds_a_free_port_and_exposes_it(server):
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_metrics_serves_the_given_registry_in_prometheus_text_format(server):
    status, content_type, body = get(server.url + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert "anomalyd_windows_scored_total 3.0" in body
    assert "python_gc" not in body, "only the injected registry, not the global one"


def test_metrics_speaks_openmetrics_when_asked(server):
    status, content_type, body = get(server.url + "/metrics", accept="application/openmetrics-text")
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_healthz_is_200_with_details_when_healthy(server):
    status, content_type, body = get(server.url + "/healthz")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {"healthy": True, "sink": {"healthy": True}}


def test_healthz_is_503_naming_the_failing_part(server, health_state):
    health_state.update(ok=False, details={"sink": {"healthy": False, "last_error": "connection refused"}})
    status, _, body = get(server.url + "/healthz")
    assert status == 503
    assert json.loads(body)["sink"]["last_error"] == "connection refused"


def test_a_health_check_that_raises_is_a_503_naming_the_exception():
    def broken():
        raise KeyError("mqtt")

    with MetricsServer("127.0.0.1", 0, CollectorRegistry(), broken) as s:
        status, _, body = get(s.url + "/healthz")
    assert status == 503
    assert "KeyError" in json.loads(body)["error"]


def test_unknown_paths_are_404(server):
    assert get(server.url + "/nope")[0] == 404


def test_stop_releases_the_port_and_start_twice_is_refused():
    s = MetricsServer("127.0.0.1", 0, CollectorRegistry(), lambda: (True, {}))
    s.start()
    with pytest.raises(RuntimeError, match="already started"):
        s.start()
    port = s.port
    s.stop()
    s.stop()  # idempotent
    with MetricsServer("127.0.0.1", port, CollectorRegistry(), lambda: (True, {})) as again:
        assert get(again.url + "/healthz")[0] == 200


def test_a_busy_port_is_named_in_the_error(server):
    with pytest.raises(OSError, match=f"127.0.0.1:{server.port}"):
        MetricsServer("127.0.0.1", server.port, CollectorRegistry(), lambda: (True, {})).start()
