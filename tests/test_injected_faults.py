"""Label-free self-check: `train` writes synthetic faults of every kind into the held-out tail,
one feature at a time, and records by kind what the bundle detects; `inspect` prints it."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.cli import main
from daemon.core.bundle import load_bundle
from daemon.offline.injection import KINDS, inject
from datafiles import normal_csv, train_bundle


@pytest.mark.parametrize("kind", KINDS)
def test_an_injected_fault_changes_only_its_feature_inside_its_rows(kind):
    rng = np.random.default_rng(0)
    values = rng.normal(5.0, 1.0, size=(100, 3))
    faulty = inject(values, kind, feature=1, start=40, length=20, sigma=1.0, rng=np.random.default_rng(1))
    changed = faulty != values
    assert not changed[:, [0, 2]].any() and not changed[:40].any() and not changed[60:].any()
    assert changed[40:60, 1].any()


def test_an_unknown_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="kind 'melt' unknown"):
        inject(np.zeros((10, 1)), "melt", 0, 2, 3, 1.0, np.random.default_rng(0))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("injected")
    return train_bundle(tmp, normal_csv(tmp, rows=2000))


def test_the_injected_fault_table_by_kind_is_in_the_bundle(bundle):
    table = load_bundle(bundle).training["injected_faults"]
    assert list(table) == list(KINDS)
    for figures in table.values():
        assert figures["injected"] == 5  # one held-out run, five features
        assert 0 <= figures["detected"] <= figures["injected"]
        assert figures["detection_rate"] == figures["detected"] / figures["injected"]
    assert table["dropout"]["detected"] >= 4  # a sensor reading 0 far from its level is plain to see


def test_inspect_prints_the_injected_fault_table(bundle, capsys):
    assert main(["inspect", "--model", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "injected faults" in out
    assert all(kind in out for kind in KINDS)
