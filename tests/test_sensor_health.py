"""Sensor-health checks beside the autoencoder (daemon.core.sensor_health): fitted on training
data, stored in the bundle, run by the one scoring path offline and live alike."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from daemon.core.bundle import load_bundle
from daemon.core.errors import BundleError
from daemon.core.postprocess import alert_flags
from daemon.core.relations import RelationSpec, degree_for
from daemon.core.scoring import OUT_OF_RANGE, Scorer
from daemon.core.sensor_health import (CHECKS, DRIFT, NOISY, NOISY_LOOKBACK_KEPT, OUT_OF_ENVELOPE, RELATION, SHIFT,
                                       SPIKE, STUCK, HealthSpec, HealthState, check_of, check_windows, fit_health,
                                       lookback_noise, window_levels, window_step_noise)
from daemon.cli import main
from daemon.core.windowing import window_ends, windows
from daemon.live.alerting import AlertTracker
from daemon.live.events import WindowJob
from daemon.live.sinks.line_protocol import decode, encode
from daemon.offline import synthetic
from daemon.offline.frame_scoring import score_frame
from daemon.offline.frames import Frame
from daemon.offline.training import TrainConfig, train
from test_live_worker import FakeSink, counter, make_worker

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
WINDOW = 20
QUIET = "bearing_temperature"


def fitted(values: np.ndarray, noisy_lookback: int = 1, shift: bool = True) -> HealthSpec:
    """Every check, the relation, spike and shift checks too (the shift check unless `shift` is
    false), as training fits them: the first 80 % of the rows, the tail held out."""
    cut = int(len(values) * 0.8)
    return fit_health([values[:cut]], [values[cut:]], WINDOW, 1, with_relation=True, noisy_lookback=noisy_lookback,
                      with_spike=True, with_shift=shift)


def with_quiet_channel(data: synthetic.Synthetic, seed: int) -> np.ndarray:
    """The generated pump plus a quiet sensor: a steady level with a little noise."""
    quiet = 40.0 + 0.1 * np.random.default_rng(seed).normal(size=len(data.values))
    return np.column_stack([data.values, quiet]).astype(np.float32)


def reasons_of(spec: HealthSpec, features: list[str], values: np.ndarray) -> list[str]:
    raw = windows(values, WINDOW, 1)
    state = HealthState()
    return check_windows(spec, features, raw, [state] * len(raw)) or [""] * len(raw)


def quiet_vibration(values: np.ndarray, seed: int) -> np.ndarray:
    """The generated pump with a quiet vibration sensor (noise around a steady level), so that
    every check, drift included, watches one of the demo model's sensors."""
    values = values.copy()
    values[:, 0] = 0.026 + 0.0008 * np.random.default_rng(seed).normal(size=len(values))
    return values


def demo_with_health(noisy_lookback: int = 1) -> Scorer:
    """The shipped demo model with checks fitted on generated normal data."""
    scorer = Scorer.load(DEMO)
    health = fitted(quiet_vibration(synthetic.normal(6000, seed=0).values, seed=0), noisy_lookback)
    return Scorer(dataclasses.replace(scorer.bundle, health=health), scorer.backend)


def frame_of(values: np.ndarray, features: list[str]) -> Frame:
    timestamps = 1_700_000_000.0 + np.arange(len(values), dtype=np.float64)
    return Frame("test", timestamps, values.astype(np.float32), features, None)


def test_a_normal_series_raises_no_health_flag():
    features = [*synthetic.FEATURES, QUIET]
    spec = fitted(with_quiet_channel(synthetic.normal(6000, seed=0), seed=0))
    assert reasons_of(spec, features, with_quiet_channel(synthetic.normal(4000, seed=3), seed=3)) == [""] * 3981


def test_a_stuck_sensor_is_flagged_stuck_with_its_name():
    spec = fitted(synthetic.normal(6000, seed=0).values)
    data = synthetic.inject(synthetic.normal(2000, seed=3), "stuck", 1000, 300)
    reasons = reasons_of(spec, synthetic.FEATURES, data.values)
    ends = window_ends(len(data.values), WINDOW, 1)
    stuck = [r for end, r in zip(ends, reasons) if 1000 + WINDOW <= end < 1300]
    assert stuck == ["stuck:flow"] * len(stuck) and len(stuck) == 300 - WINDOW
    assert set(reasons[:1000 - WINDOW]) == {""}


