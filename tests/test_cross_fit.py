"""Cross-fitting: every normal row is held out once, scored by a model that never trained on a
window touching it, and every fold spans the whole run rather than one end of it."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.offline.cross_fit import FOLDS, MIN_BLOCK_WINDOWS, deal_blocks, fit_folds
from daemon.offline.frames import Frame

WINDOW = 20


def run_of(rows: int) -> Frame:
    """A run whose single feature is the row index, so a row can be traced back."""
    return Frame("run.csv", np.arange(rows, dtype=np.float64), np.arange(rows, dtype=np.float32)[:, None], ["row"])


def rows_of(frames: list[Frame]) -> np.ndarray:
    return np.concatenate([f.values[:, 0] for f in frames]).astype(int) if frames else np.empty(0, dtype=int)


@pytest.mark.parametrize("rows", [400, 3600, 10_001])
def test_every_row_is_held_out_by_exactly_one_fold(rows):
    held = np.sort(np.concatenate([rows_of(blocks) for _, blocks in deal_blocks(run_of(rows), WINDOW)]))
    assert np.array_equal(held, np.arange(rows))


@pytest.mark.parametrize("rows", [400, 3600, 10_001])
def test_no_fitted_row_is_within_a_window_of_the_folds_held_out_rows(rows):
    for fitted, blocks in deal_blocks(run_of(rows), WINDOW):
        held, kept = rows_of(blocks), rows_of(fitted)
        assert not np.intersect1d(held, kept).size
        distance = np.abs(kept[:, None] - held[None, :]).min(axis=1)
        assert distance.min() > WINDOW


def test_a_long_run_is_dealt_in_blocks_of_at_least_ten_windows_so_each_fold_spans_it():
    rows = 3600  # a day and a quarter at 30 s: each fold must see night and day
    dealt = deal_blocks(run_of(rows), WINDOW)
    assert len(dealt) == FOLDS
    for _, blocks in dealt:
        assert len(blocks) >= 2 and all(len(b) >= MIN_BLOCK_WINDOWS * WINDOW for b in blocks)
        held = rows_of(blocks)
        assert held.min() < rows / 2 < held.max()


def test_each_fold_is_fitted_on_its_own_rows_and_folds_without_rows_are_skipped():
    seen = []

    def fit(rows: list[Frame], fold: int):
        seen.append((fold, rows_of(rows)))
        return lambda x: x

    folds = fit_folds([run_of(3600), run_of(2 * WINDOW)], WINDOW, fit)  # the short run has no room to fit
    assert [fold for fold, _ in seen] == list(range(FOLDS)) and len(folds) == FOLDS
    for (_, fitted), fold in zip(seen, folds):
        assert not np.intersect1d(fitted, rows_of(fold.held_out)).size
