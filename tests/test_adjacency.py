"""Clusters over channels x time (x freq) with a channel adjacency: the adjacency builders
(clusterlmer.adjacency) and cluster_test(..., adjacency=, min_neighbours=).

The cross-check with MNE-Python runs MNE's public permutation_cluster_1samp_test on the very
maps our cluster_test sees (see test_clusters_and_p_match_mne); the other tests are hand cases
and reductions to the lattice path.
"""

import sys
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import ndimage, sparse

from clusterlmer.adjacency import (channel_adjacency, combine_adjacency, distance_adjacency, mne_adjacency,
                                   shaft_adjacency, validate_adjacency)
from clusterlmer.cluster import cluster_test

# 30 channels of the 10-20 system (all in MNE's 10-20 montage).
EEG30 = ["Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "FC5", "FC1", "FC2", "FC6", "T7", "C3", "Cz", "C4", "T8",
         "CP5", "CP1", "CP2", "CP6", "P7", "P3", "Pz", "P4", "P8", "PO9", "O1", "Oz", "O2", "PO10"]


def _pairs(adjacency):
    """Sorted (i, j), i < j, of a symmetric adjacency."""
    coo = sparse.coo_array(sparse.triu(adjacency, k=1))
    return sorted(zip(coo.row.tolist(), coo.col.tolist()))


def _eeg30_adjacency():
    """(MNE's find_ch_adjacency matrix for EEG30 as returned, its channel names)."""
    mne = pytest.importorskip("mne")
    # The montage is called colin27_1020 from MNE 1.13 on (standard_1020 is its deprecated name).
    name = "colin27_1020" if "colin27_1020" in mne.channels.get_builtin_montages() else "standard_1020"
    info = mne.create_info(EEG30, 1000.0, "eeg")
    info.set_montage(mne.channels.make_standard_montage(name))
    with mne.utils.use_log_level("error"):
        matrix, names = mne.channels.find_ch_adjacency(info, "eeg")
    return info, matrix, names


# ------------------------------------------------------------------ adjacency builders
def test_shaft_pairs():
    adjacency = shaft_adjacency(["LA1", "LA2", "LA3", "LH1", "LH2"])
    assert adjacency.dtype == bool and adjacency.shape == (5, 5)
    assert _pairs(adjacency) == [(0, 1), (1, 2), (3, 4)]
    assert (adjacency != adjacency.T).nnz == 0 and not adjacency.diagonal().any()
    # Order-free, gaps break a shaft, separators / leading zeros / SEEG primes parse.
    adjacency = channel_adjacency("shaft", ["RH10", "A'2", "LA3", "RH9", "LA1", "A'1", "LAH_01", "LAH_02"])
    assert _pairs(adjacency) == [(0, 3), (1, 5), (6, 7)]


@pytest.mark.parametrize("names, match", [
    (["LA1", "LA2", "LA1-LA2", "12", "Grid"], r"do not parse: 'LA1-LA2', '12', 'Grid'\. Rename the channels"),
    (["LA1", "LA01"], r"'LA1' and 'LA01' are both contact 1 of shaft 'LA'"),
])
def test_shaft_errors(names, match):
    with pytest.raises(ValueError, match=match):
        shaft_adjacency(names)
    with pytest.raises(ValueError, match="pass ch_names"):
        channel_adjacency("shaft")


def test_distance_adjacency_grid():
    # A 3 x 3 grid, 10 mm apart: 1.1 * spacing links the 4 nearest, 1.5 * spacing adds diagonals.
    positions = np.array([[x, y, 0.0] for x in range(3) for y in range(3)]) * 10
    four = distance_adjacency(positions, 11)
    assert np.bincount(four.sum(axis=1).astype(int)).tolist() == [0, 0, 4, 4, 1]  # corners, edges, centre
    eight = channel_adjacency("distance", positions=positions, max_distance=15)
    assert eight[[4]].sum() == 8 and len(_pairs(eight)) == 12 + 8
    with pytest.raises(ValueError, match=r"positions must have shape \(n_channels, 3\), got \(9, 2\)"):
        distance_adjacency(positions[:, :2], 11)


