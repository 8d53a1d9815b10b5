"""The torch runtime runs the model at a few batch sizes only, and the daemon pays for each at
start: oneDNN keeps a kernel per input shape (0.4-0.9 MB each), so every new batch size the
live worker met used to grow RSS for hours."""

import numpy as np
import pytest

from daemon.core import runtime
from daemon.offline import synthetic
from daemon.offline.frames import Frame
from daemon.live import assembly
from daemon.live.config import build
from daemon.core.models import build_model
from daemon.core.runtime import MAX_MODEL_BATCH, model_batches, padded_size, padded_sizes
from daemon.core.scoring import Scorer
from daemon.offline.training import TrainConfig, save, train


def test_a_batch_is_padded_to_a_power_of_two_up_to_8_then_to_a_multiple_of_8():
    assert [padded_size(n) for n in range(1, 10)] == [1, 2, 4, 4, 8, 8, 8, 8, 16]
    assert [padded_size(n) for n in (16, 17, 63, 64, 65, 512)] == [16, 24, 64, 64, 72, 512]


def test_padding_never_adds_more_than_7_windows():
    assert all(n <= padded_size(n) <= n + 7 for n in range(1, 1025))


def test_batches_of_up_to_64_windows_meet_eleven_shapes():
    assert padded_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]


def test_the_torch_runtime_runs_the_model_only_at_padded_sizes_and_returns_each_window(monkeypatch):
    model = build_model("mlp", 12, 2).eval()
    met = set()

    def recording(graph_input):
        met.add(len(graph_input))
        return model(graph_input)

    monkeypatch.setattr(runtime, "trace_for_inference", lambda _: recording)
    backend = runtime.torch_backend(model, threads=1)
    for n in range(1, 65):
        assert backend(np.ones((n, 12, 2), dtype=np.float32)).shape == (n, 12, 2)
    assert met == set(padded_sizes(64))


class RecordingBackend:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        return batch


def tiny_training():
    data = synthetic.normal(200, seed=1)
    frame = Frame("generated", data.timestamps, data.values, list(synthetic.FEATURES))
    return train([frame], TrainConfig(arch="mlp", window=8, epochs=1, seed=1))


def test_warm_up_runs_every_padded_size_once():
    backend = RecordingBackend()
    Scorer(tiny_training().bundle, backend).warm_up(20)
    assert backend.sizes == [1, 2, 4, 8, 16, 24]


def test_the_model_never_runs_more_windows_at_once_than_it_gains_from():
    """Past MAX_MODEL_BATCH windows a call neither runtime gets faster; a larger configured
    batch is scored in pieces of it, and warms up only the shapes those pieces have."""
    backend = RecordingBackend()
    scorer = Scorer(tiny_training().bundle, backend)
    scorer.score_windows(np.zeros((150, scorer.window, len(scorer.features)), dtype=np.float32))
    assert backend.sizes == [MAX_MODEL_BATCH, MAX_MODEL_BATCH, 150 - 2 * MAX_MODEL_BATCH]
    backend.sizes.clear()
    scorer.warm_up(100_000)
    assert backend.sizes == padded_sizes(MAX_MODEL_BATCH)


def test_the_daemon_warms_each_model_up_to_the_configured_batch_size(tmp_path, monkeypatch):
    save(tiny_training(), tmp_path / "m")
    warmed = []
    monkeypatch.setattr(Scorer, "warm_up", lambda scorer, max_batch: warmed.append(max_batch))
    assembly.load_scorers(build({"model": {"path": str(tmp_path / "m")}, "batching": {"max_batch": 16}}))
    assert warmed == [16]


@pytest.mark.parametrize("n", [0, 1, MAX_MODEL_BATCH, MAX_MODEL_BATCH + 1, 3 * MAX_MODEL_BATCH + 5])
def test_model_batches_cut_every_window_into_calls_of_at_most_max_model_batch(n):
    parts = list(model_batches(n))
    assert all(p.stop - p.start <= MAX_MODEL_BATCH for p in parts)
    assert [i for p in parts for i in range(p.start, p.stop)] == list(range(n))
