"""Corrections on one null: the max statistic, TFCE through ``correction=``, the threshold sweep.

The max-statistic p is checked against a plain loop written here; the sweep's
clusters against connected components found by scipy's graph routines on
thresholds computed here with numpy; the analyses run on the channels x time
data of test_channels (an effect on channels E1-E4 at 0.15-0.25 s).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import SMALL, SMALL_FORMULA, run_cli, write_small_mat
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.stats import binom
from test_channels import FORMULA, N_CH, N_T, _chain, _data

import clusterlmer as cl
from clusterlmer.cluster import cluster_test
from clusterlmer.corrections import max_statistic_test
from clusterlmer.saving import ATTRS_DIGEST, attrs_digest
from clusterlmer.summaries import ONSET_CAVEAT

RUN = dict(n_permutations=99, seed=3, adjacency=_chain(), progress=False, cross_check=0)


def _loop_max_p(obs, null, tail):
    """Per sample: (#{k: extreme of permutation k >= obs} + 1) / (n + 1), by plain loops."""
    n = null.shape[-1]
    extremes = []
    for k in range(n):
        values = [v for v in null[..., k].ravel() if not np.isnan(v)]
        if not values:
            extremes.append(None)  # a permutation failed everywhere: it exceeds nothing
        elif tail == 1:
            extremes.append(max(values))
        elif tail == -1:
            extremes.append(-min(values))
        else:
            extremes.append(max(abs(v) for v in values))
    p = np.ones(obs.shape)
    for idx, o in np.ndenumerate(obs):
        if np.isnan(o):
            continue
        o = o if tail == 1 else -o if tail == -1 else abs(o)
        p[idx] = (sum(e is not None and e >= o for e in extremes) + 1) / (n + 1)
    return p


@pytest.mark.parametrize("tail", [1, -1, 0])
def test_max_statistic_p_equals_a_plain_loop(tail):
    rng = np.random.default_rng(5)
    obs = rng.standard_normal((4, 15)) * 2
    null = rng.standard_normal((4, 15, 40))
    null[1, 3, :10] = np.nan  # failed refits here and there
    null[..., 7] = np.nan  # and one permutation that failed everywhere
    obs[2, 2] = np.nan
    obs[0, 0] = np.nanmax(null[..., 3])  # an exact tie with a permutation's maximum counts as exceeding
    h, p, info = max_statistic_test(obs, null, tail=tail, alpha=0.1)
    np.testing.assert_array_equal(p, _loop_max_p(obs, null, tail))
    np.testing.assert_array_equal(h, p < 0.1)
    assert info.clusterstat == "max" and info.threshold_upper is None and info.threshold_lower is None
    assert h.any() and not h.all()  # the case tests something either way
    # Regions: connected significant samples of one sign, each with its peak statistic and smallest p.
    covered = np.zeros(obs.shape, bool)
    for c in info.clusters:
        assert np.all(np.sign(obs[c.mask]) == c.sign) and np.all(p[c.mask] < 0.1)
        assert c.stat == obs[c.mask][np.argmax(np.abs(obs[c.mask]))] and c.p == p[c.mask].min()
        covered |= c.mask
    np.testing.assert_array_equal(covered, h)


@pytest.mark.parametrize("tail", [1, 0])
def test_max_statistic_in_blocks_of_permutations_gives_the_same_numbers(monkeypatch, tail):
    # A null too large for the memory is read a few permutations at a time (and may be a mapped file).
    from clusterlmer import _null_blocks

    rng = np.random.default_rng(2)
    obs, null = rng.standard_normal((6, 20)) * 2, rng.standard_normal((6, 20, 53))
    null[..., 9] = np.nan
    whole = max_statistic_test(obs, null, tail=tail)
    monkeypatch.setattr(_null_blocks, "BLOCK_BYTES", 6 * 20 * 8 * 4)  # 4 permutations per block
    blocks = max_statistic_test(obs, null, tail=tail)
    np.testing.assert_array_equal(whole[1], blocks[1])
    for name in ("null_max", "null_min"):
        a, b = getattr(whole[2], name), getattr(blocks[2], name)
        assert (a is None and b is None) or np.array_equal(a, b, equal_nan=True)


def test_max_statistic_controls_the_family_wise_error():
    # The observed map exchangeable with its n permutations: P(any sample p <= alpha) <= alpha.
    rng = np.random.default_rng(11)
    n_sets, alpha, hits = 600, 0.1, 0
    for _ in range(n_sets):
        maps = rng.standard_normal((20, 20))
        _, p, _ = max_statistic_test(maps[:, 0], maps[:, 1:], tail=0, alpha=alpha)
        hits += p.min() <= alpha
    assert hits <= binom.ppf(0.999, n_sets, alpha)
    assert hits >= binom.ppf(0.001, n_sets, alpha)  # exact, not conservative: close to alpha


@pytest.fixture(scope="module")
def swept():
    return cl.permutation_cluster_lmer(_data(), FORMULA, thresholds=[0.05, 0.01, 0.001], **RUN)


def test_default_is_the_cluster_correction_and_the_sweep_reuses_its_null(swept):
    assert swept.correction == "cluster" and swept.cluster_stat == "sum"
    assert swept.thresholds == (0.05, 0.01, 0.001)
    at_05 = swept.threshold_sweep[swept.threshold_sweep["threshold"] == 0.05].drop(columns="threshold")
    assert at_05.reset_index(drop=True).equals(swept.clusters)  # cluster_alpha 0.05 is the main result


def _graph_components(mask):
    """Connected components over channels (the chain) x time, found by scipy's graph routines."""
    index = np.arange(N_CH * N_T).reshape(N_CH, N_T)
    edges = [(index[c, t], index[c + 1, t]) for c in range(N_CH - 1) for t in range(N_T)]
    edges += [(index[c, t], index[c, t + 1]) for c in range(N_CH) for t in range(N_T - 1)]
    a, b = np.array(edges).T
    graph = sparse.coo_array((np.ones(a.size), (a, b)), shape=(N_CH * N_T,) * 2).tocsr()
    keep = np.flatnonzero(mask.ravel())
    _, labels = connected_components(graph[keep][:, keep], directed=False)
    return [keep[labels == k] for k in range(labels.max() + 1)] if keep.size else []


def test_sweep_clusters_follow_each_threshold_on_the_same_null(swept):
    stat, null = swept.stat["cond"], swept.null["cond"]
    sizes = []
    for threshold in swept.thresholds:
        upper = np.quantile(null, 1 - threshold, axis=-1, method="hazen")
        components = [c for c in _graph_components(stat >= upper) if c.size > 1]  # "sum" drops single samples
        rows = swept.threshold_sweep[swept.threshold_sweep["threshold"] == threshold]
        assert sorted(rows["size"]) == sorted(c.size for c in components)
        expected = sorted(round(float(stat.ravel()[c].sum()), 8) for c in components)
        assert sorted(np.round(rows["stat"], 8)) == expected
        # p of each cluster: largest cluster sum of each permutation at the same threshold.
        null_max = cluster_test(stat, null, tail=1, clusteralpha=threshold, adjacency=_chain())[2].null_max
        for s, p in zip(rows["stat"], rows["p"]):
            assert p == (np.sum(null_max > s) + 1) / (null.shape[-1] + 1)
        sizes.append(rows["size"].sum())
    assert sizes[0] > sizes[-1] > 0  # a stricter threshold keeps a smaller part of the effect


def test_summary_shows_the_sweep_and_the_onset_caveat(swept):
    text = swept.summary()
    assert "Threshold sweep" in text and "0.001" in text and ONSET_CAVEAT in text
    assert "Sassenhagen & Draschkow 2019" in text


def test_sweep_and_correction_survive_files(swept, tmp_path):
    back = cl.load_result(swept.save(tmp_path / "r.h5"))
    assert back.correction == "cluster" and back.thresholds == swept.thresholds
    assert back.threshold_sweep.equals(swept.threshold_sweep)
    with h5py.File(swept.save(tmp_path / "r.mat"), "r") as f:
        assert "threshold_sweep" in f["lme"] and "correction" in f["lme/settings"]
        np.testing.assert_array_equal(np.ravel(f["lme/settings/thresholds"]), swept.thresholds)


def test_a_file_written_before_corrections_existed_reads_as_it_meant(swept, tmp_path):
    path = swept.save(tmp_path / "old.h5")
    with h5py.File(path, "r+") as f:
        for name in ("correction", "thresholds"):
            del f.attrs[name]
        del f["threshold_sweep"]
        f.attrs[ATTRS_DIGEST] = attrs_digest(f)
    back = cl.load_result(path)
    assert back.correction == "cluster" and back.thresholds == () and back.threshold_sweep is None


def test_max_correction_on_channels(tmp_path):
    res = cl.permutation_cluster_lmer(_data(), FORMULA, correction="max", **RUN)
    stat, null = res.stat["cond"], res.null["cond"]
    np.testing.assert_array_equal(res.p_clust["cond"], _loop_max_p(stat, null, 1))
    assert res.correction == "max" and res.cluster_stat == "max"
    assert len(res.clusters) and set(res.clusters["peak_channel"]) <= {"E1", "E2", "E3", "E4"}
    assert ONSET_CAVEAT not in res.summary() and "max-statistic correction" in res.summary()
    fig = res.plot(tmp_path / "max.png")
    assert "max-statistic correction" in fig._suptitle.get_text() and (tmp_path / "max.png").stat().st_size > 10_000


def test_tfce_by_correction_is_the_cluster_stat_tfce_run():
    old = cl.permutation_cluster_lmer(_data(), FORMULA, cluster_stat="tfce", **RUN)
    new = cl.permutation_cluster_lmer(_data(), FORMULA, correction="tfce", **RUN)
    assert old.correction == new.correction == "tfce" and old.cluster_stat == new.cluster_stat == "tfce"
    np.testing.assert_array_equal(old.p_clust["cond"], new.p_clust["cond"])
    assert old.clusters.equals(new.clusters)
    _, p, _ = cluster_test(new.stat["cond"], new.null["cond"], tail=1, clusterstat="tfce", adjacency=_chain())
    np.testing.assert_array_equal(p, new.p_clust["cond"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(correction="bonferroni"), "Invalid value for the 'correction' parameter"),
    (dict(correction="cluster", cluster_stat="tfce"), "cluster_stat='tfce' is threshold-free"),
    (dict(correction="max", cluster_stat="sum"), "forms no clusters, so cluster_stat='sum' does not apply; leave"),
    (dict(correction="tfce", cluster_stat="size"), "cluster_stat='size' does not apply"),
    (dict(correction="max", thresholds=[0.01]), "correction='max' has no such threshold"),
    (dict(cluster_stat="tfce", thresholds=[0.01]), "correction='tfce' has no such threshold"),
    (dict(thresholds=[0.05, 1.0]), "strictly between 0 and 1"),
    (dict(thresholds=[]), "strictly between 0 and 1"),
    (dict(thresholds=[0.01, 0.01]), "lists a value twice"),
    (dict(thresholds="0.01"), "must be a list of cluster-forming alphas"),
    (dict(correction="max", min_neighbours=1), "min_neighbours applies to the cluster correction"),
])
def test_contradictions_are_refused_before_fitting(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cl.permutation_cluster_lmer(_data(), FORMULA, **{**RUN, **kwargs})


def test_one_threshold_may_be_a_number():
    res = cl.permutation_cluster_lmer(_data(), FORMULA, thresholds=0.01, **{**RUN, "n_permutations": 20})
    assert res.thresholds == (0.01,) and set(res.threshold_sweep["threshold"]) == {0.01}


def test_cli_correction_and_thresholds(capsys, tmp_path):
    mat = write_small_mat(tmp_path / "d.mat", cl.simulate_ieeg(**SMALL))
    base = ["run", mat, "--formula", SMALL_FORMULA, "--nperm", "20", "--seed", "1", "--no-progress",
            "--cross-check", "0", "--engine", "native"]
    code, out, err = run_cli(capsys, base + ["--thresholds", "0.05", "0.01", "--out", tmp_path / "r.h5"])
    assert code == 0, err
    assert "Threshold sweep" in out and ONSET_CAVEAT in out
    assert cl.load_result(tmp_path / "r.h5").thresholds == (0.05, 0.01)
    code, out, err = run_cli(capsys, base + ["--correction", "max"])
    assert code == 0, err
    assert "max-statistic correction" in out
    code, out, err = run_cli(capsys, base + ["--correction", "max", "--cluster-stat", "sum"])
    assert code == 1 and "--correction max compares every sample" in err and "--cluster-stat sum does not" in err
    code, out, err = run_cli(capsys, base + ["--correction", "tfce", "--thresholds", "0.01"])
    assert code == 1 and "--correction cluster" in err
    code, out, err = run_cli(capsys, base + ["--thresholds", "2"])
    assert code == 2 and "expected a number between 0 and 1, got '2'" in err
