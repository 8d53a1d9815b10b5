"""The windows a model is fitted on: cut per batch from the scaled rows, the same windows the
scoring path cuts, none across two runs; and an epoch of a long history is a fresh draw of
`max_windows_per_epoch` of them."""

import numpy as np
import pytest

from daemon.core.preprocess import Preprocess
from daemon.core.scaling import Scaler
from daemon.core.windowing import windows
from daemon.offline import synthetic
from daemon.offline.frames import Frame
from daemon.offline.training import TrainConfig, train
from daemon.offline.training_windows import TrainingWindows

WINDOW = 20


def frame(rows: int, seed: int) -> Frame:
    data = synthetic.normal(rows, seed=seed)
    return Frame(f"run{seed}.csv", data.timestamps, data.values, list(synthetic.FEATURES), None)


@pytest.mark.parametrize("demean", [(), ("temperature", "flow")])
def test_a_batch_holds_the_windows_scoring_cuts_from_each_run_and_none_across_two(demean):
    runs = [frame(300, 1), frame(25, 2), frame(10, 3), frame(200, 4)]  # the third is shorter than a window
    scaler = Scaler.fit("zscore", np.concatenate([r.values for r in runs]))
    preprocess = Preprocess(demean)
    cut = [preprocess.apply(windows(scaler.transform(r.values), WINDOW, 1), r.features) for r in runs]
    expected = np.concatenate(cut)
    training = TrainingWindows(runs, scaler, WINDOW, preprocess)
    assert len(training) == len(expected) == (300 - 19) + (25 - 19) + 0 + (200 - 19)
    order = np.random.default_rng(0).permutation(len(training))
    np.testing.assert_array_equal(training.batch(order).numpy(), expected[order])


def test_an_empty_set_has_no_windows():
    scaler = Scaler.fit("zscore", frame(100, 1).values)
    assert len(TrainingWindows([], scaler, WINDOW, Preprocess(()))) == 0


def test_an_epoch_of_a_long_history_fits_a_fresh_draw_of_the_cap_and_checks_a_fixed_one(monkeypatch):
    seen: list[np.ndarray] = []
    cut = TrainingWindows.batch

    def recording(self, indices):
        seen.append((id(self), np.asarray(indices).copy()))
        return cut(self, indices)

    monkeypatch.setattr(TrainingWindows, "batch", recording)
    result = train([frame(3000, 1)], TrainConfig(arch="mlp", epochs=2, patience=5, max_windows_per_epoch=300))
    assert result.bundle.training["windows_train"] == 2400 - 19 and result.bundle.training["windows_validation"] == 600 - 19
    fitted_set = seen[0][0]
    fitting = [i for s, i in seen if s == fitted_set]
    checking = [i for s, i in seen if s != fitted_set]
    per_epoch = len(fitting) // 2
    first, second = np.concatenate(fitting[:per_epoch]), np.concatenate(fitting[per_epoch:])
    assert len(first) == len(second) == 300 and len(set(first)) == 300
    assert set(first) != set(second)  # drawn afresh each epoch
    assert len(checking) == 2 and np.array_equal(checking[0], checking[1]) and len(checking[0]) == 300
