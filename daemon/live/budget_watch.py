"""Whether each device keeps to the false-alarm budget the operator stated.

The budget (`Bundle.false_alarm_budget.per_day`, or `alerting.false_alarms_per_day`) is a
number of alert episodes per device per day. `train` and `calibrate` set thresholds to meet it
on history; this watch checks it on the live stream. Per device it counts the alert episodes
raised on windows scored for the first time (a replayed window's raise happened on the
instance that scored it first, which counted it there) by hour of data time, over a look-back
of `LOOKBACK_HOURS`. A device is over budget when that count is improbably high for a device
keeping to the budget: a Poisson count with mean `per_day` x days watched.

Days watched run from the device's first window scored in the look-back to its latest, so a
device that joined yesterday is judged on one day, not seven. That needs one entry (two data
times) for every device scored; the episode counts, the larger part, exist only for devices
that raised in the look-back: a quiet device costs its two times.

The counts are episodes, not false alarms: a device with a real fault alarms too. "Over
budget" says the device alarms more than the budget allows; the operator decides whether that
is a fault to fix or a threshold to set again (`anomalyd calibrate --per-device`).

A device whose Kafka partition moves to another instance is watched afresh there: its
episodes so far stay with the instance that counted them, which forgets them.

Threads: the worker records, ingest and the Kafka consumer forget (idle eviction, partitions
moving away), a scrape counts. One lock guards the tables.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Iterable, Sequence

from daemon.live.events import WindowJob
from daemon.live.telemetry.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

HOUR = 3600.0
# One week of data time. A budget is counted per day, so only a count over days says much
# about it (at 1 per day, a device keeping to it has 3 episodes in some day with P = 0.08); a
# week covers a plant's weekly cycle (start-ups after a weekend, weekday shifts), so an alarm
# that comes with every cycle is judged against a whole one. A longer look-back would keep a
# device flagged long after it alarms no more; a reload that changes the model, thresholds or
# hysteresis starts the watch afresh anyway.
LOOKBACK_HOURS = 7 * 24
# A device is judged on at least one hour of watching, so its first minutes cannot condemn it
# (without a floor, one episode a minute after its first window is a rate of 1,440 a day). At a
# budget of 1 per day one episode in the first hour is no evidence (P = 0.04); two or three are
# (P = 8e-4, 1e-5).
MIN_WATCHED_DAYS = 1 / 24
# The chance that a route whose devices all keep to the budget shows a device over budget at a
# given moment, at most: split evenly over its watched devices (Bonferroni), so the gauge and
# the alert on it mean "some device is over budget" on ten devices as on ten thousand, rather
# than flagging one device in a hundred by chance. The Poisson tail is steep, so the split
# costs little: at 1 per day, a week at four times the budget is flagged among 10,000 devices,
# one at three times among several hundred.
SIGNIFICANCE = 0.01
# A device going over budget is news on a scale of days; one line per route every ten minutes,
# with the count of those held back, loses nothing an operator acts on.
LOG_INTERVAL_SECONDS = 600.0


def poisson_tail(k: int, mean: float) -> float:
    """P(X >= k) for X ~ Poisson(mean), summed from the probability of k outwards in whichever
    direction converges (terms shrink by mean/(i+1) above the mean, by i/mean below it), the
    probability of k in log space so large counts do not overflow. Written out rather than
    taken from scipy, which the live service does not import (start-up time and memory)."""
    if k <= 0:
        return 1.0
    if mean <= 0.0:
        return 0.0
    pmf_k = math.exp(-mean + k * math.log(mean) - math.lgamma(k + 1))
    if k > mean:  # upper tail: pmf(k) * (1 + mean/(k+1) + mean^2/((k+1)(k+2)) + ...)
        total, term, i = 1.0, 1.0, k
        while term > 1e-17 * total:
            i += 1
            term *= mean / i
            total += term
        return min(1.0, pmf_k * total)
    # lower part: P(X <= k-1) = pmf(k) * (k/mean + k(k-1)/mean^2 + ...)
    total, term, i = 0.0, 1.0, k
    while i > 0:
        term *= i / mean
        total += term
        if term < 1e-17 * total:
            break
        i -= 1
    return max(0.0, 1.0 - pmf_k * total)


@dataclass(frozen=True)
class Verdict:
    """One device's standing against the budget."""

    episodes: int  # alert episodes in the look-back
    days: float  # days watched in the look-back (at least MIN_WATCHED_DAYS)
    expected: float  # episodes the budget allows over those days
    p: float  # P(at least `episodes` | the budget held)
    over: bool


@dataclass(slots=True)
class _Device:
    since: float  # data time of the device's first window scored (the look-back may start later)
    last: float  # data time of its latest window scored
    episodes: dict[int, int] | None = None  # hour of data time -> episodes raised in it; None: none
    over: bool = False  # reported over budget (logged) and not found within it since


