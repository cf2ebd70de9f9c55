"""Family-wise error rate and power of the whole method, by simulation (native engine).

Null datasets are shaped like the bundled 2-way sample (15 subjects, 169
channels, 139 timepoints, subject and channel random intercepts, AR(1) noise)
but carry no effect; each runs the full method (permutations + cluster test
on F for hit_miss, region and their interaction). The FWER of a term is the
fraction of datasets with at least one significant cluster for it, reported
with its exact (Clopper-Pearson) 95% interval. Power datasets carry the
bundled sample's effects (hit/miss and interaction windows).

    python benchmarks/validity_study.py --datasets 200 --nperm 200 --power-datasets 50 --jobs 2
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy.stats import beta

FORMULA = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"
TERMS = ("hit_miss", "region", "hit_miss:region")


def _one(args):
    import clusterlmer as cl

    seed, nperm, null = args
    effects = dict(hit_miss_effect=0.0, interaction_effect=0.0) if null else {}
    data = cl.simulate_ieeg("2way", seed=seed, **effects)
    res = cl.permutation_cluster_lmer(data, FORMULA, n_permutations=nperm, seed=seed, engine="native",
                                      cross_check=0, progress=False)
    table = res.clusters
    return {t: bool(((table["term"] == t) & (table["p"] < 0.05)).any()) for t in TERMS}


def _interval(k, n):
    lo = beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return lo, hi


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=200, help="null datasets (default 200)")
    parser.add_argument("--nperm", type=int, default=200, help="permutations per dataset (default 200)")
    parser.add_argument("--power-datasets", type=int, default=50, help="datasets with effects (default 50)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args()

    start = time.perf_counter()
    jobs = [(10_000 + i, args.nperm, True) for i in range(args.datasets)]
    jobs += [(20_000 + i, args.nperm, False) for i in range(args.power_datasets)]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(_one, jobs, chunksize=4))
    null, power = results[:args.datasets], results[args.datasets:]
    elapsed = time.perf_counter() - start

    print(f"{args.datasets} null datasets + {args.power_datasets} with effects, {args.nperm} permutations each, "
          f"2-way F, cluster 'sum', alpha 0.05; {elapsed / 60:.1f} min on {args.jobs} worker(s).\n")
    lo, hi = _interval(round(0.05 * args.datasets), args.datasets)
    print(f"FWER per term (expected 0.05; a 95% binomial range around it for n={args.datasets}: "
          f"{lo:.3f}-{hi:.3f})")
    print(f"{'term':18s} {'FWER':>6s}  95% CI")
    for term in TERMS:
        k = sum(r[term] for r in null)
        a, b = _interval(k, len(null))
        print(f"{term:18s} {k / len(null):6.3f}  {a:.3f}-{b:.3f}")
    any_k = sum(any(r.values()) for r in null)
    print(f"{'any of the three':18s} {any_k / len(null):6.3f}  (no correction across terms)")
    if power:
        print(f"\nPower (datasets with the bundled sample's effects; 'region' has no effect there)")
        for term in TERMS:
            k = sum(r[term] for r in power)
            a, b = _interval(k, len(power))
            print(f"{term:18s} {k / len(power):6.3f}  {a:.3f}-{b:.3f}")


if __name__ == "__main__":
    main()
