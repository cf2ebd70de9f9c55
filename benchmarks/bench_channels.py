"""Channels x time: one analysis over 30 scalp channels against the per-channel loop it replaces.

``cl.simulate_erp()``: ERPs shaped like a public oddball data set (97
series: 49 subjects x standard/deviant, one series missing; 30 channels of
the 10-20 system; 231 samples at 500 Hz from -0.1 s), subject intercepts,
AR(1) noise partly common to all channels, and a deviant effect over
fronto-central channels at 0.15-0.28 s (1 noise SD at its peak).
Model ``amp ~ Deviant + (1|Subject)`` (REML, Satterthwaite), F, cluster sum,
``n_permutations`` permutations, native engine, no R cross-check:

* one call with the channel axis and MNE's 10-20 neighbours
  (``find_ch_adjacency``): ~7 M fits for 1000 permutations;
* the loop it replaces: one analysis per channel (no channel neighbours, so
  the per-channel clusters cannot join; the same fits otherwise).

Prints wall time, fits per second, peak memory of this process, and the
clusters. Usage: python benchmarks/bench_channels.py [--nperm 1000] [--n-jobs 1] [--skip-loop]
"""

from __future__ import annotations

import argparse
import os
import sys
import time


import clusterlmer as cl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_native import _peak_rss_mb  # noqa: E402  (this process's own peak, VmHWM)

TARGET_S = 60.0
EFFECT = 1.0  # noise SDs at the peak: clear enough that one seed's table shows it (power is ~0.65 at 0.6)
FORMULA = "amp ~ Deviant + (1|Subject)"


def run(data, nperm, n_jobs, **kwargs):
    t0, c0 = time.perf_counter(), time.process_time()
    res = cl.permutation_cluster_lmer(data, FORMULA, n_permutations=nperm, seed=1, engine="native", cross_check=0,
                                      progress=False, n_jobs=n_jobs, **kwargs)
    return res, time.perf_counter() - t0, time.process_time() - c0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nperm", type=int, default=1000)
    ap.add_argument("--n-jobs", type=int, default=1)
    ap.add_argument("--skip-loop", action="store_true", help="only the channel-axis analysis")
    args = ap.parse_args(argv)
    data, truth = cl.simulate_erp(seed=0, effect=EFFECT, return_truth=True)
    n_fits = (args.nperm + 1) * data.n_channels * data.n_times
    print(f"simulate_erp(seed=0, effect={EFFECT}): deviant effect on {', '.join(truth.channels)} at "
          f"{truth.window[0]:g}-{truth.window[1]:g} s")
    print(f"{data.n_obs} series x {data.n_channels} channels x {data.n_times} samples, {FORMULA}, "
          f"{args.nperm} permutations, n_jobs={args.n_jobs}: {n_fits / 1e6:.2f} M fits")
    res, wall, cpu = run(data, args.nperm, args.n_jobs)
    print(f"channels x time, one call (MNE 10-20 neighbours): {wall:6.1f} s wall, CPU {cpu:.1f} s (this process), "
          f"{n_fits / wall / 1e3:.0f} k fits/s; peak memory of this process {_peak_rss_mb():.0f} MB")
    table = res.clusters[res.clusters["p"] < 0.05]
    print(table[["channels", "n_channels", "t_start", "t_stop", "peak_channel", "peak_time", "p"]].to_string())
    loop = None
    if not args.skip_loop:
        t0 = time.perf_counter()
        found = 0
        for ch in range(data.n_channels):
            one = cl.TimeseriesData(data.design, data.values[:, ch], data.times)
            r, _, _ = run(one, args.nperm, args.n_jobs)
            found += int((r.clusters["p"] < 0.05).sum())
        loop = time.perf_counter() - t0
        print(f"per-channel loop (30 analyses):                    {loop:6.1f} s wall ({loop / wall:.2f} x the one "
              f"call); {found} significant per-channel clusters, which no adjacency joins")
    verdict = "PASS" if wall <= TARGET_S else "FAIL"
    print(f"target: 30 channels x 231 samples x 1000 permutations <= {TARGET_S:.0f} s: {wall:.1f} s  "
          f"{verdict if args.nperm == 1000 else '(not judged: --nperm is not 1000)'}")


if __name__ == "__main__":
    main()
