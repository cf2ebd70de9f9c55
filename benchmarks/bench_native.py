"""Native engine speed, memory and agreement, side by side with the R engine and
the original notebook's statsmodels approach, in one run.

On the bundled 2-way sample (338 rows x 139 timepoints, ``data ~ hit_miss *
region + (1|sid) + (1|sid:ch)``, REML, Satterthwaite, marginal F tests):

(a) R engine: ``--r-times`` timepoints spread over the sample (lme4 + lmerTest
    via rpy2, R started beforehand);
(b) native engine: the whole block of 139 timepoints, best of ``--repeats``;
(c) the largest relative difference native vs R on (a)'s timepoints
    (F, DF2, p, estimates), end to end;
(d) statsmodels as the notebook uses it (``mixedlm`` with subject groups and a
    channel variance component, L-BFGS REML, then a Wald F test per
    coefficient) on ``--sm-times`` timepoints: time per fit, ratios, and how far
    its F, DF2 and p are from lmerTest's on the same timepoints;
(e) the full analysis ``permutation_cluster_lmer(..., n_permutations=N,
    engine="native")`` as a user runs it (including the default R cross-check
    of 3 timepoints), with ``n_jobs=1`` and ``n_jobs=2``, each in a child
    process: wall time and peak resident memory (of the parent);
(f) growth (``--growth``, on by default; ``--no-growth`` skips it, ~2 min): the
    full native analysis on datasets from ``clusterlmer.simulate_ieeg``,
    varying channels, timepoints and permutations one at a time from a base,
    in a child process without R;
then a summary of the targets: full analysis <= 10 s with n_jobs=1 and
<= 6 s with n_jobs=2, peak memory <= 2 GiB, >= 100x the R engine's fits per
second. ``benchmarks/bench_revisions.py`` compares the full analysis of two
revisions side by side.

statsmodels is optional (``pip install 'clusterlmer[bench]'``); without it
only (d) is skipped.

Usage: python benchmarks/bench_native.py [--r-times 20] [--repeats 5] [--sm-times 10]
       [--n-permutations 1000] [--cross-check 3] [--growth | --no-growth] [--growth-perms 250]
       [--growth-repeats 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

import clusterlmer as cl
from clusterlmer import datasets
from clusterlmer.design import build_design
from clusterlmer.engines import get_engine
from clusterlmer.engines.base import FitOptions
from clusterlmer.formula import parse_formula

TARGET_WALL_S = {1: 10.0, 2: 6.0}  # full analysis per n_jobs
TARGET_PEAK_MB = 2048.0
TARGET_SPEEDUP = 100.0

# The notebook's fixed part in patsy's naming. patsy orders columns as
# Intercept, region[T.phrc], hit_miss, ... when hit_miss is numeric, so the
# notebook's positional contrasts (column 1 = "hit_miss", column 2 = "region")
# test the other term; contrasts are built from these names instead.
SM_FORMULA = "data ~ hit_miss * region"
SM_COEF = {"hit_miss": "hit_miss", "region": "region[T.phrc]", "hit_miss:region": "hit_miss:region[T.phrc]"}


def _rel(a, b):
    """Largest relative difference of ``a`` from ``b`` (NaNs ignored)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    with np.errstate(invalid="ignore"):
        d = np.abs(a - b) / np.where(b == 0, 1.0, np.abs(b))
    return float(np.nanmax(d))


