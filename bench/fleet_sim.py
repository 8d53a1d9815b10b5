"""A small fleet of centrifugal pumps of one type, simulated from pump physics and plant
practice: the quality suite's held-out data set (`fleet`).

The simulator is designed from the physics of a pump in a pipe system and from what plant
sensors and plant faults look like, not from anything about a detector; no detector setting
was chosen on it (docs/quality.md, "Held-out check: a simulated pump fleet").

The plant
---------
Four pumps of one type (nominal 2950 rpm on a variable-speed drive, 60 m shut-off head, best
efficiency at 100 m³/h and 50 m), each in its own loop from a suction tank (0.5 bar at the
inlet) through a demand-controlled valve to a static lift of 15 m. Each pump differs a little
from the others, as pumps of one type do after manufacture and installation: impeller head ±1.5 %, peak
efficiency ±1.5 points, vibration baseline 1.5–2.1 mm/s (alignment, foundation), suction
tank head ±0.05 bar, bearing thermal resistance ±8 %, and every transmitter's calibration
offset within its tolerance. Sample period 30 s.

Operation. The speed setpoint moves between three setpoints (72 %, 86 % and 100 % of nominal
speed) six times a day, every twelve hours visiting all three, so any half day of
normal data contains every mode; the drive ramps at 5 rpm/s. Demand follows a daily profile
(the valve opens towards mid-afternoon and closes at night) with slow random variation on
top. Ambient temperature follows a daily cycle (±5 K) and a day-to-day weather change shared
by the fleet (the pumps stand in one plant).

Physics. Pump curve by the affinity laws, H = h·H0·s² − k_p·Q_p² (s = speed / nominal),
against the system curve H = H_static + k_s / valve²·Q², so flow rises with speed and head with
its square; the operating point is their intersection. Efficiency is a parabola in Q_p / s
around the best-efficiency flow, so shaft power ρgQH/η grows with the cube of speed along the
system curve. Motor current from electrical power at a V/f drive (voltage ∝ speed) plus a
constant magnetising current. Suction pressure = tank head − suction line loss ∝ Q²;
discharge pressure = suction + ρgH. Vibration RMS (ISO 10816 velocity) ∝ s^1.5 plus a
hydraulic term growing away from the best-efficiency flow. Bearing and winding temperatures
are first-order lags (25 and 45 min) of ambient plus a rise from bearing friction (speed) and
from copper losses (current²). Slow normal wear, far below any fault: efficiency −0.05 points
and vibration +0.5 % per day.

Sensors (8): speed (rpm, encoder, ±2 rpm jitter, 1 rpm resolution), suction pressure (bar
gauge, compound −1..3 bar transmitter) and discharge pressure (bar gauge, 0..10 bar), both
with noise of 0.1 % of span, discharge also with flow pulsation; flow (m³/h, magnetic flow
meter, 0.5 % of reading); motor current (A, 0.1 A resolution); vibration RMS (mm/s, 4 %
scatter from one RMS interval to the next); bearing and winding temperature (°C, Pt100,
0.1 °C resolution). Suction pressure and bearing temperature are the quiet
channels: they move little with the process.

Faults. Every kind occurs once on every pump, at a different time on each (the order and the
normal gaps of 2–4 h between faults are drawn per pump), each sized per pump within ±20 % of
the size below. Each is labelled over its whole interval, from its first affected sample to the
repair; a fault that develops (drift, wear) is labelled from its onset, when it is still small,
as a maintenance log would date it. Sizes are chosen so that a reliability engineer would
want an alert for each, and none is trivially large:

Sensor faults (the process is normal, one transmitter is not; the channel differs per pump):
- stuck sensor, 3 h: the reading holds its last value (a frozen transmitter or a stale value in
  the PLC) on flow, discharge pressure, bearing temperature or motor current;
- calibration drift, 6 h: a linear creep on a quiet channel to 0.15 bar on suction pressure
  (3.75 % of the 4 bar span, beyond a 0.5 % calibration tolerance) or 5 K on a temperature;
- spike/dropout burst, 1.5 h: a loose connector; 10 % of the samples are corrupted, half of them
  spikes of 15–40 % of the reading and half dropouts to the 4–20 mA under-range value (3.6 mA);
- noise increase, 3 h: the transmitter's own noise ×5 (a broken cable shield next to the drive).

Process faults (the pump is faulty, every sensor reads true):
- bearing wear, 8 h: vibration rises by 1.6 mm/s (into ISO 10816 zone C for this class of
  machine), bearing temperature by 9 K and friction power by 0.25 kW, growing as (elapsed /
  duration)^1.5, vibration scatter grows with it;
- cavitation, 2 h: suction head falls 0.7 bar within 10 min (low tank level: from about
  0.35 bar gauge to −0.35 bar, so the NPSH available falls to about 6 m, where a pump of this
  size starts to cavitate), the head breaks down by 4 %, head fluctuates by 1.5 % (so flow,
  discharge pressure and current get noisier) and vibration rises by 1.0 mm/s with 15 % broadband scatter;
- impeller wear, 5 h: wear-ring clearance opens, internal recirculation lowers the head at the
  same speed and flow by 6 % and the efficiency by 4 points, developing over the first third;
- seal leak, 4 h: a mechanical seal fails and leaks, growing over the first hour to 5 m³/h
  (5 % of the design flow) upstream of the flow meter, so the pump delivers more than the meter
  reads: at the measured flow the head is lower and the power higher.

Splits. Training: the first 1.25 days of every pump, fault-free (one model for the fleet, as a
fleet of one pump type shares a model; 14,400 rows, sized so that the suite's training of it
stays short). Test: from half a day after the training days on, an hour of history, then one
fault-free day, then the eight faults with their normal gaps. The test's normal rows (the
fault-free day and the gaps, about two days per pump) measure false alarms per day.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PERIOD = 30.0  # seconds between samples
DAY = 86_400.0
START = 1_600_041_600.0  # a midnight (2020-09-14 00:00 UTC): the daily profiles run on clock time

FEATURES = ["speed", "suction_pressure", "discharge_pressure", "flow", "motor_current", "vibration",
            "bearing_temp", "winding_temp"]
SENSOR_FAULTS = ("stuck sensor", "calibration drift", "spike/dropout burst", "noise increase")
PROCESS_FAULTS = ("bearing wear", "cavitation", "impeller wear", "seal leak")
FAULT_KINDS = SENSOR_FAULTS + PROCESS_FAULTS
FAULT_HOURS = {"stuck sensor": 3.0, "calibration drift": 6.0, "spike/dropout burst": 1.5, "noise increase": 3.0,
               "bearing wear": 8.0, "cavitation": 2.0, "impeller wear": 5.0, "seal leak": 4.0}
# The sensor each sensor fault hits, per pump (index = pump): a different channel on each.
FAULT_CHANNELS = {
    "stuck sensor": ("flow", "discharge_pressure", "bearing_temp", "motor_current"),
    "calibration drift": ("suction_pressure", "bearing_temp", "winding_temp", "suction_pressure"),
    "spike/dropout burst": ("discharge_pressure", "flow", "vibration", "motor_current"),
    "noise increase": ("motor_current", "discharge_pressure", "flow", "speed"),
}
DRIFT_SIZE = {"suction_pressure": 0.15, "bearing_temp": 5.0, "winding_temp": -5.0}  # bar, K at the end

# The pump type (nominal values) and its system.
NOMINAL_RPM = 2950.0
SETPOINTS = (0.72, 0.86, 1.0)  # of nominal speed
RAMP_RPM_PER_S = 5.0
SHUTOFF_HEAD = 60.0  # m at nominal speed
PUMP_K = 0.001  # m per (m³/h)²: 50 m at the best-efficiency flow
BEP_FLOW = 100.0  # m³/h at nominal speed
PEAK_EFFICIENCY = 0.78
STATIC_HEAD = 15.0  # m
SYSTEM_K = 0.0025  # m per (m³/h)² with the valve fully open
SUCTION_LOSS_K = 1.5e-5  # bar per (m³/h)²
TANK_HEAD = 0.50  # bar gauge at the pump inlet with no flow
RHO_G = 9810.0  # N/m³ (water)
BAR_PER_M = RHO_G / 1e5
MOTOR_EFFICIENCY = 0.93
LINE_VOLTS = 400.0
MAGNETISING_AMPS = 10.0
RATED_AMPS = 40.0
MECHANICAL_LOSS_KW = 0.3  # bearings and seal at nominal speed
BEARING_TAU_S, WINDING_TAU_S = 25 * 60.0, 45 * 60.0

# Transmitter spans (for the 4–20 mA under-range value) and noise.
SPANS = {"speed": (0.0, 3600.0), "suction_pressure": (-1.0, 3.0), "discharge_pressure": (0.0, 10.0),
         "flow": (0.0, 150.0), "motor_current": (0.0, 60.0), "vibration": (0.0, 20.0),
         "bearing_temp": (0.0, 150.0), "winding_temp": (0.0, 200.0)}
RESOLUTION = {"speed": 1.0, "motor_current": 0.1, "bearing_temp": 0.1, "winding_temp": 0.1}


@dataclass
class FaultEvent:
    """One fault on one pump: rows [start, end) of the pump's timeline, labelled 1."""

    pump: int
    kind: str
    start: int
    end: int
    channel: str | None = None  # the sensor a sensor fault hits
    severity: float = 1.0  # this pump's size of the fault, × the nominal size


