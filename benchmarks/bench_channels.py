"""Channels x time: one analysis over 30 scalp channels against the per-channel loop it replaces.

Simulated ERP-like data shaped like a public oddball data set (97 series:
49 subjects x standard/deviant, one series missing; 30 channels of the 10-20
system; 231 samples at 1 kHz from -0.05 s), subject intercepts, AR(1) noise
in time, and a deviant effect over fronto-central channels at 0.15-0.28 s.
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

import numpy as np
import pandas as pd

import clusterlmer as cl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_native import _peak_rss_mb  # noqa: E402  (this process's own peak, VmHWM)

EEG30 = ["Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "FC5", "FC1", "FC2", "FC6", "T7", "C3", "Cz", "C4", "T8",
         "CP5", "CP1", "CP2", "CP6", "P7", "P3", "Pz", "P4", "P8", "PO9", "O1", "Oz", "O2", "PO10"]
EFFECT_CHANNELS = ["F3", "Fz", "F4", "FC1", "FC2", "C3", "Cz", "C4"]
TARGET_S = 60.0
FORMULA = "amp ~ Deviant + (1|Subject)"


def simulate(seed=0, n_subjects=49, n_times=231, effect=0.6):
    """The data set described in the module docstring, with an MNE Info carrying the montage."""
    import mne

    rng = np.random.default_rng(seed)
    design = pd.DataFrame([dict(Subject=f"S{i:02d}", Deviant=d) for i in range(n_subjects)
                           for d in ("standard", "deviant")]).iloc[:-1].reset_index(drop=True)
    times = -0.05 + np.arange(n_times) / 1000.0
    noise = np.empty((len(design), len(EEG30), n_times))
    noise[..., 0] = rng.normal(size=noise.shape[:2])
    for t in range(1, n_times):  # AR(1) in time
        noise[..., t] = 0.9 * noise[..., t - 1] + np.sqrt(1 - 0.81) * rng.normal(size=noise.shape[:2])
    subject = rng.normal(size=n_subjects)[design.index // 2][:, None, None]
    values = noise + subject
    window = (times >= 0.15) & (times <= 0.28)
    rows = (design["Deviant"] == "deviant").to_numpy()
    cols = [EEG30.index(c) for c in EFFECT_CHANNELS]
    values[np.ix_(rows, cols, np.flatnonzero(window))] += effect
    info = mne.create_info(EEG30, 1000.0, "eeg")
    name = "colin27_1020" if "colin27_1020" in mne.channels.get_builtin_montages() else "standard_1020"
    info.set_montage(mne.channels.make_standard_montage(name))
    return cl.TimeseriesData(design, values * 1e-6, times, channels=EEG30, info=info)


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
    data = simulate()
    n_fits = (args.nperm + 1) * data.n_channels * data.n_times
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