@pytest.mark.parametrize("matrix, n, match", [
    (np.ones((3, 4)), None, r"must be square \(channel x channel\), got shape \(3, 4\)"),
    (np.ones(3), None, r"must be a 2-D channel x channel matrix"),
    (np.eye(3), 4, r"adjacency is 3 x 3 but the data have 4 channels"),
    (np.array([[0, 1], [0, 0]]), None,
     r"must be symmetric.*entry \[0, 1\] is set but \[1, 0\] is not.*\+ adjacency\.T"),
    (np.array([[0, 0.5], [0.5, 0]]), None, r"must hold 0/1 .* holds 0\.5.*\(adjacency != 0\)"),
    (sparse.csr_array(np.array([[0, 2], [2, 0]])), None, r"must hold 0/1"),
])
def test_user_matrix_errors(matrix, n, match):
    with pytest.raises(ValueError, match=match):
        validate_adjacency(matrix, n)


def test_user_matrix_accepted_and_diagonal_ignored():
    dense = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]])
    for given in (dense, dense.astype(bool), sparse.csr_matrix(dense), sparse.coo_array(dense)):
        out = validate_adjacency(given, 3)
        assert isinstance(out, sparse.csr_array) and out.dtype == bool
        assert _pairs(out) == [(0, 1), (1, 2)] and not out.diagonal().any()
    with pytest.raises(TypeError, match=r"got the string 'biosemi64'.*channel_adjacency\('biosemi64', ch_names\)"):
        cluster_test(np.zeros((3, 4)), np.zeros((3, 4, 5)), adjacency="biosemi64")


def test_mne_info_and_template():
    info, matrix, names = _eeg30_adjacency()
    ours = mne_adjacency(info)
    theirs = sparse.csr_array(matrix, dtype=bool)
    theirs.setdiag(False)
    assert names == EEG30 and (ours != theirs).nnz == 0 and ours.nnz > 60
    # A template, subset and reordered to the user's channels.
    import mne

    template, template_names = mne.channels.read_ch_adjacency("easycap32ch-avg")
    template = template.toarray()
    picks = ["Pz", "Fp1", "Cz", "O2", "C3", "P4"]
    where = [list(template_names).index(n) for n in picks]
    ours = channel_adjacency("easycap32ch-avg", picks)
    assert_array_equal(ours.toarray(), template[np.ix_(where, where)] & ~np.eye(len(picks), dtype=bool))
    with pytest.raises(ValueError, match=r"2 channel\(s\) are not in the MNE/FieldTrip template 'easycap32ch-avg': "
                                         r"'LA1', 'CZ'\. Names differing only in case: 'CZ' \(template has 'Cz'\)"):
        channel_adjacency("easycap32ch-avg", ["Pz", "LA1", "CZ"])


def test_missing_mne_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mne", None)  # "import mne" now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'clusterlmer\[mne\]'"):
        channel_adjacency("biosemi64", ["Fp1"])


@pytest.mark.parametrize("shape", [(7,), (5, 3), (1,)])
def test_combine_adjacency_equals_mne(shape):
    mne = pytest.importorskip("mne")
    channels = shaft_adjacency(["LA1", "LA2", "LA3", "LH1", "LH2", "RA1"])
    ours = combine_adjacency(channels, *shape)
    theirs = sparse.csr_array(mne.stats.combine_adjacency(channels.astype(float), *shape), dtype=bool)
    assert ours.shape == theirs.shape == (6 * int(np.prod(shape)),) * 2
    assert (ours != theirs).nnz == 0 and ours.nnz == theirs.nnz


