"""Family-wise error rate and power of the whole method, by simulation (native engine).

Null datasets are shaped like the bundled 2-way sample (15 subjects, 169
channels, 139 timepoints, subject and channel random intercepts, AR(1) noise)
but carry no effect; each runs the full method (permutations + cluster test
on F for hit_miss, region and their interaction). The FWER of a term at level
alpha is the fraction of null datasets whose smallest cluster p-value for that
term is <= alpha, reported with its exact (Clopper-Pearson) 95% interval; a
valid test keeps it at or below alpha for every alpha, so the study reports
0.01, 0.05 and 0.10. Power datasets carry the bundled sample's effects
(hit/miss and interaction windows). Next to the method's cluster p, every
dataset also records a max-statistic p and an exact symmetric-threshold
cluster p on the same permutations, which tell a fault of the permutations
from one of the cluster step. Permutations are seeded apart from the data.

Each finished dataset is appended to ``--out`` (CSV) at once; rerunning with
the same file skips the datasets already there, so an interrupted study loses
nothing, and a larger ``--datasets`` extends an earlier one.

    python benchmarks/validity_study.py --datasets 1000 --nperm 200 --power-datasets 100 --jobs 2
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy.stats import beta, binom

FORMULA = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"
TERMS = ("hit_miss", "region", "hit_miss:region")
ALPHAS = (0.01, 0.05, 0.10)
NULL_SEED, POWER_SEED = 10_000, 20_000
# Permutations are drawn from a stream of their own: seeding them with the
# dataset's seed would reuse the very random numbers that made the data's noise,
# so the "random" flips would be functions of the data (see _one).
PERMUTATION_SEED_OFFSET = 1_000_000


def _one(job):
    """Run the full method on one simulated dataset.

    Returns, per term, the smallest cluster p (1 without clusters), the p of
    a max-statistic test on the same null (largest F over time, observed
    counted in as for the cluster p), which separates the permutations'
    validity from the cluster step's, and the exact symmetric-threshold
    cluster p (:func:`_symmetric_cluster_p`).
    """
    import clusterlmer as cl

    kind, seed, nperm = job
    effects = dict(hit_miss_effect=0.0, interaction_effect=0.0) if kind == "null" else {}
    data = cl.simulate_ieeg("2way", seed=seed, **effects)
    # simulate_ieeg and make_permutations both use default_rng(seed): with one
    # seed for both, each permutation's coin flips would be the noise's bits.
    res = cl.permutation_cluster_lmer(data, FORMULA, n_permutations=nperm, seed=seed + PERMUTATION_SEED_OFFSET,
                                      engine="native", cross_check=0, progress=False)
    table = res.clusters
    row = {"kind": kind, "seed": seed, "nperm": nperm}
    for term in TERMS:
        p = table.loc[table["term"] == term, "p"]
        row[term] = float(p.min()) if len(p) else 1.0
        observed = res.fit.F[res.fit.terms.index(term)]
        null_max = np.nanmax(res.null[term], axis=0)
        row[term + " maxstat"] = float((np.sum(null_max >= np.nanmax(observed)) + 1) / (nperm + 1))
        row[term + " symmetric"] = _symmetric_cluster_p(cl, observed, res.null[term])
    return row


def _symmetric_cluster_p(cl, observed, null):
    """Smallest cluster p when the observed is one of the null's members.

    The method's thresholds are quantiles of the permutations alone, so the
    observed map is measured against thresholds it took no part in, while
    every permutation helped set its own. Treating the observed as one more
    member (thresholds from all n + 1 maps, each map's largest cluster sum
    from those thresholds, p = rank among the n + 1) makes the test exact;
    comparing it with the method's p, dataset by dataset, measures that
    asymmetry.
    """
    nperm = null.shape[-1]
    _, _, info = cl.cluster_test(observed, np.concatenate([null, observed[:, None]], axis=-1), tail=1,
                                 alpha=0.05, clusteralpha=0.05, clusterstat="sum")
    largest = info.null_max[-1]  # the observed's own largest cluster sum, from the shared thresholds
    if np.isnan(largest):
        return 1.0
    return float((np.sum(info.null_max[:-1] >= largest) + 1) / (nperm + 1))


def _interval(k, n):
    lo = beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return lo, hi


def _read(path, nperm):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["nperm"]) == nperm]
    for r in rows:
        r["seed"] = int(r["seed"])
        for term in TERMS:
            r[term] = float(r[term])
            for column in (" maxstat", " symmetric"):  # absent from rows written before they existed
                r[term + column] = float(r.get(term + column) or "nan")
    return rows


def _fwer_table(null, column):
    """Print FWER per term and alpha from the p-values in ``term + column``."""
    n = len(null)
    print(f"{'term':18s}" + "".join(f"  {'alpha=' + format(a, '.2f'):>22s}" for a in ALPHAS))
    for term in TERMS:
        cells = []
        for alpha in ALPHAS:
            k = sum(r[term + column] <= alpha for r in null)
            a, b = _interval(k, n)
            cells.append(f"{k / n:.3f} ({a:.3f}-{b:.3f})")
        print(f"{term:18s}" + "".join(f"  {c:>22s}" for c in cells))


def _report(rows, n_null, n_power, nperm, elapsed, jobs):
    null = [r for r in rows if r["kind"] == "null" and r["seed"] < NULL_SEED + n_null]
    power = [r for r in rows if r["kind"] == "power" and r["seed"] < POWER_SEED + n_power]
    n = len(null)
    print(f"{n} null datasets + {len(power)} with effects, {nperm} permutations each, 2-way F, cluster 'sum', "
          f"cluster-forming alpha 0.05; this run {elapsed / 60:.1f} min on {jobs} worker(s).\n")
    print("FWER per term: share of null datasets with a cluster p <= alpha (exact 95% CI).")
    for alpha in ALPHAS:
        lo, hi = binom.ppf(0.025, n, alpha) / n, binom.ppf(0.975, n, alpha) / n
        print(f"  a true rate of {alpha:.2f} is seen between {lo:.3f} and {hi:.3f} in 95% of studies of n={n}")
    _fwer_table(null, "")
    for column, what in ((" maxstat", "max-statistic test (largest F over time)"),
                         (" symmetric", "cluster test with the observed among the null's members (exact)")):
        rows_with = [r for r in null if not np.isnan(r[TERMS[0] + column])]
        if rows_with:
            print(f"\nThe same nulls, {what}; {len(rows_with)} datasets:")
            _fwer_table(rows_with, column)
    any_k = sum(min(r[t] for t in TERMS) <= 0.05 for r in null)
    print(f"{'any of the three':18s}  {any_k / n:.3f} at alpha=0.05 (no correction across terms)")
    if power:
        print(f"\nPower at alpha=0.05 (datasets with the bundled sample's effects; 'region' has none)")
        for term in TERMS:
            k = sum(r[term] <= 0.05 for r in power)
            a, b = _interval(k, len(power))
            print(f"{term:18s} {k / len(power):6.3f}  ({a:.3f}-{b:.3f})")


def _upgrade_header(path, fields):
    """Rewrite a results file from an earlier version of this script with today's columns (new ones blank)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames == fields:
            return
        rows = list(reader)
    with open(path + ".tmp", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + ".tmp", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=200, help="null datasets (default 200)")
    parser.add_argument("--nperm", type=int, default=200, help="permutations per dataset (default 200)")
    parser.add_argument("--power-datasets", type=int, default=50, help="datasets with effects (default 50)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--out", default="validity_study.csv",
                        help="per-dataset results, appended as they finish (default validity_study.csv)")
    args = parser.parse_args()

    done = {(r["kind"], r["seed"]) for r in _read(args.out, args.nperm)}
    jobs = [("null", NULL_SEED + i, args.nperm) for i in range(args.datasets)]
    jobs += [("power", POWER_SEED + i, args.nperm) for i in range(args.power_datasets)]
    jobs = [j for j in jobs if (j[0], j[1]) not in done]
    print(f"{len(done)} datasets already in {args.out}; running {len(jobs)}.", flush=True)

    start = time.perf_counter()
    fields = ["kind", "seed", "nperm", *TERMS, *(t + c for c in (" maxstat", " symmetric") for t in TERMS)]
    _upgrade_header(args.out, fields)
    new_file = not os.path.exists(args.out)
    with open(args.out, "a", newline="") as fh, ProcessPoolExecutor(args.jobs) as pool:
        writer = csv.DictWriter(fh, fieldnames=fields)
        if new_file:
            writer.writeheader()
        for row in pool.map(_one, jobs, chunksize=1):
            writer.writerow(row)
            fh.flush()  # a finished dataset is never lost
    _report(_read(args.out, args.nperm), args.datasets, args.power_datasets, args.nperm,
            time.perf_counter() - start, args.jobs)


if __name__ == "__main__":
    main()
