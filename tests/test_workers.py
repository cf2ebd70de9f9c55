"""Local worker processes (``n_jobs``): started without re-importing the caller's script, capped at the cores.

A plain script without ``if __name__ == "__main__":`` must run with ``n_jobs=2`` and give the
``n_jobs=1`` null (multiprocessing's spawn re-imported such a script in every worker: the workers
died and the run failed after minutes, or hung). Both engines are run: R in the workers is the
reason they exist, native is the default's choice for this model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import clusterlmer as cl
from conftest import SMALL, SMALL_FORMULA, SMALL_SEED, write_small_mat
from clusterlmer import run
from clusterlmer.cli import main

_PLAIN_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import clusterlmer as cl

    data = cl.simulate_ieeg(**{small})
    res = cl.permutation_cluster_lmer(data, {formula!r}, n_permutations={n_perm}, seed={seed}, n_jobs=2,
                                      engine={engine!r}, cross_check=0, progress=False)
    np.save(sys.argv[1], np.stack([res.null[t] for t in res.terms]))
    print("workers:", res.run["n_jobs"], "restarts:", res.run["worker_restarts"])
""")


@pytest.mark.parametrize("engine, n_perm", [("native", 40), ("r", 8)])
def test_plain_script_without_main_guard_runs_two_workers(tmp_path, engine, n_perm):
    script = tmp_path / "plain_script.py"
    script.write_text(_PLAIN_SCRIPT.format(small=SMALL, formula=SMALL_FORMULA, n_perm=n_perm, seed=SMALL_SEED,
                                           engine=engine))
    out = tmp_path / "null.npy"
    try:
        done = subprocess.run([sys.executable, str(script), str(out)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"a plain script with n_jobs=2 did not finish within 120 s:\n{exc.stderr}")
    assert done.returncode == 0, done.stderr
    assert "workers: 2 restarts: 0" in done.stdout
    single = cl.permutation_cluster_lmer(cl.simulate_ieeg(**SMALL), SMALL_FORMULA, n_permutations=n_perm,
                                         seed=SMALL_SEED, engine=engine, cross_check=0, progress=False)
    np.testing.assert_array_equal(np.load(out), np.stack([single.null[t] for t in single.terms]))


def test_n_jobs_above_the_cores_is_capped_with_a_warning():
    cores = run.available_cores()
    asked = cores + 98
    with pytest.warns(UserWarning, match=rf"n_jobs={asked} .*asks for {asked} worker processes, but this process "
                                         rf"may use {cores} core\(s\): using {cores} workers"):
        assert run.resolve_n_jobs(asked) == cores
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within the cores: no warning
        assert run.resolve_n_jobs(-1) == cores
        assert run.resolve_n_jobs(cores) == cores
        assert run.resolve_n_jobs(1) == 1


def test_available_cores_follow_the_cpu_affinity():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this system")
    assert run.available_cores() == len(os.sched_getaffinity(0)) <= os.cpu_count()


def test_run_and_cli_with_100_jobs_start_one_worker_per_core(small, tmp_path):
    cores = run.available_cores()
    with pytest.warns(UserWarning, match=rf"n_jobs=100 .*using {cores} workers"):
        res = cl.permutation_cluster_lmer(small, SMALL_FORMULA, n_permutations=20, seed=SMALL_SEED, n_jobs=100,
                                          engine="native", cross_check=0, progress=False)
    assert res.run["n_jobs"] == cores
    mat = write_small_mat(tmp_path / "small.mat", small)
    with pytest.warns(UserWarning, match=rf"^--jobs 100 asks for 100 worker processes.*using {cores} workers"):
        assert main(["run", str(mat), "--formula", SMALL_FORMULA, "--nperm", "20", "--jobs", "100", "--engine",
                     "native", "--cross-check", "0", "--no-progress", "--out", str(tmp_path / "res.h5")]) == 0
