"""Nulls larger than the memory: kept in the checkpoint file, mapped, and read in blocks.

The cluster step reads the null a block at a time (clusterlmer._null_blocks); a run whose null
would take more than half the available memory keeps it in its checkpoint file, written in place
(clusterlmer._mapped_null). Both must give the numbers of the in-memory run bit for bit, resume
after a kill, and refuse a run that cannot fit. The available memory is lowered by patching what
the run reads from /proc/meminfo; the engine and the files are real.
"""

from __future__ import annotations

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
from clusterlmer import _memory, _null_blocks
from clusterlmer._mapped_null import open_mapped
from conftest import assert_same_result

FORMULA = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"
SMALL = dict(kind="2way", n_subjects=6, n_channels=24, n_times=12, seed=3)
KW = dict(seed=7, progress=False, engine="native", cross_check=0)


@pytest.fixture(scope="module")
def small():
    return cl.simulate_ieeg(**SMALL)


def _null_bytes(n_permutations, n_terms=3, n_samples=12):
    return n_permutations * n_terms * n_samples * 8


def _room(n_permutations, n_obs):
    """Exactly what the in-memory run needs (null, cluster step, the maps of 2 schemes): over twice the null."""
    return 2 * _null_bytes(n_permutations) + 2 * n_permutations * n_obs * 4


def _squeeze_memory(monkeypatch, n_permutations, n_obs):
    """More than half of the memory would go to the run: with a checkpoint, the null is mapped from it."""
    monkeypatch.setattr(_memory, "available_memory", lambda: _room(n_permutations, n_obs))


@pytest.mark.parametrize("clusterstat", ["sum", "size", "tfce"])
@pytest.mark.parametrize("tail", [0, 1])
def test_blocks_give_the_whole_null_numbers(monkeypatch, clusterstat, tail):
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((5, 30)) * 2
    null = rng.standard_normal((5, 30, 97))
    null[2, 4, [3, 50]] = np.nan  # failed refits
    null[0, 0, :] = np.nan  # a sample with no null at all
    whole = cl.cluster_test(obs, null, tail=tail, clusterstat=clusterstat)
    monkeypatch.setattr(_null_blocks, "BLOCK_BYTES", 1000)  # 1 sample row x 97 permutations, 4 permutations
    blocked = cl.cluster_test(obs, null, tail=tail, clusterstat=clusterstat)
    np.testing.assert_array_equal(whole[1], blocked[1])
    for name in ("threshold_lower", "threshold_upper", "null_max", "null_min", "tfce_scores"):
        a, b = getattr(whole[2], name), getattr(blocked[2], name)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
    assert [c.stat for c in whole[2].clusters] == [c.stat for c in blocked[2].clusters]
    assert whole[2].clusters, "the test data must form clusters"


def test_blocks_on_a_channel_graph(monkeypatch):
    rng = np.random.default_rng(1)
    adjacency = np.eye(6, k=1) + np.eye(6, k=-1)
    obs = rng.standard_normal((6, 20)) + 1.5
    null = rng.standard_normal((6, 20, 60))
    whole = cl.cluster_test(obs, null, tail=1, adjacency=adjacency, min_neighbours=1)
    monkeypatch.setattr(_null_blocks, "BLOCK_BYTES", 6 * 20 * 8 * 7)  # 7 permutations per block
    blocked = cl.cluster_test(obs, null, tail=1, adjacency=adjacency, min_neighbours=1)
    np.testing.assert_array_equal(whole[1], blocked[1])
    np.testing.assert_array_equal(whole[2].null_max, blocked[2].null_max)


