"""Train an autoencoder on normal history and turn it into a calibrated bundle.

The visible steps (alibi-detect style): split -> fit scaler -> train with early stopping ->
score validation windows with the *serving* Scorer -> calibrate threshold -> write bundle.
Calibrating through `Scorer` (not a training-only loss) is what keeps the threshold honest:
the number compared against it live is computed by exactly the same code.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from daemon import __version__
from daemon.bundle import WEIGHTS_FILE, Bundle, ScoreSpec
from daemon.errors import DataError, UserError
from daemon.evaluation import segments
from daemon.frames import Frame
from daemon.models import AutoEncoder, build_model, default_params
from daemon.runtime import torch_backend
from daemon.scaling import Scaler
from daemon.scoring import FrameScores, Scorer
from daemon.thresholds import Threshold, calibrate
from daemon.windowing import windows

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    arch: str = "lstm"
    window: int = 60
    stride: int = 1
    scaler: str = "zscore"
    score_error: str = "mse"
    epochs: int = 50
    batch_size: int = 64
    learning_rate: float = 1e-3
    patience: int = 5
    validation_fraction: float = 0.2
    threshold: str = "quantile:0.99"
    threshold_scale: float = 1.0
    seed: int = 0
    threads: int = 1
    arch_params: dict = field(default_factory=dict)
    name: str = ""


@dataclass
class Split:
    """Runs of normal rows for training and validation (validation = tail of each run)."""

    train: list[Frame]
    validation: list[Frame]


@dataclass
class TrainResult:
    bundle: Bundle
    model: AutoEncoder
    history: list[tuple[float, float]]  # (train loss, validation loss) per epoch
    validation_scores: np.ndarray


def normal_runs(frame: Frame, min_rows: int) -> list[Frame]:
    """Contiguous stretches of label-0 rows, each long enough for one window.

    Cutting at labelled anomalies (instead of deleting rows) keeps every window a real
    stretch of time: a window glued across a removed fault would teach the model a jump."""
    if frame.labels is None:
        return [frame] if len(frame) >= min_rows else []
    normal = (frame.labels == 0).astype(np.int8)
    return [frame.select((np.arange(len(frame)) >= s) & (np.arange(len(frame)) < e))
            for s, e in segments(normal) if e - s >= min_rows]


def split_runs(frames: list[Frame], window: int, validation_fraction: float) -> Split:
    train, validation = [], []
    for frame in frames:
        for run in normal_runs(frame, window):
            cut = int(round(len(run) * (1.0 - validation_fraction)))
            if len(run) - cut >= window and cut >= window:
                train.append(run.head(cut))
                validation.append(run.tail_from(cut))
            else:
                train.append(run)
    if not train:
        raise DataError(f"no run of normal rows is at least one window ({window} rows) long "
                        f"(files: {', '.join(f.source for f in frames)})")
    return Split(train, validation)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def _window_tensor(frames: list[Frame], scaler: Scaler, window: int) -> torch.Tensor:
    parts = [windows(scaler.transform(f.values), window, 1) for f in frames]
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts)))


def _epoch_loss(model: AutoEncoder, data: torch.Tensor, batch_size: int,
                optimiser: torch.optim.Optimizer | None, order: torch.Tensor | None) -> float:
    total, count = 0.0, 0
    indices = order if order is not None else torch.arange(len(data))
    for start in range(0, len(data), batch_size):
        batch = data[indices[start:start + batch_size]]
        z = model.encode(batch)
        recon = model.decode(z)
        loss = torch.mean((recon - batch) ** 2)
        if optimiser is not None:
            optimiser.zero_grad()
            (loss + model.penalty(z)).backward()
            optimiser.step()
        total += loss.item() * len(batch)
        count += len(batch)
    return total / max(count, 1)


def fit_model(model: AutoEncoder, train: torch.Tensor, validation: torch.Tensor, config: TrainConfig,
              progress: Callable[[int, float, float], None]) -> list[tuple[float, float]]:
    """Adam + early stopping on validation loss; the best epoch's weights are kept."""
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    monitor = validation if len(validation) else train
    best, best_state, since_best, history = math.inf, copy.deepcopy(model.state_dict()), 0, []
    for epoch in range(config.epochs):
        model.train()
        train_loss = _epoch_loss(model, train, config.batch_size, optimiser,
                                 torch.randperm(len(train), generator=generator))
        model.eval()
        with torch.no_grad():
            val_loss = _epoch_loss(model, monitor, 1024, None, None)
        history.append((train_loss, val_loss))
        progress(epoch + 1, train_loss, val_loss)
        if val_loss < best - 1e-9:
            best, best_state, since_best = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            since_best += 1
            if since_best >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return history