# ------------------------------------------------------------------ cluster_test with a graph
def _hand_null(n_channels, n_times):
    """max(4, n_channels) <= 10 permutations; at every sample one +1, one -1, the rest 0.

    With at most 10 permutations the hazen 0.95 and 0.05 quantiles clamp to the extremes, so the
    thresholds are exactly +-1. Permutation k holds +1 on channel k % n_channels (every time) and
    -1 on the next channel, so every null cluster is one channel's whole time course (sum n_times).
    """
    nperm = max(4, n_channels)
    null = np.zeros((n_channels, n_times, nperm))
    for k in range(nperm):
        null[k % n_channels, :, k] = 1
        null[(k + 1) % n_channels, :, k] = -1
    return null


def test_min_neighbours_removes_isolated_samples():
    chain = np.diag(np.ones(4), 1) + np.diag(np.ones(4), -1)  # channels 0-1-2-3-4
    obs = np.zeros((5, 5))
    obs[0:3, 1:4] = 2.0  # a 3 x 3 block
    obs[2, 4] = 2.0      # joined to the block in time only: no supra-threshold channel neighbour
    obs[4, 0:2] = 3.0    # a time pair on channel 4, whose only neighbour (3) is below threshold
    null = _hand_null(5, 5)
    _, p, info = cluster_test(obs, null, tail=1, adjacency=chain)
    assert info.connectivity == "adjacency"
    assert_array_equal(info.threshold_upper, 1.0)
    assert [(c.size, c.stat) for c in info.clusters] == [(10, 20.0), (2, 6.0)]
    assert_array_equal(info.null_max, [5] * 5)
    _, p, info = cluster_test(obs, null, tail=1, adjacency=chain, min_neighbours=1)
    assert [(c.size, c.stat) for c in info.clusters] == [(9, 18.0)]
    assert not info.clusters[0].mask[2, 4] and info.clusters[0].mask[0:3, 1:4].all()
    assert p[2, 4] == 1.0 and p[4, 0] == 1.0 and p[0, 1] == 1 / 6  # 18 > every null maximum (5)
    assert np.isnan(info.null_max).all()  # null clusters are single channels: all pruned too


def test_min_neighbours_repeats_until_stable():
    # Triangle A-B-C, D hangs on C, E on D; all supra-threshold at one time. min_neighbours=2:
    # E (1 neighbour) goes, then D (only C left), and A, B, C (2 each) stay.
    edges = [(0, 1), (0, 2), (1, 2), (2, 3), (3, 4)]
    matrix = np.zeros((5, 5), bool)
    for i, j in edges:
        matrix[i, j] = matrix[j, i] = True
    obs = np.full((5, 1), 2.0)
    _, _, info = cluster_test(obs, _hand_null(5, 1), tail=1, adjacency=matrix, min_neighbours=2)
    assert [np.flatnonzero(c.mask[:, 0]).tolist() for c in info.clusters] == [[0, 1, 2]]
    _, _, info = cluster_test(obs, _hand_null(5, 1), tail=1, adjacency=matrix, min_neighbours=3)
    assert info.clusters == []


def test_no_edges_is_the_lattice_on_each_channel():
    rng = np.random.default_rng(20)
    n_channels, n_times = 6, 80
    null = ndimage.gaussian_filter1d(rng.standard_normal((n_channels, n_times, 300)), 2, axis=1) * 3
    obs = ndimage.gaussian_filter1d(rng.standard_normal((n_channels, n_times)), 2, axis=1) * 3
    for stat in ("sum", "size"):
        _, p, info = cluster_test(obs, null, tail=0, clusterstat=stat, adjacency=sparse.csr_array((6, 6)))
        maxes, mins = [], []
        for ch in range(n_channels):
            _, _, lattice = cluster_test(obs[ch], null[ch], tail=0, clusterstat=stat, connectivity="face")
            ours = [(c.sign, c.stat, c.indices[1].tolist()) for c in info.clusters if c.indices[0][0] == ch]
            assert ours == [(c.sign, c.stat, c.indices[0].tolist()) for c in lattice.clusters]
            assert_array_equal(info.threshold_upper[ch], lattice.threshold_upper)
            maxes.append(lattice.null_max)
            mins.append(lattice.null_min)
        assert len(info.clusters) >= n_channels
        # The null's extreme is taken over all channels at once: the max of the channels' maxima.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
            assert_array_equal(info.null_max, np.nanmax(maxes, axis=0))
            assert_array_equal(info.null_min, (np.nanmin if stat == "sum" else np.nanmax)(mins, axis=0))


