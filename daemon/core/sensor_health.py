"""Sensor-health checks beside the autoencoder: is each sensor still a working sensor?

An autoencoder scores how well a window fits the relations it learnt between sensors; it is
weak on faults of one sensor that keep those relations roughly intact: a sensor stuck on its
last value, a reading far outside anything seen in training, a quiet channel drifting slowly,
a transmitter gone noisy; and on slow changes of how one sensor relates to the others, which
its reconstruction (from a window holding that sensor) passes through. The checks below catch
them, each fitted on the training data and stored in bundle.json
under `health`; a window failing one is anomalous with a reason naming the check and the
sensor, `<check>:<feature>` (e.g. `stuck:flow`), so the operator reads "flow sensor stuck"
apart from "process anomaly". The window's score and errors stay the model's own: health is
beside the score, never mixed into it.

- `out_of_envelope`: a value of the window lies beyond the training's [min, max] by more than
  the larger of ENVELOPE_MARGIN times the training range and ENVELOPE_MIN_STDS standard
  deviations (floored like the model's scaler).
- `stuck`: the sensor's standard deviation within the window falls below STUCK_FRACTION of its
  median over the training windows. A sensor whose training already holds windows that quiet
  (a constant, quantised or slow sensor) is exempt: the check cannot tell its normal from stuck.
- `noisy`: the sensor's step noise within the window (the median absolute change from one
  reading to the next, which a smooth process move or a single step barely touches) exceeds
  NOISY_MARGIN times the largest any training window shows: the transmitter itself got noisy (a
  broken cable shield, a loose contact). A sensor whose typical training window shows no step
  noise at all (quantised or sampled-and-held) is exempt: its noise is below its resolution.
  With a look-back of more than one window (`HealthSpec.noisy_windows`) the limit is twice the
  largest median, over the look-back, of each window's step noise (held per device like the
  drift sums): a median of a few dozen steps scatters less than one of a window's, so that
  largest sits closer to the typical noise, and so does the limit. The look-back keeps one
  window in every `HealthSpec.noisy_spacing` (at most NOISY_LOOKBACK_KEPT of them): windows a
  fraction of a window apart share most of their steps, so the ones in between add little to
  the median and would cost each device a ring of every window's noise. A window is then
  noisy when both its look-back median and its own step noise exceed that limit: the noise
  persists and is still there, so the flag clears within about a window of the noise ending
  instead of half a look-back later. The check speaks only once the look-back is full.
- `spike`: a reading leaves both its neighbours, above the higher or below the lower, by more
  than SPIKE_MARGIN times the largest such excursion any training run shows: a loose connector's
  spike or a dropout to a transmitter's under-range value. A step, a ramp or a
  sampled-and-held value never leaves both its neighbours, so a process moving fast is not a
  spike; noise does, by about its own size, which training shows. Readings are judged inside
  the window (from its second to its last but one), so one spike flags the window-length - 2
  windows that hold it with both neighbours. A sensor whose training shows no excursion at all
  (a constant) is exempt. On when the bundle was trained with `TrainConfig.spike_check`.
- `drift`: a two-sided CUSUM, one step per scored window, on the gap between the sensor's
  window level (its mean, in training standard deviations) and a baseline that follows that
  level slowly (DRIFT_FOLLOW): a level that keeps moving away from where it just was, and away
  from the training level (beyond the allowance on that side; a return is no drift). The
  allowance is the larger of DRIFT_K and DRIFT_MARGIN times the largest gap the training runs
  show, the alarm limit DRIFT_MARGIN times the largest sum they reach (never below
  DRIFT_MIN_LIMIT): both learnt from how much this sensor's level moves in normal operation,
  on the runs fitted on and on the held-out validation tails the statistics did not see. Sums
  are capped at DRIFT_CAP times the limit, so a flag clears within a bounded number of windows
  once the level settles. Only quiet sensors are watched (QUIET_RATIO): noise around a steady
  level, where a slow drift is a sensor fault and not the process moving.
- `shift`: the sensor's window level departs from the training level by more than SHIFT_MARGIN
  times the largest departure, on that side, of any training window's level, that largest
  raised to its upper bound for the number of independent levels the runs show
  (daemon.core.evidence: about x1.4 for 20, x1.1 for 300), and never nearer than
  SHIFT_MIN_STDS standard deviations: a steady offset, a transmitter's bias or a process
  variable a controller holds somewhere new, which the drift check's following baseline
  absorbs within a hundred windows. Only quiet sensors are watched (as for drift), and only
  those whose levels the runs show in at least THIN_EVIDENCE independent stretches: with
  fewer, the training levels are a few looks at one slow excursion and say nothing of where
  the level goes next. On when the bundle was trained with `TrainConfig.shift_check`.
- A sensor whose level moved within training alone (TREND_LIMIT) is exempt from the envelope,
  drift and shift checks: its training range and level are no reference.
- `relation` (daemon.core.relations; `TrainConfig.relation_check`, on by default where the
  training data allow the fit): the sensor's window level against what the other sensors'
  levels predict for it.

The drift sums are memory across windows, held per device in a `HealthState`: the live worker
keeps one per device next to its alert state, offline scoring builds one per file and runs it
over the file's windows in time order; both call `check_windows`, the one implementation.
A window may fail several checks; its reason is the first failing check in CHECKS order
(the most severe first), on the first failing sensor in the bundle's feature order; for
`relation`, on the sensor whose repair makes the others agree (`RelationSpec.culprits`).

Every limit is a statistic of the training rows times a constant chosen a priori (below),
never a figure fitted on labelled test rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from daemon.core.evidence import THIN_EVIDENCE, divisor_factor, independent_stretches
from daemon.core.relations import RelationSpec, fit_relations
from daemon.core.windowing import windows

OUT_OF_ENVELOPE = "out_of_envelope"
STUCK = "stuck"
DRIFT = "drift"
NOISY = "noisy"
RELATION = "relation"
SPIKE = "spike"
SHIFT = "shift"
CHECKS = (OUT_OF_ENVELOPE, STUCK, NOISY, SPIKE, DRIFT, RELATION, SHIFT)  # the order a window's reason is chosen in

# A reading beyond the training range by as much again as that range is a fault code, a wrong
# unit or a broken sensor rather than the process, which the model judges inside the envelope.
ENVELOPE_MARGIN = 1.0
# ... and by at least this many of the sensor's (floored) standard deviations, so a sensor whose
# training range is narrow is not held to a margin inside its own noise.
ENVELOPE_MIN_STDS = 6.0
# The envelope of a sensor exempt from it (finite, so bundle.json can carry it).
_UNBOUNDED = float(np.finfo(np.float64).max)
# A working sensor's noise alone keeps its window spread well above a tenth of the usual one.
STUCK_FRACTION = 0.1
# A working transmitter's noise does not double: twice the largest step noise of any training
# window, the same room for the unseen that the drift limits take.
NOISY_MARGIN = 2.0
# The noise look-back keeps at most this many windows' step noise per device, evenly spaced
# over its span: 4 to a window's worth of readings for the default look-back of 3 such spans,
# neighbours sharing three quarters of their steps. A device's ring stays a few hundred bytes
# whatever the window length.
NOISY_LOOKBACK_KEPT = 9
# A working transmitter's readings do not leave their neighbours by twice what its noise did in
# training: the same room for the unseen as the noisy and drift limits.
SPIKE_MARGIN = 2.0
# The smallest CUSUM allowance: half a standard deviation, the textbook choice for a shift of one.
DRIFT_K = 0.5
# Allowance and limit are twice what training shows: room for runs longer than training's.
DRIFT_MARGIN = 2.0
# ... and never below the textbook limit for k = 0.5 (about 900 windows between false alarms
# on independent standard-normal gaps).
DRIFT_MIN_LIMIT = 5.0
# Sums are capped at twice the limit: once the level settles they fall below it again within
# about limit / allowance windows.
DRIFT_CAP = 2.0
# The baseline a level is compared with follows it by this share per window (an exponential
# memory of about 100 windows): a sensor that keeps moving away from where it just was is
# drifting, while a steady level, whatever it is, is left to the envelope check. Runs of the
# same process differ by small steady offsets, which a fixed training mean would add up.
DRIFT_FOLLOW = 0.01
# A working quiet sensor's window level stays within twice its largest departure in training
# from the training level: the same room for the unseen as the drift and noisy limits.
SHIFT_MARGIN = 2.0
# ... and the limit is never nearer than half a (floored) standard deviation, the smallest
# shift the drift check's allowance treats as one.
SHIFT_MIN_STDS = 0.5
# A sensor whose held-out tail sits this many standard deviations from the level of the rows
# before it moved within training alone (a temperature still warming up): its training range
# and level are no reference, so its envelope and drift checks are off.
TREND_LIMIT = 1.0
# The drift check watches quiet sensors: those whose level varies less from window to window
# than their readings within a window (noise around a steady level). The level of any other
# sensor follows the process, which is the model's to judge; a CUSUM on it would page on every
# change of operating point.
QUIET_RATIO = 1.0
# The look-back holds step noise in float32 (training's limit is taken on the same rounded
# values): every device keeps a ring of it, and the rounding is far below any noise that
# matters.
_LOOKBACK_DTYPE = np.float32
# Windows per chunk when fitting, bounding memory on long training runs.
_FIT_CHUNK = 4096
# Positions per chunk of a rolling median, and readings per chunk of a run's spike excursion.
_MEDIAN_CHUNK = 65536


def kept_windows(span: int, spacing: int) -> int:
    """How many windows a look-back of `span` windows keeps at one in `spacing`."""
    return (span - 1) // spacing + 1


def reason(check: str, feature: str) -> str:
    """The reason a window carries for a failed check: `<check>:<feature>`."""
    return f"{check}:{feature}"


def check_of(window_reason: str) -> str | None:
    """The check named by a health reason (`stuck:flow` -> `stuck`); None for other reasons."""
    check, sep, _ = window_reason.partition(":")
    return check if sep and check in CHECKS else None


def window_levels(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per window and sensor, the level (mean) and the spread (standard deviation) of raw
    windows `[B, W, F]`, in float64. Training and scoring both call this on a contiguous copy,
    so live and offline compute the same numbers bit for bit whatever the input's layout. The
    steps are numpy's own for `mean` and `std` (the same values, bit for bit), with the window
    sum taken once for both: this runs on every scored window."""
    values = np.ascontiguousarray(raw, dtype=np.float64)
    count = values.shape[1]
    level = np.add.reduce(values, axis=1, keepdims=True)
    np.true_divide(level, count, out=level)
    deviation = values - level
    np.multiply(deviation, deviation, out=deviation)
    variance = np.add.reduce(deviation, axis=1)
    np.true_divide(variance, count, out=variance)
    return level[:, 0, :], np.sqrt(variance, out=variance)


