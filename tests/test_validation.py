"""The method finds the bundled samples' known effects, and nothing where there is none.

Real R engine (``engine="r"`` explicitly; the default would pick the native
engine), every timepoint, a fixed seed. 39 permutations keep CI time reasonable
(the smallest attainable cluster p is 1/40 = 0.025 < 0.05; doubled for the
two-tailed t test, hence 49 permutations there).
"""

from __future__ import annotations

import pytest

import clusterlmer as cl
from clusterlmer import datasets

N_PERM = 39
N_PERM_TWO_TAILED = 49  # two-tailed p is doubled: (1 + 1) / 50 = 0.04 is the smallest
SLACK = 4  # samples: autocorrelated noise can carry a cluster a little past the simulated window


def _inside(row, window):
    return row.start >= window.first - SLACK and row.stop <= window.last + SLACK


def _significant(res, term):
    table = res.clusters
    return table[(table["term"] == term) & (table["p"] < 0.05)]


@pytest.fixture(scope="module")
def result_2way():
    return cl.permutation_cluster_lmer(datasets.sample_2way(), datasets.FORMULA_2WAY, n_permutations=N_PERM,
                                       seed=11, n_jobs=2, progress=False, engine="r")


def test_2way_interaction_found_in_its_window_only(result_2way):
    window = datasets.ground_truth("2way").windows["interaction"]
    found = _significant(result_2way, "hit_miss:region")
    assert len(found) == 1, result_2way.summary()
    row = next(found.itertuples())
    assert _inside(row, window) and row.stop - row.start >= 10 and row.p <= 0.05


def test_2way_hit_miss_found_where_the_truth_puts_it(result_2way):
    # Reference coding: hit_miss is the hit - miss effect in the reference region 'hc', which the
    # simulation puts in the hit/miss window and (through the interaction) in the interaction window.
    truth = datasets.ground_truth("2way")
    assert result_2way.fit.reference_levels["region"] == "hc"
    found = _significant(result_2way, "hit_miss")
    assert len(found) >= 1, result_2way.summary()
    for row in found.itertuples():
        assert any(_inside(row, w) for w in truth.windows.values()), result_2way.summary()
    assert any(_inside(row, truth.windows["hit_miss"]) for row in found.itertuples())


def test_2way_no_region_cluster(result_2way):
    # The simulation has no region effect anywhere.
    assert len(_significant(result_2way, "region")) == 0, result_2way.summary()


def test_1way_t_test_finds_the_hit_window_only():
    res = cl.permutation_cluster_lmer(datasets.sample_1way(), datasets.FORMULA_1WAY, n_permutations=N_PERM_TWO_TAILED,
                                      seed=12, statistic="t", n_jobs=2, progress=False, engine="r")
    window = datasets.ground_truth("1way").windows["hit_miss"]
    found = _significant(res, "hit_miss")
    assert len(found) == 1, res.summary()
    row = next(found.itertuples())
    assert row.sign == "+" and _inside(row, window)
    assert res.tail == 0 and res.cluster_info["hit_miss"].clusteralpha == pytest.approx(0.025)
