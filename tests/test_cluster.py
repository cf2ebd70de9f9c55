"""cluster_test semantics (per-sample thresholds from the null, cluster sums and sizes,
p = (#{null > obs} + 1) / (n + 1)) on hand-computed cases, and a cross-check of cluster
membership, sums and TFCE scores against MNE-Python.

No R needed. The hand case: 12 samples, 4 permutations of values in {-1, 0, 1}
with a +1 and a -1 at every sample, so MATLAB's quantile (hazen) clamps to the
per-sample max / min and the thresholds are exactly upper = 1, lower = -1 (for
clusteralpha 0.05 and 0.025 alike: positions 4 * 0.95 + 0.5 = 4.3 > 4 and
4 * 0.05 + 0.5 = 0.7 < 1).
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import ndimage, sparse

from clusterlmer.cluster import Cluster, ClusterTestInfo, cluster_test


def _runs(n, spec):
    """Vector of length n from {value: [sample indices]}."""
    v = np.zeros(n)
    for value, idx in spec.items():
        v[idx] = value
    return v


N = 12
# perm  positive runs (sum)          negative runs (sum)
#  0    0-2 (3)                       6-10 (-5)
#  1    3-4 (2), 11 (single)          0-1 (-2)
#  2    5-6 (2), 8 (single)           2-4 (-3)
#  3    7 (single), 9-10 (2)          5 (single), 11 (single)
NULL = np.column_stack([
    _runs(N, {1: [0, 1, 2], -1: [6, 7, 8, 9, 10]}),
    _runs(N, {1: [3, 4, 11], -1: [0, 1]}),
    _runs(N, {1: [5, 6, 8], -1: [2, 3, 4]}),
    _runs(N, {1: [7, 9, 10], -1: [5, 11]}),
])
# A = 0-2 (sum 4.0), single + at 4, C = 6-7 (sum -3.5, -1.0 sits on the threshold),
# B = 9-10 (sum 2.0, both on the threshold), single - at 11.
OBS = np.array([1.5, 1.2, 1.3, 0, 2.0, 0, -1.0, -2.5, 0, 1.0, 1.0, -1.5])


def _summary(info):
    return [(c.sign, c.start, c.stop, round(c.stat, 10), round(c.p, 10)) for c in info.clusters]


def test_hand_case_thresholds_and_null():
    _, _, info = cluster_test(OBS, NULL, tail=0)
    assert_array_equal(info.threshold_upper, np.ones(N))
    assert_array_equal(info.threshold_lower, -np.ones(N))
    assert info.clusteralpha == 0.025 and info.n_permutations == 4
    assert_array_equal(info.null_max, [3, 2, 2, 2])
    assert_array_equal(info.null_min, [-5, -2, -3, np.nan])  # perm 3 has only single-sample negatives


def test_sum_tail_positive():
    h, p, info = cluster_test(OBS, NULL, tail=1, alpha=0.3)
    # A: #{null_max > 4} = 0 -> 1/5; B: #{null_max > 2} = 1 (strict: the three 2s do not count) -> 2/5.
    assert _summary(info) == [(1, 0, 2, 4.0, 0.2), (1, 9, 10, 2.0, 0.4)]
    assert_allclose(p, [0.2, 0.2, 0.2, 1, 1, 1, 1, 1, 1, 0.4, 0.4, 1])  # single at 4 ignored: p stays 1
    assert_array_equal(h, p < 0.3)
    assert info.threshold_lower is None and info.null_min is None


def test_sum_tail_negative():
    _, p, info = cluster_test(OBS, NULL, tail=-1)
    # C: #{null_min < -3.5} = 1 (the -5; NaN never counts) -> 2/5.
    assert _summary(info) == [(-1, 6, 7, -3.5, 0.4)]
    assert_allclose(p, np.where(np.isin(np.arange(N), [6, 7]), 0.4, 1.0))
    assert info.threshold_upper is None and info.null_max is None


def test_sum_two_tailed_doubles_p():
    h, p, info = cluster_test(OBS, NULL, tail=0, alpha=0.5)
    assert _summary(info) == [(1, 0, 2, 4.0, 0.4), (1, 9, 10, 2.0, 0.8), (-1, 6, 7, -3.5, 0.8)]
    assert_allclose(p, [0.4, 0.4, 0.4, 1, 1, 1, 0.8, 0.8, 1, 0.8, 0.8, 1])
    assert_array_equal(np.flatnonzero(h), [0, 1, 2])


def test_size_counts_single_samples():
    _, p, info = cluster_test(OBS, NULL, tail=1, clusterstat="size")
    assert_array_equal(info.null_max, [3, 2, 2, 2])
    # A (3): 0 larger -> 0.2; B (2): one larger -> 0.4; the single at 4 (1): four larger -> 1.0.
    assert _summary(info) == [(1, 0, 2, 3.0, 0.2), (1, 9, 10, 2.0, 0.4), (1, 4, 4, 1.0, 1.0)]
    _, p, info = cluster_test(OBS, NULL, tail=-1, clusterstat="size")
    assert_array_equal(info.null_min, [5, 2, 3, 1])  # largest negative cluster size, a positive count
    # C (2): #{> 2} = 2 -> 3/5; single at 11: #{> 1} = 3 -> 4/5.
    assert _summary(info) == [(-1, 6, 7, 2.0, 0.6), (-1, 11, 11, 1.0, 0.8)]
    assert_allclose(p, np.select([np.isin(np.arange(N), [6, 7]), np.arange(N) == 11], [0.6, 0.8], 1.0))


def test_p_map_negative_written_only_where_smaller():
    # Samples 0-2 have a constant null, so lower = upper = 0 and an observed 0 is both a
    # positive and a negative candidate; sample 3 is positive only.
    null = np.zeros((4, 4))
    null[3] = [-1, 0, 0, 1]
    obs = np.array([0.0, 0.0, 0.0, 1.0])
    _, p, info = cluster_test(obs, null, tail=0, clusterstat="size")
    # positive 0-3 (size 4, null [3,3,3,4]): 1/5; negative 0-2 (size 3, null [4,3,3,3]): 2/5.
    assert _summary(info) == [(1, 0, 3, 4.0, 0.4), (-1, 0, 2, 3.0, 0.8)]
    assert_allclose(p, 0.4)  # the negative 0.8 does not overwrite the smaller positive p


def test_quantile_methods_differ_and_hazen_is_matlab():
    rng = np.random.default_rng(1)
    null = np.array([rng.permutation(10) for _ in range(6)], dtype=float)
    obs = np.array([0, 8.7, 8.8, 0, 9.5, 9.2])
    _, _, hz = cluster_test(obs, null, tail=1)
    _, _, lin = cluster_test(obs, null, tail=1, quantile_method="linear")
    assert_allclose(hz.threshold_upper, 9.0)    # position 10 * 0.95 + 0.5 = 10 -> x(10)
    assert_allclose(lin.threshold_upper, 8.55)  # numpy linear: 8 + 0.55 * (9 - 8)
    assert [(c.start, c.stop) for c in hz.clusters] == [(4, 5)]
    assert [(c.start, c.stop) for c in lin.clusters] == [(4, 5), (1, 2)]
    assert hz.quantile_method == "hazen"


def _matlab_quantile(x, p):
    """MATLAB quantile: sorted x(i) sits at (i - 0.5) / n; linear in between, clamped at the ends."""
    x = np.sort(x)
    n = x.size
    pos = n * p + 0.5  # 1-based
    if pos <= 1:
        return x[0]
    if pos >= n:
        return x[-1]
    lo = int(np.floor(pos))
    return x[lo - 1] + (pos - lo) * (x[lo] - x[lo - 1])


@pytest.mark.parametrize("nperm", [3, 7, 19, 100])
@pytest.mark.parametrize("tail", [0, 1])
def test_hazen_threshold_matches_matlab_by_hand(nperm, tail):
    rng = np.random.default_rng(nperm)
    null = rng.standard_normal((5, nperm))
    _, _, info = cluster_test(np.zeros(5), null, tail=0 if tail == 0 else -1, clusteralpha=0.1)
    q = 0.05 if tail == 0 else 0.1
    assert_allclose(info.threshold_lower, [_matlab_quantile(row, q) for row in null], rtol=1e-12)
    if tail == 0:
        assert_allclose(info.threshold_upper, [_matlab_quantile(row, 1 - q) for row in null], rtol=1e-12)


def test_2d_full_vs_face_connectivity():
    rng = np.random.default_rng(2)
    null = rng.standard_normal((6, 6, 50))
    obs = np.zeros((6, 6))
    obs[0:2, 0:2] = 10  # two 2x2 blocks touching only at a corner
    obs[2:4, 2:4] = 10
    _, _, full = cluster_test(obs, null, tail=1)
    _, _, face = cluster_test(obs, null, tail=1, connectivity="face")
    assert [c.stat for c in full.clusters] == [80.0]
    assert full.clusters[0].start == (0, 0) and full.clusters[0].stop == (3, 3)
    assert [c.stat for c in face.clusters] == [40.0, 40.0]
    assert [c.start for c in face.clusters] == [(0, 0), (2, 2)]
    frame = face.to_frame()
    assert list(frame.columns) == ["sign", "stat", "p", "size", "start", "stop", "start_1", "stop_1"]
    assert frame["size"].tolist() == [4, 4] and frame["stop_1"].tolist() == [1, 3]


def test_3d_corner_connectivity():
    rng = np.random.default_rng(3)
    null = rng.standard_normal((3, 3, 3, 40))
    obs = np.zeros((3, 3, 3))
    obs[0, 0, 0] = obs[1, 1, 1] = 10  # neighbours only under 26-connectivity
    _, _, full = cluster_test(obs, null, tail=1)
    assert len(full.clusters) == 1 and full.clusters[0].size == 2
    assert_array_equal(np.argwhere(full.clusters[0].mask), [[0, 0, 0], [1, 1, 1]])
    assert [a.tolist() for a in full.clusters[0].indices] == [[0, 1], [0, 1], [0, 1]]
    _, _, face = cluster_test(obs, null, tail=1, connectivity="face")
    assert face.clusters == []  # two single-sample clusters, ignored by "sum"
    _, _, face = cluster_test(obs, null, tail=1, clusterstat="size", connectivity="face")
    assert [c.size for c in face.clusters] == [1, 1]


def test_nan_in_null_never_exceeds():
    null = np.array([[1, 0, -1, -1], [np.nan, 1, -1, -1], [1, 0, -1, -1]], dtype=float)
    obs = np.array([2.0, 2.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, p, info = cluster_test(obs, null, tail=1)
    assert_allclose(info.threshold_upper, 1.0)  # sample 1: nanquantile of [1, -1, -1]
    # perm 0 is [1, NaN, 1]: two singles, not one cluster of 3; every other permutation has no cluster.
    assert np.isnan(info.null_max).all()
    assert _summary(info) == [(1, 0, 2, 6.0, 0.2)]
    assert_allclose(p, 0.2)
    _, _, info = cluster_test(obs, null, tail=1, clusterstat="size")
    assert_array_equal(info.null_max, [1, 1, np.nan, np.nan])
    # A sample whose null is all NaN has no threshold and can never be a candidate.
    null[1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, p, info = cluster_test(obs, null, tail=0, clusterstat="size")
    assert np.isnan(info.threshold_upper[1]) and np.isnan(info.threshold_lower[1])
    assert [(c.start, c.stop) for c in info.clusters] == [(0, 0), (2, 2)]
    assert p[1] == 1.0


def test_nan_in_observed_breaks_clusters():
    obs = OBS.copy()
    obs[1] = np.nan  # A (0-2) becomes two singles
    _, p, info = cluster_test(obs, NULL, tail=1)
    assert _summary(info) == [(1, 9, 10, 2.0, 0.4)]
    assert p[1] == 1.0


def test_info_is_frozen_and_frame():
    _, _, info = cluster_test(OBS, NULL, tail=0)
    assert isinstance(info, ClusterTestInfo) and all(isinstance(c, Cluster) for c in info.clusters)
    with pytest.raises(AttributeError):
        info.tail = 1
    frame = info.to_frame()
    assert frame[["sign", "start", "stop", "size"]].values.tolist() == [[1, 0, 2, 3], [1, 9, 10, 2], [-1, 6, 7, 2]]
    assert_allclose(frame["p"], [0.4, 0.8, 0.8])
    _, _, empty = cluster_test(np.zeros(N), NULL, tail=1)
    assert empty.clusters == []
    assert list(empty.to_frame().columns) == ["sign", "stat", "p", "size", "start", "stop"]


@pytest.mark.parametrize("kwargs, match", [
    ({"datrnd": np.zeros((4, 10))}, (r"permutations go on the last axis\): datobs has shape \(5,\), so datrnd "
                                     r"should have shape \(5, n_permutations\), but got \(4, 10\)")),
    ({"datrnd": np.zeros((10, 5))}, r"should have shape \(5, n_permutations\), but got \(10, 5\)"),
    ({"datrnd": np.zeros(5)}, r"trailing permutation axis"),
    ({"datrnd": np.zeros((5, 0))}, r"at least 1 permutation on its last axis, got 0"),
    ({"datobs": 3.0, "datrnd": np.zeros(4)}, r"datobs must have at least one dimension"),
    ({"tail": 2}, r"Invalid value for the 'tail' parameter. Allowed values are -1, 0, 1, but got 2 instead"),
    ({"tail": "both"}, r"'tail' parameter.*but got 'both'"),
    ({"alpha": 1.5}, r"'alpha' parameter. It must be a number strictly between 0 and 1, but got 1.5"),
    ({"clusteralpha": 0}, r"'clusteralpha' parameter.*strictly between 0 and 1, but got 0 instead"),
    ({"clusterstat": "max"}, r"'clusterstat' parameter. Allowed values are 'sum', 'size', 'tfce', but got 'max'"),
    ({"quantile_method": "matlab"}, r"'quantile_method' parameter. Allowed values are .*'hazen'.*'matlab'"),
    ({"connectivity": 8}, r"'connectivity' parameter. Allowed values are 'full', 'face', but got 8"),
    ({"tfce": {"E": 1}}, r"tfce parameters were given but clusterstat='sum'"),
    ({"clusterstat": "tfce", "tfce": {"e_power": 1}}, r"'tfce key' parameter. Allowed values are 'E', 'H', 'dh'"),
    ({"clusterstat": "tfce", "tfce": {"dh": -1}}, r"tfce\['dh'\] must be a positive number or None, got -1"),
])
def test_input_validation(kwargs, match):
    args = {"datobs": np.zeros(5), "datrnd": np.zeros((5, 10))}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        cluster_test(**args)


def test_tfce_closed_form():
    # Flat cluster of 4 samples at 3 and a single sample at 3; dh = 0.5: heights 0.5k, k = 1..6.
    obs = np.array([0, 3, 3, 3, 3, 0, 3, 0])
    null = np.zeros((8, 3))
    _, p, info = cluster_test(obs, null, tail=1, clusterstat="tfce", tfce={"dh": 0.5})
    per_extent = sum((0.5 * k) ** 2 * 0.5 for k in range(1, 7))  # 11.375
    assert_allclose(info.tfce_scores, np.array([0, 2, 2, 2, 2, 0, 1, 0]) * per_extent)
    # The null never reaches the first height: no permutation has a cluster, p = 1 / (3 + 1).
    assert np.isnan(info.null_max).all()
    assert_allclose(p, np.where(obs > 0, 0.25, 1.0))
    assert [(c.start, c.stop, c.p) for c in info.clusters] == []  # alpha 0.05 < 0.25
    # Non-flat: [1, 2] with dh = 1. Sample 0: sqrt(2) * 1; sample 1: sqrt(2) * 1 + 1 * 2**2.
    _, _, info = cluster_test(np.array([1.0, 2.0, -2.0]), np.zeros((3, 2)), tail=0, clusterstat="tfce",
                              tfce={"dh": 1.0})
    assert_allclose(info.tfce_scores, [np.sqrt(2), np.sqrt(2) + 4, -(1 + 4)])
    assert info.tfce_params == {"E": 0.5, "H": 2.0, "dh": 1.0}


def test_tfce_detects_strong_cluster_only():
    rng = np.random.default_rng(5)
    null = ndimage.gaussian_filter1d(rng.standard_normal((60, 200)), 2, axis=0)
    quiet = ndimage.gaussian_filter1d(rng.standard_normal(60), 2)
    strong = quiet.copy()
    strong[20:30] += 2.0
    h, p, info = cluster_test(strong, null, tail=0, clusterstat="tfce")
    top = max(np.abs(strong).max(), np.abs(null).max())
    assert_allclose(info.tfce_params["dh"], top / 100)
    assert h[20:30].all() and p[20:30].max() < 0.05
    assert info.clusters[0].sign == 1 and 20 <= info.clusters[0].start and info.clusters[0].stop <= 29
    h, p, info = cluster_test(quiet, null, tail=0, clusterstat="tfce")
    assert not h.any() and info.clusters == []


def test_null_speed_1d():
    import time
    rng = np.random.default_rng(6)
    null = rng.standard_normal((139, 1000))
    start = time.perf_counter()
    cluster_test(null[:, 0] + 1, null, tail=0)
    cluster_test(null[:, 0] + 1, null, tail=0, clusterstat="size")
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------- MNE-Python
def _constant_threshold_null(shape, rng, nperm=400):
    """Null identical at every sample and symmetric (v, -v): thresholds are +-c everywhere."""
    v = rng.standard_normal(nperm // 2)
    return np.broadcast_to(np.concatenate([v, -v]), shape + (nperm,)).copy()


def _grid_adjacency(shape, full):
    """Sparse adjacency of a 2-D lattice, 8-neighbour (full) or 4-neighbour (face)."""
    idx = np.arange(np.prod(shape)).reshape(shape)
    offsets = [(0, 1), (1, 0)] + ([(1, 1), (1, -1)] if full else [])
    rows, cols = [], []
    for d0, d1 in offsets:
        a = idx[max(0, -d0):shape[0] - max(0, d0), max(0, -d1):shape[1] - max(0, d1)]
        b = idx[max(0, d0):shape[0] + min(0, d0) or None, max(0, d1):shape[1] + min(0, d1) or None]
        rows += [a.ravel(), b.ravel()]
        cols += [b.ravel(), a.ravel()]
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    return sparse.coo_array((np.ones(rows.size), (rows, cols)), shape=(idx.size,) * 2)


def _ours(info, sign):
    return sorted((tuple(np.flatnonzero(c.mask.ravel()).tolist()), round(c.stat, 8)) for c in info.clusters
                  if c.sign == sign)


def _mne_clusters(x, threshold, tail, adjacency=None):
    """MNE's clusters as (sorted flat indices, sum, sign), single-sample clusters dropped like ours ("sum")."""
    from mne.stats.cluster_level import _find_clusters

    clusters, sums = _find_clusters(x, threshold, tail=tail, adjacency=adjacency)
    out = []
    for c, s in zip(clusters, sums):
        if isinstance(c, tuple):  # 1-D: (slice,)
            members = np.arange(x.size)[c]
        elif c.dtype == bool:
            members = np.flatnonzero(c)
        else:
            members = np.asarray(c)
        if members.size > 1:
            out.append((tuple(np.sort(members).tolist()), round(float(s), 8), np.sign(s)))
    return out


