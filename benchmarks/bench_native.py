"""Native engine speed and agreement against the R engine, in one process.

On the bundled 2-way sample (338 rows x 139 timepoints, 2-way model, REML,
Satterthwaite, marginal F tests):

(a) R engine: one block of ``--r-times`` timepoints (lme4 + lmerTest via rpy2);
(b) native engine: the whole block of 139 timepoints, best of ``--repeats``;
(c) the largest relative difference native vs R on (a)'s timepoints
    (F, DF2, p, estimates), end to end;
(d) the full analysis ``permutation_cluster_lmer(..., n_permutations=N,
    engine="native")`` in a child process without R: wall time and that
    process's peak resident memory.

Usage: python benchmarks/bench_native.py [--r-times 20] [--repeats 5] [--n-permutations 1000]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import numpy as np

import clusterlmer as cl
from clusterlmer import datasets
from clusterlmer.design import build_design
from clusterlmer.engines import get_engine
from clusterlmer.engines.base import FitOptions
from clusterlmer.formula import parse_formula


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    with np.errstate(invalid="ignore"):
        d = np.abs(a - b) / np.where(b == 0, 1.0, np.abs(b))
    return float(np.nanmax(d))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--r-times", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n-permutations", type=int, default=1000)
    ap.add_argument("--analysis-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.analysis_only:
        analysis(args.n_permutations)
        return

    data = datasets.sample_2way()
    design = build_design(data.design, parse_formula(datasets.FORMULA_2WAY))
    options = FitOptions()
    Y = data.values
    native, r = get_engine("native"), get_engine("r")

    # (a) R engine on the first r_times timepoints (R started beforehand).
    r.fit_block(design, Y[:, :2], options)
    t0 = time.perf_counter()
    ref = r.fit_block(design, Y[:, : args.r_times], options)
    r_ms = (time.perf_counter() - t0) / args.r_times * 1e3

    # (b) native engine on the whole block.
    native.fit_block(design, Y, options)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        blk = native.fit_block(design, Y, options)
        times.append(time.perf_counter() - t0)
    nat_ms = min(times) / Y.shape[1] * 1e3
    nat_med = float(np.median(times)) / Y.shape[1] * 1e3

    print(f"R engine      : {r_ms:8.3f} ms per fit ({1e3 / r_ms:8.1f} fits/s; {args.r_times} timepoints)")
    print(f"native engine : {nat_ms:8.3f} ms per fit ({1e3 / nat_ms:8.1f} fits/s; block of {Y.shape[1]}, "
          f"best of {args.repeats}; median {nat_med:.3f} ms)")
    print(f"speed-up      : {r_ms / nat_ms:8.1f} x (median: {r_ms / nat_med:.1f} x)")

    # (c) agreement on the timepoints R fitted
    k = args.r_times
    for name in ("F", "df2", "p", "estimate", "se"):
        print(f"max rel diff {name:9s}: {_rel(getattr(blk, name)[:, :k], getattr(ref, name)):.2e}")
    print(f"max rel diff deviance : {_rel(blk.deviance[:k], ref.deviance):.2e}")

    # (d) the whole analysis with the native engine, in a process without R
    subprocess.run([sys.executable, __file__, "--analysis-only", "--n-permutations", str(args.n_permutations)],
                   check=True)


def _peak_rss_mb():
    """Peak resident memory of this process. Linux's getrusage keeps the
    parent's peak across fork/exec, so read VmHWM (this process's own) there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def analysis(n_permutations):
    data = datasets.sample_2way()
    t0 = time.perf_counter()
    res = cl.permutation_cluster_lmer(data, datasets.FORMULA_2WAY, n_permutations=n_permutations, seed=1,
                                      engine="native", progress=False)
    wall = time.perf_counter() - t0
    peak_mb = _peak_rss_mb()
    n_fits = (n_permutations + 1) * data.values.shape[1]
    print(f"\npermutation_cluster_lmer(n_permutations={n_permutations}, engine='native'): "
          f"{wall:.1f} s wall ({wall / n_fits * 1e3:.3f} ms per fit, {n_fits} fits), "
          f"peak RSS {peak_mb:.0f} MB (this process; R not loaded: {'rpy2' not in sys.modules})")
    print(res.clusters.to_string())


if __name__ == "__main__":
    main()
