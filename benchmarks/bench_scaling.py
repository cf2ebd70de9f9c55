"""Wall time of the permutation analysis with 1 and 2 local workers (and Dask), measured in one run.

Workload: the bundled 2-way sample (338 rows x 139 timepoints), REML +
Satterthwaite F for three terms, ``--nperm`` permutations, same seed for every
configuration, fitted by ``--engine`` (``r``: lme4/lmerTest, one R per worker;
``native``: numpy, no R, run in the Dask worker threads). The default number of
permutations suits each engine's cost: 40 for R (minutes), 1000 for native (a
real analysis, tens of seconds). The script checks that all configurations give
identical nulls, prints wall times and speed-ups, and estimates the wall time
of a 1000-permutation analysis on N cores from the measured cost per fit.

    python benchmarks/bench_scaling.py [--engine r|native] [--nperm N] [--no-dask]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import clusterlmer as cl
from clusterlmer import datasets


DEFAULT_NPERM = {"r": 40, "native": 1000}


def _run(data, nperm, engine, **kwargs):
    # The engine is explicit (the library default, "auto", picks native for this model). cross_check=0:
    # native's check of a few observed fits against R would start R in this process during the first
    # configuration only, a one-off cost outside what is compared (no effect with engine="r").
    start = time.perf_counter()
    res = cl.permutation_cluster_lmer(data, datasets.FORMULA_2WAY, n_permutations=nperm, seed=0, progress=False,
                                      engine=engine, cross_check=0, **kwargs)
    return time.perf_counter() - start, res


def _duration(seconds):
    return f"{seconds / 60:7.1f} min" if seconds >= 120 else f"{seconds:7.1f} s"


def _warm_up(data, engine):
    """Load the engine in this process (R's start-up for R) so that the serial run does not pay it."""
    cl.fit_timeseries(cl.TimeseriesData(data.design, data.values[:, :2], data.times[:2]), datasets.FORMULA_2WAY,
                      engine=engine, cross_check=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=sorted(DEFAULT_NPERM), default="r",
                        help="r: lme4/lmerTest (default); native: the numpy engine")
    parser.add_argument("--nperm", type=int, default=None,
                        help=f"permutations (default {DEFAULT_NPERM['r']} for r, {DEFAULT_NPERM['native']} for native)")
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask LocalCluster configuration")
    args = parser.parse_args()
    nperm = DEFAULT_NPERM[args.engine] if args.nperm is None else args.nperm

    data = datasets.sample_2way()
    n_fits = (nperm + 1) * data.n_times
    print(f"Workload: bundled 2-way sample, {data.n_obs} rows x {data.n_times} timepoints, {nperm} "
          f"permutations + observed = {n_fits} model fits, engine {args.engine!r}; machine: {os.cpu_count()} cores.")
    _warm_up(data, args.engine)

    rows = []
    t1, ref = _run(data, nperm, args.engine, n_jobs=1)
    rows.append(("n_jobs=1 (this process)", t1, ref))
    t2, res2 = _run(data, nperm, args.engine, n_jobs=2)
    rows.append(("n_jobs=2 (2 worker processes)", t2, res2))
    if not args.no_dask:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            print("(dask.distributed not installed: skipping the Dask configuration)")
        else:
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                    Client(cluster) as client:
                td, resd = _run(data, nperm, args.engine, client=client)
            rows.append(("Dask LocalCluster, 2 workers", td, resd))

    print(f"\n{'configuration':34s} {'wall s':>8s} {'ms/fit':>8s} {'speed-up':>9s}  identical to n_jobs=1")
    for name, wall, res in rows:
        same = all(np.array_equal(res.null[t], ref.null[t], equal_nan=True) for t in ref.terms)
        print(f"{name:34s} {wall:8.1f} {1000 * wall / n_fits:8.2f} {t1 / wall:8.2f}x  {same}")

    per_fit = t1 / n_fits
    full = 1001 * data.n_times * per_fit
    print(f"\nMeasured cost: {1000 * per_fit:.1f} ms per fit on one core.")
    print("Paper estimate for 1000 permutations (139,139 fits), assuming linear scaling "
          f"(measured efficiency with 2 workers: {t1 / t2 / 2:.0%}):")
    for cores in (1, 2, 8, 32, 128):
        print(f"  {cores:4d} cores: {_duration(full / cores)}")


if __name__ == "__main__":
    main()
