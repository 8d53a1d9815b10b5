"""The false-alarm budget: the threshold at which a device raises `per_day` alert episodes per
day of normal operation, set on held-out normal windows.

An operator cannot say which 99.9th percentile they want, but they can say how often they are
willing to be paged. An *episode* is what pages them: one entry into alert after the bundle's
hysteresis (`daemon.core.postprocess`), however long it lasts. So the threshold is set on
episodes, counted by running that very state machine over held-out scores, not on window
exceedances (a 3-in / 5-out hysteresis turns a burst of 40 exceeding windows into one page).

Two rules, chosen by how many episodes the budget allows in the held-out span
(`per_day` x `days`):
- at least `COUNTED_MIN_EPISODES`: **counted**. Going down from the top score, the lowest
  threshold before the hysteresis over the held-out scores first gives more episodes than the
  budget allows.
- fewer (the budget is rarer than the held-out span can show; the usual case, as a validation
  tail spans hours and a budget is per day): **pot**, peaks over threshold on episodes. At a
  level u (the highest of `LEVEL_QUANTILES` of the scores that gives at least `POT_MIN_PEAKS`
  episodes) each episode's peak is the highest threshold at which it is still raised (read off
  the episode count, see `episode_peaks`). Episode peaks are nearly independent where window
  scores are not, which is what the generalised Pareto fit over the excesses (peak - u)
  assumes. With n episodes over u in `days`, the episode rate over t > u is
  n / days x P(excess > t - u); the threshold solves that for `per_day`. With
  `EXPONENTIAL_MIN_PEAKS` to `POT_MIN_PEAKS` - 1 peaks, or where the fitted shape is negative
  (see `MAX_SHAPE`), the shape is 0 (exponential tail, one parameter: the mean excess),
  **pot-exponential**.

The threshold uses the same convention as every other: a window is anomalous when its score is
strictly above it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np

from daemon.core.bundle import Bundle
from daemon.core.postprocess import AlertSpec, alert_flags
from daemon.core.thresholds import FalseAlarmBudget, describe_rule, describe_span, describe_vouched

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400.0
COUNTED_MIN_EPISODES = 10.0
POT_MIN_PEAKS = 10
EXPONENTIAL_MIN_PEAKS = 3
# One-sided confidence of the rate the held-out span vouches for by itself (the textbook 95 %).
VOUCHED_CONFIDENCE = 0.95
# The levels a tail is fitted above: the upper tenth of the held-out scores at most (DuMouchel's
# rule of thumb for peaks over threshold). Below it the peaks are the body of the distribution,
# and an exponential over a few of them, from a tail of hours, puts the threshold among the
# normal scores: better to fall back to a longer held-out sample (cross-fitted) than to fit it.
LEVEL_QUANTILES = (0.99, 0.98, 0.95, 0.9)
MAX_LEVELS = 400
# The fitted shape is kept in [0, MAX_SHAPE]. Below 0 the generalised Pareto has an upper end
# just past the largest peak seen: from a dozen peaks of a few hours that end is the sample's,
# not the process's (a reconstruction error has none: a fault can push it anywhere), and a
# threshold extrapolated to it sits among the scores of the next day's normal operation. So a
# negative estimate becomes the exponential tail (shape 0, the mean excess), the lightest tail
# a score without an end can have. Above MAX_SHAPE the tail would be heavier than any score
# tail seen in practice: from a few dozen peaks that is the fit's noise, and extrapolating it
# days ahead would put the threshold orders of magnitude above every score, so the shape is
# held there and the scale refitted.
MAX_SHAPE = 0.5


class TooLittleTail(ValueError):
    """The held-out scores hold too few episodes in their upper tenth to fit a tail."""


@dataclass(frozen=True)
class HeldOut:
    """Time-ordered window scores of held-out normal runs (one array per run, at the serving
    stride) and the span of operation they cover, in days."""

    runs: list[np.ndarray]
    days: float
    name: str  # which windows these are, for the bundle: "validation", "cross-fitted", "train+validation"

    @property
    def windows(self) -> int:
        return int(sum(len(r) for r in self.runs))

    @classmethod
    def from_scores(cls, runs: list[np.ndarray], stride: int, period_seconds: float, name: str) -> HeldOut:
        """Each window stands for `stride` samples of `period_seconds`: the span the live service
        scores in the same number of windows."""
        windows = sum(len(r) for r in runs)
        return cls([np.asarray(r, dtype=float) for r in runs], windows * stride * period_seconds / SECONDS_PER_DAY,
                   name)


def episodes(runs: list[np.ndarray], threshold: float, spec: AlertSpec) -> int:
    """Alert episodes the hysteresis raises over these runs at `threshold` (each run starts out
    of alert, as a device does when the service starts)."""
    return sum(_entries(alert_flags((r > threshold).astype(np.int8), spec)) for r in runs)


def _entries(alerts: np.ndarray) -> int:
    return int(np.count_nonzero(np.diff(np.concatenate(([0], alerts.astype(np.int8)))) == 1))


def episode_peaks(runs: list[np.ndarray], level: float, spec: AlertSpec) -> np.ndarray:
    """The peak of every episode over `level`: the highest threshold at which it is still raised.

    Read off the episode count itself: the hysteresis is run at the observed scores above
    `level` (at most `MAX_LEVELS` of them, evenly by rank), and wherever the count drops between
    two neighbouring thresholds, that many episodes peak at the upper one. Counting (rather than
    taking each episode's maximum at `level`) keeps an episode that splits in two at a higher
    threshold as the two pages it then is. Where the count is not monotone (at low levels
    episodes merge), it is taken as its running maximum from the top."""
    grid = np.unique(np.concatenate(runs))
    grid = grid[grid >= level]
    if len(grid) > MAX_LEVELS:
        grid = grid[np.unique(np.linspace(0, len(grid) - 1, MAX_LEVELS).round().astype(int))]
    counts = np.array([episodes(runs, t, spec) for t in grid] + [0])
    counts = np.maximum.accumulate(counts[::-1])[::-1]  # non-increasing in the threshold
    drops = counts[:-1] - counts[1:]
    upper = np.append(grid[1:], grid[-1])  # the top score: nothing exceeds it
    return np.repeat(upper, drops).astype(float)


def calibrate_budget(held_out: HeldOut, per_day: float, spec: AlertSpec, chosen_on: str = "") -> tuple[float, FalseAlarmBudget]:
    """The threshold meeting `per_day` on `held_out`, and the record that says how."""
    if not (math.isfinite(per_day) and per_day > 0):
        raise ValueError(f"false-alarm budget must be a positive number of episodes per day, got {per_day}")
    if held_out.days <= 0 or held_out.windows < spec.enter_after:
        raise TooLittleTail(f"{held_out.windows} held-out windows: too few to see any episode")
    threshold, record = _budget_threshold(held_out, per_day, spec, chosen_on)
    return threshold, replace(record, bound_per_day=vouched_rate(held_out, threshold, spec))


def _budget_threshold(held_out: HeldOut, per_day: float, spec: AlertSpec,
                      chosen_on: str) -> tuple[float, FalseAlarmBudget]:
    allowed = per_day * held_out.days
    if allowed >= COUNTED_MIN_EPISODES:
        return _counted(held_out, per_day, spec, chosen_on)
    level, peaks = _tail_level(held_out, spec)
    if len(peaks) <= allowed:  # the budget allows as many episodes as the level shows: count them
        return _counted(held_out, per_day, spec, chosen_on)
    ratio = allowed / len(peaks)
    rule, gamma, sigma = _fit_tail(peaks - level)
    if gamma == 0.0:
        threshold = level - sigma * math.log(ratio)
    else:
        threshold = level + sigma / gamma * (ratio ** -gamma - 1.0)
    record = FalseAlarmBudget(per_day, rule, held_out.name, held_out.days, held_out.windows, per_day,
                              {"level": level, "gamma": gamma, "sigma": sigma, "peaks": float(len(peaks))},
                              chosen_on)
    return float(threshold), record


def vouched_rate(held_out: HeldOut, threshold: float, spec: AlertSpec) -> float:
    """The most episodes per day the held-out span itself vouches for at `threshold`: the upper
    `VOUCHED_CONFIDENCE` bound of a Poisson rate from the episodes counted there (exact: half the
    chi-squared quantile with 2 (k + 1) degrees of freedom, over the days; about 3 / days where
    none was seen). A tail extrapolates past the span, and a change of conditions after it shows
    in no tail: this bound is what the held-out rows say without either."""
    from scipy import stats  # lazy: slow to import, only training needs it

    seen = episodes(held_out.runs, threshold, spec)
    return float(stats.chi2.ppf(VOUCHED_CONFIDENCE, 2 * (seen + 1)) / 2.0 / held_out.days)


@dataclass(frozen=True)
class RateEstimate:
    """The alert episodes per day of normal operation that held-out scores predict at a
    threshold set by another rule (a quantile, a sigma): the budget's question asked the other
    way round, so `train` can say how often a bundle without a budget will page. `rule` is
    "counted" (seen in the held-out span) or the tail that extrapolates past it ("pot",
    "pot-exponential", over `peaks` episode peaks); `per_day` is None where the span shows too
    few episodes to fit a tail, and only `bound_per_day` is known."""

    per_day: float | None
    rule: str
    peaks: int
    held_out: str
    held_out_days: float
    bound_per_day: float | None = None  # vouched_rate at the threshold (None: a bundle written before it)

    def describe(self) -> str:
        span = f"{describe_span(self.held_out_days)} held out"
        if self.per_day is None:
            return (f"no expected rate (the {self.held_out} windows, {span}, show too few alert episodes to fit "
                    f"a tail)" + describe_vouched(self.bound_per_day, self.held_out_days))
        how = describe_rule(self.rule, self.peaks)
        return (f"expected {self.per_day:.3g} alert episodes per device-day at this threshold, {how} on the "
                f"{self.held_out} windows ({span})" + describe_vouched(self.bound_per_day, self.held_out_days))

    def to_dict(self) -> dict:
        return {"per_day": self.per_day, "rule": self.rule, "peaks": self.peaks, "held_out": self.held_out,
                "held_out_days": self.held_out_days, "bound_per_day": self.bound_per_day}


EXPECTED_FALSE_ALARMS_KEY = "expected_false_alarms"  # bundle.json training.<key>: a RateEstimate


def stored_estimate(bundle: Bundle) -> RateEstimate | None:
    """The `RateEstimate` stored for the bundle's threshold: by `calibrate` with the threshold it
    set (`bundle.calibration`), else by `train` (`bundle.training`). None for budget bundles,
    bundles trained without a validation tail, and bundles written before it: a recalibrated
    bundle never shows training's estimate, which was made at another threshold."""
    record = bundle.calibration if bundle.calibration else bundle.training
    d = record.get(EXPECTED_FALSE_ALARMS_KEY) if isinstance(record, dict) else None
    try:
        return RateEstimate(None if d["per_day"] is None else float(d["per_day"]), str(d["rule"]), int(d["peaks"]),
                            str(d["held_out"]), float(d["held_out_days"]),
                            None if d.get("bound_per_day") is None else float(d["bound_per_day"]))
    except (TypeError, KeyError, ValueError):
        return None  # informational only: a hand-damaged record is not worth refusing the bundle


def expected_per_day(bundle: Bundle) -> float | None:
    """The alert episodes per device-day expected at the bundle's threshold: its budget's own
    prediction, or the estimate stored for other threshold methods (None: none)."""
    if bundle.false_alarm_budget is not None:
        return bundle.false_alarm_budget.expected_per_day
    estimate = stored_estimate(bundle)
    return None if estimate is None else estimate.per_day


def vouched_per_day(bundle: Bundle) -> float | None:
    """The most alert episodes per device-day the held-out span vouched for at the bundle's
    threshold (`vouched_rate`), budget or not (None: not recorded)."""
    if bundle.false_alarm_budget is not None:
        return bundle.false_alarm_budget.bound_per_day
    estimate = stored_estimate(bundle)
    return None if estimate is None else estimate.bound_per_day


def estimate_at(bundle: Bundle, runs: list[np.ndarray], threshold: float, name: str) -> RateEstimate | None:
    """`expected_rate` at `threshold` on normal `runs` of window scores at the bundle's serving
    stride (`name` says which, e.g. "validation"): how often a bundle set by another rule will
    page. None without a sample period, without a run, or where there is no span to count on."""
    if bundle.sample_period_seconds is None or not runs:
        return None
    try:
        return expected_rate(HeldOut.from_scores(runs, bundle.stride, bundle.sample_period_seconds, name),
                             threshold, bundle.alert)
    except TooLittleTail as exc:
        log.info("no estimate of the false-alarm rate: %s", exc)
        return None


def expected_rate(held_out: HeldOut, threshold: float, spec: AlertSpec) -> RateEstimate:
    """Episodes per day at `threshold`: counted where the held-out span shows at least
    `EXPONENTIAL_MIN_PEAKS` of them (or the threshold lies below the tail's level), else the
    rate over the tail's level times the fitted tail's chance of an episode peak reaching the
    threshold: the same level and fit `calibrate_budget` solves for a threshold. Raises
    `TooLittleTail` where there is no span at all. Where the span shows too few episodes in its
    upper tenth to say either, the rate is None (a count of 0 there would read as a promise of
    silence) and only what the span vouches for is known."""
    if held_out.days <= 0:
        raise TooLittleTail("no held-out span to count episodes on")
    seen = episodes(held_out.runs, threshold, spec)
    bound = vouched_rate(held_out, threshold, spec)
    if seen < EXPONENTIAL_MIN_PEAKS:
        try:
            level, peaks = _tail_level(held_out, spec)
        except TooLittleTail:
            return RateEstimate(None, "counted", 0, held_out.name, held_out.days, bound)
        if threshold > level:
            rule, gamma, sigma = _fit_tail(peaks - level)
            excess = (threshold - level) / sigma if sigma > 0 else math.inf
            survival = math.exp(-excess) if gamma == 0.0 else (1.0 + gamma * excess) ** (-1.0 / gamma)
            return RateEstimate(len(peaks) / held_out.days * survival, rule, len(peaks), held_out.name,
                                held_out.days, bound)
    return RateEstimate(seen / held_out.days, "counted", 0, held_out.name, held_out.days, bound)


def _counted(held_out: HeldOut, per_day: float, spec: AlertSpec, chosen_on: str) -> tuple[float, FalseAlarmBudget]:
    """Down from the top score, the lowest threshold before the count first exceeds the budget:
    doubling the rank from the top until it does, then bisecting (the count rises as the
    threshold falls until, far below any page-worthy level, episodes merge into one)."""
    allowed = per_day * held_out.days
    ranked = np.unique(np.concatenate(held_out.runs))[::-1]  # [0] = the maximum: 0 episodes above it
    ok, step = 0, 1
    while ok + step < len(ranked) and episodes(held_out.runs, ranked[ok + step], spec) <= allowed:
        ok, step = ok + step, step * 2
    bad = min(ok + step, len(ranked))
    while bad - ok > 1:
        mid = (ok + bad) // 2
        if episodes(held_out.runs, ranked[mid], spec) <= allowed:
            ok = mid
        else:
            bad = mid
    threshold = float(ranked[ok])
    expected = episodes(held_out.runs, threshold, spec) / held_out.days
    return threshold, FalseAlarmBudget(per_day, "counted", held_out.name, held_out.days, held_out.windows,
                                       expected, {}, chosen_on)


def _tail_level(held_out: HeldOut, spec: AlertSpec) -> tuple[float, np.ndarray]:
    """The highest level of `LEVEL_QUANTILES` with at least `POT_MIN_PEAKS` episodes, else the one
    with the most (from `EXPONENTIAL_MIN_PEAKS` on); its episode peaks."""
    scores = np.concatenate(held_out.runs)
    best_level, best_peaks = math.nan, np.empty(0)
    for q in LEVEL_QUANTILES:
        level = float(np.quantile(scores, q))
        peaks = episode_peaks(held_out.runs, level, spec)
        if len(peaks) >= POT_MIN_PEAKS:
            return level, peaks
        if len(peaks) > len(best_peaks):
            best_level, best_peaks = level, peaks
    if len(best_peaks) < EXPONENTIAL_MIN_PEAKS:
        raise TooLittleTail(f"{held_out.windows} held-out windows ({held_out.days * 24:.3g} h) show at most "
                            f"{len(best_peaks)} alert episode(s) above their 90th percentile, "
                            f"need {EXPONENTIAL_MIN_PEAKS} to fit a tail")
    return best_level, best_peaks


def _fit_tail(excesses: np.ndarray) -> tuple[str, float, float]:
    """(rule, shape, scale) of the episode peaks' excesses over the level: a generalised Pareto
    fit from `POT_MIN_PEAKS` peaks on, the exponential tail (shape 0, the mean excess) below
    that or where the fitted shape is not positive."""
    gamma, sigma = _fit_gpd(excesses) if len(excesses) >= POT_MIN_PEAKS else (0.0, 0.0)
    if gamma <= 1e-6:
        return "pot-exponential", 0.0, float(excesses.mean())
    return "pot", gamma, sigma


def _fit_gpd(excesses: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood generalised Pareto (shape, scale) of the excesses, location 0; the
    shape capped at `MAX_SHAPE` (refitted with the shape fixed there when the free fit is above).
    A negative shape is returned as is: the caller replaces it by the exponential tail."""
    from scipy import stats  # lazy: slow to import, only training needs it

    gamma, _, sigma = stats.genpareto.fit(excesses, floc=0)
    if gamma > MAX_SHAPE:
        gamma, _, sigma = stats.genpareto.fit(excesses, f0=MAX_SHAPE, floc=0)
    return float(gamma), float(sigma)
