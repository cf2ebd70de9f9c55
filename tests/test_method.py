"""The whole method with the real R engine: permutations, null, cluster p, checkpoints, workers.

Every run that checks what the method computes, or how workers, interruptions and resumes
behave, passes ``engine="r"``: the null must be lme4's refits and the workers must each run R
(the kill and Ctrl-C tests also need R's pace to interrupt a run). Argument checks and
checkpoint refusals use the default engine ("auto": native for this model). The native engine
against R is in test_native_engine.py; here only the checkpoint rules between engines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

import clusterlmer as cl
from conftest import assert_same_result
from clusterlmer.checkpoint import CheckpointError

FORMULA = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"
SMALL = dict(kind="2way", n_subjects=6, n_channels=24, n_times=12, seed=3)


@pytest.fixture(scope="module")
def small():
    return cl.simulate_ieeg(**SMALL)


@pytest.fixture(scope="module")
def reference(small):
    """An uninterrupted single-process run that the other runs must reproduce."""
    return cl.permutation_cluster_lmer(small, FORMULA, n_permutations=12, seed=7, progress=False, engine="r")


def test_null_is_each_permutation_refit_with_lmer(small, reference):
    """The null of permutation k equals fitting the k-th permuted design from scratch."""
    perms = cl.make_permutations(small.design, FORMULA, 12, seed=7)
    for k in (0, 11):
        permuted = cl.TimeseriesData(design=perms[k], values=small.values, times=small.times)
        # Level order (hence the reference level) stays the observed one, not the permuted first appearance.
        fit = cl.fit_timeseries(permuted, FORMULA, levels=reference.fit.levels, engine="r")
        for term in reference.terms:
            np.testing.assert_array_equal(reference.null[term][:, k], fit.F[fit.terms.index(term)])
    # and the observed statistic is the plain fit
    fit = cl.fit_timeseries(small, FORMULA, engine="r")
    np.testing.assert_array_equal(reference.stat["hit_miss"], fit.F[fit.terms.index("hit_miss")])
    assert reference.null["hit_miss"].shape == (12, 12)
    assert reference.schemes == {"hit_miss": "within-channel", "region": "between-channel"}


def test_p_clust_follows_cluster_test(reference):
    for term in reference.terms:
        h, p, info = cl.cluster_test(reference.stat[term], reference.null[term], tail=1)
        np.testing.assert_array_equal(p, reference.p_clust[term])
        assert p.min() >= 1 / 13  # (0 + 1) / (n_permutations + 1)
    table = reference.clusters
    assert list(table.columns[:6]) == ["term", "sign", "start", "stop", "t_start", "t_stop"]
    for row in table.itertuples():
        assert row.t_start == reference.times[row.start] and row.t_stop == reference.times[row.stop]
        assert np.all(reference.p_clust[row.term][row.start:row.stop + 1] == row.p)


def test_same_seed_same_result_with_two_workers(small, reference):
    parallel = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=12, seed=7, n_jobs=2, progress=False,
                                           engine="r")
    assert_same_result(reference, parallel)
    other = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=12, seed=8, progress=False, engine="r")
    assert not np.array_equal(other.null["hit_miss"], reference.null["hit_miss"])


def test_native_batches_resume_and_split_to_the_same_numbers(small, tmp_path):
    """Native permutations are fitted in batches (16 at a time here): a run resumed twice with more
    permutations, where the batches of the first runs end early, and indices asked one by one give
    the numbers of one uninterrupted run, bit for bit."""
    kw = dict(seed=7, progress=False, engine="native", cross_check=0)
    whole = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=40, **kw)
    path = tmp_path / "native.h5"
    for n in (5, 21, 40):
        resumed = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=n, checkpoint=path, **kw)
    assert resumed.run["resumed"] == 21
    for term in whole.terms:
        np.testing.assert_array_equal(resumed.null[term], whole.null[term])
    task = _task_of(small, 40)
    assert task.batch_size == 16
    alone = np.stack([task.statistics(k) for k in (3, 17, 39)])
    np.testing.assert_array_equal(alone, task.statistics_of(range(40))[[3, 17, 39]])
    np.testing.assert_array_equal(alone[:, 0], whole.null["hit_miss"][:, [3, 17, 39]].T)


def _task_of(data, n_permutations):
    from clusterlmer.analysis import check_analysis_arguments, PermutationTask

    plan = check_analysis_arguments(data, FORMULA, n_permutations=n_permutations, seed=7, engine="native",
                                    progress=False)
    terms = ("hit_miss", "region", "hit_miss:region")
    return PermutationTask(plan.fit.spec, data.values.reshape(data.n_obs, -1), plan.fit.options, "native",
                           plan.permutations, terms, "F", data.sample_shape)


def test_checkpoint_resume_equals_uninterrupted_run(small, reference, tmp_path):
    path = tmp_path / "run.h5"
    first = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=5, seed=7, checkpoint=path, progress=False,
                                        engine="r")
    with h5py.File(path) as f:
        assert f["done"][()].sum() == 5
    # Asking for more permutations reuses the first five (they are drawn prefix-stably).
    resumed = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=12, seed=7, checkpoint=path,
                                          progress=False, engine="r")
    assert resumed.run["resumed"] == 5
    assert_same_result(reference, resumed)
    np.testing.assert_array_equal(first.null["region"], reference.null["region"][:, :5])


@pytest.mark.parametrize("change, differs", [
    (dict(seed=8), "seed"),
    (dict(formula="data ~ hit_miss + region + (1|sid) + (1|sid:ch)"), "formula"),
    (dict(reml=False), "fit options"),
    (dict(data_seed=4), "data"),
])
def test_checkpoint_of_another_analysis_is_refused(small, tmp_path, change, differs):
    path = tmp_path / "run.h5"
    cl.permutation_cluster_lmer(small, FORMULA, n_permutations=2, seed=7, checkpoint=path, progress=False)
    data = cl.simulate_ieeg(**{**SMALL, "seed": change.pop("data_seed")}) if "data_seed" in change else small
    args = dict(n_permutations=2, seed=7, checkpoint=path, progress=False)
    formula = change.pop("formula", FORMULA)
    args.update(change)
    with pytest.raises(CheckpointError, match=f"different analysis.*{differs}"):
        cl.permutation_cluster_lmer(data, formula, **args)


def test_checkpoint_that_is_not_one_is_refused(small, tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = 1
    with pytest.raises(CheckpointError, match="not a clusterlmer checkpoint"):
        cl.permutation_cluster_lmer(small, FORMULA, n_permutations=2, seed=7, checkpoint=path, progress=False)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"not a clusterlmer checkpoint \(it is not an HDF5 file\)"):
        cl.permutation_cluster_lmer(small, FORMULA, n_permutations=2, seed=7, checkpoint=bad, progress=False)
    assert bad.read_bytes() == b"garbage"


def test_checkpoint_of_the_default_engine_resumes(small, tmp_path):
    """The default engine ("auto", native for this model) is recorded resolved: its checkpoint resumes
    under the default or an explicit engine="native", equal to an uninterrupted native run."""
    path = tmp_path / "run.h5"
    first = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=5, seed=7, checkpoint=path, progress=False)
    assert first.fit.options["engine"] == "native"
    resumed = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=9, seed=7, checkpoint=path,
                                          progress=False)
    assert resumed.run["resumed"] == 5
    again = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=12, seed=7, checkpoint=path,
                                        progress=False, engine="native")
    assert again.run["resumed"] == 9
    whole = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=12, seed=7, progress=False, engine="native")
    assert_same_result(whole, again)


@pytest.mark.parametrize("written, resumed_with, used", [("r", "auto", "native"), ("native", "r", "r")])
def test_checkpoint_of_another_engine_is_refused(small, tmp_path, written, resumed_with, used):
    # Native and R statistics differ by ~1e-6: one null must not mix them.
    path = tmp_path / "run.h5"
    cl.permutation_cluster_lmer(small, FORMULA, n_permutations=2, seed=7, checkpoint=path, progress=False,
                                engine=written)
    with pytest.raises(CheckpointError, match=rf"differs in: engine \('{written}' in the checkpoint, '{used}' in "
                                              r"this run\), fit options\)"):
        cl.permutation_cluster_lmer(small, FORMULA, n_permutations=4, seed=7, checkpoint=path, progress=False,
                                    engine=resumed_with)


def test_checkpoint_written_before_the_engine_key_resumes_with_its_engine(small, tmp_path):
    """Older checkpoints have no "engine" key; their "fit options" fingerprint covers the engine."""
    path = tmp_path / "run.h5"
    cl.permutation_cluster_lmer(small, FORMULA, n_permutations=2, seed=7, checkpoint=path, progress=False,
                                engine="r")
    with h5py.File(path, "r+") as f:
        keys = json.loads(f.attrs["keys"])
        del keys["engine"]
        f.attrs["keys"] = json.dumps(keys, sort_keys=True)
    with pytest.raises(CheckpointError, match=r"differs in: fit options\)"):
        cl.permutation_cluster_lmer(small, FORMULA, n_permutations=3, seed=7, checkpoint=path, progress=False)
    res = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=3, seed=7, checkpoint=path, progress=False,
                                      engine="r")
    assert res.run["resumed"] == 2


_CHILD = textwrap.dedent("""
    import sys, clusterlmer as cl
    data = cl.simulate_ieeg(**{small})
    cl.permutation_cluster_lmer(data, {formula!r}, n_permutations=40, seed=7, checkpoint=sys.argv[1],
                                progress=False, engine="r")
