"""A window that cannot be scored is an anomaly with a reason, never normal, and every score and
error leaving the scorer is a finite number a store accepts (daemon.core.scoring)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.cli import main
from daemon.core.bundle import load_bundle
from daemon.core.errors import DataError
from daemon.core.scoring import MAX_SCORE, NON_FINITE_SCORE, OUT_OF_RANGE, REASONS, SCALED_LIMIT, Scorer
from daemon.offline import synthetic
from daemon.offline.frames import load_csv

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
FLOAT32_MAX = float(np.finfo(np.float32).max)
RUNTIMES = ["torch"] + (["onnx"] if importlib.util.find_spec("onnxruntime") else [])


@pytest.fixture(scope="module", params=RUNTIMES)
def scorer(request) -> Scorer:
    return Scorer.load(DEMO, request.param)


def normal_windows(n: int = 1) -> np.ndarray:
    """`n` windows of readings like the demo model's training data."""
    rows = synthetic.normal(20 * n, seed=5).values
    return np.ascontiguousarray(rows.reshape(n, 20, len(synthetic.FEATURES)))


def test_a_sensor_stuck_at_the_float32_limit_is_an_anomaly_scored_as_maximal(scorer):
    """The repro of issue 15: this window scored NaN and was written as normal."""
    result = scorer.score_windows(np.full((1, 20, 5), 3.4028234e38, np.float32))
    assert result.reasons == [OUT_OF_RANGE]
    assert result.scores.tolist() == [MAX_SCORE]
    assert result.flags(scorer.threshold).tolist() == [True]
    assert np.isfinite(result.feature_errors).all()


def test_an_out_of_range_value_names_its_sensor_and_leaves_the_other_windows_alone(scorer):
    windows = normal_windows(3)
    windows[1, 7, 2] = 1e20  # pressure, far beyond anything the scaler has seen
    windows[2, :, 0] = -FLOAT32_MAX  # vibration stuck at a fault code
    result = scorer.score_windows(windows)
    assert result.reasons == ["", OUT_OF_RANGE, OUT_OF_RANGE]
    assert result.flags(scorer.threshold).tolist() == [False, True, True]
    assert result.scores[0] < scorer.threshold and result.scores[1:].tolist() == [MAX_SCORE, MAX_SCORE]
    errors = result.feature_errors
    assert errors[1, 2] == MAX_SCORE and errors[2, 0] == MAX_SCORE
    assert (errors[1, [0, 1, 3, 4]] < MAX_SCORE).all() and (errors[2, 1:] < MAX_SCORE).all()


def test_a_batch_with_every_window_in_range_carries_no_reasons(scorer):
    assert scorer.score_windows(normal_windows(4)).reasons is None


@pytest.mark.parametrize("reconstruction", [np.nan, np.inf, 1e30])
def test_a_model_output_that_gives_a_non_finite_score_is_an_anomaly_with_its_reason(reconstruction):
    """NaN or infinite reconstructions, or finite ones whose squared error overflows float32."""
    broken = Scorer(load_bundle(DEMO), lambda batch: np.full_like(batch, reconstruction))
    result = broken.score_windows(normal_windows(2))
    assert result.reasons == [NON_FINITE_SCORE, NON_FINITE_SCORE]
    assert result.scores.tolist() == [MAX_SCORE, MAX_SCORE]
    assert np.isfinite(result.feature_errors).all()
    assert result.flags(broken.threshold).all()


def test_a_window_with_a_reason_is_flagged_whatever_the_threshold():
    broken = Scorer(load_bundle(DEMO), lambda batch: np.full_like(batch, np.nan))
    assert broken.score_windows(normal_windows(1)).flags(FLOAT32_MAX * 10.0).tolist() == [True]


any_float32 = st.one_of(
    st.floats(width=32),  # every float32, NaN, infinities and subnormals included
    st.sampled_from([FLOAT32_MAX, -FLOAT32_MAX, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 0.0, 1e19, -1e19]),
)


@settings(max_examples=250, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 19), st.integers(0, 4), any_float32), min_size=1, max_size=4))
def test_any_float32_in_any_feature_gives_a_finite_score_or_an_anomaly_with_a_reason(scorer, edits):
    window = normal_windows(1)
    for row, feature, value in edits:
        window[0, row, feature] = value
    result = scorer.score_windows(window)
    score, errors = float(result.scores[0]), result.feature_errors[0]
    reason = result.reasons[0] if result.reasons else ""
    assert np.isfinite(score) and np.isfinite(errors).all()
    assert reason in ("", *REASONS)
    if reason:
        assert score == MAX_SCORE and result.flags(scorer.threshold)[0]
    with np.errstate(all="ignore"):
        scaled = scorer.bundle.scaler.transform(window)
    if not (np.abs(scaled) <= SCALED_LIMIT).all():
        assert reason == OUT_OF_RANGE


# ---- offline: the same rule in `score` and `evaluate` ------------------------------------------

def faulty_csv(tmp_path: Path, value: str) -> Path:
    """Normal readings with one cell of row 50's pressure set to `value`."""
    path = synthetic.normal(120, seed=6).write_csv(tmp_path / "readings.csv")
    lines = path.read_text().splitlines()
    cells = lines[51].split(",")
    cells[3] = value
    lines[51] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_score_writes_windows_holding_a_fault_code_as_anomalies_with_their_reason(tmp_path):
    out = tmp_path / "scores.csv"
    assert main(["score", "--model", str(DEMO), "--data", str(faulty_csv(tmp_path, "3.4028234e38")),
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    holding = rows[50 - 19:50 + 1]  # the 20 windows whose rows include row 50
    assert {(r["anomaly"], r["reason"]) for r in holding} == {("1", OUT_OF_RANGE)}
    assert {float(r["score"]) for r in holding} == {float(f"{MAX_SCORE:.6g}")}
    assert all(r["reason"] == "" for r in rows if r not in holding)


def test_evaluate_counts_windows_holding_a_fault_code_as_flagged(tmp_path, capsys):
    assert main(["evaluate", "--model", str(DEMO), "--data", str(faulty_csv(tmp_path, "3.4028234e38")),
                 "--json"]) == 0
    import json
    figures = json.loads(capsys.readouterr().out)
    assert figures["fp"] >= 20  # every row from 50 on while a window holds row 50, after hysteresis


def test_a_csv_value_beyond_float32_is_refused_like_live_ingest_refuses_it(tmp_path):
    with pytest.raises(DataError, match=r"line 52 column 'pressure': non-finite value 1e\+39"):
        load_csv(faulty_csv(tmp_path, "1e39"))