def test_large_null_is_mapped_from_the_checkpoint_and_equals_the_in_memory_run(small, tmp_path, monkeypatch):
    in_memory = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=40, **KW)
    _squeeze_memory(monkeypatch, 40, small.n_obs)
    monkeypatch.setattr(_null_blocks, "BLOCK_BYTES", 12 * 8 * 5)  # 5 permutations per block
    path = tmp_path / "run.h5"
    mapped = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=40, checkpoint=path, **KW)
    with h5py.File(path, "r") as f:
        assert f.attrs["layout"] == "mapped"
        assert f["values"].chunks is None and f["values"].compression is None
        assert f["done"][()].all()
        np.testing.assert_array_equal(f["values"][:, 0], in_memory.null["hit_miss"].T)
    assert isinstance(mapped.null["hit_miss"].base, np.memmap) or isinstance(mapped.null["hit_miss"], np.memmap)
    assert_same_result(in_memory, mapped)
    # a result file written from the mapped null reads back equal
    mapped.save(tmp_path / "res.h5")
    assert_same_result(in_memory, cl.load_result(tmp_path / "res.h5"))


def test_mapped_checkpoint_resumes_and_extends_either_layout(small, tmp_path, monkeypatch):
    whole = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=30, **KW)
    path = tmp_path / "run.h5"
    cl.permutation_cluster_lmer(small, FORMULA, n_permutations=20, checkpoint=path, **KW)  # compressed layout
    with h5py.File(path, "r") as f:
        assert "layout" not in f.attrs
    _squeeze_memory(monkeypatch, 30, small.n_obs)
    resumed = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=25, checkpoint=path, **KW)
    assert resumed.run["resumed"] == 20
    extended = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=30, checkpoint=path, **KW)
    assert extended.run["resumed"] == 25
    with h5py.File(path, "r") as f:
        assert f.attrs["layout"] == "mapped" and len(f["done"]) == 30
    assert_same_result(whole, extended)
    monkeypatch.undo()  # memory back: the in-memory run resumes from the mapped file
    again = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=30, checkpoint=path, **KW)
    assert again.run["resumed"] == 30
    assert_same_result(whole, again)


def test_killed_mapped_run_resumes_to_the_uninterrupted_numbers(small, tmp_path):
    n = 3000
    path = tmp_path / "run.h5"
    script = textwrap.dedent(f"""
        import clusterlmer as cl
        from clusterlmer import _memory
        _memory.available_memory = lambda: {_room(n, small.n_obs)}
        data = cl.simulate_ieeg(**{SMALL!r})
        cl.permutation_cluster_lmer(data, {FORMULA!r}, n_permutations={n}, checkpoint={str(path)!r}, **{KW!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline, done = time.time() + 240, 0
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if os.path.exists(path):
                try:
                    done = int(np.asarray(open_mapped(str(path))[1]).sum())
                except OSError:
                    continue
                if done >= 50:
                    break
        assert proc.poll() is None and done >= 50, "the run must still be going with permutations saved"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    values, flags = open_mapped(str(path))
    finished = np.flatnonzero(flags)
    assert 0 < finished.size < n
    whole = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=n, **KW)
    # every permutation flagged finished holds its final numbers
    np.testing.assert_array_equal(values[finished, 0], whole.null["hit_miss"][:, finished].T)
    del values, flags
    resumed = cl.permutation_cluster_lmer(small, FORMULA, n_permutations=n, checkpoint=path, **KW)
    assert resumed.run["resumed"] == finished.size
    assert_same_result(whole, resumed)


def test_too_large_without_checkpoint_is_refused_naming_the_checkpoint(small, monkeypatch):
    monkeypatch.setattr(_memory, "available_memory", lambda: _null_bytes(40))
    with pytest.raises(ValueError, match=r"but only .* are available.*Or pass checkpoint='run\.h5' \(CLI: "
                                         r"--checkpoint run\.h5\): the null is then kept in that file"):
        cl.permutation_cluster_lmer(small, FORMULA, n_permutations=40, **KW)


def test_mapped_null_without_disk_space_is_refused(small, tmp_path, monkeypatch):
    _squeeze_memory(monkeypatch, 40, small.n_obs)
    monkeypatch.setattr(_memory.shutil, "disk_usage", lambda _: type("Usage", (), {"free": 100})())
    with pytest.raises(ValueError, match=r"kept in the checkpoint file .* but its disk has only"):
        cl.permutation_cluster_lmer(small, FORMULA, n_permutations=40, checkpoint=tmp_path / "run.h5", **KW)
    assert not (tmp_path / "run.h5").exists()