def _spread(n_times, k):
    """``k`` timepoints spread evenly over the sample (both effect windows included)."""
    return np.unique(np.linspace(0, n_times - 1, min(k, n_times)).round().astype(int))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--r-times", type=int, default=20, help="timepoints fitted by the R engine (default 20)")
    ap.add_argument("--repeats", type=int, default=5, help="native block repeats, best taken (default 5)")
    ap.add_argument("--sm-times", type=int, default=10, help="timepoints fitted by statsmodels (default 10)")
    ap.add_argument("--n-permutations", type=int, default=1000, help="permutations of the full analysis")
    ap.add_argument("--cross-check", type=int, default=3,
                    help="R cross-check timepoints in the full analysis (library default 3; 0: no R)")
    ap.add_argument("--growth", action=argparse.BooleanOptionalAction, default=True,
                    help="run the growth table (default on, ~2 min)")
    ap.add_argument("--growth-perms", type=int, default=250,
                    help="permutations of the growth table's base (default 250; x2, x4 also run)")
    ap.add_argument("--growth-repeats", type=int, default=1,
                    help="runs per growth point, best taken (default 1; 2 on a quiet machine doubles its time)")
    ap.add_argument("--n-jobs", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--analysis-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--growth-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.analysis_only:
        _dump(args.json_out, analysis(args.n_permutations, args.cross_check, args.n_jobs))
        return
    if args.growth_only:
        _dump(args.json_out, growth(args.growth_perms, args.growth_repeats))
        return

    t_script, load0 = time.perf_counter(), os.getloadavg()[0]
    data = datasets.sample_2way()
    design = build_design(data.design, parse_formula(datasets.FORMULA_2WAY))
    options = FitOptions()
    Y = data.values
    n_times = Y.shape[1]
    native, r = get_engine("native"), get_engine("r")

    # (a) R engine on r_times timepoints (R started beforehand).
    r_idx = _spread(n_times, args.r_times)
    r.fit_block(design, Y[:, :2], options)
    t0 = time.perf_counter()
    ref = r.fit_block(design, Y[:, r_idx], options)
    r_ms = (time.perf_counter() - t0) / len(r_idx) * 1e3

    # (b) native engine on the whole block.
    native.fit_block(design, Y, options)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        blk = native.fit_block(design, Y, options)
        times.append(time.perf_counter() - t0)
    nat_ms = min(times) / n_times * 1e3
    nat_med = float(np.median(times)) / n_times * 1e3

    print("== per-fit speed on the bundled 2-way sample (338 rows, 3 Satterthwaite F tests per fit) ==")
    print(f"R engine      : {r_ms:8.3f} ms per fit ({1e3 / r_ms:8.1f} fits/s; {len(r_idx)} timepoints)")
    print(f"native engine : {nat_ms:8.3f} ms per fit ({1e3 / nat_ms:8.1f} fits/s; block of {n_times}, "
          f"best of {args.repeats}; median {nat_med:.3f} ms)")
    print(f"speed-up      : {r_ms / nat_ms:8.1f} x (median: {r_ms / nat_med:.1f} x)")

    # (c) agreement on the timepoints R fitted
    print(f"\n== native vs R engine, end to end, on the {len(r_idx)} R timepoints ==")
    for name in ("F", "df2", "p", "estimate", "se"):
        print(f"max rel diff {name:9s}: {_rel(getattr(blk, name)[:, r_idx], getattr(ref, name)):.2e}")
    print(f"max rel diff deviance : {_rel(blk.deviance[r_idx], ref.deviance):.2e}")

    # (d) the notebook's statsmodels approach on the same data
    sm = _statsmodels_section(data, design, Y, options, r, blk, args.sm_times, r_ms, nat_ms)

    # (e) the whole analysis with the native engine, in a fresh process
    full = {j: _child(["--analysis-only", "--n-permutations", str(args.n_permutations),
                       "--cross-check", str(args.cross_check), "--n-jobs", str(j)]) for j in (1, 2)}

    # (f) growth with channels, timepoints and permutations
    grown = _child(["--growth-only", "--growth-perms", str(args.growth_perms),
                    "--growth-repeats", str(args.growth_repeats)]) if args.growth else None

    _summary(r_ms, nat_ms, sm, full, grown, time.perf_counter() - t_script, load0)


def _statsmodels_section(data, design, Y, options, r, blk, k, r_ms, nat_ms):
    """Time the notebook's statsmodels fits and compare them with lmerTest's.

    Returns ``None`` when statsmodels is missing, else a dict of figures.
    """
    print("\n== the original notebook's approach: statsmodels MixedLM + Wald F ==")
    try:
        import statsmodels.formula.api as smf
        from statsmodels import __version__ as sm_version
    except ImportError:
        print("statsmodels is not installed: skipped (pip install 'clusterlmer[bench]')")
        return None

    idx = _spread(Y.shape[1], k)
    frame = data.design[["sid", "ch", "hit_miss", "region"]].copy()
    frame["sid_ch"] = frame["sid"].astype(str) + ":" + frame["ch"].astype(str)
    terms = list(blk.terms)
    rows = [terms.index(t) for t in SM_COEF]
    F, df2, p = (np.full((len(SM_COEF), len(idx)), np.nan) for _ in range(3))
    warned, categories = 0, set()

    def one_fit(t, j):
        frame["data"] = Y[:, t]
        model = smf.mixedlm(SM_FORMULA, frame, groups=frame["sid"], re_formula="1",
                            vc_formula={"sid_ch": "0 + C(sid_ch)"})
        res = model.fit(method="lbfgs", reml=True)
        names = list(res.params.index)
        for i, term in enumerate(SM_COEF):
            # One coefficient per term: the Wald F is (estimate / SE)^2 on
            # (1, residual df), as the notebook's f_test gives it.
            L = np.zeros((1, len(names)))
            L[0, names.index(SM_COEF[term])] = 1.0
            test = res.f_test(L)
            F[i, j], df2[i, j], p[i, j] = float(np.squeeze(test.fvalue)), test.df_denom, float(np.squeeze(test.pvalue))

    with warnings.catch_warnings():  # imports and first-call costs out of the timing
        warnings.simplefilter("ignore")
        one_fit(idx[0], 0)
    t0 = time.perf_counter()
    for j, t in enumerate(idx):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            one_fit(t, j)
        warned += bool(caught)
        categories.update(w.category.__name__ for w in caught)
    sm_ms = (time.perf_counter() - t0) / len(idx) * 1e3

    # lmerTest's figures on the same timepoints (not timed).
    ref = r.fit_block(design, Y[:, idx], options)
    rF, rdf2, rp = ref.F[rows], ref.df2[rows], ref.p[rows]

    print(f"statsmodels {sm_version}: {sm_ms:8.3f} ms per fit ({1e3 / sm_ms:8.1f} fits/s; {len(idx)} timepoints, "
          f"fit + 3 Wald F tests; {warned} of {len(idx)} fits warned{': ' + ', '.join(sorted(categories)) if categories else ''})")
    print(f"native / statsmodels fits/s : {sm_ms / nat_ms:8.1f} x")
    print(f"R / statsmodels fits/s      : {sm_ms / r_ms:8.2f} x")
    print(f"statsmodels vs lmerTest on the same {len(idx)} timepoints (max rel diff; statsmodels uses Wald F with")
    print("residual df, no Satterthwaite, and its own optimizer):")
    print(f"  {'term':16s} {'F':>9s} {'DF2':>9s} {'p':>9s}   DF2 statsmodels vs lmerTest (median)")
    for i, term in enumerate(SM_COEF):
        print(f"  {term:16s} {_rel(F[i], rF[i]):9.2e} {_rel(df2[i], rdf2[i]):9.2e} {_rel(p[i], rp[i]):9.2e}"
              f"   {np.median(df2[i]):.0f} vs {np.median(rdf2[i]):.1f}")
    print("  (patsy puts region[T.phrc] before hit_miss: the notebook's positional contrasts, column 1 as")
    print("   'hit_miss' and column 2 as 'region', would report each of the two as the other)")
    return {"ms": sm_ms, "F_rel": _rel(F, rF), "p_rel": _rel(p, rp), "n": len(idx)}


def _child(extra):
    """Run this script with ``extra`` arguments in a fresh process; its JSON result."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        subprocess.run([sys.executable, __file__, *extra, "--json-out", path], check=True)
        with open(path) as f:
            return json.load(f)
    finally:
        os.unlink(path)


def _dump(path, obj):
    if path:
        with open(path, "w") as f:
            json.dump(obj, f)


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


def analysis(n_permutations, cross_check=3, n_jobs=1):
    """Full native analysis of the bundled sample; prints and returns wall time and peak memory."""
    data = datasets.sample_2way()
    t0, c0 = time.perf_counter(), time.process_time()
    res = cl.permutation_cluster_lmer(data, datasets.FORMULA_2WAY, n_permutations=n_permutations, seed=1,
                                      engine="native", cross_check=cross_check, progress=False, n_jobs=n_jobs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak_mb = _peak_rss_mb()
    n_fits = (n_permutations + 1) * data.values.shape[1]
    print(f"\n== full analysis: permutation_cluster_lmer(n_permutations={n_permutations}, engine='native', "
          f"cross_check={cross_check}, n_jobs={n_jobs}) ==")
    print(f"{wall:.1f} s wall, {cpu:.1f} s CPU ({wall / n_fits * 1e3:.3f} ms per fit, {n_fits / wall:.0f} fits/s, {n_fits} fits, "
          f"3 F terms, cluster test), peak RSS {peak_mb:.0f} MB "
          f"(this process; the R cross-check runs in a worker process beside the permutations)")
    print(res.clusters.to_string())
    return {"wall": wall, "cpu": cpu, "peak_mb": peak_mb, "n_fits": n_fits, "n_jobs": n_jobs}


def growth(base_perms, repeats=1):
    """Full native analysis (fits + cluster test, no R cross-check) on simulated
    2-way data, one factor varied at a time from the sample's shape."""
    base = {"channels": 169, "timepoints": 139, "permutations": base_perms}
    grid = {"channels": (85, 169, 338), "timepoints": (35, 70, 139, 278),
            "permutations": (base_perms, 2 * base_perms, 4 * base_perms)}

    def run(channels, timepoints, permutations):
        """Wall and CPU seconds, best of ``repeats``."""
        # 15 subjects as the sample; more channels means more channels per subject.
        data = cl.simulate_ieeg("2way", n_subjects=15, n_channels=channels, n_times=timepoints, seed=0)
        best = (math.inf, math.inf)
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            cl.permutation_cluster_lmer(data, datasets.FORMULA_2WAY, n_permutations=permutations, seed=1,
                                        engine="native", cross_check=0, progress=False)
            best = (min(best[0], time.perf_counter() - t0), min(best[1], time.process_time() - c0))
        return best

    run(85, 35, 5)  # warm-up: imports and first-call costs stay out of the base
    base_s = run(**base)
    rows = []
    for factor, values in grid.items():
        for v in values:
            shape = {**base, factor: v}
            wall, cpu = base_s if v == base[factor] else run(**shape)
            n_fits = (shape["permutations"] + 1) * shape["timepoints"]
            rows.append({"factor": factor, "value": v, "s": wall, "rel": wall / base_s[0], "cpu": cpu,
                         "cpu_rel": cpu / base_s[1], "ms_fit": wall / n_fits * 1e3, "base": v == base[factor]})

    print(f"\n== growth: full native analysis on simulate_ieeg('2way') data (15 subjects, 2 rows per channel), "
          f"fits + cluster test, no R cross-check; base {base['channels']} channels x {base['timepoints']} "
          f"timepoints x {base['permutations']} permutations; best of {repeats} ==")
    print(f"{'factor':13s} {'value':>6s} {'seconds':>8s} {'x base':>7s} {'ms/fit':>7s} {'CPU s':>7s} {'x base':>7s}")
    for row in rows:
        print(f"{row['factor']:13s} {row['value']:>5d}{'*' if row['base'] else ' '} {row['s']:8.2f} "
              f"{row['rel']:7.2f} {row['ms_fit']:7.3f} {row['cpu']:7.2f} {row['cpu_rel']:7.2f}")
    print("reading from CPU seconds (less affected than wall time by other jobs on the machine):")
    readings = {}
    for factor in grid:
        sub = [row for row in rows if row["factor"] == factor]
        x = np.array([row["value"] for row in sub], float)
        y = np.array([row["cpu"] for row in sub])
        # time = fixed + slope * value: the fixed part (per-permutation set-up,
        # cluster test, ...) is what a plain ratio would mistake for sub-linearity.
        slope_, fixed = np.polyfit(x, y, 1)
        worst = float(np.max(np.abs(fixed + slope_ * x - y) / y))
        share = fixed / base_s[1]
        kind = "linear" if worst <= 0.10 else "not linear"
        readings[factor] = {"share": share, "worst": worst, "kind": kind}
        print(f"  {factor}: x{x[-1] / x[0]:.0f} -> x{y[-1] / y[0]:.2f} CPU time; {kind} "
              f"(straight line within {worst:.0%}), {max(share, 0):.0%} of the base's time does not depend on {factor}")
    return {"rows": rows, "readings": readings, "base_s": base_s[0]}


def _summary(r_ms, nat_ms, sm, full, grown, script_s, load0):
    full_ms = full[1]["wall"] / full[1]["n_fits"] * 1e3

    def line(target, measured, ok):
        print(f"{target:48s} {measured:>24s}  {'PASS' if ok else 'FAIL'}")

    print(f"\n== summary ({os.cpu_count()} cores; load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} "
          f"at end: timings are noisy when the machine is shared) ==")
    for j, run in full.items():
        line(f"full analysis, n_jobs={j} <= {TARGET_WALL_S[j]:.0f} s", f"{run['wall']:.1f} s (CPU {run['cpu']:.1f} s)",
             run["wall"] <= TARGET_WALL_S[j])
    peak = max(run["peak_mb"] for run in full.values())
    line("peak memory <= 2 GiB", f"{peak:.0f} MB", peak <= TARGET_PEAK_MB)
    line(f">= {TARGET_SPEEDUP:.0f}x R fits/s (native block)", f"{r_ms / nat_ms:.0f}x", r_ms / nat_ms >= TARGET_SPEEDUP)
    line(f">= {TARGET_SPEEDUP:.0f}x R fits/s (full analysis n_jobs=1, all costs)", f"{r_ms / full_ms:.0f}x",
         r_ms / full_ms >= TARGET_SPEEDUP)
    if sm is not None:
        print(f"statsmodels (notebook): {sm['ms']:.1f} ms per fit; native {sm['ms'] / nat_ms:.0f}x and R "
              f"{sm['ms'] / r_ms:.2f}x its fits/s; its F up to {sm['F_rel']:.1e} and p up to {sm['p_rel']:.1e} "
              f"(relative) from lmerTest's")
    if grown is not None:
        print("growth (CPU time = fixed + slope x factor): " + "; ".join(
            f"{f} {r['kind']}, fixed {max(r['share'], 0):.0%} of base" for f, r in grown["readings"].items()))
    print(f"whole benchmark: {script_s:.0f} s")


if __name__ == "__main__":
    main()
