"""Pictures people would rather look at than numbers: training curves, score histograms,
score-vs-threshold timelines. Agg backend: works headless on an edge box and in CI."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from daemon.offline.evaluation import segments  # noqa: E402


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _dates(timestamps: np.ndarray) -> list[datetime]:
    return [datetime.fromtimestamp(t, tz=timezone.utc) for t in timestamps]


def training_loss(history: list[tuple[float, float]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = np.arange(1, len(history) + 1)
    ax.plot(epochs, [t for t, _ in history], label="train")
    ax.plot(epochs, [v for _, v in history], label="validation")
    best = int(np.argmin([v for _, v in history]))
    ax.axvline(best + 1, color="grey", linestyle=":", label=f"best epoch {best + 1}")
    ax.set(xlabel="epoch", ylabel="reconstruction MSE (scaled units)", yscale="log", title="Training loss")
    ax.legend()
    _save(fig, path)


def score_histogram(scores: np.ndarray, threshold: float, method: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(scores, bins=80, color="tab:blue", alpha=0.8)
    ax.axvline(threshold, color="tab:red", label=f"threshold {threshold:.4g} ({method})")
    ax.set(xlabel="window score", ylabel="validation windows", yscale="log",
           title=f"Validation scores ({len(scores)} windows, {(scores > threshold).mean():.2%} above)")
    ax.legend()
    _save(fig, path)


def score_timeline(timestamps: np.ndarray, scores: np.ndarray, threshold: float, path: Path, *,
                   flags: np.ndarray | None = None, labels: np.ndarray | None = None,
                   sensors: np.ndarray | None = None, sensor_names: list[str] | None = None,
                   title: str = "Anomaly score") -> None:
    """Score with the threshold line, labelled segments shaded, flagged points marked; raw
    sensors (each min-max normalised so they share one axis) below when given."""
    rows = 2 if sensors is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(11, 3.2 * rows + 0.5), sharex=True, squeeze=False)
    ax = axes[0, 0]
    when = _dates(timestamps)
    ax.plot(when, scores, lw=0.8, color="tab:blue", label="score")
    ax.axhline(threshold, color="tab:red", lw=1, label=f"threshold {threshold:.4g}")
    if flags is not None and flags.any():
        hit = flags.astype(bool)
        ax.scatter(np.array(when, dtype=object)[hit], scores[hit], s=6, color="tab:red", zorder=3, label="flagged")
    for axis in axes[:, 0]:
        for start, end in segments(labels) if labels is not None else []:
            axis.axvspan(when[start], when[end - 1], color="orange", alpha=0.2, lw=0)
    ax.set(ylabel="score", yscale="log", title=title)
    ax.legend(loc="upper left", fontsize=8)
    if sensors is not None:
        span = np.ptp(sensors, axis=0)
        normed = (sensors - sensors.min(axis=0)) / np.where(span > 0, span, 1)
        for i in range(normed.shape[1]):
            axes[1, 0].plot(when, normed[:, i] + i, lw=0.6, label=sensor_names[i] if sensor_names else str(i))
        axes[1, 0].set(ylabel="sensors (normalised, offset)", yticks=[])
        axes[1, 0].legend(loc="upper left", fontsize=7, ncol=4)
    _save(fig, path)