def test_a_slow_drift_on_a_quiet_channel_is_flagged_drift_before_it_leaves_the_envelope():
    features = [*synthetic.FEATURES, QUIET]
    spec = fitted(with_quiet_channel(synthetic.normal(6000, seed=0), seed=0), shift=False)  # which sees it first
    values = with_quiet_channel(synthetic.normal(4000, seed=3), seed=3)
    values[1000:, -1] += 0.005 * np.arange(3000)  # 0.05 noise standard deviations per reading
    reasons = reasons_of(spec, features, values)
    first = next(i for i, r in enumerate(reasons) if r)
    assert reasons[first] == f"drift:{QUIET}"
    # A predictor far out of its training range is clipped into it: it moves no other sensor's
    # prediction, so no other sensor is blamed.
    assert not any(check_of(r) == RELATION for r in reasons)
    assert first + WINDOW - 1 >= 1000
    assert values[first + WINDOW - 1, -1] < spec.envelope_high[-1]  # the envelope alone would not yet see it


def test_a_steady_offset_on_a_quiet_channel_is_flagged_shift_once_the_drift_check_has_followed_it():
    features = [*synthetic.FEATURES, QUIET]
    training = with_quiet_channel(synthetic.normal(6000, seed=0), seed=0)
    spec = fitted(training)
    values = with_quiet_channel(synthetic.normal(4000, seed=3), seed=3)
    values[1000:, -1] += 0.5  # a transmitter's bias of 5 noise standard deviations, inside the envelope
    assert values[1000:, -1].max() < spec.envelope_high[-1]
    reasons = reasons_of(spec, features, values)
    assert set(reasons[:1000 - WINDOW + 1]) == {""}
    # long after the drift baseline has caught up, every window is flagged, nearly all as shifted
    assert "" not in reasons[-1000:] and reasons[-1000:].count(f"shift:{QUIET}") >= 990
    without = reasons_of(fitted(training, shift=False), features, values)[-1000:]
    assert without.count(f"drift:{QUIET}") == 0 and without.count("") >= 990  # what the drift check alone leaves


def test_a_quiet_sensor_whose_levels_training_shows_in_few_independent_stretches_is_not_watched_for_a_shift():
    rows = np.arange(6000)
    values = with_quiet_channel(synthetic.normal(6000, seed=0), seed=0)
    values[:, -1] += 0.09 * np.sin(2 * np.pi * rows / 6000)  # one slow swing, below the noise: still quiet
    spec = fitted(values)
    assert spec.drift_limit[-1] > 0  # quiet: the drift check watches it
    assert spec.shift_high[-1] == np.finfo(np.float64).max and spec.shift_low[-1] == -np.finfo(np.float64).max
    assert fitted(with_quiet_channel(synthetic.normal(6000, seed=0), seed=0)).shift_high[-1] < 41.0


def test_a_sensor_that_no_longer_agrees_with_the_others_is_flagged_relation_with_its_name():
    spec = fitted(synthetic.normal(6000, seed=0).values)
    values = synthetic.normal(2000, seed=3).values.copy()
    values[1000:, 2] -= 0.1  # pressure reads low: well inside its range, off what flow and current say
    reasons = reasons_of(spec, synthetic.FEATURES, values)
    ends = window_ends(len(values), WINDOW, 1)
    assert {r for end, r in zip(ends, reasons) if end < 1000} == {""}
    assert {r for end, r in zip(ends, reasons) if end >= 1000 + WINDOW - 1} == {f"{RELATION}:pressure"}
    assert values[1000:, 2].min() > spec.envelope_low[2] and values[1000:, 2].max() < spec.envelope_high[2]


