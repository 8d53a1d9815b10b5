import numpy as np
import pytest

from daemon.core.scaling import Scaler
from daemon.offline.training import split_runs
from daemon.offline.frames import Frame
from daemon.core.windowing import window_ends, windows


def test_window_count_follows_rows_window_and_stride():
    assert len(window_ends(100, 10, 1)) == 91
    assert list(window_ends(10, 4, 3)) == [3, 6, 9]
    assert len(window_ends(9, 10, 1)) == 0


def test_windows_are_consecutive_rows_ending_at_their_end_index():
    values = np.arange(40, dtype=np.float32).reshape(20, 2)
    cut = windows(values, 5, 2)
    ends = window_ends(20, 5, 2)
    assert cut.shape == (len(ends), 5, 2)
    for w, end in zip(cut, ends):
        np.testing.assert_array_equal(w, values[end - 4:end + 1])


def test_bad_window_or_stride_is_rejected():
    with pytest.raises(ValueError, match="window and stride"):
        window_ends(10, 0, 1)


def _frame(n, source, labels=None):
    return Frame(source, np.arange(n, dtype=float), np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32),
                 ["a", "b"], labels)


def test_windows_never_cross_files_or_labelled_anomalies():
    labels = np.zeros(100, dtype=np.int8)
    labels[40:45] = 1
    split = split_runs([_frame(100, "one.csv", labels), _frame(30, "two.csv")], window=10, validation_fraction=0.0)
    runs = [(f.source, f.timestamps[0], f.timestamps[-1]) for f in split.train]
    assert runs == [("one.csv", 0, 39), ("one.csv", 45, 99), ("two.csv", 0, 29)]
    assert all(f.labels is None or not f.labels.any() for f in split.train)


def test_validation_is_the_tail_of_each_run():
    split = split_runs([_frame(100, "a.csv")], window=10, validation_fraction=0.2)
    assert split.train[0].timestamps[-1] == 79 and split.validation[0].timestamps[0] == 80


def test_zscore_scaler_uses_only_the_rows_it_is_fit_on():
    train = np.array([[0.0, 5.0], [2.0, 5.0]])
    scaler = Scaler.fit("zscore", train)
    np.testing.assert_allclose(scaler.offset, [1.0, 5.0])
    np.testing.assert_allclose(scaler.scale, [1.0, 1.0])  # constant column gets scale 1
    np.testing.assert_allclose(scaler.transform(np.array([[100.0, 5.0]])), [[99.0, 0.0]])


def test_minmax_scaler_maps_training_range_to_unit_interval():
    scaler = Scaler.fit("minmax", np.array([[2.0], [6.0]]))
    np.testing.assert_allclose(scaler.transform(np.array([[2.0], [4.0], [6.0]])).ravel(), [0, 0.5, 1])
    assert Scaler.from_dict(scaler.to_dict()).kind == "minmax"


def test_windows_are_scaled_exactly_like_their_rows():
    rng = np.random.default_rng(3)
    scaler = Scaler.fit("zscore", rng.normal(5, 3, size=(500, 4)))
    rows = rng.normal(5, 3, size=(240, 4)).astype(np.float32)
    contiguous = rows.reshape(6, 40, 4)
    sliding = windows(rows, 40, 7)  # a strided view, as offline scoring passes it
    assert (scaler.transform(contiguous) == scaler.transform(rows).reshape(6, 40, 4)).all()
    assert (scaler.transform(sliding) == np.stack([scaler.transform(w) for w in sliding])).all()
    assert scaler.transform(contiguous).dtype == np.float32
