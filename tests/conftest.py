"""Shared test helpers (importable as ``from conftest import ...`` from the test modules)."""

from __future__ import annotations

import numpy as np


def assert_same_result(a, b):
    """Two permutation results are bit-identical: nulls, statistics, cluster p and the cluster table."""
    assert a.terms == b.terms and a.seed == b.seed and a.n_permutations == b.n_permutations
    for term in a.terms:
        np.testing.assert_array_equal(a.null[term], b.null[term])
        np.testing.assert_array_equal(a.stat[term], b.stat[term])
        np.testing.assert_array_equal(a.p_clust[term], b.p_clust[term])
    assert a.clusters.equals(b.clusters)
