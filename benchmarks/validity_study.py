"""Family-wise error rate and power of the whole method, by simulation (native engine by default).

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

``--design subject-item`` runs the same study on data from
``clusterlmer.simulate_subject_item`` instead (48 subjects x 16 items, 360
trials, 40 bins, a 2 x 2 design within subjects and items, subject and item
random intercepts, AR(1) noise): ``y ~ cond_a * cond_b + (1|Subject) +
(1|Item)`` with effects coding, both conditions shuffled within:Subject (stated
explicitly), null datasets without effects and power datasets with the
simulator's default effects (``cond_a`` and the interaction; ``cond_b`` none).
Its results go to a file of their own (``validity_study_subject_item.csv`` by
default), and a results file of the other design is refused, so the two are
never mixed. ``--design erp`` runs it on ``clusterlmer.simulate_erp`` channels x
time data (``amp ~ Deviant + (1|Subject)``, 30 channels x 231 samples, clusters
over MNE's 10-20 neighbours from the data's Info; the max-statistic test takes
the largest F over channels and time). ``--engine r`` fits with lme4/lmerTest instead of the native
engine (slow; for smoke runs and spot checks), writing to a file of its own
too (``..._r.csv``) unless ``--out`` names one.

Each finished dataset is appended to ``--out`` (CSV) at once; rerunning with
the same file skips the datasets already there, so an interrupted study loses
nothing, and a larger ``--datasets`` extends an earlier one.

    python benchmarks/validity_study.py --datasets 1000 --nperm 200 --power-datasets 100 --jobs 2
    python benchmarks/validity_study.py --design subject-item --datasets 1000 --nperm 200 --jobs 2
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy.stats import beta, binom

ALPHAS = (0.01, 0.05, 0.10)
NULL_SEED, POWER_SEED = 10_000, 20_000
# Permutations are drawn from a stream of their own: seeding them with the
# dataset's seed would reuse the very random numbers that made the data's noise,
# so the "random" flips would be functions of the data (see _one).
PERMUTATION_SEED_OFFSET = 1_000_000

# Per design: the model, the simulator (its null switches every effect off), how each
# variable is permuted (None: derived by the analysis) and where results go by default.
DESIGNS = {
    "ieeg": dict(formula="data ~ hit_miss * region + (1|sid) + (1|sid:ch)",
                 terms=("hit_miss", "region", "hit_miss:region"), coding="reference", schemes=None,
                 null_effects=dict(hit_miss_effect=0.0, interaction_effect=0.0), out="validity_study.csv",
                 label="iEEG 2-way (simulate_ieeg, 15 subjects, 169 channels, 139 timepoints)",
                 power="datasets with the bundled sample's effects; 'region' has none"),
    "subject-item": dict(formula="y ~ cond_a * cond_b + (1|Subject) + (1|Item)",
                         terms=("cond_a", "cond_b", "cond_a:cond_b"), coding="effects",
                         schemes={"cond_a": "within:Subject", "cond_b": "within:Subject"},
                         null_effects=dict(cond_a_effect=0.0, cond_b_effect=0.0, interaction_effect=0.0),
                         out="validity_study_subject_item.csv",
                         label="subject x item 2 x 2 (simulate_subject_item, 48 subjects, 16 items, 360 trials, "
                               "40 bins, effects coding, within:Subject shuffles)",
                         power="datasets with simulate_subject_item's default effects; 'cond_b' has none"),
    # The same with a subject random slope of cond_a in the data (SD 0.5) and in the model: shuffling
    # cond_a within subjects removes the slopes' variance from every permutation, so whether the test
    # keeps its level here is an empirical question.
    "subject-item-slope": dict(formula="y ~ cond_a * cond_b + (1 + cond_a|Subject) + (1|Item)",
                               terms=("cond_a", "cond_b", "cond_a:cond_b"), coding="effects",
                               schemes={"cond_a": "within:Subject", "cond_b": "within:Subject"},
                               data=dict(slope_sd=0.5),
                               null_effects=dict(cond_a_effect=0.0, cond_b_effect=0.0, interaction_effect=0.0),
                               out="validity_study_subject_item_slope.csv",
                               label="subject x item 2 x 2 with a subject random slope of cond_a (SD 0.5) in the "
                                     "data and the model (simulate_subject_item, within:Subject shuffles)",
                               power="datasets with simulate_subject_item's default effects; 'cond_b' has none"),
    # Channels x time: 30 scalp channels, clusters over MNE's 10-20 neighbours (the data's Info).
    "erp": dict(formula="amp ~ Deviant + (1|Subject)", terms=("Deviant",), coding="reference", schemes=None,
                null_effects=dict(effect=0.0), out="validity_study_erp.csv",
                label="ERP channels x time (simulate_erp: 49 subjects x standard/deviant, 30 channels x 231 "
                      "samples, clusters over MNE's 10-20 neighbours)",
                power="datasets with simulate_erp's default fronto-central effect"),
}


def _simulate(design, seed, effects):
    import clusterlmer as cl

    if design == "ieeg":
        return cl.simulate_ieeg("2way", seed=seed, **effects)
    if design == "erp":
        return cl.simulate_erp(seed=seed, **effects)
    return cl.simulate_subject_item(seed=seed, **DESIGNS[design].get("data", {}), **effects)


def _one(job):
    """Run the full method on one simulated dataset.

    Returns, per term, the smallest cluster p (1 without clusters), the p of
    a max-statistic test on the same null (largest F over time, observed
    counted in as for the cluster p), which separates the permutations'
    validity from the cluster step's, and the exact symmetric-threshold
    cluster p (:func:`_symmetric_cluster_p`).
    """
    import clusterlmer as cl
    from clusterlmer.adjacency import data_adjacency
    from clusterlmer.corrections import max_statistic_test

    design, engine, kind, seed, nperm = job
    spec = DESIGNS[design]
    data = _simulate(design, seed, spec["null_effects"] if kind == "null" else {})
    # The simulators and make_permutations all use default_rng(seed): with one
    # seed for both, each permutation's coin flips would be the noise's bits.
    res = cl.permutation_cluster_lmer(data, spec["formula"], n_permutations=nperm,
                                      seed=seed + PERMUTATION_SEED_OFFSET, coding=spec["coding"],
                                      schemes=spec["schemes"], engine=engine, cross_check=0, progress=False)
    table = res.clusters
    row = {"kind": kind, "seed": seed, "nperm": nperm}
    for term in spec["terms"]:
        p = table.loc[table["term"] == term, "p"]
        row[term] = float(p.min()) if len(p) else 1.0
        observed = res.fit.F[res.fit.terms.index(term)]
        # Over every sample (and channel): the smallest per-sample p is the test of the largest F.
        _, p_max, _ = max_statistic_test(observed, res.null[term], tail=1)
        row[term + " maxstat"] = float(p_max.min())
        adjacency = data_adjacency(data, None) if data.channels is not None else None
        row[term + " symmetric"] = _symmetric_cluster_p(cl, observed, res.null[term], adjacency)
    return row


def _symmetric_cluster_p(cl, observed, null, adjacency=None):
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
    _, _, info = cl.cluster_test(observed, np.concatenate([null, observed[..., None]], axis=-1), tail=1,
                                 alpha=0.05, clusteralpha=0.05, clusterstat="sum", adjacency=adjacency)
    largest = info.null_max[-1]  # the observed's own largest cluster sum, from the shared thresholds
    if np.isnan(largest):
        return 1.0
    return float((np.sum(info.null_max[:-1] >= largest) + 1) / (nperm + 1))


def _interval(k, n):
    lo = beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return lo, hi


def _read(path, nperm, terms):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["nperm"]) == nperm]
    for r in rows:
        r["seed"] = int(r["seed"])
        for term in terms:
            r[term] = float(r[term])
            for column in (" maxstat", " symmetric"):  # absent from rows written before they existed
                r[term + column] = float(r.get(term + column) or "nan")
    return rows


def _fwer_table(null, column, terms):
    """Print FWER per term and alpha from the p-values in ``term + column``."""
    n = len(null)
    print(f"{'term':18s}" + "".join(f"  {'alpha=' + format(a, '.2f'):>22s}" for a in ALPHAS))
    for term in terms:
        cells = []
        for alpha in ALPHAS:
            k = sum(r[term + column] <= alpha for r in null)
            a, b = _interval(k, n)
            cells.append(f"{k / n:.3f} ({a:.3f}-{b:.3f})")
        print(f"{term:18s}" + "".join(f"  {c:>22s}" for c in cells))


def _report(rows, n_null, n_power, nperm, elapsed, jobs, design, engine):
    spec = DESIGNS[design]
    terms = spec["terms"]
    null = [r for r in rows if r["kind"] == "null" and r["seed"] < NULL_SEED + n_null]
    power = [r for r in rows if r["kind"] == "power" and r["seed"] < POWER_SEED + n_power]
    n = len(null)
    if not n:
        print("no null datasets to report.")
        return
    print(f"{spec['label']}; {engine} engine")
    print(f"{n} null datasets + {len(power)} with effects, {nperm} permutations each, 2-way F, cluster 'sum', "
          f"cluster-forming alpha 0.05; this run {elapsed / 60:.1f} min on {jobs} worker(s).\n")
    print("FWER per term: share of null datasets with a cluster p <= alpha (exact 95% CI).")
    for alpha in ALPHAS:
        lo, hi = binom.ppf(0.025, n, alpha) / n, binom.ppf(0.975, n, alpha) / n
        print(f"  a true rate of {alpha:.2f} is seen between {lo:.3f} and {hi:.3f} in 95% of studies of n={n}")
    _fwer_table(null, "", terms)
    for column, what in ((" maxstat", "max-statistic test (largest F over time)"),
                         (" symmetric", "cluster test with the observed among the null's members (exact)")):
        rows_with = [r for r in null if not np.isnan(r[terms[0] + column])]
        if rows_with:
            print(f"\nThe same nulls, {what}; {len(rows_with)} datasets:")
            _fwer_table(rows_with, column, terms)
    any_k = sum(min(r[t] for t in terms) <= 0.05 for r in null)
    print(f"{'any term':18s}  {any_k / n:.3f} at alpha=0.05 (no correction across terms)")
    if power:
        print(f"\nPower at alpha=0.05 ({spec['power']})")
        for term in terms:
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


def _check_file_design(path, design):
    """Refuse a results file written for another design (its rows would be mixed with, or rewritten as, ours)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as fh:
        header = next(csv.reader(fh), [])
    terms = DESIGNS[design]["terms"]
    if header and not set(terms) <= set(header):
        other = next((name for name, d in DESIGNS.items() if set(d["terms"]) <= set(header)), None)
        raise SystemExit(f"{path} holds results of {'the ' + other + ' design' if other else 'another study'} "
                         f"(columns {', '.join(header[3:6])}), not of --design {design}: pass another --out.")


