"""What the assembly fills in from the bundle when the config leaves it null."""

from types import SimpleNamespace

from daemon.live.assembly import route_stream
from daemon.live.config import LimitsConfig, StreamConfig
from daemon.live.ingest.buffers import DeviceBuffers
from daemon.live.telemetry.metrics import Metrics


def scorer(stride: int = 3, **bundle) -> SimpleNamespace:
    return SimpleNamespace(bundle=SimpleNamespace(stride=stride, **bundle))


def test_the_bundle_gives_the_stride_and_the_sample_period_the_config_leaves_null():
    stream = route_stream(StreamConfig(), scorer(stride=3, sample_period_seconds=2.0))
    assert (stream.stride, stream.sample_period_seconds) == (3, 2.0)


def test_the_config_overrides_the_bundle():
    stream = route_stream(StreamConfig(stride=1, sample_period_seconds=0.5), scorer(sample_period_seconds=2.0))
    assert (stream.stride, stream.sample_period_seconds) == (1, 0.5)


def test_a_bundle_without_a_sample_period_leaves_the_gap_rule_off():
    assert route_stream(StreamConfig(), scorer()).sample_period_seconds is None
    assert route_stream(StreamConfig(), scorer(sample_period_seconds=None)).sample_period_seconds is None


def test_by_default_a_gap_in_a_stream_restarts_the_device_window():
    metrics = Metrics()
    stream = route_stream(StreamConfig(), scorer(stride=1, sample_period_seconds=1.0))
    buffers = DeviceBuffers(2, 1, stream, LimitsConfig(), metrics)
    assert buffers.push_values("d", 1.0, (1.0,), 1.0) is None
    assert buffers.push_values("d", 2.0, (2.0,), 2.0) is not None
    assert buffers.push_values("d", 60.0, (3.0,), 60.0) is None  # 58 s > gap_factor 5 x 1 s: starts over
    assert metrics.registry.get_sample_value("anomalyd_window_restarts_total") == 1
