"""Time per fit of a binomial GLMM (lme4::glmer through the R engine) and what a 1000-permutation run costs.

Workload: a visual-world eye-tracking study's shape (``simulate_subject_item``:
48 subjects, 16 items, 360 trials, 2 x 2 design with effects coding), its
continuous response turned into fixations (1 where the simulated value is
above 0, else 0), ``fix ~ cond_a * cond_b + (1|Subject) + (1|Item)``,
``family="binomial"``. Prints the time per observed fit (``--bins`` bins),
the time per permutation fit (``--nperm`` permutations of those bins,
statistic only), the same model as a linear mixed model on the R engine for
comparison, and the projected wall time of 1000 permutations x 40 bins on
``--jobs`` workers.

    python benchmarks/bench_glmm.py [--bins 10] [--nperm 5] [--jobs 1]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import clusterlmer as cl

FORMULA = "fix ~ cond_a * cond_b + (1|Subject) + (1|Item)"


def _data(n_bins):
    data = cl.simulate_subject_item(seed=0, n_times=n_bins)
    values = (np.asarray(data.values) > 0).astype(float)
    return cl.TimeseriesData(design=data.design, values=values, times=data.times)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--nperm", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args(argv)
    data = _data(args.bins)
    kw = dict(coding="effects", engine="r")
    warnings.simplefilter("ignore", UserWarning)
    print(f"{data.n_obs} trials x {args.bins} bins, {FORMULA}, effects coding, R engine")
    cl.fit_timeseries(_data(1), FORMULA, family="binomial", **kw)  # R started and glmer loaded
    fit, wall = _timed(lambda: cl.fit_timeseries(data, FORMULA, family="binomial", **kw))
    glmm_fit = wall / args.bins
    print(f"  binomial GLMM (glmer, Laplace), observed fit: {1e3 * glmm_fit:7.1f} ms per fit; "
          f"fits failed: {int(fit.diagnostics['failed'].sum())}")
    _, wall = _timed(lambda: cl.fit_timeseries(data, FORMULA, **kw))
    lmm_fit = wall / args.bins
    print(f"  the same model as an LMM (lmer + lmerTest):  {1e3 * lmm_fit:7.1f} ms per fit "
          f"(GLMM / LMM = {glmm_fit / lmm_fit:.1f})")
    res, wall = _timed(lambda: cl.permutation_cluster_lmer(
        data, FORMULA, n_permutations=args.nperm, seed=1, family="binomial", progress=False, n_jobs=args.jobs,
        **kw))
    per_perm_fit = (wall - glmm_fit * args.bins) / (args.nperm * args.bins)
    print(f"  permutation fit (statistic only), n_jobs={args.jobs}: {1e3 * per_perm_fit:7.1f} ms per fit")
    print(f"  projected 1000 permutations x 40 bins: {1000 * 40 * per_perm_fit / 3600:.1f} h wall "
          f"(n_jobs={args.jobs})")


if __name__ == "__main__":
    main()
