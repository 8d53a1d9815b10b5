"""The windows a model is fitted on, cut from the scaled rows one batch at a time.

Every window of a long history held at once is the history times the window length: a month
of one-second readings of ten sensors at window 20 is 2 GB of float32, on a box that serves
with a few hundred MB. `TrainingWindows` keeps the scaled rows once (each row of a window is
shared with the next window-length - 1 windows) and cuts a batch of windows when the fit asks
for it. A batch is the same values, in the same memory layout, as `core.windowing.windows`
cuts from a run and `Preprocess.apply` then sees, so a model fitted on it is the model the
windows held at once would give, bit for bit.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from daemon.core.preprocess import Preprocess
from daemon.core.scaling import Scaler
from daemon.offline.frames import Frame


class TrainingWindows:
    """Every window (stride 1) of the scaled runs, none crossing from one run into the next."""

    def __init__(self, frames: Sequence[Frame], scaler: Scaler, window: int, preprocess: Preprocess) -> None:
        self.features = list(frames[0].features) if frames else []
        self.preprocess = preprocess
        runs = [np.asarray(scaler.transform(f.values)) for f in frames]
        n_features = len(self.features)
        self.rows = np.concatenate(runs) if runs else np.empty((0, n_features), dtype=np.float32)
        starts, first = [], 0
        for run in runs:
            if len(run) >= window:
                starts.append(first + np.arange(len(run) - window + 1, dtype=np.int64))
            first += len(run)
        self.starts = np.concatenate(starts) if starts else np.empty(0, dtype=np.int64)
        # [rows - window + 1, features, window], no copy; indexing it copies just the batch
        self._view = (sliding_window_view(self.rows, window, axis=0) if len(self.rows) >= window
                      else np.empty((0, n_features, window), dtype=self.rows.dtype))

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, indices: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Windows `indices` (positions among this set's windows) as the model sees them `[B, W, F]`."""
        picked = self._view[self.starts[np.asarray(indices, dtype=np.int64)]].transpose(0, 2, 1)
        return torch.from_numpy(np.ascontiguousarray(self.preprocess.apply(picked, self.features)))
