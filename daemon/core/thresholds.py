"""Turn anomaly scores into a decision threshold.

Every method here follows one flag convention: a point is anomalous when its
score is strictly greater than the threshold. Keeping that single convention
means a threshold calibrated here can be applied anywhere without off-by-one
disagreements at tied scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

METHODS: tuple[str, ...] = ("budget", "quantile", "sigma", "pot", "f1")
# Methods `calibrate` computes from a bag of scores; "budget" needs time-ordered held-out runs,
# their span in days and the hysteresis, so `daemon.offline.budget` calibrates it.
SCORE_METHODS: tuple[str, ...] = ("quantile", "sigma", "pot", "f1")

# Parameter name and default for methods that take one number, so that
# "quantile" alone is a usable spec and serialized params are self-describing.
_PARAM_DEFAULTS: dict[str, tuple[str, float]] = {
    "quantile": ("q", 0.99),
    "sigma": ("k", 3.0),
    "pot": ("risk", 1e-3),
}

POT_INITIAL_QUANTILE = 0.98
POT_MIN_PEAKS = 10
F1_MAX_CANDIDATES = 2000
# Below this |shape| the GPD quantile formula divides ~0 by ~0; the exponential
# limit is the exact continuation there.
_GAMMA_EPS = 1e-6


@dataclass(frozen=True)
class Threshold:
    """A calibrated threshold plus enough provenance to reproduce or audit it."""

    value: float
    method: str
    params: dict[str, float] = field(default_factory=dict)
    scale: float = 1.0
    # Per-device thresholds (`anomalyd calibrate --per-device`): a fleet shares a model, each
    # device keeps its own baseline; devices not listed use `value`.
    devices: dict[str, float] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        """The method as `calibrate` takes it ('quantile:0.999', 'pot:0.001', 'f1'), so the
        threshold can be recomputed on new scores the way it was chosen."""
        if self.method not in _PARAM_DEFAULTS:
            return self.method
        key, default = _PARAM_DEFAULTS[self.method]
        return f"{self.method}:{self.params.get(key, default)!r}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form, so it survives JSON/YAML without numpy types."""
        d = {
            "value": float(self.value),
            "method": self.method,
            "params": {k: float(v) for k, v in self.params.items()},
            "scale": float(self.scale),
        }
        if self.devices:
            d["devices"] = {str(k): float(v) for k, v in self.devices.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Threshold:
        """Validate on load, because saved thresholds are edited by hand."""
        if not isinstance(d, dict):
            raise ValueError(f"threshold: expected a dict, got {type(d).__name__}")
        for key in ("value", "method"):
            if key not in d:
                raise ValueError(f"threshold: missing key '{key}'")
        method = d["method"]
        if method not in METHODS:
            raise ValueError(
                f"threshold: key 'method' must be one of {', '.join(METHODS)}, got {method!r}"
            )
        params = d.get("params", {})
        if not isinstance(params, dict):
            raise ValueError(
                f"threshold: key 'params' must be a dict, got {type(params).__name__}"
            )
        devices = d.get("devices") or {}
        if not isinstance(devices, dict):
            raise ValueError(
                f"threshold: key 'devices' must be a dict, got {type(devices).__name__}"
            )
        return cls(
            value=_finite_float(d["value"], "threshold: key 'value'"),
            method=method,
            params={
                str(k): _finite_float(v, f"threshold: key 'params.{k}'")
                for k, v in params.items()
            },
            scale=_positive_scale(d.get("scale", 1.0), "threshold: key 'scale'"),
            devices={
                str(k): _finite_float(v, f"threshold: key 'devices.{k}'")
                for k, v in devices.items()
            },
        )


BUDGET_RULES: tuple[str, ...] = ("counted", "pot", "pot-exponential")


def describe_rule(rule: str, peaks: float) -> str:
    """How a false-alarm rate was read off held-out scores (one of `BUDGET_RULES`), in words."""
    return {"counted": "counted",
            "pot": f"extrapolated by a generalised Pareto tail over {peaks:.0f} episode peaks",
            "pot-exponential": f"extrapolated by an exponential tail over {peaks:.0f} episode peaks"}[rule]


def describe_span(days: float) -> str:
    """A held-out span in the unit an operator reads it in: minutes, hours or days."""
    if days * 24 < 1:
        return f"{days * 1440:.3g} min"
    return f"{days * 24:.3g} h" if days < 2 else f"{days:.3g} days"


def describe_vouched(bound_per_day: float | None, held_out_days: float) -> str:
    """The rate a held-out span vouches for by itself (daemon.offline.budget.vouched_rate), as a
    clause to append to an expectation; empty where a bundle does not carry it."""
    if bound_per_day is None or not math.isfinite(bound_per_day):
        return ""
    return (f"; those {describe_span(held_out_days)} alone vouch for at most {bound_per_day:.3g}/day "
            f"(95 % bound; a longer history narrows it)")


@dataclass(frozen=True)
class FalseAlarmBudget:
    """How a "budget" threshold was set, stored in bundle.json under `false_alarm_budget` so an
    operator can read what they asked for, what the held-out data said and how sure that is.

    `per_day` is the budget: alert episodes (after the bundle's hysteresis) per device per day
    of normal operation. `rule` says how the threshold meets it: "counted" (the hysteresis run
    over the held-out scores, episodes counted), "pot" (generalised Pareto tail of the episode
    peaks, extrapolated past what the held-out span shows) or "pot-exponential" (the same with
    the shape at 0: too few peaks to fit a shape, or a fitted shape below 0). `held_out` names the windows it was
    set on, `held_out_days` their span; `expected_per_day` is the rate the rule predicts at the
    threshold; `tail` the fitted tail (level, gamma, sigma, peaks), empty for "counted";
    `chosen_on` says on which data the budget's value was chosen (for the default);
    `bound_per_day` the most episodes per day the held-out span vouches for by itself at the
    threshold (None in bundles written before it)."""

    per_day: float
    rule: str
    held_out: str
    held_out_days: float
    held_out_windows: int
    expected_per_day: float
    tail: dict[str, float] = field(default_factory=dict)
    chosen_on: str = ""
    bound_per_day: float | None = None

    def describe(self) -> str:
        """One line for `train` and `inspect`: the budget, how it was met, on what."""
        how = describe_rule(self.rule, self.tail.get("peaks", 0))
        return (f"budget {self.per_day:g} false alarm(s) per device-day, {how} on the {self.held_out} windows "
                f"({describe_span(self.held_out_days)} held out), expected {self.expected_per_day:.3g}/day"
                + describe_vouched(self.bound_per_day, self.held_out_days))

    def to_dict(self) -> dict[str, Any]:
        return {"per_day": float(self.per_day), "rule": self.rule, "held_out": self.held_out,
                "held_out_days": float(self.held_out_days), "held_out_windows": int(self.held_out_windows),
                "expected_per_day": float(self.expected_per_day),
                "tail": {k: float(v) for k, v in self.tail.items()}, "chosen_on": self.chosen_on} | (
                    {} if self.bound_per_day is None else {"bound_per_day": float(self.bound_per_day)})

    @classmethod
    def from_dict(cls, d: Any) -> FalseAlarmBudget:
        """Validate on load (bundle.json is edited by hand)."""
        what = "false_alarm_budget"
        if not isinstance(d, dict):
            raise ValueError(f"{what}: expected a dict, got {type(d).__name__}")
        for key in ("per_day", "rule", "held_out", "held_out_days", "expected_per_day"):
            if key not in d:
                raise ValueError(f"{what}: missing key '{key}'")
        if d["rule"] not in BUDGET_RULES:
            raise ValueError(f"{what}: key 'rule' must be one of {', '.join(BUDGET_RULES)}, got {d['rule']!r}")
        tail = d.get("tail", {})
        if not isinstance(tail, dict):
            raise ValueError(f"{what}: key 'tail' must be a dict, got {type(tail).__name__}")
        windows = d.get("held_out_windows", 0)
        if isinstance(windows, bool) or not isinstance(windows, int) or windows < 0:
            raise ValueError(f"{what}: key 'held_out_windows' must be an integer >= 0, got {windows!r}")
        return cls(
            per_day=_positive_scale(d["per_day"], f"{what}: key 'per_day'"),
            rule=d["rule"], held_out=str(d["held_out"]),
            held_out_days=_finite_float(d["held_out_days"], f"{what}: key 'held_out_days'"),
            held_out_windows=windows,
            expected_per_day=_finite_float(d["expected_per_day"], f"{what}: key 'expected_per_day'"),
            tail={str(k): _finite_float(v, f"{what}: key 'tail.{k}'") for k, v in tail.items()},
            chosen_on=str(d.get("chosen_on", "")),
            bound_per_day=(None if d.get("bound_per_day") is None
                           else _finite_float(d["bound_per_day"], f"{what}: key 'bound_per_day'")),
        )


def threshold_in_force(calibrated: float, override: float | None = None, device: str | None = None,
                       per_device: Mapping[str, float] | None = None) -> float:
    """The threshold scores are compared against: the operator's `override` (config
    `alerting.threshold`, `--threshold`) when one is given, else `device`'s own threshold when
    `per_device` (the bundle's `threshold.devices`) lists it, else the bundle's `calibrated` value.

    Every consumer (the live worker, the log line announcing a model, `score`, `evaluate`)
    asks this one function, so they cannot disagree. "Given" means not None: 0 is a valid
    override (every positive score flagged), not a request for the bundle's value."""
    if override is not None:
        return _finite_float(override, "threshold override")
    if per_device and device is not None and device in per_device:
        return float(per_device[device])
    return float(calibrated)


def _finite_float(x: Any, what: str) -> float:
    if isinstance(x, bool):
        raise ValueError(f"{what} must be a number, got {x!r}")
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {x!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite, got {v}")
    return v


def _positive_scale(x: Any, what: str) -> float:
    v = _finite_float(x, what)
    if v <= 0:
        raise ValueError(f"{what} must be > 0, got {v}")
    return v


def parse_method(spec: str) -> tuple[str, dict[str, float]]:
    """Parse a CLI/config spec such as 'budget', 'quantile:0.99', 'sigma:3', 'pot:1e-3' or 'f1'.

    Validation happens here rather than in the calibrators so a bad config
    fails at startup, before any scores have been computed.
    """
    name, sep, number = spec.strip().partition(":")
    name = name.strip()
    if name not in METHODS:
        raise ValueError(
            f"unknown threshold method {name!r} in spec {spec!r}; "
            f"valid methods: {', '.join(METHODS)}"
        )
    if name in ("f1", "budget"):
        if sep:
            hint = " (the budget is --false-alarms-per-day)" if name == "budget" else ""
            raise ValueError(f"threshold method {name!r} takes no parameter, got {spec!r}{hint}")
        return name, {}
    key, default = _PARAM_DEFAULTS[name]
    value = _parse_number(name, key, number) if sep else default
    _check_param(name, key, value)
    return name, {key: value}


def _parse_number(method: str, key: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"threshold method {method!r}: {key} must be a number, got {text.strip()!r}"
        ) from None


def _check_param(method: str, key: str, value: float) -> None:
    if key in ("q", "risk"):
        if not 0.0 < value < 1.0:
            raise ValueError(
                f"threshold method {method!r}: {key} must be in (0, 1), got {value}"
            )
    elif not (math.isfinite(value) and value > 0):
        raise ValueError(f"threshold method {method!r}: {key} must be > 0, got {value}")


def calibrate(
    spec: str,
    scores: np.ndarray,
    labels: np.ndarray | None = None,
    scale: float = 1.0,
) -> Threshold:
    """Calibrate a threshold from scores collected on (mostly) normal data.

    `scale` lets operators add a safety margin on top of any method without
    touching its statistics; the raw method value stays recoverable as
    value / scale.
    """
    method, params = parse_method(spec)
    if method not in SCORE_METHODS:
        raise ValueError(f"threshold method {method!r} is calibrated on held-out runs "
                         f"(daemon.offline.budget), not on a bag of scores")
    scale = _positive_scale(scale, "threshold: scale")
    s = _check_scores(scores)
    raw, extra = _CALIBRATORS[method](s, params, labels)
    return Threshold(
        value=float(raw) * scale, method=method, params={**params, **extra}, scale=scale
    )


def _check_scores(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"threshold: scores must be 1-D, got shape {s.shape}")
    if s.size == 0:
        raise ValueError("threshold: scores are empty")
    if not np.all(np.isfinite(s)):
        bad = int(np.count_nonzero(~np.isfinite(s)))
        raise ValueError(f"threshold: scores contain {bad} non-finite values")
    return s


Params = dict[str, float]
Labels = np.ndarray | None
# (scores, parsed params, labels) -> (raw threshold, fitted values worth recording)
Calibrator = Callable[[np.ndarray, Params, Labels], tuple[float, Params]]


def _quantile(s: np.ndarray, params: Params, _labels: Labels) -> tuple[float, Params]:
    return float(np.quantile(s, params["q"])), {}


def _sigma(s: np.ndarray, params: Params, _labels: Labels) -> tuple[float, Params]:
    return float(s.mean() + params["k"] * s.std()), {}


def _pot(s: np.ndarray, params: Params, _labels: Labels) -> tuple[float, Params]:
    """Peaks-Over-Threshold (Siffer et al., KDD 2017, "SPOT").

    Extreme-value theory says excesses over a high threshold follow a
    generalised Pareto distribution whatever the score distribution is, so
    we can extrapolate to risks far smaller than 1/len(scores), where an
    empirical quantile would just return the sample maximum.
    """
    from scipy import stats  # lazy: slow to import, and only POT needs it (keeps daemon start-up fast)

    risk = params["risk"]
    n = s.size
    t = float(np.quantile(s, POT_INITIAL_QUANTILE))
    excesses = s[s > t] - t
    n_peaks = excesses.size
    if n_peaks < POT_MIN_PEAKS:
        raise ValueError(
            f"threshold method 'pot': too few scores for POT: {n} scores give {n_peaks} peaks "
            f"above the {POT_INITIAL_QUANTILE} quantile, need at least {POT_MIN_PEAKS}; "
            f"collect more scores or use 'quantile'"
        )
    ratio = risk * n / n_peaks
    if ratio >= 1.0:
        raise ValueError(
            f"threshold method 'pot': risk {risk} is not below the peak fraction "
            f"{n_peaks / n:.4g}; POT only models the tail beyond the "
            f"{POT_INITIAL_QUANTILE} quantile, use 'quantile' for such risks"
        )
    gamma, _, sigma = stats.genpareto.fit(excesses, floc=0)
    gamma, sigma = float(gamma), float(sigma)
    if abs(gamma) < _GAMMA_EPS:
        z = t - sigma * math.log(ratio)
    else:
        z = t + (sigma / gamma) * (ratio ** (-gamma) - 1.0)
    return z, {"gamma": gamma, "sigma": sigma, "t": t, "peaks": float(n_peaks)}


def _f1(s: np.ndarray, _params: Params, labels: Labels) -> tuple[float, Params]:
    """Pick the threshold with the best point-wise F1 on labelled scores.

    Only observed score values are tried: between two consecutive values the
    flags (score > threshold) cannot change, so nothing is lost; subsampling
    caps the cost on long recordings.
    """
    y = _check_labels(labels, s.size)
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    # positives_le[i] = number of positives among the i smallest scores
    positives_le = np.concatenate(([0], np.cumsum(y[order])))
    total_pos = int(positives_le[-1])

    candidates = np.unique(sorted_s)
    if candidates.size > F1_MAX_CANDIDATES:
        idx = np.linspace(0, candidates.size - 1, F1_MAX_CANDIDATES).round().astype(int)
        candidates = candidates[idx]

    n_le = np.searchsorted(sorted_s, candidates, side="right")
    tp = total_pos - positives_le[n_le]
    flagged = s.size - n_le
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (flagged + positives); flagged + positives > 0 always
    f1 = 2.0 * tp / (flagged + total_pos)
    best = int(np.argmax(f1))
    return float(candidates[best]), {"f1": float(f1[best])}


def _check_labels(labels: Labels, n: int) -> np.ndarray:
    if labels is None:
        raise ValueError("threshold method 'f1': needs labels, got none")
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(
            f"threshold method 'f1': labels must have shape ({n},) like scores, got {y.shape}"
        )
    if not np.isin(y, (0, 1)).all():
        raise ValueError("threshold method 'f1': labels must be 0/1")
    y = y.astype(np.int64)
    if not y.any():
        raise ValueError(
            "threshold method 'f1': labels have no positives (no anomalies to separate)"
        )
    return y


_CALIBRATORS: dict[str, Calibrator] = {
    "quantile": _quantile,
    "sigma": _sigma,
    "pot": _pot,
    "f1": _f1,
}