def test_a_relation_flag_blames_the_sensor_whose_repair_makes_the_others_agree():
    # c = a + b and d = a - b, c held tightest. a reads high: its own residual is 1.5 limits,
    # but c, predicted from that a, is off by 7.5 of its tighter limits. Replacing a by what c
    # and d say of it makes every relation hold again; replacing c does not repair d.
    coef = np.zeros((5, 4))  # terms: 1, a, b, c, d
    coef[[3, 4], 0] = 0.5, 0.5  # a = (c + d) / 2
    coef[[3, 4], 1] = 0.5, -0.5  # b = (c - d) / 2
    coef[[1, 2], 2] = 1.0, 1.0  # c = a + b
    coef[[1, 2], 3] = 1.0, -1.0  # d = a - b
    relation = RelationSpec(1, [0, 1, 2, 3], coef, np.array([1.0, 1.0, 0.2, 1.0]), np.full(4, -10.0),
                            np.full(4, 10.0))
    z = np.array([[1.5, 0.0, 0.0, 0.0]])
    assert np.argmax(relation.excess(z)[0]) == 2  # furthest from its own prediction: the victim c
    assert relation.culprits(z).tolist() == [0]


def test_only_sensors_the_others_explain_are_watched_for_their_relation():
    features = [*synthetic.FEATURES, QUIET]
    relation = fitted(with_quiet_channel(synthetic.normal(6000, seed=0), seed=0)).relation
    watched = [features[s] for s, limit in zip(relation.sensors, relation.limit) if limit > 0]
    # The temperature follows a cycle of its own and the quiet channel is noise around a level:
    # neither has a relation to break, and a level moving on its own is the drift check's.
    assert watched == ["vibration", "current", "pressure", "flow"]


def test_the_relation_fit_takes_the_degree_its_independent_windows_support():
    assert degree_for(samples=576, sensors=8) == 2  # 45 terms: 11,520 rows at a window of 20
    assert degree_for(samples=120, sensors=8) == 1  # 9 terms: a plane, not a curved surface
    assert degree_for(samples=16, sensors=8) is None  # 320 rows: SKAB's training runs
    values = synthetic.normal(6000, seed=0).values
    # 1,000 rows are 50 windows: a plane through 5 sensors needs 60.
    assert fit_health([values[:1000]], [values[1000:1250]], WINDOW, 1, with_relation=True).relation is None
    assert fit_health([values[:1200]], [values[1200:1500]], WINDOW, 1, with_relation=True).relation.degree == 1


def test_a_sensor_whose_own_noise_grows_is_flagged_noisy_with_its_name():
    spec = fitted(synthetic.normal(6000, seed=0).values)
    data = synthetic.normal(2000, seed=3)
    values = data.values.copy()
    # pressure's noise grows fivefold (its own is 0.03): 0.03 * sqrt(5**2 - 1) more
    noise = np.random.default_rng(4).normal(0, 0.03 * np.sqrt(24), size=300)
    values[1000:1300, 2] += noise.astype(np.float32)
    reasons = reasons_of(spec, synthetic.FEATURES, values)
    ends = window_ends(len(values), WINDOW, 1)
    inside = [r for end, r in zip(ends, reasons) if 1000 + WINDOW <= end < 1300]
    assert inside.count("noisy:pressure") >= 0.5 * len(inside)  # fivefold is near the limit: twice training's worst
    assert set(reasons[:1000 - WINDOW]) == {""}


def test_a_reading_that_leaves_both_its_neighbours_is_flagged_spike_with_its_name():
    spec = fitted(synthetic.normal(6000, seed=0).values)
    values = synthetic.normal(2000, seed=3).values.copy()
    low, high = spec.envelope_low[2], spec.envelope_high[2]
    values[1000, 2] += 0.5 * (high - low) / 3  # a loose connector's spike on pressure ...
    values[1500, 2] = values[:, 2].min() - 0.1  # ... and a dropout, both inside pressure's envelope
    assert low < values[[1000, 1500], 2].min() and values[[1000, 1500], 2].max() < high
    reasons = reasons_of(spec, synthetic.FEATURES, values)
    ends = window_ends(len(values), WINDOW, 1)
    for row in (1000, 1500):  # every window holding the reading and both its neighbours, no other
        holding = [r for end, r in zip(ends, reasons) if row + 1 <= end <= row + WINDOW - 2]
        assert holding == ["spike:pressure"] * (WINDOW - 2)
    # (the window with the dropout first or last still reads a low pressure level: the relation's)
    assert {r for end, r in zip(ends, reasons) if not (1000 <= end <= 1019 or 1500 <= end <= 1519)} == {""}