@pytest.mark.parametrize("tail", [1, 0, -1])
def test_clusters_match_mne_1d(tail):
    pytest.importorskip("mne")
    rng = np.random.default_rng(10)
    x = ndimage.gaussian_filter1d(rng.standard_normal(1000), 3) * 6
    null = _constant_threshold_null((1000,), rng)
    _, _, info = cluster_test(x, null, tail=tail)
    c = info.threshold_upper[0] if tail != -1 else info.threshold_lower[0]
    if tail == 0:
        assert_allclose(info.threshold_lower, -c)  # symmetric null, symmetric thresholds
    mne = _mne_clusters(x, c, tail)
    assert len(mne) > 3
    for sign in (1, -1):
        assert _ours(info, sign) == sorted((m, s) for m, s, sg in mne if sg == sign)


@pytest.mark.parametrize("connectivity", ["face", "full"])
def test_clusters_match_mne_2d(connectivity):
    pytest.importorskip("mne")
    rng = np.random.default_rng(11)
    x = ndimage.gaussian_filter(rng.standard_normal((60, 40)), 0.7)
    x *= 1.2 / x.std()  # rough enough that full and face connectivity give different clusters
    null = _constant_threshold_null((60, 40), rng)
    _, _, info = cluster_test(x, null, tail=0, connectivity=connectivity)
    _, _, other = cluster_test(x, null, tail=0, connectivity="full" if connectivity == "face" else "face")
    assert _ours(info, 1) + _ours(info, -1) != _ours(other, 1) + _ours(other, -1)
    c = info.threshold_upper[0, 0]
    if connectivity == "face":  # MNE's default lattice (adjacency=None) is face connectivity
        mne = _mne_clusters(x, c, 0)
    else:
        mne = _mne_clusters(x.ravel(), c, 0, adjacency=_grid_adjacency(x.shape, full=True))
    assert len(mne) > 20
    for sign in (1, -1):
        assert _ours(info, sign) == sorted((m, s) for m, s, sg in mne if sg == sign)