def _check_engine_fits(design, engine):
    """Stop with the engine's reason when it cannot fit the design's model (rather than in every worker)."""
    from clusterlmer.design import build_design
    from clusterlmer.engines import get_engine
    from clusterlmer.engines.base import FitOptions
    from clusterlmer.formula import parse_formula

    spec = DESIGNS[design]
    data = _simulate(design, NULL_SEED, spec["null_effects"])
    model = build_design(data.design, parse_formula(spec["formula"]), coding=spec["coding"])
    ok, why = get_engine(engine).supports(model, FitOptions())
    if not ok:
        raise SystemExit(f"the {engine} engine cannot fit {spec['formula']!r}: {why}. Use --engine r.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=200, help="null datasets (default 200)")
    parser.add_argument("--nperm", type=int, default=200, help="permutations per dataset (default 200)")
    parser.add_argument("--power-datasets", type=int, default=50, help="datasets with effects (default 50)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--design", choices=tuple(DESIGNS), default="ieeg",
                        help="ieeg: simulate_ieeg 2-way data (default); subject-item: simulate_subject_item data; "
                             "subject-item-slope: the same with a subject random slope in the data and the model; "
                             "erp: simulate_erp channels x time data clustered over 10-20 neighbours")
    parser.add_argument("--engine", choices=("native", "r"), default="native",
                        help="engine of every fit (default native; r: lme4/lmerTest, slow)")
    parser.add_argument("--out", default=None,
                        help="per-dataset results, appended as they finish (default validity_study.csv for the "
                             "iEEG design, validity_study_subject_item.csv for subject-item; '_r' before '.csv' "
                             "with --engine r)")
    args = parser.parse_args()
    design = DESIGNS[args.design]
    terms = design["terms"]
    if args.out is None:
        root, ext = os.path.splitext(design["out"])
        args.out = root + ("_r" if args.engine == "r" else "") + ext

    fields = ["kind", "seed", "nperm", *terms, *(t + c for c in (" maxstat", " symmetric") for t in terms)]
    _check_file_design(args.out, args.design)
    _check_engine_fits(args.design, args.engine)
    done = {(r["kind"], r["seed"]) for r in _read(args.out, args.nperm, terms)}
    jobs = [(args.design, args.engine, "null", NULL_SEED + i, args.nperm) for i in range(args.datasets)]
    jobs += [(args.design, args.engine, "power", POWER_SEED + i, args.nperm) for i in range(args.power_datasets)]
    jobs = [j for j in jobs if (j[2], j[3]) not in done]
    print(f"{len(done)} datasets already in {args.out}; running {len(jobs)}.", flush=True)

    start = time.perf_counter()
    _upgrade_header(args.out, fields)
    new_file = not os.path.exists(args.out)
    with open(args.out, "a", newline="") as fh, ProcessPoolExecutor(args.jobs) as pool:
        writer = csv.DictWriter(fh, fieldnames=fields)
        if new_file:
            writer.writeheader()
        for row in pool.map(_one, jobs, chunksize=1):
            writer.writerow(row)
            fh.flush()  # a finished dataset is never lost
    _report(_read(args.out, args.nperm, terms), args.datasets, args.power_datasets, args.nperm,
            time.perf_counter() - start, args.jobs, args.design, args.engine)


if __name__ == "__main__":
    main()
