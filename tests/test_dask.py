"""Permutations on a Dask cluster (a LocalCluster of worker processes here): same result as one process.

Covers ``permutation_cluster_lmer(..., client=Client | address)``, checkpoints filled block by block,
resuming, Ctrl-C, a killed Dask worker, a killed R process inside a worker, errors in a block,
``clusterlmer run --scheduler``, and the native engine (in the Dask worker threads and in local
worker processes, without R). SLURM through dask-jobqueue is in tests/test_slurm.py. Runs that
exercise R on the workers pass ``engine="r"`` (the default, "auto", would pick native for this model).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from contextlib import contextmanager

import h5py
import numpy as np
import pytest

import clusterlmer as cl
from conftest import SMALL_FORMULA, SMALL_N_PERM, SMALL_SEED, assert_same_result, where_blocks_ran, write_small_mat
from clusterlmer import analysis
from clusterlmer.run import dask_worker, dispatch
from clusterlmer.cli import main

distributed = pytest.importorskip("distributed")

FORMULA, N_PERM, SEED = SMALL_FORMULA, SMALL_N_PERM, SMALL_SEED
N_PERM_NATIVE = 40  # native fits are cheap: enough permutations for several blocks per worker


@pytest.fixture(scope="module")
def cluster(reference):
    """Two worker processes with one thread each, started after this process's R (the R engine leaves
    LD_LIBRARY_PATH as it found it, so they start with a clean environment)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster, set_as_default=False) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


def _r_processes():
    """(R processes of this worker, those still holding a run's task or busy with a block)."""
    procs = list(dask_worker._children)
    return len(procs), sum(p.token is not None or p.busy_for is not None for p in procs)


def _child_processes():
    """Processes started by this (worker) process, at any depth."""
    import psutil

    return len(psutil.Process().children(recursive=True))




def _clusterlmer_tasks(dask_scheduler):
    return [key for key in dask_scheduler.tasks if "clusterlmer" in str(key)]


def _eventually(check, timeout=15):
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.1)
    return check()


def _nothing_left(client):
    """No task of a run left on the scheduler; on each worker at most one R process (one thread), idle,
    without the run's data (kept up for the next run)."""
    def check():
        states = client.run(_r_processes).values()
        return not client.run_on_scheduler(_clusterlmer_tasks) and all(n <= 1 and not held for n, held in states)

    return _eventually(check)


def test_client_arguments_are_checked(small):
    with pytest.raises(TypeError, match="client must be a dask.distributed Client or a scheduler address"):
        cl.permutation_cluster_lmer(small, FORMULA, n_permutations=2, client=3, progress=False)
    with pytest.raises(ValueError, match="leave n_jobs=1"):
        cl.permutation_cluster_lmer(small, FORMULA, n_permutations=2, client="tcp://127.0.0.1:1", n_jobs=2,
                                    progress=False)


def test_local_cluster_gives_the_single_process_result_block_by_block(small, reference, client, tmp_path,
                                                                     monkeypatch):
    path = tmp_path / "run.h5"
    # Three permutations done in this process first: the Dask run resumes from them.
    cl.permutation_cluster_lmer(small, FORMULA, n_permutations=3, seed=SEED, checkpoint=path, progress=False,
                                engine="r")
    added = []
    real_add = cl.checkpoint.Checkpoint.add
    monkeypatch.setattr(cl.checkpoint.Checkpoint, "add",
                        lambda self, indices, values: (added.append(list(indices)), real_add(self, indices, values)))
    res = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=N_PERM, seed=SEED, checkpoint=path,
                                      progress=False, client=client, engine="r")
    assert res.run["resumed"] == 3 and res.run["worker_restarts"] == 0
    assert_same_result(reference, res)
    # each finished block went into the checkpoint as it came, and the file holds them all
    assert len(added) >= 2 and sorted(k for block in added for k in block) == list(range(3, N_PERM))
    with h5py.File(path) as f:
        assert f["done"][()].all()
        np.testing.assert_array_equal(f["values"][:, 0], np.moveaxis(reference.null[res.terms[0]], -1, 0))
    assert _nothing_left(client)
    # the R engine's blocks ran in R child processes, which the checks of the native tests below can see
    assert set([w for ws in where_blocks_ran(client).values() for w in ws]) == {"R process"}
    assert sum(client.run(_child_processes).values()) >= 1


def test_scheduler_address_is_connected_to_and_disconnected(small, reference, cluster, client):
    def n_clients():
        return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.clients))

    before = n_clients()
    res = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=N_PERM, seed=SEED, progress=False,
                                      client=cluster.scheduler_address, engine="r")
    assert_same_result(reference, res)
    assert _eventually(lambda: n_clients() == before), "the connection opened for the address was not closed"