def test_chunks_of_permutations_change_nothing(monkeypatch):
    """The null is labelled in chunks of permutations; tiny chunks (one permutation or a few) give the
    same clusters, nulls and TFCE scores as one chunk."""
    from clusterlmer import _graph_clusters

    rng = np.random.default_rng(22)
    matrix = distance_adjacency(np.array([[x, y, 0.0] for x in range(3) for y in range(4)]), 1.5)
    null = ndimage.gaussian_filter1d(rng.standard_normal((12, 40, 3, 60)), 1.5, axis=1) * 3
    obs = ndimage.gaussian_filter1d(rng.standard_normal((12, 40, 3)), 1.5, axis=1) * 3
    runs = [dict(clusterstat="sum"), dict(clusterstat="size", min_neighbours=1), dict(clusterstat="tfce")]
    whole = [cluster_test(obs, null, adjacency=matrix, **kw) for kw in runs]
    for nodes in (12 * 40 * 3, 12 * 40 * 3 * 7 + 5):
        monkeypatch.setattr(_graph_clusters, "_NODES_PER_CHUNK", nodes)
        for kw, (h, p, info) in zip(runs, whole):
            h2, p2, info2 = cluster_test(obs, null, adjacency=matrix, **kw)
            assert_array_equal(p2, p)
            assert_array_equal(info2.null_max, info.null_max)
            assert_array_equal(info2.null_min, info.null_min)
            assert [c.stat for c in info2.clusters] == [c.stat for c in info.clusters]
            if kw["clusterstat"] == "tfce":
                assert_array_equal(info2.tfce_scores, info.tfce_scores)
    assert len(whole[0][2].clusters) > 3 and np.isfinite(whole[1][2].null_max).sum() > 20


def test_graph_tfce_by_hand():
    # Channels 0 and 1 are neighbours, channel 2 is alone; dh = 1: heights 1 and 2.
    obs = np.array([[2.0, 0.0], [2.0, 0.0], [1.0, 2.0]])
    pair = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]])
    _, _, info = cluster_test(obs, np.zeros((3, 2, 3)), tail=1, clusterstat="tfce", adjacency=pair,
                              tfce={"dh": 1.0})
    # Height 1: {ch0 t0, ch1 t0} and {ch2 t0, ch2 t1}, extent 2 each -> sqrt(2) * 1**2.
    # Height 2: {ch0 t0, ch1 t0} (extent 2) and {ch2 t1} (extent 1) -> sqrt(2) * 2**2 and 1 * 2**2.
    r2 = np.sqrt(2)
    assert_allclose(info.tfce_scores, [[5 * r2, 0], [5 * r2, 0], [r2, r2 + 4]], rtol=1e-14)
    # Linking channel 2 to channel 1 merges everything at height 1 (extent 4 -> 2 each).
    chain = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    _, _, info = cluster_test(obs, np.zeros((3, 2, 3)), tail=1, clusterstat="tfce", adjacency=chain,
                              tfce={"dh": 1.0})
    assert_allclose(info.tfce_scores, [[2 + 4 * r2, 0], [2 + 4 * r2, 0], [2, 2 + 4]], rtol=1e-14)


def test_graph_tfce_without_edges_is_the_lattice():
    rng = np.random.default_rng(21)
    null = ndimage.gaussian_filter1d(rng.standard_normal((4, 60, 50)), 2, axis=1) * 3
    obs = ndimage.gaussian_filter1d(rng.standard_normal((4, 60)), 2, axis=1) * 3
    _, _, info = cluster_test(obs, null, tail=0, clusterstat="tfce", adjacency=np.zeros((4, 4)))
    dh = info.tfce_params["dh"]
    for ch in range(4):
        # One channel's null has a smaller max, so pass the same dh; the scores then agree to the bit.
        _, _, lattice = cluster_test(obs[ch], null[ch], tail=0, clusterstat="tfce", tfce={"dh": dh})
        assert_array_equal(info.tfce_scores[ch], lattice.tfce_scores)


