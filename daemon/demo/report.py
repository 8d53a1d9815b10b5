"""The demo's per-device summary table and score-vs-threshold picture."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from daemon.core.bundle import ScoreSpec  # noqa: E402
from daemon.core.scoring import alarm_names  # noqa: E402
from daemon.offline.evaluation import segments  # noqa: E402
from daemon.live.events import ScoreEvent  # noqa: E402
from daemon.offline.synthetic import Synthetic  # noqa: E402


@dataclass
class DeviceRun:
    device: str
    data: Synthetic
    events: list[ScoreEvent]

    @property
    def alert_windows(self) -> int:
        return sum(e.alert for e in self.events)

    def _alert_times(self) -> np.ndarray:
        return np.array([e.ts for e in self.events if e.alert])

    @property
    def faults_detected(self) -> int:
        """Labelled faults with an alert raised while the fault lasted."""
        alerts, ts = self._alert_times(), self.data.timestamps
        return sum(bool(((alerts >= ts[s]) & (alerts <= ts[e - 1])).any()) for s, e in segments(self.data.labels))

    def alarms_named(self, score: ScoreSpec) -> str:
        """What this device's windows in alert name most often, at most two names
        (`scoring.alarm_names`, as `evaluate` names a fault's alarms), each with its share of
        them: what an operator checks first."""
        alerted = [e for e in self.events if e.alert]
        if not alerted:
            return "-"
        features = list(alerted[0].feature_errors)
        errors = np.array([[e.feature_errors[f] for f in features] for e in alerted], dtype=np.float32)
        named = Counter(alarm_names([e.reason for e in alerted], errors, score, features))
        return ", ".join(f"{name} {count / len(alerted):.0%}" for name, count in named.most_common(2))


def summary_table(runs: list[DeviceRun], model: str, score: ScoreSpec) -> str:
    header = f"{'device':10s} {'windows':>8s} {'anomalous':>10s} {'in alert':>9s} {'faults':>7s} " \
             f"{'detected':>9s} {'max score':>10s} {'threshold':>10s}  alarms named (share of alert)"
    lines = [f"model {model}", header, "-" * len(header)]
    for r in runs:
        scores = [e.score for e in r.events]
        lines.append(
            f"{r.device:10s} {len(r.events):8d} {sum(e.anomaly for e in r.events):10d} {r.alert_windows:9d} "
            f"{len(segments(r.data.labels)):7d} {r.faults_detected:9d} "
            f"{max(scores, default=float('nan')):10.4g} {r.events[0].threshold if r.events else float('nan'):10.4g}"
            f"  {r.alarms_named(score)}")
    return "\n".join(lines)


def plot_devices(runs: list[DeviceRun], path: Path) -> Path:
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 2.3 * len(runs) + 0.6), sharex=True, squeeze=False)
    for ax, r in zip(axes[:, 0], runs):
        when = [datetime.fromtimestamp(e.ts, tz=timezone.utc) for e in r.events]
        ax.plot(when, [e.score for e in r.events], lw=0.8, label="score")
        if r.events:
            ax.axhline(r.events[0].threshold, color="tab:red", lw=1, label="threshold")
        ts = r.data.timestamps
        for s, e in segments(r.data.labels):
            ax.axvspan(datetime.fromtimestamp(ts[s], tz=timezone.utc), datetime.fromtimestamp(ts[e - 1], tz=timezone.utc),
                       color="orange", alpha=0.25, lw=0, label="injected fault")
        alert = np.array([e.alert for e in r.events], dtype=bool)
        if alert.any():
            ax.fill_between(when, 0, 1, where=alert, transform=ax.get_xaxis_transform(), color="tab:red", alpha=0.12,
                            lw=0, label="alert")
        ax.set(yscale="log", ylabel=r.device)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), loc="upper left", fontsize=7, ncol=4)
    axes[0, 0].set_title("anomalyd demo: score vs threshold per device (shaded: injected faults, alerts)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