def test_a_step_a_ramp_or_a_held_value_is_no_spike():
    spec = fitted(synthetic.normal(6000, seed=0).values)
    values = synthetic.normal(3000, seed=3).values.copy()
    values[1000:, 2] += 0.3  # a setpoint step on pressure, ten times its noise, in one reading
    values[2000:2100, 2] += np.linspace(0.0, 0.5, 100)  # and a fast ramp
    values[2500:2600, 2] = np.repeat(values[2500:2600:10, 2], 10)  # and a sampled-and-held stretch
    assert not any(check_of(r) == SPIKE for r in reasons_of(spec, synthetic.FEATURES, values))


@pytest.mark.parametrize("window", [1, 2, 20, 60, 401])
def test_window_levels_are_numpys_mean_and_standard_deviation_bit_for_bit(window):
    raw = (np.random.default_rng(window).normal(size=(64, window, 8)) * 10 + 3).astype(np.float32)
    raw[3, window // 2, 2] = np.nan
    level, spread = window_levels(raw)
    values = raw.astype(np.float64)
    np.testing.assert_array_equal(level, values.mean(axis=1))
    np.testing.assert_array_equal(spread, values.std(axis=1))
    assert np.isnan(level[3, 2]) and np.isnan(spread[3, 2])


@pytest.mark.parametrize("window", [2, 3, 20, 21])
def test_the_step_noise_is_the_median_absolute_change_over_the_window_and_nan_with_a_nan_reading(window):
    raw = np.random.default_rng(window).normal(size=(40, window, 5)).astype(np.float32)
    raw[3, window // 2, 2] = np.nan
    raw[7, :, 1] = 5.0  # a flat sensor: no step noise
    with np.errstate(invalid="ignore"):
        expected = np.median(np.abs(np.diff(raw.astype(np.float64), axis=1)), axis=1)
    np.testing.assert_array_equal(window_step_noise(raw), expected)
    assert np.isnan(window_step_noise(raw)[3, 2]) and window_step_noise(raw)[7, 1] == 0.0


def test_a_window_too_short_for_a_reading_with_two_neighbours_has_no_spike_check():
    values = synthetic.normal(3000, seed=0).values
    assert not fit_health([values[:2400]], [values[2400:]], 2, 1, with_spike=True).spike_above.any()
    spec = fitted(values)  # limits of a window of 20, met by windows of 2 (a hand-edited bundle)
    raw = windows(synthetic.normal(100, seed=3).values, 2, 1)
    reasons = check_windows(spec, synthetic.FEATURES, raw, [HealthState() for _ in raw]) or []
    assert not any(check_of(r) == SPIKE for r in reasons)  # (the other checks judge such windows as they can)


def test_a_longer_noise_lookback_sets_a_lower_limit_and_flags_more_of_a_noise_rise_no_longer():
    """Three windows' worth of readings: the median of 41 windows' step noise scatters less than
    one window's, so training's largest, and the limit, sit nearer the typical noise."""
    normal = synthetic.normal(6000, seed=0).values
    alone, looked_back = fitted(normal), fitted(normal, noisy_lookback=3)
    assert looked_back.noisy_windows == 1 + 2 * WINDOW and alone.noisy_windows == 1
    assert looked_back.noisy_above[2] < 0.9 * alone.noisy_above[2]
    values = synthetic.normal(2000, seed=3).values.copy()
    values[1000:1300, 2] += np.random.default_rng(4).normal(0, 0.03 * np.sqrt(5 ** 2 - 1), size=300)  # fivefold
    ends = window_ends(len(values), WINDOW, 1)
    caught, last = {}, {}
    for name, spec in (("alone", alone), ("looked back", looked_back)):
        reasons = reasons_of(spec, synthetic.FEATURES, values)
        assert set(reasons[:1000 - WINDOW]) == {""}
        caught[name] = sum(r == "noisy:pressure" for end, r in zip(ends, reasons) if 1000 <= end < 1300)
        last[name] = max(end for end, r in zip(ends, reasons) if r == "noisy:pressure")
    assert caught["looked back"] >= 0.75 * 300 and caught["looked back"] > 1.2 * caught["alone"]
    # the window's own noise must be there too: the flag clears as the window leaves the noise,
    # not half a look-back (20 windows) later
    assert last["looked back"] < 1300 + WINDOW // 2 + 1


def test_inspect_names_the_noise_lookback_and_the_spike_check():
    values = synthetic.normal(3000, seed=0).values
    assert "noisy (look-back 41 windows, 9 kept): " in fitted(values, noisy_lookback=3).describe(synthetic.FEATURES)
    assert "; noisy: " in fitted(values).describe(synthetic.FEATURES)
    assert f"; spike: {', '.join(synthetic.FEATURES)};" in fitted(values).describe(synthetic.FEATURES)
    without = fit_health([values[:2400]], [values[2400:]], WINDOW, 1)
    assert "; spike: none;" in without.describe(synthetic.FEATURES)


def test_the_noise_lookback_keeps_a_few_evenly_spaced_windows_whatever_the_window_length():
    """A device's look-back ring is NOISY_LOOKBACK_KEPT windows' step noise at most, spaced
    over the look-back's span, so the service's memory per device does not grow with the window."""
    values = synthetic.normal(6000, seed=0).values
    for window in (6, 20, 60):
        spec = fit_health([values[:4800]], [values[4800:]], window, 1, noisy_lookback=3)
        assert spec.noisy_windows == 1 + 2 * window
        assert spec.noisy_kept <= NOISY_LOOKBACK_KEPT
        span = spec.noisy_windows - 1
        assert (spec.noisy_kept - 1) * spec.noisy_spacing <= span < spec.noisy_kept * spec.noisy_spacing
        state = HealthState()
        for row in np.ones((500, int((spec.noisy_above > 0).sum()))):
            lookback_noise(spec, [state], row[None, :])
        assert len(state.noise) == spec.noisy_kept


def test_the_noise_lookback_speaks_only_once_it_is_full():
    spec = fitted(synthetic.normal(6000, seed=0).values, noisy_lookback=3)
    values = synthetic.normal(500, seed=3).values.copy()
    values[:, 2] += np.random.default_rng(4).normal(0, 0.3, size=500)  # noisy from the first reading
    reasons = reasons_of(spec, synthetic.FEATURES, values)
    first = next(i for i, r in enumerate(reasons) if r == "noisy:pressure")
    assert first == spec.noisy_windows - 1


def test_the_noise_lookback_gives_the_same_medians_window_by_window_as_for_a_whole_batch():
    """The live service meets a device one window a batch, offline scoring a file's windows in
    one batch: both must give the same medians, bit for bit."""
    spec = fitted(synthetic.normal(3000, seed=0).values, noisy_lookback=3)
    noise = np.abs(np.random.default_rng(7).normal(size=(150, int((spec.noisy_above > 0).sum()))))
    one_by_one, state = [], HealthState()
    for row in noise:
        one_by_one.append(lookback_noise(spec, [state], row[None, :])[0])
    state = HealthState()
    assert spec.noisy_spacing > 1 and 57 % spec.noisy_spacing  # batches that cut the spacing
    in_batches = np.concatenate([lookback_noise(spec, [state] * 57, noise[:57]),
                                 lookback_noise(spec, [state] * 93, noise[57:])])
    np.testing.assert_array_equal(np.array(one_by_one), in_batches)
    assert np.isnan(in_batches[:spec.noisy_windows - 1]).all() and not np.isnan(in_batches[spec.noisy_windows - 1:]).any()


def test_a_process_move_or_a_single_step_is_no_noise():
    values = synthetic.normal(6000, seed=0).values.copy()
    spec = fitted(values)
    test = synthetic.normal(2000, seed=3).values.copy()
    test[1000:, 1] += 0.3  # one step on current, far beyond its noise, held: the envelope's business
    reasons = reasons_of(spec, synthetic.FEATURES, test)
    assert not any(r.startswith("noisy:") for r in reasons)


def test_a_sensor_constant_or_quantised_in_training_is_exempt_from_the_stuck_check():
    values = synthetic.normal(3000, seed=0).values.copy()
    values[:, 1] = np.round(values[:, 1], 0)  # quantised: flat windows are its normal
    values[:, 2] = 7.0  # constant
    spec = fitted(values)
    assert spec.stuck_below[1] == 0 and spec.stuck_below[2] == 0 and spec.stuck_below[0] > 0
    assert spec.noisy_above[1] == 0 and spec.noisy_above[2] == 0 and spec.noisy_above[0] > 0  # nor noisy
    assert spec.drift_limit[2] == 0  # a constant level has no spread to measure a drift in


def test_every_health_reason_names_its_check_and_sensor():
    assert [check_of(f"{c}:flow") for c in CHECKS] == [OUT_OF_ENVELOPE, STUCK, NOISY, SPIKE, DRIFT, RELATION, SHIFT]
    assert check_of(OUT_OF_RANGE) is None and check_of("") is None


def test_a_window_that_cannot_be_scored_keeps_its_unscorable_reason():
    scorer = demo_with_health()
    raw = synthetic.normal(WINDOW, seed=5).values[None].copy()
    raw[0, :, 3] = raw[0, 0, 3]  # stuck flow ...
    raw[0, -1, 2] = 3.4028234e38  # ... and a fault code
    assert scorer.score_windows(raw, [HealthState()]).reasons == [OUT_OF_RANGE]
    raw[0, -1, 2] = raw[0, -2, 2]
    assert scorer.score_windows(raw, [HealthState()]).reasons == ["stuck:flow"]


def test_health_flags_leave_the_autoencoder_score_untouched():
    scorer = demo_with_health()
    raw = synthetic.normal(WINDOW, seed=5).values[None].copy()
    raw[0, :, 3] = raw[0, 0, 3]
    with_health = scorer.score_windows(raw, [HealthState()])
    without = scorer.score_windows(raw)
    assert with_health.reasons == ["stuck:flow"] and without.reasons is None
    np.testing.assert_array_equal(with_health.scores, without.scores)
    np.testing.assert_array_equal(with_health.feature_errors, without.feature_errors)
    assert with_health.flags(np.inf).tolist() == [True]


@pytest.mark.parametrize("noisy_lookback", [1, 3])
def test_offline_scoring_and_the_live_worker_give_the_same_flags_and_reasons(noisy_lookback):
    scorer = demo_with_health(noisy_lookback)
    data = synthetic.inject(synthetic.normal(1500, seed=4), "stuck", 300, 150)
    values = quiet_vibration(data.values, seed=4)
    values[520:650, 2] += np.random.default_rng(5).normal(0, 0.3, size=130).astype(np.float32)  # pressure noisy
    values[700:, 0] += 0.0002 * np.arange(800)  # vibration drifting away, then out of the envelope
    values[200, 3] = 0.0  # one flow reading drops out, well inside the flow's envelope
    frame = frame_of(values, synthetic.FEATURES)
    offline = score_frame(scorer, frame)
    offline_alerts = alert_flags(offline.flags(scorer.threshold).astype(np.int8), scorer.bundle.alert)
    assert {check_of(r) for r in offline.reasons} == {None, STUCK, NOISY, SPIKE, DRIFT, OUT_OF_ENVELOPE, RELATION, SHIFT}

    sink = FakeSink()
    spec = scorer.bundle.alert
    worker, queue, metrics = make_worker(scorer, sink, spec.enter_after, spec.leave_after, queue_size=5000,
                                         max_wait_s=0)
    for end in offline.ends:
        queue.put(WindowJob("pump-3", float(frame.timestamps[end]), values[end - WINDOW + 1:end + 1].copy(), 1.0))
    queue.put(WindowJob("pump-4", 1.0, values[:WINDOW].copy(), 1.0))  # another device: its own memory
    worker.start()
    events = sink.wait_for(len(offline.ends) + 1)
    worker.stop()
    live = [e for e in events if e.device == "pump-3"]
    assert [e.reason for e in live] == offline.reasons
    assert [e.anomaly for e in live] == offline.flags(scorer.threshold).tolist()
    assert [e.alert for e in live] == offline_alerts.astype(bool).tolist()
    assert [e.score for e in live] == offline.scores.tolist()
    stuck = sum(check_of(r) == STUCK for r in offline.reasons)
    assert counter(metrics, "anomalyd_sensor_health_flags_total", check=STUCK) == stuck
    flagged = next(e for e in live if e.reason == "stuck:flow")
    point = decode(encode(flagged))
    assert point.tags["reason"] == "stuck:flow" and point.fields["anomaly"] == 1


def test_a_device_keeps_its_health_memory_beside_its_alert_state_until_it_is_forgotten():
    tracker = AlertTracker(3, 5)
    first, other = tracker.health_states(["pump-3", "pump-4"])
    assert tracker.health_states(["pump-3"]) == [first] and first is not other
    tracker.forget("pump-3")
    assert tracker.health_states(["pump-3"])[0] is not first


def test_a_reloaded_bundle_starts_the_drift_memory_again():
    values = quiet_vibration(synthetic.normal(3000, seed=0).values, seed=0)
    old, new = fitted(values), fitted(values)
    watched = old.drift_watched()
    assert synthetic.FEATURES[watched[0]] == "vibration"
    limits, allowances = old.drift_limit[watched].tolist(), old.drift_k[watched].tolist()
    state = HealthState()
    z = [5.0] * len(watched)
    state.step(old, z, limits, allowances)
    state.step(old, [10.0] * len(watched), limits, allowances)
    assert state.up[0] > 0
    state.step(new, z, limits, allowances)
    assert state.spec is new and state.up == [0.0] * len(watched)


def test_a_spec_that_watches_no_sensor_for_drift_keeps_no_drift_memory():
    spec = fitted(synthetic.normal(3000, seed=0).values)  # no quiet sensor: every level follows the process
    assert not len(spec.drift_watched())
    state = HealthState(spec)
    assert state.up == [] and state.down == []
    raw = windows(synthetic.normal(200, seed=3).values, WINDOW, 1)
    check_windows(spec, synthetic.FEATURES, raw, [state] * len(raw))
    assert state.base is None


def test_an_old_bundle_without_health_loads_and_scores_with_the_checks_off(tmp_path):
    directory = tmp_path / "old"
    shutil.copytree(DEMO, directory)
    data = json.loads((directory / "bundle.json").read_text())
    del data["health"]
    (directory / "bundle.json").write_text(json.dumps(data))
    scorer = Scorer.load(directory)
    assert scorer.bundle.health is None
    raw = synthetic.normal(WINDOW, seed=5).values[None].copy()
    raw[0, :, 3] = raw[0, 0, 3]
    assert scorer.score_windows(raw, [HealthState()]).reasons is None
    assert Scorer.load(DEMO).score_windows(raw, [HealthState()]).reasons == ["stuck:flow"]


def demo_copy_with_fitted_health(directory: Path):
    """A copy of the demo bundle in `directory` whose checks are fitted on generated normal data."""
    shutil.copytree(DEMO, directory)
    bundle = load_bundle(directory)
    bundle.health = fitted(synthetic.normal(3000, seed=0).values)
    bundle.write_json(directory)
    return bundle


def test_a_bundle_fitted_before_the_noise_spike_and_shift_checks_loads_with_those_checks_off(tmp_path):
    directory = tmp_path / "before"
    bundle = demo_copy_with_fitted_health(directory)
    data = json.loads((directory / "bundle.json").read_text())
    del data["health"]["noisy_above"]
    del data["health"]["noisy_windows"]
    del data["health"]["noisy_spacing"]
    del data["health"]["spike_above"]
    del data["health"]["shift_low"]
    del data["health"]["shift_high"]
    (directory / "bundle.json").write_text(json.dumps(data))
    loaded = load_bundle(directory).health
    assert loaded.noisy_above.tolist() == [0.0] * 5 and loaded.noisy_windows == 1 and loaded.noisy_spacing == 1
    assert loaded.spike_above.tolist() == [0.0] * 5
    assert "; shift: none;" in loaded.describe(synthetic.FEATURES)
    np.testing.assert_array_equal(loaded.stuck_below, bundle.health.stuck_below)


def test_health_is_written_to_and_read_back_from_bundle_json(tmp_path):
    directory = tmp_path / "bundle"
    bundle = demo_copy_with_fitted_health(directory)
    loaded = load_bundle(directory).health
    for name in HealthSpec.FIELDS:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(bundle.health, name))
    assert loaded.relation.to_dict() == bundle.health.relation.to_dict()
    assert (loaded.noisy_windows, loaded.noisy_spacing) == (bundle.health.noisy_windows, bundle.health.noisy_spacing)


def test_a_bundle_fitted_before_the_relation_check_loads_with_that_check_off(tmp_path):
    directory = tmp_path / "before"
    demo_copy_with_fitted_health(directory)
    data = json.loads((directory / "bundle.json").read_text())
    del data["health"]["relation"]
    (directory / "bundle.json").write_text(json.dumps(data))
    assert load_bundle(directory).health.relation is None


@pytest.mark.parametrize("edit, message", [
    (lambda h: h.update(stuck_below=[1.0]), "'stuck_below' must be 5 finite numbers"),
    (lambda h: h.update(level_std=[0.0] * 5), "'level_std' must be > 0"),
    (lambda h: h.update(noisy_above=[-1.0] * 5), "'noisy_above' must be >= 0"),
    (lambda h: h.update(noisy_windows=0), "'noisy_windows' must be a whole number >= 1"),
    (lambda h: h.update(noisy_spacing=1.5), "'noisy_spacing' must be a whole number >= 1"),
    (lambda h: h.update(spike_above=[-1.0] * 5), "'spike_above' must be >= 0"),
    (lambda h: h.update(envelope_low=[1e9] * 5), "'envelope_low' must not exceed 'envelope_high'"),
    (lambda h: h.update(shift_low=[1.0] * 5, shift_high=[0.0] * 5), "'shift_low' must not exceed 'shift_high'"),
    (lambda h: h.update(surprise=1), "unknown key(s) surprise"),
    (lambda h: h["relation"].update(coef=[[0.0]]), "'relation': 'coef' must be 6 rows of 5 finite numbers"),
    (lambda h: h["relation"].update(sensors=[0, 0]), "'relation': 'sensors' must be at least 2 distinct"),
    (lambda h: h["relation"].update(limit=[-1.0] * 5), "'relation': 'limit' must be >= 0"),
])
def test_a_broken_health_section_is_a_bundle_error_naming_the_field(tmp_path, edit, message):
    directory = tmp_path / "bundle"
    demo_copy_with_fitted_health(directory)
    data = json.loads((directory / "bundle.json").read_text())
    edit(data["health"])
    (directory / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="field 'health'") as error:
        load_bundle(directory)
    assert message in str(error.value)


def test_training_fits_the_checks_into_the_bundle():
    data = synthetic.normal(1200, seed=0)
    frame = Frame("normal.csv", data.timestamps, data.values, list(synthetic.FEATURES), None)
    health = train([frame], TrainConfig(epochs=1, arch="mlp")).bundle.health
    assert health is not None and health.stuck_below.shape == (5,)
    assert (health.envelope_low < data.values.min(axis=0)).all()
    assert (health.envelope_high > data.values.max(axis=0)).all()


def test_train_fits_the_relation_check_where_the_data_allow_and_no_relation_check_leaves_it_out(tmp_path):
    data = str(synthetic.normal(6000, seed=0).write_csv(tmp_path / "normal.csv"))
    for out, extra in ((tmp_path / "default", []), (tmp_path / "without", ["--no-relation-check"])):
        assert main(["train", "--data", data, "--out", str(out), "--arch", "mlp", "--epochs", "1", *extra]) == 0
    assert load_bundle(tmp_path / "default").health.relation.degree == 2  # 4,800 fitted rows: 240 windows
    assert load_bundle(tmp_path / "without").health.relation is None


def test_train_with_the_shift_check_names_the_sensors_it_watches(tmp_path, capsys):
    data = synthetic.normal(6000, seed=0)
    values = with_quiet_channel(data, seed=0)
    features = [*synthetic.FEATURES, QUIET]
    path = tmp_path / "normal.csv"
    np.savetxt(path, np.column_stack([data.timestamps, values]), delimiter=",", comments="",
               header=",".join(["timestamp", *features]), fmt=["%.3f"] + ["%.5f"] * len(features))
    assert main(["train", "--data", str(path), "--out", str(tmp_path / "model"), "--epochs", "1", "--arch", "mlp",
                 "--no-onnx", "--shift-check"]) == 0
    assert f"shift check watches {QUIET} (quiet sensors whose level training shows in at least 10" in \
        capsys.readouterr().out
    assert f"; shift: {QUIET};" in load_bundle(tmp_path / "model").health.describe(features)
