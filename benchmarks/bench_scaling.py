"""Wall time of the permutation analysis with 1 and 2 local workers (and Dask), measured in one run.

Workload: the bundled 2-way sample (338 rows x 139 timepoints), REML +
Satterthwaite F for three terms, ``--nperm`` permutations (default 40), same
seed for every configuration; the script checks that all configurations give
identical nulls, prints wall times and speed-ups, and estimates the wall time
of a 1000-permutation analysis on N cores from the measured cost per fit.

    python benchmarks/bench_scaling.py [--nperm 40] [--no-dask]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import clusterlmer as cl
from clusterlmer import datasets


def _run(data, nperm, **kwargs):
    start = time.perf_counter()
    res = cl.permutation_cluster_lmer(data, datasets.FORMULA_2WAY, n_permutations=nperm, seed=0, progress=False,
                                      **kwargs)
    return time.perf_counter() - start, res


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nperm", type=int, default=40)
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask LocalCluster configuration")
    args = parser.parse_args()

    data = datasets.sample_2way()
    n_fits = (args.nperm + 1) * data.n_times
    print(f"Workload: bundled 2-way sample, {data.n_obs} rows x {data.n_times} timepoints, {args.nperm} "
          f"permutations + observed = {n_fits} model fits; machine: {os.cpu_count()} cores.")
    # Warm up this process's R so that the serial run does not pay R's start-up.
    cl.fit_timeseries(cl.TimeseriesData(data.design, data.values[:, :2], data.times[:2]), datasets.FORMULA_2WAY)

    rows = []
    t1, ref = _run(data, args.nperm, n_jobs=1)
    rows.append(("n_jobs=1 (this process)", t1, ref))
    t2, res2 = _run(data, args.nperm, n_jobs=2)
    rows.append(("n_jobs=2 (2 worker processes)", t2, res2))
    if not args.no_dask:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            print("(dask.distributed not installed: skipping the Dask configuration)")
        else:
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster, Client(cluster) as client:
                td, resd = _run(data, args.nperm, client=client)
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
        print(f"  {cores:4d} cores: {full / cores / 60:7.1f} min")


if __name__ == "__main__":
    main()
