"""The suite's figures as Markdown tables, ready to paste into docs."""

from __future__ import annotations

import math

import numpy as np

from quality_package import duration_text
from quality_metrics import DETECTORS, OURS, PCA, PCA_AT_OUR_FAR, PLAIN, Figures, by_name

DETECTOR_LABELS = {
    OURS: "anomalyd defaults",
    PLAIN: "anomalyd model, plain p99.9 threshold",
    PCA: "PCA T²+SPE, 99 % limits from training",
    PCA_AT_OUR_FAR: "PCA T²+SPE at anomalyd's FAR ¹",
}

# Per-fault tables have a column per detector, so their heads use these shorter names.
SHORT_LABELS = {
    OURS: "anomalyd defaults",
    PLAIN: "plain p99.9",
    PCA: "PCA, training limits",
    PCA_AT_OUR_FAR: "PCA at anomalyd's FAR ¹",
}

FOOTNOTES = (
    "anomalyd defaults: `anomalyd train` with no option but the data, scored as `anomalyd evaluate` "
    "scores (bundle threshold, alert hysteresis). Plain p99.9: the same model, threshold = 99.9th "
    "percentile of every normal training window's score, no hysteresis. "
    "PCA: z-scored training rows, components up to 90 % of the variance, alarm when T² > "
    "F-distribution limit or SPE > Box χ² limit at α = 1 %, per row, no hysteresis.",
    "¹ PCA's combined statistic max(T²/limit, SPE/limit) re-thresholded so that it flags the same "
    "share of the normal test rows as anomalyd defaults: the threshold is set on test rows, so this "
    "row is a comparison at equal FAR, not a detector anyone could deploy.",
)