def test_time_freq_graph():
    # (channels, times, freqs): a block joined across channels 0-1 at one (t, f), and a second
    # block on channel 2 touching the first only diagonally in (t, f), which is no edge.
    obs = np.zeros((3, 4, 4))
    obs[0, 0:2, 0:2] = 2.0
    obs[1, 1, 1] = 2.0
    obs[1, 2, 2] = 2.0  # diagonal to (1, 1, 1): a separate single sample
    obs[2, 2:4, 2:4] = 2.0
    chain = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    null = _hand_null(3, 16).reshape(3, 4, 4, 4)
    _, _, info = cluster_test(obs, null, tail=1, clusterstat="size", adjacency=chain)
    # (1, 2, 2) and (2, 2, 2) are channel neighbours at the same (t, f): they join the channel-2 block.
    assert sorted(c.size for c in info.clusters) == [5, 5]
    assert info.clusters[0].start == (0, 0, 0) and info.clusters[0].stop == (1, 1, 1)


@pytest.mark.parametrize("kwargs, match", [
    ({"adjacency": np.zeros((3, 3)), "connectivity": "face"}, r"connectivity='face' sets the neighbours of a regular "
                                                                r"lattice.*Leave connectivity out"),
    ({"min_neighbours": 1}, r"min_neighbours=1 counts neighbouring channels, so it needs a channel adjacency"),
    ({"adjacency": np.zeros((3, 3)), "min_neighbours": -1}, r"min_neighbours must be a whole number >= 0, got -1"),
    ({"adjacency": np.zeros((3, 3)), "min_neighbours": 1.5}, r"whole number >= 0, got 1.5"),
    ({"adjacency": np.zeros((3, 3)), "min_neighbours": 1, "clusterstat": "tfce"}, r"not defined for "
                                                                                  r"clusterstat='tfce'"),
    ({"adjacency": np.zeros((4, 4))}, r"adjacency is 4 x 4 but the data have 3 channels"),
])
def test_graph_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cluster_test(np.zeros((3, 4)), np.zeros((3, 4, 5)), **kwargs)
    with pytest.raises(ValueError, match=r"shape \(n_channels, n_times\) or \(n_channels, n_times, n_freqs\), got "
                                         r"shape \(3,\)"):
        cluster_test(np.zeros(3), np.zeros((3, 5)), adjacency=np.zeros((3, 3)))


