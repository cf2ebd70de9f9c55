"""A run whose arrays cannot fit in memory is refused at once, naming the size, before any fit.

``n_permutations=10**12`` used to fail in numpy ("Unable to allocate 131 TiB") after the observed
fit; the null alone would be 10**12 x terms x samples float64 values.
"""

from __future__ import annotations

import re
import time

import pytest

import clusterlmer as cl
from conftest import SMALL_FORMULA, write_small_mat
from clusterlmer._memory import GIB, available_memory, check_run_memory
from clusterlmer._null_blocks import BLOCK_BYTES
from clusterlmer.checkpoint import Checkpoint
from clusterlmer.cli import main
from clusterlmer.formula import parse_formula

HUGE = 10 ** 12
N_TERMS, N_SAMPLES = 3, 12  # hit_miss, region, hit_miss:region; SMALL has 12 timepoints


def _gib(n_bytes):
    return re.escape(f"{n_bytes / GIB:,.1f} GiB")


def test_available_memory_is_known_on_linux():
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    assert 0 < available_memory() <= total


def test_run_with_1e12_permutations_is_refused_before_the_observed_fit(small):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=(
            rf"this run needs about [\d,.]+ GiB of memory \(null statistics: {_gib(HUGE * N_TERMS * N_SAMPLES * 8)}; "
            rf"cluster test: {_gib(3 * BLOCK_BYTES)}; permutation maps: {_gib(2 * HUGE * small.n_obs * 4)}\), "
            r"but only [\d,.]+ GiB are available\. Use fewer permutations \(n_permutations=1000 \(CLI: --nperm 1000\) "
            r"gives cluster p down to 0\.001.*or run on a machine with more memory\. Or pass checkpoint='run\.h5' "
            r"\(CLI: --checkpoint run\.h5\): the null is then kept in that file")):
        # engine="r" would take seconds to start R and fit: the refusal comes first
        cl.permutation_cluster_lmer(small, SMALL_FORMULA, n_permutations=HUGE, engine="r", progress=False)
    assert time.perf_counter() - start < 3


def test_make_permutations_and_checkpoint_refuse_1e12_permutations(small):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"needs about {_gib(2 * HUGE * small.n_obs * 4)} of memory "
                                         r"\(permutation maps: "):
        cl.make_permutations(small.design, SMALL_FORMULA, HUGE, seed=1)
    with pytest.raises(ValueError, match=rf"needs about {_gib(HUGE * N_TERMS * N_SAMPLES * 8)} of memory "
                                         r"\(null statistics: "):
        Checkpoint(None, {}, (N_TERMS, N_SAMPLES), HUGE)
    assert time.perf_counter() - start < 3


def test_the_estimate_decides_against_the_memory_available(small):
    model = parse_formula(SMALL_FORMULA)
    # 10**7 permutations: 2.7 GiB of null statistics alone
    with pytest.raises(ValueError, match=r"needs about [\d.]+ GiB of memory .* but only 1\.0 GiB are available"):
        check_run_memory(small, model, 10 ** 7, available=GIB)
    check_run_memory(small, model, 10 ** 4, available=GIB)  # 3 MiB of null: fits
    # each local worker holds a copy of the maps and data: refused with 2 workers, not with 1
    n = 3000
    one = 2 * n * small.n_obs * 4 + (N_TERMS + 3) * n * N_SAMPLES * 8
    check_run_memory(small, model, n, n_jobs=1, available=one)
    with pytest.raises(ValueError, match="worker copies"):
        check_run_memory(small, model, n, n_jobs=2, available=one)


def test_cli_names_nperm(small, tmp_path, capsys):
    mat = write_small_mat(tmp_path / "small.mat", small)
    start = time.perf_counter()
    assert main(["run", str(mat), "--formula", SMALL_FORMULA, "--nperm", str(HUGE), "--engine", "r",
                 "--no-progress", "--out", str(tmp_path / "res.h5")]) == 1
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 5
    assert "this run needs about" in err and "Use fewer permutations (--nperm 1000 gives" in err
    assert not (tmp_path / "res.h5").exists()