""")


def _done_in(path):
    try:
        with h5py.File(path, "r") as f:
            return int(f["done"][()].sum())
    except (OSError, KeyError):
        return 0


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["killed", "ctrl-c"])
def test_killed_or_interrupted_run_resumes_exactly(reference, tmp_path, how):
    path = tmp_path / "run.h5"
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(small=SMALL, formula=FORMULA), str(path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while _done_in(path) < 3 and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert child.poll() is None, "the child finished before it could be interrupted"
    child.send_signal(how)
    _, err = child.communicate(timeout=60)
    saved = _done_in(path)
    assert 3 <= saved < 40
    if how == signal.SIGINT:
        assert "Rerun with the same arguments to resume" in err
    resumed = cl.permutation_cluster_lmer(cl.simulate_ieeg(**SMALL), FORMULA, n_permutations=12, seed=7,
                                          checkpoint=path, progress=False, engine="r")
    assert resumed.run["resumed"] == min(saved, 12)
    assert_same_result(reference, resumed)


_CHILD_TWO_WORKERS = _CHILD.replace('engine="r")', 'engine="r", n_jobs=2)')


def _children_of(pid):
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_processes_end_when_the_parent_is_killed(tmp_path):
    """SIGKILL of the main process (OOM killer, walltime) must not leave workers holding R sessions."""
    path = tmp_path / "run.h5"
    child = subprocess.Popen([sys.executable, "-c", _CHILD_TWO_WORKERS.format(small=SMALL, formula=FORMULA),
                              str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while _done_in(path) < 1 and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert child.poll() is None, "the run finished before it could be killed"
    workers = [pid for pid in _children_of(child.pid)
               if "clusterlmer.run.worker_process" in open(f"/proc/{pid}/cmdline").read()]
    assert len(workers) == 2, workers
    child.kill()
    child.communicate(timeout=60)
    deadline = time.time() + 30
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"worker processes {left} outlived their killed parent"


def test_failed_refits_are_counted_not_fatal(small):
    values = small.values.copy()
    values[:, 4] = np.nan
    values[:3, 4] = [1.0, 2.0, 3.0]  # too few rows for the model: every fit at sample 4 fails
    data = cl.TimeseriesData(design=small.design, values=values, times=small.times)
    res = cl.permutation_cluster_lmer(data, FORMULA, n_permutations=4, seed=1, progress=False, engine="r")
    for term in res.terms:
        assert res.refit_failures[term][4] == 4
        assert res.refit_failures[term].sum() == 4
        assert np.isnan(res.stat[term][4]) and res.p_clust[term][4] == 1
    assert "hit_miss: 4 of 48" in res.summary()
    assert res.fit.diagnostics["failed"][4]


def test_t_statistic_is_two_tailed_signed_t(small):
    res = cl.permutation_cluster_lmer(small, "data ~ hit_miss + (1|sid) + (1|sid:ch)", n_permutations=4, seed=2,
                                      statistic="t", progress=False, engine="r")
    assert res.tail == 0 and res.terms == ("hit_miss",)
    fit = res.fit
    np.testing.assert_array_equal(res.stat["hit_miss"], fit.t[fit.terms.index("hit_miss")])
    assert (res.null["hit_miss"] < 0).any() and (res.null["hit_miss"] > 0).any()


@pytest.mark.parametrize("kwargs, message", [
    (dict(statistic="t"), "statistic='t' needs one-coefficient terms"),
    (dict(statistic="z"), "Invalid value for the 'statistic' parameter"),
    (dict(tail=0), "only tail=1"),
    (dict(n_permutations=0), "n_permutations must be a positive integer"),
    (dict(terms=["(Intercept)"]), "intercept cannot be tested"),
    (dict(terms=["hemisphere"]), "not in the model"),
    (dict(alpha=1.5), "alpha must be a number between 0 and 1"),
    (dict(n_jobs=0), "n_jobs must be a positive number"),
    (dict(cluster_stat="max"), "Invalid value for the 'cluster_stat' parameter"),
    (dict(schemes={"region": "none"}), "term 'region' uses only variables that are not permuted"),
    (dict(schemes={"region": "none", "hit_miss": "none"}), "nothing to permute"),
])
def test_bad_arguments_are_named(small, kwargs, message):
    data, formula = small, FORMULA
    if kwargs.get("statistic") == "t":  # a three-level factor has a 2-df F, no t
        channel = (small.design["sid"] + ":" + small.design["ch"]).factorize()[0]
        design = small.design.assign(region=[f"r{c % 3}" for c in channel])
        data = cl.TimeseriesData(design=design, values=small.values, times=small.times)
    with pytest.raises((ValueError, TypeError), match=message):
        cl.permutation_cluster_lmer(data, formula, progress=False, **{"n_permutations": 2, **kwargs})


class _CrashOnce:
    """A real permutation task whose worker process dies (SIGKILL) the first time it meets one permutation."""

    def __init__(self, task, k, marker):
        self.task, self.k, self.marker = task, k, marker

    def statistics(self, k):
        if k == self.k and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.task.statistics(k)


def test_dead_worker_is_replaced_and_the_result_is_complete(small, reference, tmp_path, monkeypatch):
    from clusterlmer import analysis

    real = analysis.run_permutations
    monkeypatch.setattr(analysis, "run_permutations", lambda task, store, **kw: real(
        _CrashOnce(task, 5, str(tmp_path / "crashed")), store, **kw))
    with pytest.warns(RuntimeWarning, match="a worker process died"):
        res = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=12, seed=7, n_jobs=2, progress=False,
                                          engine="r")
    assert os.path.exists(tmp_path / "crashed")
    assert res.run["worker_restarts"] == 1
    assert "worker process(es) died" in res.summary()
    assert_same_result(reference, res)


def test_engine_auto_picks_native_for_nested_intercepts_and_cross_checks_with_r(small):
    fit = cl.fit_timeseries(small, FORMULA)  # engine="auto" is the default
    assert fit.options["engine"] == "native"
    check = fit.options["cross_check"]
    assert len(check["samples"]) == 3 and check["max_rel_diff"] < 1e-4
    assert "cross-checked with lme4/lmerTest" not in fit.summary()  # the fit summary has its own line
    assert "Cross-check: R engine refit at samples" in fit.summary()
    slope = "data ~ hit_miss + (hit_miss|sid)"
    assert cl.fit_timeseries(small, slope, engine="auto").options["engine"] == "native"
    with pytest.warns(UserWarning, match="engine='auto' uses the R engine: ddf='kenward-roger'"):
        assert cl.fit_timeseries(small, FORMULA, engine="auto", ddf="kenward-roger").options["engine"] == "r"
    with pytest.raises(ValueError, match="the native engine cannot fit this model: ddf='kenward-roger'"):
        cl.fit_timeseries(small, FORMULA, engine="native", ddf="kenward-roger")
    with pytest.raises(ValueError, match="Invalid value for the 'engine' parameter"):
        cl.fit_timeseries(small, FORMULA, engine="python")


def test_native_permutation_run_matches_r_and_records_its_engine(small, reference):
    res = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=12, seed=7, engine="native", progress=False)
    assert res.fit.options["engine"] == "native" and "Engine:        native" in res.summary()
    assert res.clusters[["term", "start", "stop", "p"]].equals(reference.clusters[["term", "start", "stop", "p"]])
    for term in res.terms:
        np.testing.assert_allclose(res.null[term], reference.null[term], rtol=1e-5, atol=1e-9)