# ------------------------------------------------------------------ MNE-Python
def _copula_null(fields, rng):
    """Null maps with the spatial/temporal structure of ``fields`` (..., n_permutations) whose values at
    every sample are the same set (symmetric about 0): each sample's permutation values are ranked and
    replaced by the same sorted vector. Every sample then has the same quantiles, so our per-sample
    thresholds are one constant, which MNE can be given."""
    nperm = fields.shape[-1]
    half = np.sort(np.abs(rng.standard_normal(nperm // 2))) * 1.6
    values = np.concatenate([-half[::-1], [0.0] * (nperm % 2), half])
    ranks = np.argsort(np.argsort(fields, axis=-1, kind="stable"), axis=-1, kind="stable")
    return values[ranks]


def _smooth_maps(rng, adjacency, shape):
    """Gaussian maps smooth in time (and freq) and correlated across neighbouring channels."""
    x = ndimage.gaussian_filter(rng.standard_normal(shape), [0] + [2] * (len(shape) - 1))
    spread = sparse.csr_array(adjacency, dtype=float) + sparse.eye_array(shape[0])
    mixed = (spread @ x.reshape(shape[0], -1)).reshape(shape)
    return mixed / mixed.std()


def _mne_run(obs, null, threshold, tail, adjacency):
    """MNE's permutation_cluster_1samp_test on our maps: its stat_fun ignores the data and returns ``obs``,
    then the null maps in turn (MNE computes the observed statistic first, then one per permutation)."""
    import mne

    maps = iter([obs] + [null[..., k] for k in range(null.shape[-1])])
    calls = []

    def replay(X):
        calls.append(None)
        return next(maps).reshape(-1).copy()

    n_obs = 16  # 2**15 sign flips to draw from: far more than we use
    X = np.random.default_rng(0).standard_normal((n_obs,) + obs.shape)
    with mne.utils.use_log_level("error"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MNE warns about its automatic threshold for custom stat_fun
        t_obs, clusters, cluster_p, H0 = mne.stats.permutation_cluster_1samp_test(
            X, threshold=threshold, n_permutations=null.shape[-1] + 1, tail=tail, stat_fun=replay,
            adjacency=adjacency, n_jobs=1, buffer_size=None, out_type="indices", seed=0, check_disjoint=False)
    assert len(calls) == null.shape[-1] + 1  # every map was used exactly once, in order
    return t_obs, clusters, cluster_p, H0


@pytest.mark.parametrize("tail", [1, -1, 0])
@pytest.mark.parametrize("layout", ["channels x times", "channels x times x freqs"])
def test_clusters_and_p_match_mne(tail, layout):
    """Compared: cluster membership (exact), cluster sums (1e-12), every permutation's extreme
    cluster sum (MNE's H0 against our null_max / null_min, 1e-12) and cluster p-values (1e-12).

    Both sides see identical maps: we build the observed map and 499 null maps once, run our
    cluster_test, and MNE's public permutation_cluster_1samp_test with a stat_fun that returns those
    maps in call order. The null has the same value set at every sample, so our per-sample quantile
    thresholds are one constant c, which MNE gets as its threshold; no map value equals c (asserted),
    so MNE's "> c" and our ">= c" select the same samples. Conventions accounted for: our "sum" drops
    single-sample clusters, MNE keeps them (so singletons are left out of the comparison; a null map
    whose largest MNE cluster were a single sample would break the H0 equality); MNE counts the
    observed among the permutations with ">=", we use (#{null > obs} + 1) / (nperm + 1), equal when
    no null value ties an observed sum (asserted); for tail=0 MNE pools both signs into one null of
    |sums| without doubling, we double one-signed p-values, so there we check that MNE's p equals
    (#{max(null_max, -null_min) >= |obs|} + 1) / (nperm + 1) from our nulls.

    Layouts: channels x times gives MNE only the channel adjacency (its own spatio-temporal
    clustering, data as times x channels); channels x times x freqs gives MNE the whole graph
    from mne.stats.combine_adjacency.
    """
    mne = pytest.importorskip("mne")
    _, matrix, _ = _eeg30_adjacency()
    rng = np.random.default_rng(30 + tail)
    shape = (30, 60) if layout == "channels x times" else (30, 12, 6)
    nperm = 499  # hazen positions 474.55, 487.025, 12.975 and 25.45: c falls strictly between null values
    fields = np.stack([_smooth_maps(rng, matrix, shape) for _ in range(nperm)], axis=-1)
    null = _copula_null(fields, rng)
    obs = _smooth_maps(rng, matrix, shape) * 1.3
    obs[:8, :shape[1] // 2] += 5.0  # a positive effect on the first channels, a negative one on the last
    obs[-8:, shape[1] // 2:] -= 5.0
    _, p, info = cluster_test(obs, null, tail=tail, adjacency=matrix)
    thresholds = [t for t in (info.threshold_upper, info.threshold_lower) if t is not None]
    c = float(np.abs(thresholds[0].flat[0]))
    for t in thresholds:
        assert_allclose(np.abs(t), c, rtol=1e-14)
    assert np.min(np.abs(np.abs(np.concatenate([obs.ravel(), null.ravel()])) - c)) > 1e-9

    if layout == "channels x times":
        t_obs, clusters, cluster_p, H0 = _mne_run(obs.T, np.swapaxes(null, 0, 1), -c if tail == -1 else c, tail,
                                                  matrix)
        members = [np.ravel_multi_index((ch, t), shape) for t, ch in clusters]
    else:
        graph = mne.stats.combine_adjacency(sparse.csr_array(matrix, dtype=float), shape[1], shape[2])
        t_obs, clusters, cluster_p, H0 = _mne_run(obs, null, -c if tail == -1 else c, tail, graph)
        members = [np.ravel_multi_index(idx, shape) for idx in clusters]
    flat = obs.ravel()
    theirs = sorted((tuple(np.sort(m).tolist()), float(flat[m].sum()), float(pv))
                    for m, pv in zip(members, cluster_p) if len(m) > 1)
    ours = sorted((tuple(np.flatnonzero(cl.mask).tolist()), cl.stat, cl.p) for cl in info.clusters)
    assert len(ours) >= 2 and {cl.sign for cl in info.clusters} == ({1, -1} if tail == 0 else {tail})
    assert [o[0] for o in ours] == [t[0] for t in theirs]
    assert_allclose([o[1] for o in ours], [t[1] for t in theirs], rtol=1e-12)

    # Every permutation's extreme cluster sum (MNE: 0 where a permutation has no cluster).
    pos = np.nan_to_num(info.null_max) if tail != -1 else None
    neg = np.nan_to_num(info.null_min) if tail != 1 else None
    if tail == 1:
        assert_allclose(H0[1:], pos, rtol=1e-12)
    elif tail == -1:
        assert_allclose(H0[1:], neg, rtol=1e-12)
    else:
        assert_allclose(np.abs(H0[1:]), np.maximum(pos, -neg), rtol=1e-12)

    # p-values.
    sums = np.array([o[1] for o in ours])
    if tail == 0:
        assert not np.isin(np.abs(sums), np.concatenate([pos, -neg])).any()  # no ties: ">" and ">=" agree
        pooled = np.maximum(pos, -neg)
        assert_allclose([t[2] for t in theirs],
                        [(np.count_nonzero(pooled >= abs(s)) + 1) / (nperm + 1) for s in sums], rtol=1e-12)
        one_sided = [(np.count_nonzero((pos if s > 0 else -neg) > abs(s)) + 1) / (nperm + 1) for s in sums]
        assert_allclose([o[2] for o in ours], np.minimum(1.0, 2 * np.array(one_sided)), rtol=1e-12)
    else:
        assert not np.isin(sums, pos if tail == 1 else neg).any()  # no ties: ">" and ">=" agree
        assert_allclose([o[2] for o in ours], [t[2] for t in theirs], rtol=1e-12)
    assert min(o[2] for o in ours) < 0.05 < 0.5 < max(o[2] for o in ours)  # small and large p compared


def test_graph_tfce_matches_mne():
    """Observed TFCE scores over the 30-channel graph against MNE's (public permutation_cluster_1samp_test
    with threshold=dict(start=0, step=dh), same map, same channel adjacency): equal to 1e-10 (MNE's steps
    are differences of its thresholds; a step that divides no value avoids ">" versus ">=" ties)."""
    pytest.importorskip("mne")
    _, matrix, _ = _eeg30_adjacency()
    rng = np.random.default_rng(40)
    obs = _smooth_maps(rng, matrix, (30, 50)) * 2
    dh = 0.0731
    _, _, info = cluster_test(obs, np.zeros((30, 50, 3)), tail=0, clusterstat="tfce", adjacency=matrix,
                              tfce={"dh": dh})
    t_obs, _, _, _ = _mne_run(obs.T, np.zeros((50, 30, 3)), {"start": 0, "step": dh}, 0, matrix)
    assert_allclose(info.tfce_scores, t_obs.T, rtol=1e-10)
    assert np.count_nonzero(info.tfce_scores) > 1000
