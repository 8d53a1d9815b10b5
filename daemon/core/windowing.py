"""Cut time series into model windows. The only windowing code: training, `score`,
`evaluate` and the live ring buffers all go through `window_ends` / `windows`.

A window's score belongs to its *last* row (streaming-causal): it is what the daemon can
know at that moment, so offline evaluation and live alerts agree row for row.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def window_ends(n_rows: int, window: int, stride: int) -> np.ndarray:
    """Indices of the last row of each window over `n_rows` contiguous rows."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1 (got window={window}, stride={stride})")
    if n_rows < window:
        return np.empty(0, dtype=np.int64)
    return np.arange(window - 1, n_rows, stride, dtype=np.int64)


def windows(values: np.ndarray, window: int, stride: int) -> np.ndarray:
    """Windows `[k, window, features]` of a `[n, features]` array, as a read-only view: no
    copy, so a run of a million rows costs its rows, not its rows times the window. Callers
    copy the batch they work on."""
    ends = window_ends(len(values), window, stride)
    if len(ends) == 0:
        return np.empty((0, window, values.shape[1]), dtype=values.dtype)
    view = sliding_window_view(values, window, axis=0)  # [n - window + 1, features, window]
    return view[::stride].transpose(0, 2, 1)