def score_frames(scorer: Scorer, frames: list[Frame], stride: int = 1) -> list[FrameScores]:
    return [scorer.score_frame(f, stride) for f in frames if len(f) >= scorer.window]


def train(frames: list[Frame], config: TrainConfig, validation_data: list[Frame] | None = None,
          progress: Callable[[int, float, float], None] | None = None) -> TrainResult:
    """Everything but writing files: returns the bundle (unsaved) and the trained model."""
    started = time.time()
    features = frames[0].features
    seed_everything(config.seed)
    torch.set_num_threads(config.threads)
    split = split_runs(frames, config.window, config.validation_fraction)
    scaler = Scaler.fit(config.scaler, np.concatenate([f.values for f in split.train]))
    try:
        model = build_model(config.arch, config.window, len(features), config.arch_params)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    train_windows = _window_tensor(split.train, scaler, config.window)
    val_windows = (_window_tensor(split.validation, scaler, config.window) if split.validation
                   else train_windows[:0])
    history = fit_model(model, train_windows, val_windows, config, progress or (lambda *_: None))

    bundle = Bundle(
        name=config.name or f"{config.arch}-w{config.window}",
        arch=config.arch, arch_params={**default_params(config.arch), **config.arch_params},
        features=list(features), window=config.window, stride=config.stride,
        scaler=scaler, score=ScoreSpec(config.score_error),
        threshold=Threshold(math.inf, "pending", {}),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    scorer = Scorer(bundle, torch_backend(model, config.threads))
    calibration = split.validation or split.train
    calib_scores = np.concatenate([s.scores for s in score_frames(scorer, calibration)])
    bundle.threshold = _calibrate(scorer, config, calib_scores, validation_data)
    bundle.training = {
        "data": sorted({f.source for f in frames}),
        "rows_train": int(sum(len(f) for f in split.train)),
        "rows_validation": int(sum(len(f) for f in split.validation)),
        "windows_train": int(len(train_windows)),
        "windows_validation": int(len(val_windows)),
        "calibrated_on": "validation" if split.validation else "train (no validation tail long enough)",
        "epochs_run": len(history),
        "best_epoch": int(np.argmin([v for _, v in history])) + 1,
        "loss_train": [round(t, 6) for t, _ in history],
        "loss_validation": [round(v, 6) for _, v in history],
        "validation_score_mean": float(calib_scores.mean()),
        "validation_score_std": float(calib_scores.std()),
        "config": {k: v for k, v in vars(config).items() if k not in ("arch_params", "name")},
        "seconds": round(time.time() - started, 2),
        "anomalyd_version": __version__,
        "torch_version": torch.__version__,
    }
    return TrainResult(bundle, model, history, calib_scores)


def _calibrate(scorer: Scorer, config: TrainConfig, scores: np.ndarray,
               validation_data: list[Frame] | None) -> Threshold:
    labels = None
    if config.threshold.split(":")[0] == "f1":
        if not validation_data or any(f.labels is None for f in validation_data):
            raise UserError("threshold method 'f1' needs --validation-data with a label column")
        results = score_frames(scorer, validation_data)
        scores = np.concatenate([r.scores for r in results])
        labels = np.concatenate([f.labels[r.ends] for f, r in zip(validation_data, results)])
    try:
        return calibrate(config.threshold, scores, labels, config.threshold_scale)
    except ValueError as exc:
        raise UserError(f"--threshold {config.threshold}: {exc}") from None


def save(result: TrainResult, directory: Path) -> Bundle:
    """Weights first, bundle.json last (see Bundle.write_json)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    result.bundle.write_json(directory)
    return result.bundle
