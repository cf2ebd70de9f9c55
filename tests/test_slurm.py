"""Permutations on a real SLURM cluster through dask-jobqueue: the result equals the local one,
with the R engine (an R process per worker) and the native engine (in the worker threads, no R).

Needs a running SLURM (``bash scripts/slurm-localhost.sh start`` sets up a single-node one on this
machine, as root). Without one the tests are skipped, unless CLUSTERLMER_REQUIRE_SLURM=1 (CI), where
they fail instead.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import clusterlmer as cl
from conftest import SMALL_FORMULA, SMALL_N_PERM, SMALL_SEED, assert_same_result, where_blocks_ran, write_small_mat
from clusterlmer.cli import main

FORMULA, N_PERM, SEED = SMALL_FORMULA, SMALL_N_PERM, SMALL_SEED
N_PERM_NATIVE = 40
JOB_NAME = "clusterlmer-test"


@functools.lru_cache(maxsize=None)
def _slurm_missing():
    """Why SLURM cannot be used here, or None (asked once: sinfo takes seconds to give up)."""
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        return "dask-jobqueue is not installed (pip install 'clusterlmer[dask]')"
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM's sinfo/sbatch are not on PATH"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s"
    if out.returncode != 0:
        return f"sinfo failed: {(out.stderr or out.stdout).strip()}"
    states = out.stdout.split()
    if not any(s.rstrip("*~#!%$@^-").startswith(("idle", "mixed")) for s in states):
        return f"no SLURM node is idle (sinfo: {' '.join(states) or 'no nodes'})"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm():
    reason = _slurm_missing()
    if reason is None:
        return
    if os.environ.get("CLUSTERLMER_REQUIRE_SLURM") == "1":
        pytest.fail(f"CLUSTERLMER_REQUIRE_SLURM=1 but {reason}. Start the single-node SLURM of "
                    "scripts/slurm-localhost.sh first (bash scripts/slurm-localhost.sh start).", pytrace=False)
    pytest.skip(f"{reason}; 'bash scripts/slurm-localhost.sh start' (as root) sets one up")


@pytest.fixture(scope="module")
def native_reference(small):
    return cl.permutation_cluster_lmer(small, FORMULA, n_permutations=N_PERM_NATIVE, seed=SEED, engine="native",
                                       progress=False)




def _our_jobs(name=JOB_NAME):
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True, text=True, timeout=30)
    return [line.split() for line in out.stdout.splitlines()]


def _wait_for_no_jobs(name=JOB_NAME, timeout=60):
    deadline = time.monotonic() + timeout
    while _our_jobs(name) and time.monotonic() < deadline:
        time.sleep(0.5)
    return not _our_jobs(name)


def test_slurm_cluster_gives_the_local_result(small, reference, native_reference, tmp_path, monkeypatch):
    """Two SLURM jobs, each one Dask worker with one thread, running the workers with this Python;
    the R engine, then the native engine on the same workers."""
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    with SLURMCluster(cores=1, processes=1, memory="2GB", walltime="00:10:00", python=sys.executable,
                      job_name=JOB_NAME, log_directory=str(tmp_path / "logs"),
                      local_directory=str(tmp_path / "scratch"),
                      scheduler_options={"dashboard_address": None}) as cluster:
        cluster.scale(jobs=2)
        with Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=180)
            jobs = _our_jobs()
            assert len(jobs) == 2 and all(state == "RUNNING" for _, state in jobs), jobs
            res = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=N_PERM, seed=SEED, progress=False,
                                              client=client, engine="r")
            r_run = where_blocks_ran(client)
            native = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=N_PERM_NATIVE, seed=SEED,
                                                 progress=False, client=client, engine="native")
            native_run = {t: v for t, v in where_blocks_ran(client).items() if t not in r_run}
            assert len(client.scheduler_info()["workers"]) == 2
    assert_same_result(reference, res)
    assert res.run["worker_restarts"] == 0
    assert_same_result(native_reference, native)
    assert native.run["worker_restarts"] == 0
    assert [set(v) for v in r_run.values()] == [{"R process"}], r_run
    assert [set(v) for v in native_run.values()] == [{"worker thread"}], native_run
    assert list((tmp_path / "logs").glob("*.err")), "no SLURM job logs in the log directory"
    assert _wait_for_no_jobs(), f"SLURM jobs left after the cluster closed: {_our_jobs()}"


def test_cli_run_with_slurm(small, reference, tmp_path, capsys, monkeypatch):
    """One SLURM job of two cores: two Dask workers (one R each) in it, started by `clusterlmer run --slurm`."""
    data = write_small_mat(tmp_path / "lme_data.mat", small)
    out, logs = tmp_path / "r.h5", tmp_path / "logs"
    monkeypatch.chdir(tmp_path)  # anything a job writes to its working folder lands here
    code = main(["run", str(data), "--formula", FORMULA, "--nperm", str(N_PERM), "--seed", str(SEED), "--engine", "r",
                 "--slurm", "--slurm-jobs", "1", "--slurm-cores", "2", "--slurm-memory", "2GB",
                 "--slurm-walltime", "00:10:00", "--slurm-log-dir", str(logs), "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "submitted 1 SLURM job(s) of 2 core(s)" in captured.err
    loaded = cl.load_result(out)
    for term in reference.terms:
        np.testing.assert_array_equal(loaded.null[term], reference.null[term])
        np.testing.assert_array_equal(loaded.p_clust[term], reference.p_clust[term])
    assert list(logs.glob("*.err"))
    assert _wait_for_no_jobs("clusterlmer"), f"the CLI left SLURM jobs behind: {_our_jobs('clusterlmer')}"
