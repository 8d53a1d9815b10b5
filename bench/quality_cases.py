"""The labelled data sets of the quality suite, as cases: what one model trains on, and which
labelled runs it is then tested on.

No case carries a setting of its own: every model is trained with the same `TrainConfig`,
the one `anomalyd train` uses by default. A case only says which rows are training rows
(never looked at for labels) and which rows are counted.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fleet_sim import FAULT_KINDS as FLEET_FAULTS, simulate_fleet
from quality_package import Frame, generate, load_csv, segments, synthetic
from skab import TRAIN_ROWS as SKAB_TRAIN_ROWS, load_labelled as load_skab_labelled

TEP_FAULTS = tuple(range(1, 22))
TEP_UNDETECTABLE = (3, 9, 15)  # their runs look like normal operation (see the data's README)
TEP_DETECTABLE = tuple(f for f in TEP_FAULTS if f not in TEP_UNDETECTABLE)
TEP_QUICK_FAULTS = (1, 5, 10, 16, 19, 21)
TEP_ONSET = 160  # samples 1..160 of every dNN_te run are normal, 161..960 faulty
TEP_SAMPLE_SECONDS = 180.0
TEP_FEATURES = [f"xmeas_{i}" for i in range(1, 42)] + [f"xmv_{i}" for i in range(1, 12)]
EPOCH = 1_600_000_000.0  # an arbitrary start time for data without timestamps


@dataclass
class TestRun:
    """One labelled run, scored as a whole (streaming-causal) and counted from `counted_from`."""

    frame: Frame
    counted_from: int = 0  # earlier rows are history the detector may see, not test rows
    event_names: tuple[str, ...] = ()  # a name for each labelled event in the counted rows, in order


@dataclass
class Case:
    """One model: trained on `train`, tested on `tests`."""

    dataset: str
    name: str
    train: list[Frame]
    tests: list[TestRun]
    detectable: tuple[str, ...] = field(default_factory=tuple)  # events whose mean FDR is reported


def unlabelled(frame: Frame) -> Frame:
    return dataclasses.replace(frame, labels=None)


def skab_protocol_a(root: Path, every: int = 1) -> list[Case]:
    """SKAB's leaderboard split: a model per labelled file, trained on its first 400 rows."""
    items = load_skab_labelled(root)[::every]
    return [Case("SKAB A", f"SKAB A {item.name}", [unlabelled(item.frame.head(SKAB_TRAIN_ROWS))],
                 [TestRun(item.frame, SKAB_TRAIN_ROWS)]) for item in items]


def skab_protocol_b(root: Path, every: int = 1, normal_rows: int | None = None) -> Case:
    """How the daemon is used: one model on anomaly-free.csv, tested on the protocol A test rows."""
    normal = load_csv(root / "anomaly-free" / "anomaly-free.csv", label_column=None)
    if normal_rows is not None:
        normal = normal.head(normal_rows)
    items = load_skab_labelled(root)[::every]
    return Case("SKAB B", "SKAB B anomaly-free", [normal], [TestRun(i.frame, SKAB_TRAIN_ROWS) for i in items])


def _tep_frame(path: Path, values: np.ndarray, onset: int | None) -> Frame:
    labels = np.zeros(len(values), dtype=np.int8)
    if onset is not None:
        labels[onset:] = 1
    timestamps = EPOCH + TEP_SAMPLE_SECONDS * np.arange(len(values), dtype=np.float64)
    return Frame(str(path), timestamps, values.astype(np.float32), list(TEP_FEATURES), labels)


def tep(root: Path, faults: tuple[int, ...] = TEP_FAULTS) -> Case:
    """Train on d00.dat (stored transposed), test on d00_te.dat and dNN_te.dat for each fault."""
    train_values = np.loadtxt(root / "d00.dat")
    if train_values.shape[0] == len(TEP_FEATURES):
        train_values = train_values.T
    train = unlabelled(_tep_frame(root / "d00.dat", train_values, None))
    tests = [TestRun(_tep_frame(root / "d00_te.dat", np.loadtxt(root / "d00_te.dat"), None))]
    for fault in faults:
        path = root / f"d{fault:02d}_te.dat"
        tests.append(TestRun(_tep_frame(path, np.loadtxt(path), TEP_ONSET), event_names=(f"fault {fault}",)))
    detectable = tuple(f"fault {f}" for f in faults if f in TEP_DETECTABLE)
    return Case("TEP", "TEP d00", [train], tests, detectable)


def generated() -> Case:
    """`anomalyd generate` with its defaults: train on normal.csv, test on faults.csv, which
    holds one fault of every kind, injected in `synthetic.FAULTS` order."""
    with tempfile.TemporaryDirectory(prefix="anomalyd-quality-") as directory:
        normal_csv, faults_csv = generate(Path(directory))
        normal = load_csv(normal_csv)  # its all-zero label column is read as labels, not as a sensor
        faults = load_csv(faults_csv, features=normal.features)
    return generated_case(normal, faults)


def generated_case(normal: Frame, faults: Frame, kinds: tuple[str, ...] = synthetic.FAULTS) -> Case:
    events = segments(faults.labels)
    if len(events) != len(kinds):
        raise ValueError(f"{faults.source}: {len(events)} labelled events, expected one per fault kind "
                         f"({', '.join(kinds)})")
    return Case("generated", "generated", [unlabelled(normal)], [TestRun(faults, event_names=tuple(kinds))])


FLEET_QUICK_TRAIN_DAYS = 0.5  # every 12 h of the simulator's schedule holds all three speed setpoints
FLEET_QUICK_PUMPS = 2  # every fault kind occurs on every pump


def _fleet_pumps(seed: int, days: float | None) -> list[tuple[Frame, TestRun]]:
    """Each simulated pump's fault-free training rows and its labelled test run."""
    simulated = simulate_fleet(seed) if days is None else simulate_fleet(seed, train_days=days)
    split = simulated.split
    out = []
    for timeline in simulated.timelines:
        frame = Frame(f"fleet pump {timeline.pump + 1}", timeline.timestamps, timeline.values,
                      list(simulated.features), timeline.labels)
        out.append((unlabelled(frame.head(split.train_end)),
                    TestRun(frame.tail_from(split.test_start), split.test_counted - split.test_start,
                            tuple(e.kind for e in timeline.events))))
    return out


def fleet(quick: bool = False, seed: int = 0, train_days: float | None = None) -> Case:
    """The simulated pump fleet (bench/fleet_sim.py), held out from every default: one model on
    every pump's fault-free training days (`train_days`, default the simulator's 1.25), tested
    on each pump's later days (an hour of history, a fault-free day, then one fault of every
    kind). Quick: half a day of training per pump and the first two pumps' test days."""
    days = train_days if train_days is not None else FLEET_QUICK_TRAIN_DAYS if quick else None
    pumps = _fleet_pumps(seed, days)
    tests = [test for _, test in pumps[:FLEET_QUICK_PUMPS if quick else len(pumps)]]
    return Case("fleet", "fleet", [train for train, _ in pumps], tests, FLEET_FAULTS)


def fleet_per_pump(seed: int = 0, train_days: float | None = None) -> list[Case]:
    """The same fleet with a model per pump, each trained on its own pump's training days only: a
    single machine with a short history, as when a plant starts with one device."""
    return [Case("fleet", f"fleet {train.source}", [train], [test], FLEET_FAULTS)
            for train, test in _fleet_pumps(seed, train_days)]