class BudgetWatch:
    """The watch of one route's devices. `per_day` None: the route has no budget and nothing
    is recorded. `route` names it in the log."""

    def __init__(self, per_day: float | None, route: str = "") -> None:
        self.per_day = per_day
        self.route = route
        self._devices: dict[str, _Device] = {}
        self._lock = threading.Lock()
        self._log = RateLimitedLog(log, LOG_INTERVAL_SECONDS)

    def set_budget(self, per_day: float | None) -> None:
        """A new budget (reload): the episodes counted so far are judged against it. None
        stops the watch and forgets every device."""
        with self._lock:
            self.per_day = per_day
            if per_day is None:
                self._devices.clear()

    def clear(self) -> None:
        """Forget every device: the episodes so far were raised under other thresholds or
        hysteresis (a reload) and say nothing about the ones in force."""
        with self._lock:
            self._devices.clear()

    def record(self, scored: Sequence[WindowJob], raised: Iterable[WindowJob]) -> None:
        """`scored`: a batch's windows scored for the first time, in time order; `raised`: those
        of them on which their device entered alert. A device whose window ends before its
        latest one had its clock set back: its watch starts again from that window."""
        per_day = self.per_day
        if per_day is None:
            return
        reports = []
        with self._lock:
            devices = self._devices
            for job in scored:
                device = devices.get(job.device)
                if device is None:
                    devices[job.device] = _Device(job.ts_end, job.ts_end)
                elif job.ts_end >= device.last:
                    device.last = job.ts_end
                else:
                    devices[job.device] = _Device(job.ts_end, job.ts_end)
            for job in raised:
                device = devices[job.device]
                if device.episodes is None:
                    device.episodes = {}
                hour = int(job.ts_end // HOUR)
                device.episodes[hour] = device.episodes.get(hour, 0) + 1
                verdict = self._judge(device, per_day, len(devices))
                if verdict.over and not device.over:
                    reports.append((job.device, verdict))
                device.over = verdict.over
        for name, verdict in reports:
            self._report(name, verdict, per_day)

    def forget_devices(self, devices: Iterable[str]) -> None:
        """Drop these devices (evicted as idle, or scored by another instance from now on)."""
        with self._lock:
            for device in devices:
                self._devices.pop(device, None)

    def forget(self, device: str) -> None:
        self.forget_devices((device,))

    def over_budget(self) -> int:
        """Devices over budget now, judging each that raised in its look-back (and dropping the
        episode counts that left it)."""
        per_day = self.per_day
        if per_day is None:
            return 0
        over = 0
        with self._lock:
            watched = len(self._devices)
            for device in self._devices.values():
                if device.episodes is None:
                    continue
                verdict = self._judge(device, per_day, watched)
                device.over = device.over and verdict.over
                over += verdict.over
        return over

    def verdict(self, device: str) -> Verdict | None:
        """`device`'s standing now; None if it is not watched or raised nothing in its look-back."""
        per_day = self.per_day
        with self._lock:
            state = self._devices.get(device)
            if per_day is None or state is None or state.episodes is None:
                return None
            verdict = self._judge(state, per_day, len(self._devices))
            return None if state.episodes is None else verdict

    def watched(self) -> int:
        """Devices scored and not forgotten."""
        return len(self._devices)

    @staticmethod
    def _judge(device: _Device, per_day: float, watched: int) -> Verdict:
        """Prune `device`'s episodes to the look-back ending at its latest window and weigh the
        rest against the budget (lock held)."""
        first_hour = int(device.last // HOUR) - LOOKBACK_HOURS + 1
        episodes = device.episodes or {}
        for hour in [h for h in episodes if h < first_hour]:
            del episodes[hour]
        if not episodes:
            device.episodes = None
        count = sum(episodes.values())
        days = max(MIN_WATCHED_DAYS, (device.last - max(device.since, first_hour * HOUR)) / 86400)
        expected = per_day * days
        p = poisson_tail(count, expected)
        return Verdict(count, days, expected, p, p < SIGNIFICANCE / max(watched, 1))

    def _report(self, device: str, verdict: Verdict, per_day: float) -> None:
        self._log.warning(
            "over_budget:" + self.route,
            "device %r is over its false-alarm budget: %d alert episodes in %.3g days watched, where %g per "
            "device-day allows %.3g (P = %.1e if it kept to the budget). If these alerts are not real faults, set "
            "its threshold again on recent normal data (anomalyd calibrate --per-device, then promote the bundle: "
            "deploy/README.md, section 2), or state the budget you can afford (train --false-alarms-per-day, "
            "alerting.false_alarms_per_day)", device, verdict.episodes, verdict.days, per_day, verdict.expected,
            verdict.p)
