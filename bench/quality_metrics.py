"""Pool the test runs of one data set into the suite's figures, for each detector.

Point and event counts come from the package's own `report` (SKAB's definitions, summed over
runs). The suite adds what `report` does not give: the detection delay of each caught event,
the share of each named event's rows that was flagged (TEP's fault detection rate, FDR) and
the PCA baseline re-thresholded to the FAR our model reached.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from quality_package import event_outcomes, pooled_report
from quality_run import CaseOutcome, RunOutcome

OURS, PLAIN, PCA, PCA_AT_OUR_FAR = "anomalyd", "plain", "pca", "pca_at_our_far"
DETECTORS = (OURS, PLAIN, PCA, PCA_AT_OUR_FAR)


@dataclass
class EventFigures:
    name: str
    fdr: float  # share of the event's rows flagged
    delay_seconds: float  # from the event's first row to its first flagged row; nan if missed
    rows: int = 1  # the event's rows
    events: int = 1  # events pooled into these figures (by_name)
    caught: int = 1  # ... of which had at least one flagged row


def by_name(events: list[EventFigures]) -> list[EventFigures]:
    """Events of the same name (a fault kind on several devices) pooled, in first-seen order:
    FDR over all their rows, the median delay of the caught ones, and how many were caught."""
    groups: dict[str, list[EventFigures]] = {}
    for event in events:
        groups.setdefault(event.name, []).append(event)
    pooled = []
    for name, group in groups.items():
        rows = sum(e.rows for e in group)
        delays = [e.delay_seconds for e in group if not math.isnan(e.delay_seconds)]
        pooled.append(EventFigures(name, sum(e.fdr * e.rows for e in group) / rows,
                                   float(np.median(delays)) if delays else math.nan, rows, len(group), len(delays)))
    return pooled


@dataclass
class Figures:
    detector: str
    f1: float
    far: float  # % of normal rows flagged
    mar: float  # % of anomalous rows missed
    precision: float
    recall: float
    event_recall: float
    false_alarms_per_day: float  # alarm runs on normal rows per day of normal rows
    false_alarms: int  # those alarm runs, counted
    normal_days: float  # the days of normal rows they are counted over
    median_delay_seconds: float  # over the caught events; nan if none was caught
    rows: int
    events: int
    pca_threshold: float | None = None  # PCA only: the combined-statistic threshold used
    by_event: list[EventFigures] = field(default_factory=list)
    mean_fdr: float = math.nan  # over the data set's detectable named events
    budget_per_day: float = math.nan  # anomalyd only: the false-alarm budget its threshold was set to
    budget_rules: dict[str, int] = field(default_factory=dict)  # "rule on held-out" -> models
    # anomalyd only: what train expected at its thresholds, per device-day, over the models that
    # said (each weighted by its test runs' normal rows); nan when none did
    expected_per_day: float = math.nan
    expected_models: int = 0
    vouched_per_day: float = math.nan  # the same for what train's held-out spans vouched for by themselves
    # anomalyd only: per named event, what its rows in alert name (TrainedModel.alerts), counted
    alarm_names: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in vars(self).items() if k != "by_event"} | {
            "by_event": [{"name": e.name, "fdr": e.fdr,
                          "delay_seconds": None if math.isnan(e.delay_seconds) else e.delay_seconds}
                         for e in self.by_event]}


def events_of(predicted: np.ndarray, run: RunOutcome) -> list[EventFigures]:
    """FDR and delay of every labelled event of one run (named by the run's event names)."""
    out = []
    for index, event in enumerate(event_outcomes(run.source, predicted, run.labels, run.timestamps)):
        name = run.event_names[index] if index < len(run.event_names) else f"{run.source}#{index + 1}"
        delay = math.nan if event.delay_seconds is None else event.delay_seconds
        caught = int(event.delay_seconds is not None)
        out.append(EventFigures(name, event.share_in_alert, delay, event.rows, 1, caught))
    return out


def alarm_names(runs: list[RunOutcome]) -> dict[str, dict[str, int]]:
    """Per named event (pooled over runs), how many of its rows in alert name each thing."""
    counts: dict[str, Counter] = {}
    for run in runs:
        events = event_outcomes(run.source, run.ours, run.labels, run.timestamps, run.named)
        for name, event in zip(run.event_names, events):
            counts.setdefault(name, Counter()).update(event.named)
    return {name: dict(c.most_common()) for name, c in counts.items()}


def figures(detector: str, runs: list[RunOutcome], predictions: list[np.ndarray],
            detectable: tuple[str, ...] = (), pca_threshold: float | None = None) -> Figures:
    pooled = pooled_report([(p, r.labels, r.timestamps) for p, r in zip(predictions, runs)])
    c, e = pooled.confusion, pooled.events
    every_event = [ev for p, r in zip(predictions, runs) for ev in events_of(p, r)]
    delays = [ev.delay_seconds for ev in every_event if not math.isnan(ev.delay_seconds)]
    names = {n for r in runs for n in r.event_names}
    named = [ev for ev in every_event if ev.name in names]
    fdr = {ev.name: ev.fdr for ev in by_name(named)}
    mean_fdr = float(np.mean([fdr[n] for n in detectable])) if detectable else math.nan
    return Figures(detector, c.f1, c.far, c.mar, c.precision, c.recall, e.event_recall,
                   e.false_alarms_per_hour * 24.0, e.false_alarm_events, e.normal_hours / 24.0,
                   float(np.median(delays)) if delays else math.nan,
                   pooled.points, e.events, pca_threshold, named, mean_fdr)


def threshold_at_far(statistic: np.ndarray, far_percent: float) -> float:
    """The threshold under which all but round(FAR x n) of these normal rows' statistics lie
    (rows alarm when strictly above it), so the flagged share of them matches `far_percent`."""
    ranked = np.sort(statistic)[::-1]
    above = int(round(far_percent / 100.0 * len(ranked)))
    if above >= len(ranked):
        return -math.inf
    return float(ranked[above])


def summarise(outcomes: list[CaseOutcome], detectable: tuple[str, ...] = ()) -> dict[str, Figures]:
    """Every detector's figures on one data set (all its cases' runs pooled)."""
    runs = [run for outcome in outcomes for run in outcome.runs]
    ours = figures(OURS, runs, [r.ours for r in runs], detectable)
    ours.alarm_names = alarm_names(runs)
    budgets = [o.budget for o in outcomes if o.budget is not None]
    if budgets:
        ours.budget_per_day = budgets[0].per_day
        for b in budgets:
            key = f"{b.rule} on {b.held_out}"
            ours.budget_rules[key] = ours.budget_rules.get(key, 0) + 1
    for o in outcomes:
        if o.refused:  # no model, so none of its rows is counted for any detector
            key = f"refused by train: {o.refused.split(' (')[0]}"
            ours.budget_rules[key] = ours.budget_rules.get(key, 0) + 1
    ours.expected_per_day, ours.expected_models = _weighted([o.expected_per_day for o in outcomes], outcomes)
    ours.vouched_per_day, _ = _weighted([o.vouched_per_day for o in outcomes], outcomes)
    normal_statistic = np.concatenate([r.pca[r.labels == 0] for r in runs])
    moved = threshold_at_far(normal_statistic, ours.far)
    return {
        OURS: ours,
        PLAIN: figures(PLAIN, runs, [r.plain for r in runs], detectable),
        PCA: figures(PCA, runs, [(r.pca > 1.0).astype(np.int8) for r in runs], detectable, 1.0),
        PCA_AT_OUR_FAR: figures(PCA_AT_OUR_FAR, runs, [(r.pca > moved).astype(np.int8) for r in runs],
                                detectable, moved),
    }


def _weighted(values: list[float], outcomes: list[CaseOutcome]) -> tuple[float, int]:
    """The mean of the models' `values` that are known, each weighted by its test runs' normal
    rows, and how many models said (nan, 0: none did)."""
    said = [(v, sum(int((r.labels == 0).sum()) for r in o.runs)) for v, o in zip(values, outcomes)
            if not math.isnan(v)]
    total = sum(w for _, w in said)
    return (sum(v * w for v, w in said) / total, len(said)) if total else (math.nan, 0)