def window_step_noise(raw: np.ndarray) -> np.ndarray:
    """Per window and sensor, the median absolute change between consecutive readings of raw
    windows `[B, W, F]`, in float64: the sensor's own noise, robust to the few large changes a
    setpoint step or a ramp makes. The changes are laid out per sensor along the last axis and
    the middle one(s) picked by a partition: the same values as `np.median` over the window
    axis, bit for bit (NaN where a reading is NaN), at a fraction of its cost on a window's
    interleaved sensors."""
    values = np.ascontiguousarray(raw.transpose(0, 2, 1), dtype=np.float64)
    steps = np.abs(np.diff(values, axis=-1))
    count = steps.shape[-1]
    if count == 0:
        return np.full(steps.shape[:-1], np.nan)
    middle = count // 2
    parted = np.partition(steps, (middle - 1, middle) if count % 2 == 0 else middle, axis=-1)
    # a copy, not a view: a view would keep the whole partitioned array alive with the result
    noise = parted[..., middle].copy() if count % 2 else (parted[..., middle - 1] + parted[..., middle]) / 2
    noise[np.isnan(steps).any(axis=-1)] = np.nan
    return noise


def largest_excursion(values: np.ndarray, axis: int) -> np.ndarray:
    """The `spike` check's statistic: over the readings along `axis` but the first and last, the
    most any leaves both its neighbours, above the higher or below the lower (negative when
    every one lies between its neighbours), in the dtype of `values`. Scoring takes it on the
    raw float32 windows: the check runs on every window, and differences of neighbouring
    readings lose nothing in float32. The readings are first laid out along the last axis, in
    one copy: the comparisons then run over contiguous memory, several times faster than over
    a window's interleaved sensors."""
    values = np.ascontiguousarray(np.moveaxis(values, axis, -1))
    before, here, after = values[..., :-2], values[..., 1:-1], values[..., 2:]
    return np.maximum(here - np.maximum(before, after), np.minimum(before, after) - here).max(axis=-1)