@pytest.mark.parametrize("case", ["1d", "2d-face", "2d-full"])
def test_tfce_matches_mne(case):
    # MNE: thresholds arange(0, max|x|, step), score += |h|**2 * step * extent**0.5 over {x > h}; ours
    # uses {x >= h} on the same grid k * dh, so scores agree except at exact ties. The default
    # dh = max / 100 puts the most extreme sample exactly on the top height (we count that level,
    # MNE's arange stops short of it), so the comparison uses a step that divides nothing.
    pytest.importorskip("mne")
    from mne.stats.cluster_level import _find_clusters

    rng = np.random.default_rng(12)
    shape = (200,) if case == "1d" else (30, 25)
    x = ndimage.gaussian_filter(rng.standard_normal(shape), 2) * 6
    null = rng.standard_normal(shape + (20,))
    connectivity = "full" if case == "2d-full" else "face"
    dh = 0.0731
    _, _, info = cluster_test(x, null, tail=0, clusterstat="tfce", connectivity=connectivity, tfce={"dh": dh})
    if case == "2d-full":
        _, scores = _find_clusters(x.ravel(), {"start": 0, "step": dh}, tail=0,
                                   adjacency=_grid_adjacency(shape, full=True))
    else:
        _, scores = _find_clusters(x, {"start": 0, "step": dh}, tail=0)
    # MNE's scores are unsigned on both sides.
    assert_allclose(np.abs(info.tfce_scores).ravel(), scores, rtol=1e-10)