@dataclass
class PumpTimeline:
    """Everything one pump's sensors read, its labels and its faults, sample by sample."""

    pump: int
    timestamps: np.ndarray  # float64 epoch seconds
    values: np.ndarray  # float32 [rows, len(FEATURES)]
    labels: np.ndarray  # int8
    events: list[FaultEvent]
    setpoint: np.ndarray  # the speed setpoint (fraction of nominal), for checking the modes


@dataclass
class FleetSplit:
    """Rows of each pump's timeline: [0, train_end) trains; [test_start, end) tests, counted
    from test_counted (the rows before are history); [test_counted, faults_start) is the
    fault-free test day."""

    train_end: int
    test_start: int
    test_counted: int
    faults_start: int


@dataclass
class Fleet:
    timelines: list[PumpTimeline]
    split: FleetSplit
    features: list[str] = field(default_factory=lambda: list(FEATURES))


@dataclass
class PumpBuild:
    """One pump's manufacturing and installation differences."""

    head: float
    efficiency: float
    vibration: float
    tank: float
    bearing_resistance: float
    calibration: dict[str, float]


def rows(hours: float) -> int:
    return int(round(hours * 3600.0 / PERIOD))


def simulate_fleet(seed: int = 0, pumps: int = 4, train_days: float = 1.25, normal_test_days: float = 1.0) -> Fleet:
    """The fleet's timelines, deterministic in `seed`."""
    if pumps > len(FAULT_CHANNELS["stuck sensor"]):
        raise ValueError(f"pumps={pumps}: the fault channels are laid out for at most "
                         f"{len(FAULT_CHANNELS['stuck sensor'])} pumps")
    master = np.random.SeedSequence(seed)
    fleet_seed, *pump_seeds = master.spawn(pumps + 1)
    train_end = rows(24 * train_days)
    test_start = rows(24 * (train_days + 0.5)) - rows(1.0)
    test_counted = test_start + rows(1.0)
    faults_start = test_counted + rows(24 * normal_test_days)
    fault_rows = sum(rows(h) for h in FAULT_HOURS.values()) + len(FAULT_KINDS) * rows(4.0) + rows(2.0)
    total = faults_start + fault_rows
    t = np.arange(total, dtype=np.float64) * PERIOD
    weather = _weather(np.random.default_rng(fleet_seed), t)
    timelines = [_pump(p, np.random.default_rng(s), t, weather, faults_start)
                 for p, s in enumerate(pump_seeds)]
    return Fleet(timelines, FleetSplit(train_end, test_start, test_counted, faults_start))