@dataclass
class HealthSpec:
    """The fitted limits, one entry per feature in the bundle's order (stored in bundle.json)."""

    envelope_low: np.ndarray  # float64 [F]: values below are out of envelope (exempt: -float64 max)
    envelope_high: np.ndarray  # float64 [F]: values above are out of envelope (exempt: float64 max)
    stuck_below: np.ndarray  # float64 [F]: a window spread below it is stuck; 0 = exempt
    level_mean: np.ndarray  # float64 [F]: the mean of the rows fitted on
    level_std: np.ndarray  # float64 [F]: their standard deviation, floored, > 0
    drift_k: np.ndarray  # float64 [F]: the CUSUM allowance, in level standard deviations
    drift_limit: np.ndarray  # float64 [F]: the CUSUM alarm limit; 0 = exempt
    noisy_above: np.ndarray  # float64 [F]: a window step noise above it is noisy; 0 = exempt
    spike_above: np.ndarray  # float64 [F]: a reading leaving both neighbours by more is a spike; 0 = exempt
    relation: RelationSpec | None = None  # the relation check (daemon.core.relations); None = off
    noisy_windows: int = 1  # the noisy check's look-back in windows (1: the window alone)
    noisy_spacing: int = 1  # the look-back keeps one window in this many (absent in older bundles: every one)
    shift_low: np.ndarray | None = None  # float64 [F]: a window level below it is shifted (exempt: -float64 max)
    shift_high: np.ndarray | None = None  # float64 [F]: a window level above it is shifted (exempt: float64 max)

    def __post_init__(self) -> None:
        n = len(self.level_mean)
        if self.shift_low is None:  # the check off: every sensor exempt
            self.shift_low = np.full(n, -_UNBOUNDED)
        if self.shift_high is None:
            self.shift_high = np.full(n, _UNBOUNDED)

    def drift_watched(self) -> np.ndarray:
        """The sensors the drift check watches (a limit above 0), in feature order."""
        return np.flatnonzero(self.drift_limit > 0)

    def shift_watched(self) -> np.ndarray:
        """The sensors the shift check watches (a finite upper limit), in feature order."""
        return np.flatnonzero(self.shift_high < _UNBOUNDED)

    @property
    def noisy_kept(self) -> int:
        """How many windows' step noise the look-back's median is taken over."""
        return kept_windows(self.noisy_windows, self.noisy_spacing)

    FIELDS = ("envelope_low", "envelope_high", "stuck_below", "level_mean", "level_std", "drift_k", "drift_limit",
              "noisy_above", "spike_above", "shift_low", "shift_high")
    # Keys a bundle written before the check existed lacks, with the value that turns it off
    # (every sensor exempt).
    OPTIONAL = {"noisy_above": 0.0, "spike_above": 0.0, "shift_low": -_UNBOUNDED, "shift_high": _UNBOUNDED}

    def to_dict(self) -> dict[str, Any]:
        arrays: dict[str, Any] = {name: [float(v) for v in getattr(self, name)] for name in self.FIELDS}
        return {**arrays, "relation": None if self.relation is None else self.relation.to_dict(),
                "noisy_windows": self.noisy_windows, "noisy_spacing": self.noisy_spacing}

    def describe(self, features: list[str]) -> str:
        """One line for `inspect`: which sensors each check watches (the others are exempt)."""
        spaced = f", {self.noisy_kept} kept" if self.noisy_spacing > 1 else ""
        lookback = f" (look-back {self.noisy_windows} windows{spaced})" if self.noisy_windows > 1 else ""
        watched = {
            "envelope": [f for f, hi in zip(features, self.envelope_high) if hi < np.finfo(np.float64).max],
            "stuck": [f for f, below in zip(features, self.stuck_below) if below > 0],
            f"noisy{lookback}": [f for f, above in zip(features, self.noisy_above) if above > 0],
            "spike": [f for f, above in zip(features, self.spike_above) if above > 0],
            "drift": [f for f, limit in zip(features, self.drift_limit) if limit > 0],
            "shift": [features[i] for i in self.shift_watched()],
        }
        line = "; ".join(f"{check}: {', '.join(names) or 'none'}" for check, names in watched.items())
        relation = self.relation
        return line + ("; relation: none" if relation is None else
                       f"; relation (degree {relation.degree}): "
                       + ", ".join(features[s] for s, limit in zip(relation.sensors, relation.limit) if limit > 0))

    @classmethod
    def from_dict(cls, data: Any, n_features: int) -> HealthSpec:
        """Validate on load (bundle.json is edited by hand); errors name the key."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        known = (*cls.FIELDS, "relation", "noisy_windows", "noisy_spacing")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")
        arrays = {}
        for name in cls.FIELDS:
            value = data.get(name, [cls.OPTIONAL[name]] * n_features if name in cls.OPTIONAL else None)
            if (not isinstance(value, list) or len(value) != n_features
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                               for v in value)):
                raise ValueError(f"{name!r} must be {n_features} finite numbers")
            arrays[name] = np.asarray(value, dtype=np.float64)
        for low, high in (("envelope_low", "envelope_high"), ("shift_low", "shift_high")):
            if (arrays[low] > arrays[high]).any():
                raise ValueError(f"{low!r} must not exceed {high!r}")
        for name, ok, why in (("stuck_below", arrays["stuck_below"] >= 0, ">= 0"),
                              ("level_std", arrays["level_std"] > 0, "> 0"),
                              ("drift_k", arrays["drift_k"] >= 0, ">= 0"),
                              ("drift_limit", arrays["drift_limit"] >= 0, ">= 0"),
                              ("noisy_above", arrays["noisy_above"] >= 0, ">= 0"),
                              ("spike_above", arrays["spike_above"] >= 0, ">= 0")):
            if not ok.all():
                raise ValueError(f"{name!r} must be {why}")
        relation = data.get("relation")  # absent in a bundle fitted before the check: off
        try:
            relation = None if relation is None else RelationSpec.from_dict(relation, n_features)
        except ValueError as exc:
            raise ValueError(f"'relation': {exc}") from None
        counts = {}
        for name in ("noisy_windows", "noisy_spacing"):  # absent in a bundle fitted before the look-back / spacing
            counts[name] = value = data.get(name, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name!r} must be a whole number >= 1")
        return cls(**arrays, relation=relation, **counts)


class HealthState:
    """One device's (or one offline file's) memory for the drift check, the upward and downward
    CUSUM sums of each sensor the drift check watches (`HealthSpec.drift_watched`), and for the
    noisy check's look-back, the last kept windows' step noise. Bound to the spec it was built
    for: a state met with another spec (a reloaded bundle) starts again from zero. The sums are
    plain Python floats: for a handful of sensors a scalar loop costs less than numpy's per-call
    overhead, and it runs once per window; a spec watching no sensor for drift (no quiet one)
    costs neither memory nor a loop."""

    __slots__ = ("spec", "base", "up", "down", "noise", "noise_seen")

    def __init__(self, spec: HealthSpec | None = None) -> None:
        self._reset(spec)

    def _reset(self, spec: HealthSpec | None) -> None:
        self.spec = spec
        n = 0 if spec is None else len(spec.drift_watched())
        self.base: list[float] | None = None  # the slow baseline of each watched level; None before the first window
        self.up = [0.0] * n
        self.down = [0.0] * n
        # The last `noisy_kept` kept windows' step noise of the watched sensors (window i is kept
        # when i % noisy_spacing == 0, counting from the first this state saw), a ring in
        # arrival order from the kept count % its length (a median does not care about the order).
        watched = 0 if spec is None else int((spec.noisy_above > 0).sum())
        self.noise = np.zeros((1 if spec is None else spec.noisy_kept, watched), dtype=_LOOKBACK_DTYPE)
        self.noise_seen = 0  # windows seen, kept or not

    def _bind(self, spec: HealthSpec) -> None:
        if spec is not self.spec:
            self._reset(spec)

    def kept_count(self, spec: HealthSpec) -> int:
        """How many windows' step noise the look-back has kept so far."""
        self._bind(spec)
        return self._kept()

    def _kept(self) -> int:
        """`kept_count` for the spec this state is bound to: windows 0, spacing, 2 spacing, ..."""
        return -(-self.noise_seen // self.spec.noisy_spacing)

    def push_noise(self, spec: HealthSpec, window_noise: np.ndarray) -> int:
        """Count one window, keeping its step noise (of the sensors the noisy check watches)
        if it falls on the look-back's spacing. Returns how many windows' noise it has kept."""
        self._bind(spec)
        kept = self._kept()
        if self.noise_seen % spec.noisy_spacing == 0:
            self.noise[kept % len(self.noise)] = window_noise
            kept += 1
        self.noise_seen += 1
        return kept

    def recent_noise(self, spec: HealthSpec, count: int) -> np.ndarray:
        """The last `count` (or fewer, as many as kept) kept windows' step noise, oldest first."""
        kept = self.kept_count(spec)
        ring = self.noise
        ordered = ring[:kept] if kept < len(ring) else np.roll(ring, -(kept % len(ring)), axis=0)
        return ordered[max(0, len(ordered) - count):]

    def step(self, spec: HealthSpec, z: list[float], limits: list[float], allowances: list[float]) -> int:
        """Advance by one window's standardised levels `z` of the watched sensors
        (`spec.drift_watched()`, in that order); `limits` and `allowances` are their
        `spec.drift_limit` and `spec.drift_k` as lists. Returns the position among them of the
        first drifting sensor, -1 for none. A non-finite level (an unscorable reading) leaves
        that sensor's memory as it is."""
        self._bind(spec)
        if self.base is None:
            self.base = [level if math.isfinite(level) else 0.0 for level in z]
        base, up, down, first = self.base, self.up, self.down, -1
        for f, (level, limit, k) in enumerate(zip(z, limits, allowances)):
            if not math.isfinite(level):
                continue
            cap = DRIFT_CAP * limit
            gap = level - base[f]
            base[f] += DRIFT_FOLLOW * gap
            # A move counts as drifting away only on the far side of the training level; a
            # level coming back towards it (a fault ending) is no evidence of drift.
            rise = gap if level > k or gap < 0.0 else 0.0
            fall = -gap if level < -k or gap > 0.0 else 0.0
            u = up[f] + rise - k
            d = down[f] + fall - k
            up[f] = u = 0.0 if u < 0.0 else cap if u > cap else u
            down[f] = d = 0.0 if d < 0.0 else cap if d > cap else d
            if first < 0 and (u > limit or d > limit):
                first = f
        return first


def check_windows(spec: HealthSpec, features: Sequence[str], raw: np.ndarray,
                  states: Sequence[HealthState]) -> list[str] | None:
    """Health reasons for raw windows `[B, W, F]` ("" for a healthy window), None when every
    window is healthy. `states[i]` is the memory of window i's device; windows of one device
    must come in time order (the drift sums advance once per window)."""
    if len(states) != len(raw):
        raise ValueError(f"check_windows: {len(raw)} windows but {len(states)} health states")
    level, spread = window_levels(raw)
    with np.errstate(invalid="ignore"):  # NaN readings fail no comparison: unscorable, not unhealthy
        outside = (raw > spec.envelope_high) | (raw < spec.envelope_low)
        # The reduction over the window is the costly part; the usual batch has nothing outside.
        outside = outside.any(axis=1) if outside.any() else np.zeros(level.shape, dtype=bool)
        stuck = spread < spec.stuck_below
        noisy = np.zeros(level.shape, dtype=bool)
        watched = spec.noisy_above > 0
        if watched.any():
            noise = window_step_noise(raw[:, :, watched])
            above = spec.noisy_above[watched]
            noisy[:, watched] = noise > above
            if spec.noisy_windows > 1:  # and over the look-back: persistent, and present in this window
                noisy[:, watched] &= lookback_noise(spec, states, noise) > above
        watched = spec.spike_above > 0  # a window under 3 readings holds none with both neighbours
        spiked = ((largest_excursion(raw, axis=1) > spec.spike_above) & watched
                  if watched.any() and raw.shape[1] >= 3 else np.zeros(level.shape, dtype=bool))
        shifted = (level > spec.shift_high) | (level < spec.shift_low)
        z = (level - spec.level_mean) / spec.level_std
        excess = None if spec.relation is None else spec.relation.excess(z)
        related = np.zeros(len(raw), dtype=bool) if excess is None else (excess > 1.0).any(axis=1)
    watched = spec.drift_watched()
    if len(watched):
        limits, allowances = spec.drift_limit[watched].tolist(), spec.drift_k[watched].tolist()
        drifting = [state.step(spec, z_i, limits, allowances) for state, z_i in zip(states, z[:, watched].tolist())]
    else:
        drifting = [-1] * len(states)
    outside_any, stuck_any, noisy_any, spiked_any, shifted_any = (
        outside.any(axis=1), stuck.any(axis=1), noisy.any(axis=1), spiked.any(axis=1), shifted.any(axis=1))
    if not (outside_any.any() or stuck_any.any() or noisy_any.any() or spiked_any.any() or related.any()
            or shifted_any.any() or max(drifting, default=-1) >= 0):
        return None
    reasons = [""] * len(raw)
    for i in np.flatnonzero(outside_any):
        reasons[i] = reason(OUT_OF_ENVELOPE, features[int(np.argmax(outside[i]))])
    for i in np.flatnonzero(stuck_any & ~outside_any):
        reasons[i] = reason(STUCK, features[int(np.argmax(stuck[i]))])
    for i in np.flatnonzero(noisy_any & ~stuck_any & ~outside_any):
        reasons[i] = reason(NOISY, features[int(np.argmax(noisy[i]))])
    for i in np.flatnonzero(spiked_any & ~noisy_any & ~stuck_any & ~outside_any):
        reasons[i] = reason(SPIKE, features[int(np.argmax(spiked[i]))])
    for i, f in enumerate(drifting):
        if f >= 0 and not reasons[i]:
            reasons[i] = reason(DRIFT, features[watched[f]])
    blamed = [i for i in np.flatnonzero(related) if not reasons[i]]
    if blamed:  # the sensor whose repair makes the others agree, not the first in order
        for i, culprit in zip(blamed, spec.relation.culprits(z[blamed])):
            reasons[i] = reason(RELATION, features[spec.relation.sensors[int(culprit)]])
    for i in np.flatnonzero(shifted_any):
        if not reasons[i]:
            reasons[i] = reason(SHIFT, features[int(np.argmax(shifted[i]))])
    return reasons


def lookback_noise(spec: HealthSpec, states: Sequence[HealthState], noise: np.ndarray) -> np.ndarray:
    """Per window, the median step noise over the device's last `spec.noisy_kept` kept windows
    up to this one `[B, watched]`; NaN while a device's look-back is not yet full. Devices
    with one window in the batch (the live service's usual batch) share one median call over
    their rings; a device with several (a file scored offline) gets rolling medians over its
    recent kept windows and the batch's in time order. Both take the median of the same
    values, so live and offline agree bit for bit."""
    count, spacing = spec.noisy_kept, spec.noisy_spacing
    noise = noise.astype(_LOOKBACK_DTYPE)
    out = np.full(noise.shape, np.nan)
    by_state: dict[int, list[int]] = {}
    for i, state in enumerate(states):
        by_state.setdefault(id(state), []).append(i)
    single = []
    for rows in by_state.values():
        state = states[rows[0]]
        if len(rows) == 1:
            if state.push_noise(spec, noise[rows[0]]) >= count:
                single.append(rows[0])
            continue
        recent = state.recent_noise(spec, count)  # a window off the spacing looks back on these alone
        seen = state.noise_seen  # the device's index of the batch's first window
        kept_rows = [i for j, i in enumerate(rows) if (seen + j) % spacing == 0]
        sequence = np.concatenate([recent, noise[kept_rows]])
        # the sequence's position 0 is kept window number `offset` of the device
        offset = state.kept_count(spec) - len(recent)
        if len(sequence) >= count:
            medians = rolling_median(sequence, count)  # medians[k] ends at sequence[k + count - 1]
            for j, i in enumerate(rows):
                last = (seen + j) // spacing - offset  # the latest kept window up to this one
                if last >= count - 1:
                    out[i] = medians[last - count + 1]
        for i in rows:
            state.push_noise(spec, noise[i])
    if single:
        out[single] = np.median(np.stack([states[i].noise for i in single]), axis=1)
    return out


def fit_health(fitted: Sequence[np.ndarray], held_out: Sequence[np.ndarray], window: int, stride: int,
               scale_floor: float = 0.0, with_relation: bool = False, noisy_lookback: int = 1,
               with_spike: bool = False, with_shift: bool = False) -> HealthSpec:
    """Fit the checks on normal runs `[n, F]`: `fitted`, the runs the model was fitted on, and
    `held_out`, the validation tails it was not. Envelope and stuck limits come from every row;
    the level statistics from the fitted runs; the drift allowance and limit from what the
    CUSUM meets over every run, each from a fresh state, so they include how far the level
    moves on rows the statistics did not see. `scale_floor` is the training's (see
    daemon.offline.training.floor_scale): a sensor's standard deviation counts as at least
    that fraction of its mean level, so a sensor that barely moved in training is not held to
    a change of a few hundredths of a degree. `with_relation` also fits the relation check
    (daemon.core.relations; `TrainConfig.relation_check`). `noisy_lookback` is the noisy
    check's look-back in windows' worth of rows (`TrainConfig.noisy_lookback`): at a stride
    below the window, the windows ending in that span, of which the look-back keeps one in
    `noisy_spacing` (NOISY_LOOKBACK_KEPT). `with_spike` fits the spike check
    (`TrainConfig.spike_check`); without it every sensor is exempt. `with_shift` fits
    the shift check (`TrainConfig.shift_check`); without it every sensor is exempt."""
    runs = [*fitted, *held_out]
    rows = np.concatenate(runs).astype(np.float64)
    low, high = rows.min(axis=0), rows.max(axis=0)
    levels_of_runs = [_levels(run, window, stride) for run in runs]  # empty for a run under one window
    per_run = [run_levels for run_levels in levels_of_runs if len(run_levels[0])]
    if not per_run:
        raise ValueError(f"sensor health: no normal run is one window ({window} rows) long")
    levels = np.concatenate([run_levels for run_levels, _ in per_run])
    spreads = np.concatenate([run_spreads for _, run_spreads in per_run])
    typical = STUCK_FRACTION * np.median(spreads, axis=0)
    stuck_below = np.where(spreads.min(axis=0) > typical, typical, 0.0)
    noisy_windows = 1 + (noisy_lookback - 1) * window // stride
    noisy_spacing = -(-(noisy_windows - 1) // (NOISY_LOOKBACK_KEPT - 1)) if noisy_windows > 1 else 1
    kept = kept_windows(noisy_windows, noisy_spacing)
    per_window = [_step_noise(run, window, stride) for run in runs if len(run) >= window]
    step_noise = np.concatenate(per_window)
    # the look-back's statistic on the values its ring holds, each run from a fresh state
    # (which keeps its first window); the window's own step noise without a look-back
    kept_noise = [noise[::noisy_spacing].astype(_LOOKBACK_DTYPE) for noise in per_window]
    looked_back = ([rolling_median(noise, kept) for noise in kept_noise if len(noise) >= kept]
                   if noisy_windows > 1 else per_window)
    largest = (np.concatenate(looked_back).max(axis=0).astype(np.float64) if looked_back
               else np.zeros(step_noise.shape[1]))
    noisy_above = np.where((np.median(step_noise, axis=0) > 0) & (largest > 0), NOISY_MARGIN * largest, 0.0)
    spike_above = np.zeros(rows.shape[1])
    if with_spike and window >= 3:  # each run on its own: a run's last reading is no neighbour of the next's first
        run_excursions = [_run_excursion(run) for run in runs if len(run) >= 3]
        if run_excursions:  # a sensor whose readings never left their neighbours is exempt
            spike_above = SPIKE_MARGIN * np.maximum(np.max(run_excursions, axis=0), 0.0)
    fitted_rows = np.concatenate(fitted).astype(np.float64)
    level_mean = fitted_rows.mean(axis=0)
    level_std = np.maximum(fitted_rows.std(axis=0), scale_floor * np.abs(level_mean))
    steady = level_std > 1e-12 * np.maximum(1.0, np.abs(level_mean))  # a constant level cannot drift by chance
    level_std = np.where(steady, level_std, 1.0)
    quiet = levels.std(axis=0) <= QUIET_RATIO * np.median(spreads, axis=0)
    margin = np.maximum(ENVELOPE_MARGIN * (high - low), ENVELOPE_MIN_STDS * np.where(steady, level_std, 0.0))
    if held_out:
        moved = np.abs(np.concatenate(held_out).astype(np.float64).mean(axis=0) - level_mean) / level_std
        trending = moved > TREND_LIMIT
        steady &= ~trending
        low = np.where(trending, -_UNBOUNDED, low)
        high = np.where(trending, _UNBOUNDED, high)
        margin = np.where(trending, 0.0, margin)
    exempt = np.where(steady & quiet, np.inf, 0.0)
    relation = None
    if with_relation:
        standardised = [(run_levels - level_mean) / level_std for run_levels, _ in levels_of_runs]
        relation = fit_relations(standardised[:len(fitted)], standardised[len(fitted):],
                                 np.flatnonzero(steady).tolist(), sum(len(run) // window for run in fitted))
    shift_low, shift_high = np.full(len(low), -_UNBOUNDED), np.full(len(low), _UNBOUNDED)
    if with_shift:
        # How many independent levels the runs show of each sensor, and how much further than
        # the largest departure among that many its level may go by chance (an upper bound on a
        # spread seen in n samples, the one the vote divisors take).
        looks = independent_stretches([run_levels for run_levels, _ in per_run])
        room = SHIFT_MARGIN * divisor_factor(looks, "mae")
        floor = SHIFT_MIN_STDS * level_std
        above = level_mean + np.maximum(room * np.maximum(levels.max(axis=0) - level_mean, 0.0), floor)
        below = level_mean - np.maximum(room * np.maximum(level_mean - levels.min(axis=0), 0.0), floor)
        shifting = steady & quiet & (looks >= THIN_EVIDENCE)
        shift_low, shift_high = np.where(shifting, below, shift_low), np.where(shifting, above, shift_high)
    spec = HealthSpec(low - margin, high + margin, stuck_below, level_mean, level_std, np.zeros(len(low)), exempt,
                      noisy_above, spike_above, relation, noisy_windows, noisy_spacing, shift_low, shift_high)
    gaps = _largest_drift_terms(spec, runs, window, stride, gaps=True)
    spec.drift_k = np.maximum(DRIFT_K, DRIFT_MARGIN * gaps)
    sums = _largest_drift_terms(spec, runs, window, stride, gaps=False)
    spec.drift_limit = np.where(steady & quiet, np.maximum(DRIFT_MARGIN * sums, DRIFT_MIN_LIMIT), 0.0)
    return spec


def _run_excursion(run: np.ndarray) -> np.ndarray:
    """`largest_excursion` of a whole run `[n, F]` along its rows, _MEDIAN_CHUNK readings at a
    time (each chunk with the two neighbours its end readings need), in float64."""
    judged = len(run) - 2  # every reading but the first and last
    return np.max([largest_excursion(run[start:start + _MEDIAN_CHUNK + 2].astype(np.float64), axis=0)
                   for start in range(0, judged, _MEDIAN_CHUNK)], axis=0)


def _largest_drift_terms(spec: HealthSpec, runs: Sequence[np.ndarray], window: int, stride: int,
                         gaps: bool) -> np.ndarray:
    """Per sensor, the largest gap between a level and its baseline (`gaps`), or the largest
    CUSUM sum, that `HealthState` meets over the runs, each run from a fresh state; 0 for a
    sensor the drift check does not watch."""
    watched = spec.drift_watched()
    limits, allowances = spec.drift_limit[watched].tolist(), spec.drift_k[watched].tolist()
    largest = np.zeros(len(spec.level_mean))
    if not len(watched):
        return largest
    for run in runs:
        state = HealthState(spec)
        for run_levels in _levels(run, window, stride, chunks=True):
            terms = np.zeros((len(run_levels), 2, len(watched)))  # per window: (gap, 0) or (up, down)
            standardised = (run_levels[:, watched] - spec.level_mean[watched]) / spec.level_std[watched]
            for i, z in enumerate(standardised.tolist()):
                before = state.base
                before = list(before) if before is not None else list(z)
                state.step(spec, z, limits, allowances)
                terms[i] = (np.subtract(z, before), np.zeros(len(z))) if gaps else (state.up, state.down)
            largest[watched] = np.maximum(largest[watched], np.nanmax(np.abs(terms), axis=(0, 1)))
    return largest


def _window_chunks(run: np.ndarray, window: int, stride: int):
    """The run's windows `[n, W, F]`, at most _FIT_CHUNK at a time (bounded memory on long runs)."""
    n_windows = 0 if len(run) < window else (len(run) - window) // stride + 1
    for first in range(0, n_windows, _FIT_CHUNK):
        count = min(_FIT_CHUNK, n_windows - first)
        yield windows(run[first * stride:(first + count - 1) * stride + window], window, stride)


def _step_noise(run: np.ndarray, window: int, stride: int) -> np.ndarray:
    """`window_step_noise` of a run's windows `[n_windows, F]`."""
    return np.concatenate([window_step_noise(chunk) for chunk in _window_chunks(run, window, stride)])


def rolling_median(values: np.ndarray, count: int) -> np.ndarray:
    """Per position from `count` - 1 on, the median of the last `count` rows of `values` `[n, F]`:
    what `lookback_noise` gives a device's kept windows, for a whole run at once. Taken
    _MEDIAN_CHUNK positions at a time: the median copies its `count` values per position, which
    for a long training run would be the run `count` times over."""
    if count == 1:
        return values
    positions = len(values) - count + 1
    parts = [np.median(np.lib.stride_tricks.sliding_window_view(values[start:start + _MEDIAN_CHUNK + count - 1],
                                                                count, axis=0), axis=-1)
             for start in range(0, max(positions, 0), _MEDIAN_CHUNK)]
    return np.concatenate(parts) if parts else np.empty((0, values.shape[1]), dtype=values.dtype)


def _levels(run: np.ndarray, window: int, stride: int, chunks: bool = False):
    """`window_levels` of a run's windows, computed a chunk of windows at a time; with
    `chunks`, an iterator over the chunks' levels instead of (levels, spreads) of the run."""
    parts = [window_levels(chunk) for chunk in _window_chunks(run, window, stride)]
    if chunks:
        return (level for level, _ in parts)
    if not parts:
        n = run.shape[1]
        return np.empty((0, n)), np.empty((0, n))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
