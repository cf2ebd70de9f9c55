"""Memory and time of nulls larger than the memory: the cluster step in blocks, the null mapped from the checkpoint.

Part 1, the cluster step alone, on the size the README's memory formula
warns about: a 64-channel (BioSemi 64, MNE's neighbours) x 200 times x 40
frequencies null of ``--nperm`` permutations (1000: 4.1 GB), F-like values,
written to a mapped checkpoint file and clustered from it with
``cluster_test(..., adjacency=...)``. Printed: wall time and peak of the
memory numpy allocates (tracemalloc: the mapped file's pages are the page
cache's, not the process's), beside the same test on a tenth of the
permutations held whole in memory with one block (how every null was
clustered before) and in blocks.

Part 2, a whole analysis: ``simulate_erp`` (97 series x 30 channels x 231
samples, ``amp ~ Deviant + (1|Subject)``, native engine) with
``--analysis-nperm`` permutations, once in memory and once with the memory
the run sees lowered so that its null goes to the checkpoint file; wall times
side by side and whether the two results are equal bit for bit.

    python benchmarks/bench_mapped_null.py [--nperm 1000] [--analysis-nperm 1000] [--skip-analysis] [--skip-cluster-step]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc

import numpy as np

import clusterlmer as cl
from clusterlmer import _memory, _null_blocks
from clusterlmer._mapped_null import create_mapped, open_mapped
from clusterlmer.adjacency import channel_adjacency

N_TIMES, N_FREQS = 200, 40


def _montage():
    import mne

    montage = mne.channels.make_standard_montage("biosemi64")
    return montage.ch_names, channel_adjacency("biosemi64", montage.ch_names)


def _fill(values, rng, block=50):
    """F(1, 40)-like null values, a block of permutations at a time (the file is larger than we want in memory)."""
    for start in range(0, len(values), block):
        stop = min(len(values), start + block)
        values[start:stop, 0] = rng.f(1, 40, size=(stop - start,) + values.shape[2:])
    values.flush()


def _observed(rng, shape):
    obs = rng.f(1, 40, size=shape)
    obs[20:30, 80:120, 10:20] += 12.0  # one effect: 10 channels x 40 times x 10 frequencies
    return obs


def _timed(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, wall, peak / 2 ** 20


def cluster_step(nperm):
    names, adjacency = _montage()
    shape = (len(names), N_TIMES, N_FREQS)
    rng = np.random.default_rng(0)
    obs = _observed(rng, shape)
    gb = nperm * np.prod(shape) * 8 / 1e9
    print(f"Part 1: cluster_test over {shape[0]} channels x {N_TIMES} times x {N_FREQS} frequencies, "
          f"BioSemi 64 neighbours, cluster sum, tail 1")
    small = max(2, nperm // 10)
    null = rng.f(1, 40, size=shape + (small,))
    (_, p_whole, _), wall_w, peak_w = _timed(lambda: _with_block(10 ** 15, lambda: cl.cluster_test(
        obs, null, tail=1, adjacency=adjacency)))
    (_, p_blocks, _), wall_b, peak_b = _timed(lambda: cl.cluster_test(obs, null, tail=1, adjacency=adjacency))
    print(f"  {small} permutations ({null.nbytes / 1e9:.2f} GB) in memory, one block: {wall_w:6.1f} s, "
          f"numpy peak {peak_w:7.0f} MB")
    print(f"  {small} permutations in memory, {_null_blocks.BLOCK_BYTES >> 20} MB blocks:   {wall_b:6.1f} s, "
          f"numpy peak {peak_b:7.0f} MB; same p: {np.array_equal(p_whole, p_blocks)}")
    null = None  # free it before the mapped part
    with tempfile.TemporaryDirectory(dir=os.getcwd()) as folder:
        path = os.path.join(folder, "null.h5")
        t0 = time.perf_counter()
        create_mapped(path, {"format": "bench"}, (1,) + shape, nperm)
        values, _ = open_mapped(path)
        _fill(values, rng)
        print(f"  writing {nperm} permutations ({gb:.1f} GB) to a mapped file: {time.perf_counter() - t0:.1f} s")
        view = np.moveaxis(values[:, 0], 0, -1)
        (_, p, info), wall, peak = _timed(lambda: cl.cluster_test(obs, view, tail=1, adjacency=adjacency))
        print(f"  {nperm} permutations mapped from the file, in blocks: {wall:6.1f} s, numpy peak {peak:7.0f} MB "
              f"(held whole, the formula gave {gb:.1f} GB + {3 * gb:.1f} GB while clustering)")
        best = info.clusters[0] if info.clusters else None
        if best is not None:
            print(f"  largest cluster: {best.size} samples, p = {best.p:.4f}")
        values = view = None  # unmap before the folder is removed


def _with_block(size, fn):
    old = _null_blocks.BLOCK_BYTES
    _null_blocks.BLOCK_BYTES = size
    try:
        return fn()
    finally:
        _null_blocks.BLOCK_BYTES = old


def analysis(nperm):
    data = cl.simulate_erp(seed=0, effect=1.0)
    kw = dict(n_permutations=nperm, seed=1, engine="native", cross_check=0, progress=False)
    formula = "amp ~ Deviant + (1|Subject)"
    print(f"Part 2: simulate_erp, {data.n_obs} series x {data.n_channels} channels x {data.n_times} samples, "
          f"{formula}, {nperm} permutations, n_jobs=1")
    t0 = time.perf_counter()
    in_memory = cl.permutation_cluster_lmer(data, formula, **kw)
    wall_m = time.perf_counter() - t0
    null_bytes = nperm * data.n_channels * data.n_times * 8
    real = _memory.available_memory
    _memory.available_memory = lambda: int(1.5 * null_bytes) + 2 * nperm * data.n_obs * 4 + 3 * null_bytes
    try:
        with tempfile.TemporaryDirectory(dir=os.getcwd()) as folder:
            t0 = time.perf_counter()
            mapped = cl.permutation_cluster_lmer(data, formula, checkpoint=os.path.join(folder, "run.h5"), **kw)
            wall_f = time.perf_counter() - t0
            same = all(np.array_equal(in_memory.null[t], mapped.null[t]) and
                       np.array_equal(in_memory.p_clust[t], mapped.p_clust[t]) for t in in_memory.terms)
            print(f"  null in memory:                 {wall_m:6.1f} s")
            print(f"  null mapped from the checkpoint: {wall_f:6.1f} s ({wall_f / wall_m:.2f}x); "
                  f"null_in_checkpoint={mapped.run['null_in_checkpoint']}; equal results: {same}")
    finally:
        _memory.available_memory = real


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nperm", type=int, default=1000)
    ap.add_argument("--analysis-nperm", type=int, default=1000)
    ap.add_argument("--skip-analysis", action="store_true")
    ap.add_argument("--skip-cluster-step", action="store_true")
    args = ap.parse_args(argv)
    if not args.skip_cluster_step:
        cluster_step(args.nperm)
    if not args.skip_analysis:
        analysis(args.analysis_nperm)


if __name__ == "__main__":
    main()