def test_cli_run_with_scheduler(small, reference, cluster, tmp_path, capsys):
    data = write_small_mat(tmp_path / "lme_data.mat", small)
    out = tmp_path / "r.h5"
    code = main(["run", str(data), "--formula", FORMULA, "--nperm", str(N_PERM), "--seed", str(SEED), "--engine", "r",
                 "--scheduler", cluster.scheduler_address, "--no-progress", "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    loaded = cl.load_result(out)
    for term in reference.terms:
        np.testing.assert_array_equal(loaded.null[term], reference.null[term])
        np.testing.assert_array_equal(loaded.p_clust[term], reference.p_clust[term])


@pytest.mark.parametrize("argv, words", [
    (["--scheduler", "tcp://127.0.0.1:1", "--jobs", "2"], ["--jobs", "Dask workers"]),
    (["--scheduler", "tcp://127.0.0.1:1", "--slurm"], ["either --scheduler or --slurm"]),
    (["--slurm-jobs", "2", "--slurm-memory", "8GB"], ["--slurm-jobs, --slurm-memory only apply with --slurm"]),
])
def test_cli_dask_options_are_checked(tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as exc:
        main(["run", str(tmp_path / "x.mat"), "--formula", FORMULA] + argv)
    assert exc.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message
    for word in words:
        assert word in message


def test_cli_slurm_without_dask_jobqueue_or_sbatch(small, tmp_path, capsys, monkeypatch):
    data = write_small_mat(tmp_path / "lme_data.mat", small)
    argv = ["run", str(data), "--formula", FORMULA, "--nperm", "2", "--slurm"]
    with monkeypatch.context() as mp:
        mp.setitem(sys.modules, "dask_jobqueue", None)  # as if not installed
        assert main(argv) == 1
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "--slurm needs dask-jobqueue: pip install 'clusterlmer[dask]'" in message
    pytest.importorskip("dask_jobqueue")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main(argv) == 1
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "--slurm needs SLURM's sbatch on PATH" in message


# The native engine: numpy only, so no R anywhere but in this process (its observed-fit cross-check).


@pytest.fixture(scope="module")
def native_reference(small):
    return cl.permutation_cluster_lmer(small, FORMULA, n_permutations=N_PERM_NATIVE, seed=SEED, engine="native",
                                       progress=False)


def _r_loaded():
    """Whether R is loaded in this process (rpy2 imported, or R's shared library mapped)."""
    if "rpy2" in sys.modules:
        return True
    with open("/proc/self/maps") as maps:
        return "libR.so" in maps.read()


class _RecordR:
    """A permutation task that records, per permutation, its process and whether R is loaded there."""

    def __init__(self, task, folder):
        self.task, self.folder = task, folder

    def statistics(self, k):
        values = self.task.statistics(k)
        with open(os.path.join(self.folder, f"{k}.json"), "w") as f:
            json.dump({"pid": os.getpid(), "r": _r_loaded()}, f)
        return values


def test_native_engine_in_local_workers_gives_the_same_result_without_r(small, reference, native_reference,
                                                                       tmp_path, monkeypatch):
    assert _r_loaded()  # this process ran the R engine (reference): the probe does see R where it is
    real = analysis.run_permutations
    monkeypatch.setattr(analysis, "run_permutations",
                        lambda task, store, **kw: real(_RecordR(task, str(tmp_path)), store, **kw))
    res = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=N_PERM_NATIVE, seed=SEED, engine="native",
                                      n_jobs=2, progress=False)
    assert_same_result(native_reference, res)
    seen = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert len(seen) == N_PERM_NATIVE
    assert os.getpid() not in {s["pid"] for s in seen}, "the permutations did not run in worker processes"
    assert not any(s["r"] for s in seen), "a native worker process loaded R"


def test_native_engine_on_dask_runs_in_the_worker_threads_without_r(small, native_reference):
    """A LocalCluster of its own: its workers must end the run without any child process."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as native_cluster, \
            distributed.Client(native_cluster, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
        res = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=N_PERM_NATIVE, seed=SEED,
                                          engine="native", progress=False, client=client)
        where = [w for ws in where_blocks_ran(client).values() for w in ws]
        children = client.run(_child_processes)
        r_loaded = client.run(_r_loaded)
    assert_same_result(native_reference, res)
    assert res.run["worker_restarts"] == 0
    assert len(where) >= 2 and set(where) == {"worker thread"}, where
    assert not any(children.values()), f"native blocks started processes on the workers: {children}"
    assert not any(r_loaded.values()), f"a Dask worker loaded R: {r_loaded}"


def test_native_blocks_are_larger_than_r_blocks():
    """R blocks stay at <= 8 permutations (minutes of work lost with a worker at most); native ones,
    ~0.02 s per permutation, grow to amortise a Dask task or a worker round trip."""
    todo = np.arange(1000)
    r_split = dispatch._block_splitter(type("Task", (), {"engine": "r"})())
    native_split = dispatch._block_splitter(type("Task", (), {"engine": "native"})())
    for split, size in ((r_split, 8), (native_split, 125)):
        blocks = split(todo, 2)
        assert {len(b) for b in blocks} == {size}
        np.testing.assert_array_equal(np.concatenate(blocks), todo)
    assert max(len(b) for b in native_split(np.arange(100_000), 2)) == 256


_MMAP_PROBE = """
import ctypes, numpy as np
from clusterlmer.run.dask_worker import _heap_for_numpy_temporaries
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
def mmapped_while_holding(nbytes):
    a = np.ones(nbytes // 8)
    held = libc.mallinfo2().hblkhd
    del a
    return held
base = libc.mallinfo2().hblkhd
outside = mmapped_while_holding(4 << 20) - base
with _heap_for_numpy_temporaries():
    inside = mmapped_while_holding(4 << 20) - base
after = mmapped_while_holding(4 << 20) - base
print(outside, inside, after)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc statistics")
def test_native_blocks_keep_temporaries_off_mmap_under_dask_malloc_settings():
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which makes glibc mmap every array over 128 KiB (slow for
    the native engine's temporaries): inside a native block a 4 MiB array comes from the heap; after the
    block the process is back to Dask's setting."""
    import subprocess

    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", _MMAP_PROBE], env=env, capture_output=True, text=True, check=True)
    outside, inside, after = map(int, out.stdout.split())
    assert outside >= 4 << 20 and after >= 4 << 20, out.stdout
    assert inside == 0, out.stdout


@contextmanager
def _interrupt_once_a_block_is_in(stores):
    # What the run loop sees after a first Ctrl-C: the flag, here once a block is in the checkpoint.
    yield lambda: bool(stores) and bool(stores[0].done.any())


def test_ctrl_c_cancels_the_rest_and_keeps_finished_blocks(small, client, tmp_path, monkeypatch):
    stores = []
    real = analysis.run_permutations
    monkeypatch.setattr(analysis, "run_permutations",
                        lambda task, store, **kw: (stores.append(store), real(task, store, **kw))[1])
    monkeypatch.setattr(dispatch, "_interrupt_between_permutations", lambda: _interrupt_once_a_block_is_in(stores))
    path = tmp_path / "run.h5"
    with pytest.raises(KeyboardInterrupt):
        cl.permutation_cluster_lmer(small, FORMULA, n_permutations=N_PERM, seed=SEED, checkpoint=path,
                                    progress=False, client=client, engine="r")
    with h5py.File(path) as f:
        assert 1 <= f["done"][()].sum() < N_PERM
    assert _nothing_left(client)


class _Failing:
    """A permutation task that raises at one permutation (a bug, not a dead process)."""

    def __init__(self, task, k):
        self.task, self.k = task, k

    def statistics(self, k):
        if k == self.k:
            raise ValueError(f"no statistics for permutation {k}")
        return self.task.statistics(k)


def test_an_error_in_a_block_is_raised_as_it_is(small, client, monkeypatch):
    real = analysis.run_permutations
    monkeypatch.setattr(analysis, "run_permutations", lambda task, store, **kw: real(_Failing(task, 0), store, **kw))
    with pytest.raises(ValueError, match="no statistics for permutation 0"):
        cl.permutation_cluster_lmer(small, FORMULA, n_permutations=N_PERM, seed=SEED, progress=False, client=client,
                                    engine="r")
    assert _nothing_left(client)


class _KillOnce:
    """A real permutation task whose process is SIGKILLed the first time it meets permutation ``k``:
    the R process alone (``"r-process"``), or also the Dask worker process that started it (``"worker"``)."""

    def __init__(self, task, k, marker, what):
        self.task, self.k, self.marker, self.what = task, k, marker, what

    def statistics(self, k):
        if k == self.k and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            if self.what == "worker":
                os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        return self.task.statistics(k)


# Last in the module: the nanny replaces the killed worker, the other tests need not see that.
@pytest.mark.parametrize("what", ["r-process", "worker"])
def test_a_killed_worker_or_r_process_is_survived(small, reference, client, tmp_path, monkeypatch, what):
    real = analysis.run_permutations
    marker = tmp_path / "killed"
    monkeypatch.setattr(analysis, "run_permutations",
                        lambda task, store, **kw: real(_KillOnce(task, 5, str(marker), what), store, **kw))
    message = "1 Dask worker\\(s\\) died" if what == "worker" else "1 R process\\(es\\) on the Dask workers died"
    with pytest.warns(RuntimeWarning, match=message):
        res = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=N_PERM, seed=SEED, progress=False,
                                          client=client, engine="r")
    assert marker.exists()
    assert res.run["worker_restarts"] == 1
    assert "worker process(es) died" in res.summary()
    assert_same_result(reference, res)
