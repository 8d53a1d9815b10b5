"""Fail safe from the wire to the score: any JSON value for any feature is either rejected with a
counted reason, or accepted into a window that scores finite or is flagged with a reason. The
message path and the scorer are the production ones (MessagePipeline -> DeviceBuffers -> Scorer),
driven with the demo bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core.scoring import MAX_SCORE, REASONS, Scorer
from daemon.live.config import LimitsConfig, StreamConfig
from daemon.live.events import WindowJob
from daemon.live.ingest.buffers import DeviceBuffers
from daemon.live.ingest.payload import PayloadParser
from daemon.live.ingest.pipeline import MessagePipeline
from daemon.live.telemetry.metrics import MESSAGE_RESULTS, Metrics
from daemon.offline import synthetic

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
T0 = 1_750_000_000.0

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([3.4028234e38, -3.4028234e38, 3.5e38, 1e308, -1e308, 1e-320, 0.0, -0.0]) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)
# Literals json.dumps never writes but a device may: overflowing exponents, NaN, Infinity.
raw_literals = st.sampled_from(["1e400", "-1e400", "NaN", "-Infinity", "Infinity", "3.4028236e38", "1e-400"])
PLACEHOLDER = "__value__"


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer.load(DEMO)


def pipeline(scorer: Scorer) -> tuple[MessagePipeline, list[WindowJob], Metrics]:
    metrics = Metrics()
    jobs: list[WindowJob] = []
    buffers = DeviceBuffers(scorer.window, len(scorer.features), StreamConfig(stride=1), LimitsConfig(), metrics)
    return MessagePipeline(PayloadParser(scorer.features), buffers, jobs.append, metrics.messages), jobs, metrics


@settings(max_examples=150, deadline=None)
@given(row=st.integers(0, 19), feature=st.integers(0, 4),
       literal=st.one_of(json_values.map(json.dumps), raw_literals))
def test_any_json_value_in_any_feature_is_a_counted_reject_or_a_scored_or_flagged_window(scorer, row, feature,
                                                                                          literal):
    handle, jobs, metrics = pipeline(scorer)
    normal = synthetic.normal(scorer.window, seed=3, start=T0)
    results = []
    for i, (ts, values) in enumerate(zip(normal.timestamps, normal.values)):
        doc = {"ts": float(ts), **{f: float(v) for f, v in zip(scorer.features, values)}}
        if i == row:
            doc[scorer.features[feature]] = PLACEHOLDER
        body = json.dumps(doc).replace(json.dumps(PLACEHOLDER), literal).encode()
        results.append(handle("sensors/pump-1/data", body, float(ts) + 0.5))
    assert set(results) <= set(MESSAGE_RESULTS)
    assert sum(metrics.messages.counts.values()) == len(results)  # every message ends in one counted result
    if results[row] != "ok":
        assert not jobs  # the rejected reading left a hole: no window was completed around it
        return
    assert len(jobs) == 1
    result = scorer.score_windows(np.stack([jobs[0].window]))
    score = float(result.scores[0])
    reason = result.reasons[0] if result.reasons else ""
    assert np.isfinite(score) and np.isfinite(result.feature_errors).all()
    assert reason in ("", *REASONS)
    if reason:
        assert score == MAX_SCORE and result.flags(scorer.threshold)[0]