def number(value: float, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def duration(seconds: float) -> str:
    return "–" if seconds is None or math.isnan(seconds) else duration_text(seconds)


def main_table(results: dict[str, dict[str, Figures]], detectable_counts: dict[str, int]) -> str:
    lines = ["| data set | detector | F1 | FAR % | MAR % | event recall | false alarms / day (count) | "
             "budget / day | normal days | median delay | mean FDR |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for dataset, by_detector in results.items():
        for key in DETECTORS:
            f = by_detector[key]
            fdr = (f"{number(f.mean_fdr)} ({detectable_counts[dataset]} faults)"
                   if detectable_counts.get(dataset) else "")
            lines.append(f"| {dataset} | {DETECTOR_LABELS[key]} | {number(f.f1)} | {number(f.far, 2)} | "
                         f"{number(f.mar, 2)} | {number(f.event_recall, 2)} | "
                         f"{number(f.false_alarms_per_day, 2)} ({f.false_alarms}) | {number(f.budget_per_day, 2)} | "
                         f"{number(f.normal_days, 2)} | {duration(f.median_delay_seconds)} | {fdr} |")
    return "\n".join(lines)


def event_table(dataset: str, by_detector: dict[str, Figures], what: str) -> str:
    """One row per event name: each detector's FDR and delay (FAR of each detector in the head).
    A name on several runs (a fault kind on every device) is pooled (`by_name`): FDR over all
    its rows, the median delay of the caught events, and caught / events."""
    head = " | ".join(f"{SHORT_LABELS[k]} (FAR {number(by_detector[k].far, 2)} %)" for k in DETECTORS)
    lines = [f"| {dataset} {what} | {head} |", "|---" * (len(DETECTORS) + 1) + "|"]
    pooled = {key: by_name(by_detector[key].by_event) for key in DETECTORS}
    for index, name in enumerate(e.name for e in pooled[OURS]):
        cells = []
        for key in DETECTORS:
            event = pooled[key][index]
            caught = f", {event.caught}/{event.events}" if event.events > 1 else ""
            cells.append(f"{number(event.fdr)} ({duration(event.delay_seconds)}{caught})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def names_table(dataset: str, figures: Figures, shown: int = 3) -> str:
    """One row per event name: what anomalyd's rows in alert during it name, most first, as
    shares of those rows: a health reason (`<check>:<sensor>`) or `model:<sensor>`."""
    lines = [f"| {dataset} fault | rows in alert | what they name (share of those rows) |", "|---|---|---|"]
    for name, counts in figures.alarm_names.items():
        total = sum(counts.values())
        top = ", ".join(f"`{what}` {count / total:.0%}" for what, count in list(counts.items())[:shown])
        lines.append(f"| {name} | {total} | {top or '–'} |")
    return "\n".join(lines)


SPREAD_COLUMNS = (("F1", lambda f: f.f1, 3), ("FAR %", lambda f: f.far, 2),
                  ("false alarms / day", lambda f: f.false_alarms_per_day, 2), ("event recall", lambda f: f.event_recall, 2),
                  ("mean FDR", lambda f: f.mean_fdr, 3))


def seed_spread_table(by_seed: list[tuple[int, dict[str, dict[str, Figures]]]]) -> str:
    """Per data set, anomalyd's figures over training seeds: mean (min–max). The data and
    every setting stay the same; only the model's initial weights and batch order change."""
    head = " | ".join(name for name, _, _ in SPREAD_COLUMNS)
    lines = [f"| data set | seeds | {head} |", "|---" * (len(SPREAD_COLUMNS) + 2) + "|"]
    for dataset in by_seed[0][1]:
        runs = [results[dataset][OURS] for _, results in by_seed]
        cells = []
        for _, value, digits in SPREAD_COLUMNS:
            values = np.array([value(f) for f in runs], dtype=float)
            cells.append("" if np.isnan(values).all() else
                         f"{number(float(values.mean()), digits)} ({number(float(values.min()), digits)}–"
                         f"{number(float(values.max()), digits)})")
        lines.append(f"| {dataset} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def poisson_odds(count: int, budgeted: float, given: str = "budget") -> str:
    """How surprising `count` episodes are if the budget (or another expectation) held: a
    Poisson count with mean `budgeted`. On data sets with minutes of normal rows one episode is
    x30 the budget, and only this says whether that means anything."""
    from scipy.stats import poisson

    if count >= budgeted:
        return f"P(≥{count} | {given}) = {poisson.sf(count - 1, budgeted):.2g}"
    return f"P(≤{count} | {given}) = {poisson.cdf(count, budgeted):.2g}"


def budget_lines(results: dict[str, dict[str, Figures]]) -> str:
    """How each data set's models met the budget, and the realised rate against it."""
    lines = []
    for dataset, by_detector in results.items():
        f = by_detector[OURS]
        if not f.budget_rules:
            continue
        rules = ", ".join(f"{n} {rule}" for rule, n in sorted(f.budget_rules.items()))
        ratio = f.false_alarms_per_day / f.budget_per_day
        budgeted = f.budget_per_day * f.normal_days
        lines.append(f"- {dataset}: realised {number(f.false_alarms_per_day, 2)} / day = ×{ratio:.2f} the budget "
                     f"({f.false_alarms} episodes where {budgeted:.2f} were budgeted; "
                     f"{poisson_odds(f.false_alarms, budgeted)}); threshold by {rules}")
    return "\n".join(lines)


def expected_lines(results: dict[str, dict[str, Figures]]) -> str:
    """What `train` told the operator to expect (alert episodes per device-day at its threshold,
    from the validation tail), and what that tail vouched for by itself, against what the
    test's normal rows realised."""
    lines = []
    for dataset, by_detector in results.items():
        f = by_detector[OURS]
        realised = f"realised {number(f.false_alarms_per_day, 2)} / day"
        counted = f"{f.false_alarms} episodes in {f.normal_days:.2f} normal days"
        vouched = ("" if math.isnan(f.vouched_per_day) else
                   f"; the held-out spans vouched for at most {f.vouched_per_day:.3g} / day: realised "
                   + ("within" if f.false_alarms_per_day <= f.vouched_per_day else "above"))
        if not math.isnan(f.expected_per_day):
            ratio = f.false_alarms_per_day / f.expected_per_day if f.expected_per_day > 0 else math.inf
            odds = poisson_odds(f.false_alarms, f.expected_per_day * f.normal_days, "expected")
            lines.append(f"- {dataset}: expected {f.expected_per_day:.3g} / day ({f.expected_models} models), "
                         f"{realised} = ×{ratio:.2g} ({counted}; {odds}){vouched}")
        elif vouched:
            lines.append(f"- {dataset}: no expected rate (held-out spans too short to fit a tail), "
                         f"{realised} ({counted}){vouched}")
    return "\n".join(lines)


def render(results: dict[str, dict[str, Figures]], detectable_counts: dict[str, int]) -> str:
    parts = [main_table(results, detectable_counts), "", FOOTNOTES[0], "", FOOTNOTES[1]]
    budgets = budget_lines(results)
    if budgets:
        parts += ["", "False-alarm budget (anomalyd defaults):", "", budgets]
    expected = expected_lines(results)
    if expected:
        parts += ["", "Alert episodes per device-day that train expected at its thresholds, and realised "
                      "(anomalyd defaults):", "", expected]
    for dataset, by_detector in results.items():
        if by_detector[OURS].by_event:
            parts += ["", "Share of each fault's rows flagged (FDR) and delay to the first alarm:", "",
                      event_table(dataset, by_detector, "fault")]
        if by_detector[OURS].alarm_names and len(by_detector[OURS].alarm_names) > 1:
            parts += ["", "What anomalyd's alarms name during each fault (a sensor-health reason, or the "
                          "sensor that weighs most in the model's score):", "",
                      names_table(dataset, by_detector[OURS])]
    return "\n".join(parts)