def _weather(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Plant-room ambient temperature: a daily cycle (warmest at 15:00) and day-to-day weather."""
    days = int(t[-1] // DAY) + 2
    daily = rng.normal(0.0, 1.5, size=days)
    level = np.interp(t / DAY, np.arange(days), daily)
    return 24.0 + level + 5.0 * np.sin(2 * np.pi * (t / DAY - 9.0 / 24.0))


def _lowpass(u: np.ndarray, tau: float) -> np.ndarray:
    """First-order lag with time constant `tau` seconds, starting in steady state."""
    from scipy.signal import lfilter

    a = np.exp(-PERIOD / tau)
    return lfilter([1.0 - a], [1.0, -a], u, zi=[a * u[0]])[0]


def _red_noise(rng: np.random.Generator, n: int, sigma: float, tau: float) -> np.ndarray:
    """Stationary AR(1) noise with standard deviation `sigma` and correlation time `tau` seconds."""
    from scipy.signal import lfilter

    a = np.exp(-PERIOD / tau)
    first = sigma * rng.normal()  # a draw from the stationary distribution: no start-up transient
    return lfilter([sigma * np.sqrt(1 - a * a)], [1.0, -a], rng.normal(size=n), zi=[a * first])[0]


def _setpoints(rng: np.random.Generator, n: int) -> np.ndarray:
    """Speed setpoint per sample: every 12 h block visits all three setpoints in a random order
    (block lengths 2–6 h, no repeat across a block boundary), so about five changes a day."""
    out = np.empty(n)
    block, last, i = rows(12.0), None, 0
    while i < n:
        order = list(rng.permutation(len(SETPOINTS)))
        if order[0] == last:
            order[0], order[1] = order[1], order[0]
        cuts = np.sort(rng.uniform(2.0, 10.0, size=2))
        while cuts[1] - cuts[0] < 2.0:
            cuts = np.sort(rng.uniform(2.0, 10.0, size=2))
        bounds = [0, rows(cuts[0]), rows(cuts[1]), block]
        for k, index in enumerate(order):
            out[i + bounds[k]:min(n, i + bounds[k + 1])] = SETPOINTS[index]
        last, i = order[-1], i + block
    return out


def _ramp(setpoint: np.ndarray) -> np.ndarray:
    """The drive's speed: follows the setpoint at RAMP_RPM_PER_S."""
    step = RAMP_RPM_PER_S * PERIOD / NOMINAL_RPM
    speed = np.empty_like(setpoint)
    speed[0] = setpoint[0]
    for k in range(1, len(setpoint)):
        speed[k] = speed[k - 1] + np.clip(setpoint[k] - speed[k - 1], -step, step)
    return speed


def _build(rng: np.random.Generator) -> PumpBuild:
    calibration = {"speed": 0.0, "suction_pressure": rng.normal(0, 0.01), "discharge_pressure": rng.normal(0, 0.02),
                   "flow": rng.normal(0, 0.01), "motor_current": rng.normal(0, 0.01), "vibration": rng.normal(0, 0.03),
                   "bearing_temp": rng.normal(0, 0.4), "winding_temp": rng.normal(0, 0.5)}
    return PumpBuild(head=1 + rng.uniform(-0.015, 0.015), efficiency=PEAK_EFFICIENCY + rng.uniform(-0.015, 0.015),
                     vibration=rng.uniform(1.5, 2.1), tank=TANK_HEAD + rng.uniform(-0.05, 0.05),
                     bearing_resistance=1 + rng.uniform(-0.08, 0.08), calibration=calibration)


def _schedule(pump: int, rng: np.random.Generator, faults_start: int) -> list[FaultEvent]:
    events, at = [], faults_start
    for kind in (FAULT_KINDS[i] for i in rng.permutation(len(FAULT_KINDS))):
        at += rows(rng.uniform(2.0, 4.0))
        channel = FAULT_CHANNELS[kind][pump] if kind in FAULT_CHANNELS else None
        events.append(FaultEvent(pump, kind, at, at + rows(FAULT_HOURS[kind]), channel,
                                 float(rng.uniform(0.8, 1.2))))
        at = events[-1].end
    return events


def _progress(n: int, event: FaultEvent, shape: str, onset_fraction: float = 1.0) -> np.ndarray:
    """0 outside the fault, in [0, 1] inside: how far it has developed at each sample."""
    x = np.zeros(n)
    length = event.end - event.start
    elapsed = np.arange(length) / max(1, length - 1)
    if shape == "power":
        x[event.start:event.end] = elapsed ** 1.5
    elif shape == "ramp":
        x[event.start:event.end] = np.minimum(1.0, elapsed / onset_fraction)
    else:
        x[event.start:event.end] = 1.0
    return x


def _pump(pump: int, rng: np.random.Generator, t: np.ndarray, ambient: np.ndarray, faults_start: int) -> PumpTimeline:
    n = len(t)
    build = _build(rng)
    events = _schedule(pump, rng, faults_start)
    by_kind = {e.kind: e for e in events}
    days = t / DAY

    setpoint = _setpoints(rng, n)
    s = _ramp(setpoint)
    hour = (t / 3600.0) % 24.0
    valve = np.clip(0.82 + 0.13 * np.sin(2 * np.pi * (hour - 9.0) / 24.0)
                    + _red_noise(rng, n, 0.025, 1200.0), 0.5, 1.0)
    tank = build.tank + 0.04 * np.sin(2 * np.pi * (hour - 3.0) / 24.0) + _red_noise(rng, n, 0.01, 3600.0)

    bearing = by_kind["bearing wear"]
    wear = bearing.severity * _progress(n, bearing, "power")
    cav = by_kind["cavitation"]
    cavitating = cav.severity * _progress(n, cav, "ramp", onset_fraction=rows(1 / 6) / (cav.end - cav.start))
    impeller = by_kind["impeller wear"]
    worn = impeller.severity * _progress(n, impeller, "ramp", onset_fraction=1 / 3)
    seal = by_kind["seal leak"]
    leak = 5.0 * seal.severity * _progress(n, seal, "ramp", onset_fraction=1 / 4)

    head_factor = (build.head * (1 - 0.06 * worn) * (1 - 0.04 * cavitating)
                   * (1 + 0.015 * cavitating * rng.normal(size=n)))
    system_k = SYSTEM_K / valve ** 2
    available = head_factor * SHUTOFF_HEAD * s ** 2 - STATIC_HEAD
    # (k_p + k_s) Q² + 2 k_p L Q + k_p L² − available = 0, for the delivered (metered) flow Q.
    a, b, c = PUMP_K + system_k, 2 * PUMP_K * leak, PUMP_K * leak ** 2 - available
    flow = np.maximum(0.0, (-b + np.sqrt(np.maximum(0.0, b * b - 4 * a * c))) / (2 * a))
    pumped = flow + leak
    head = head_factor * SHUTOFF_HEAD * s ** 2 - PUMP_K * pumped ** 2

    suction = tank - SUCTION_LOSS_K * pumped ** 2 - 0.7 * cavitating
    discharge = suction + BAR_PER_M * head
    q = pumped / (BEP_FLOW * s)
    efficiency = ((build.efficiency - 0.0005 * days - 0.04 * worn) * (1 - 0.5 * (q - 1) ** 2)).clip(0.2, None)
    shaft_kw = RHO_G * (pumped / 3600.0) * head / efficiency / 1000.0 + MECHANICAL_LOSS_KW * s + 0.25 * wear
    electrical_w = shaft_kw * 1000.0 / MOTOR_EFFICIENCY
    current = np.hypot(electrical_w / (np.sqrt(3) * LINE_VOLTS * s * 0.97), MAGNETISING_AMPS)

    vibration = ((build.vibration * s ** 1.5 + 0.8 * (q - 1) ** 2) * (1 + 0.005 * days)
                 + 1.6 * wear + 1.0 * cavitating)
    vibration_scatter = 0.04 + 0.10 * wear + 0.15 * cavitating
    vibration = vibration * (1 + vibration_scatter * rng.normal(size=n))

    bearing_rise = build.bearing_resistance * (18.0 + 14.0 * s ** 1.5) + 9.0 * wear
    bearing_temp = _lowpass(ambient + bearing_rise, BEARING_TAU_S)
    winding_temp = _lowpass(ambient + 10.0 + 75.0 * (current / RATED_AMPS) ** 2, WINDING_TAU_S)

    true = {"speed": s * NOMINAL_RPM, "suction_pressure": suction, "discharge_pressure": discharge,
            "flow": flow, "motor_current": current, "vibration": vibration,
            "bearing_temp": bearing_temp, "winding_temp": winding_temp}
    noise = {"speed": np.full(n, 2.0), "suction_pressure": np.full(n, 0.004),
             "discharge_pressure": np.full(n, 0.01), "flow": 0.005 * flow + 0.2,
             "motor_current": np.full(n, 0.15), "vibration": np.zeros(n),
             "bearing_temp": np.full(n, 0.05), "winding_temp": np.full(n, 0.1)}
    readings = _read(true, noise, build, rng, events, n)
    values = np.stack([readings[f] for f in FEATURES], axis=1).astype(np.float32)
    labels = np.zeros(n, dtype=np.int8)
    for e in events:
        labels[e.start:e.end] = 1
    return PumpTimeline(pump, START + t, values, labels, events, setpoint)


def _read(true: dict[str, np.ndarray], noise: dict[str, np.ndarray], build: PumpBuild, rng: np.random.Generator,
          events: list[FaultEvent], n: int) -> dict[str, np.ndarray]:
    """What the transmitters report: calibration, noise, resolution, and the sensor faults."""
    out = {}
    for name, value in true.items():
        offset = build.calibration[name]
        gain = 1 + offset if name in ("flow", "motor_current", "vibration") else 1.0
        shift = 0.0 if name in ("flow", "motor_current", "vibration") else offset
        reading = value * gain + shift + noise[name] * rng.normal(size=n)
        if name == "discharge_pressure":
            reading = reading + 0.015 * rng.normal(size=n)  # flow pulsation at the pressure tap
        out[name] = reading
    for e in events:
        if e.kind == "noise increase":
            span = slice(e.start, e.end)
            sigma = noise[e.channel][span] if e.channel != "vibration" else 0.04 * true["vibration"][span]
            out[e.channel][span] += 5.0 * e.severity * sigma * rng.normal(size=e.end - e.start)
        elif e.kind == "calibration drift":
            out[e.channel][e.start:e.end] += (DRIFT_SIZE[e.channel] * e.severity
                                               * np.linspace(0.0, 1.0, e.end - e.start))
    for name, step in RESOLUTION.items():
        out[name] = np.round(out[name] / step) * step
    for e in events:
        if e.kind == "spike/dropout burst":
            hit = e.start + np.flatnonzero(rng.uniform(size=e.end - e.start) < 0.10 * e.severity)
            dropout = rng.uniform(size=len(hit)) < 0.5
            low, high = SPANS[e.channel]
            out[e.channel][hit[dropout]] = low - 0.025 * (high - low)  # 3.6 mA on a 4–20 mA loop
            spikes = hit[~dropout]
            sign = rng.choice([-1.0, 1.0], size=len(spikes))
            out[e.channel][spikes] *= 1 + sign * rng.uniform(0.15, 0.4, len(spikes))
        elif e.kind == "stuck sensor":
            out[e.channel][e.start:e.end] = out[e.channel][e.start - 1]
    return out
