"""Cross-fitted window scores: scores of held-out windows over the whole normal history, not
only over its validation tail.

The false-alarm budget must be set on scores of windows the model was not fitted on (a fitted
window's error is optimistic). The validation tail is such a sample, but from a few hundred
training rows it is minutes or hours long and shows too few alert episodes to fit a tail to.
Cross-fitting makes every normal row a held-out row once: each normal run is cut into blocks of
at least `MIN_BLOCK_WINDOWS` windows, dealt to `FOLDS` folds in turn (so every fold spans the
run, not one end of it), and for each fold a model like the bundle's is trained on the other
folds' blocks and scores its own blocks through the bundle's scorer (scaling, health checks,
score reduction: the one scoring path). A block loses a window's rows of training data at each
edge, so no training window shares a row with a held-out one.

A fold model is fitted on a quarter less data than the bundle's, so its held-out errors run, if
anything, higher than the bundle's will on fresh data: a threshold on them errs towards fewer
pages. Where the history is short of a regime (one daily cycle, a setpoint seen once) they run
much higher, which is why `train` prefers the validation tail when it shows enough episodes and
cross-fits only when it does not (docs/quality.md, "Cross-fitted scores").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from daemon.core.runtime import Backend
from daemon.core.scoring import Scorer
from daemon.offline.evaluation import segments
from daemon.offline.frame_scoring import score_frames
from daemon.offline.frames import Frame

FOLDS = 4
MIN_BLOCK_WINDOWS = 10

log = logging.getLogger(__name__)


@dataclass
class Fold:
    """A model fitted without `held_out`, the blocks it scores."""

    backend: Backend
    held_out: list[Frame]


def deal_blocks(run: Frame, window: int, folds: int = FOLDS) -> list[tuple[list[Frame], list[Frame]]]:
    """For each fold, (the run's rows it is fitted on, its held-out blocks). The run is cut into
    a multiple of `folds` blocks of at least `MIN_BLOCK_WINDOWS` windows where it is long enough
    (else `folds` shorter blocks), dealt to the folds in turn; the fitted rows are the run minus
    the fold's blocks and `window` rows either side of each, in the contiguous pieces left at
    least one window long."""
    n = len(run)
    rounds = max(1, n // (folds * MIN_BLOCK_WINDOWS * window))
    cuts = [n * i // (folds * rounds) for i in range(folds * rounds + 1)]
    index = np.arange(n)
    out = []
    for fold in range(folds):
        held, fitted = [], np.ones(n, dtype=np.int8)
        for block in range(fold, folds * rounds, folds):
            start, end = cuts[block], cuts[block + 1]
            held.append(run.select((index >= start) & (index < end)))
            fitted[max(0, start - window):end + window] = 0
        pieces = [run.select((index >= s) & (index < e)) for s, e in segments(fitted) if e - s >= window]
        out.append((pieces, [b for b in held if len(b) >= window]))
    return out


def fit_folds(runs: list[Frame], window: int, fit: Callable[[list[Frame], int], Backend],
              folds: int = FOLDS) -> list[Fold]:
    """One model per fold, `fit(rows, fold)` fitting it on the rows the fold keeps; folds that keep
    or hold out no window are skipped."""
    started = time.time()
    dealt = [deal_blocks(run, window, folds) for run in runs]
    out = []
    for fold in range(folds):
        fitted = [piece for run in dealt for piece in run[fold][0]]
        held_out = [block for run in dealt for block in run[fold][1]]
        if fitted and held_out:
            out.append(Fold(fit(fitted, fold), held_out))
    log.info("cross-fitted %d fold models in %.1f s", len(out), time.time() - started)
    return out


def cross_fitted_scores(folds: list[Fold], scorer: Scorer, stride: int) -> list[np.ndarray]:
    """Every held-out block's window scores at `stride`, each block scored by its fold's model
    through `scorer`'s bundle (one array per block, as separate runs: a block's alert state
    starts afresh, as a device's does when the service starts)."""
    out = []
    for fold in folds:
        fold_scorer = Scorer(scorer.bundle, fold.backend)
        out += [s.scores for s in score_frames(fold_scorer, fold.held_out, stride)]
    return out
