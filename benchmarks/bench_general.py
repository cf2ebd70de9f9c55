"""Native engine speed and memory on general random structures (crossed groupings,
random slopes), side by side with the R engine, in one run.

Workloads (REML, Satterthwaite, marginal F tests of three terms):

(a) ``subject-item``: ``simulate_subject_item`` data shaped like a visual-world
    eye-tracking study (48 subjects, 16 items, 360 trials, 40 bins, 2 x 2
    within subjects and items), effects coding, ``y ~ cond_a * cond_b +
    (1|Subject) + (1|Item)``, ``cond_a`` and ``cond_b`` shuffled within:Subject;
(b) ``sample-slope``: the bundled 2-way sample (338 rows x 139 timepoints) with
    ``data ~ hit_miss * region + (1 + hit_miss | sid) + (1 | sid:ch)``,
    permutation schemes derived as the analysis derives them;
(c) ``subject-item-slope``: as (a) with a subject random slope of ``cond_a``
    in the data and the model, ``y ~ cond_a * cond_b + (1 + cond_a | Subject)
    + (1 | Item)`` (3 + 1 theta).

For each workload: the time per fit of the R engine (``fit_block`` on
``--r-times`` timepoints, R started beforehand; full fits and statistic-only
fits) and of the native engine (``fit_block`` on the whole block: the first
call on a fresh specification, then best of ``--repeats`` with the set-up
kept as permutations keep it; statistic-only fits from lme4's start; and
permutation fits as the analysis runs them: 8 permuted designs of the whole
block, statistic only, started at the observed fit's optimum), their ratios
(R's statistic-only fits and the native permutation fits, whose ratio is
judged, are timed in alternation, best of ``--repeats`` each, so that both
see the machine in the same state),
the largest relative difference of F, DF2 and p on R's timepoints, and the
full analysis ``permutation_cluster_lmer(..., n_permutations=--nperm,
engine=--analysis-engine)`` in a child process: wall time, CPU time, fits
per second against R's, and (d) peak resident memory (the analysis
process's own VmHWM plus its worker processes' ``ru_maxrss``, an upper
bound: a child spawned by vfork counts its parent's peak). (e) A table of
the native time per fit by number of subjects (24/48/96, 7.5 trials each,
16 items, 40 bins) and number of random-effect terms (``(1|Subject)``;
``+ (1|Item)``; ``+ (1|Subject:cond_a)``), with R's for scale. A summary
judges the targets: (a) full analysis <= 20 s and >= 100x R's fits/s,
(b) per fit >= 100x R and full analysis <= 60 s, (c) per fit >= 50x R,
(d) peak memory <= 2 GiB. "Per fit" is judged on permutation fits (999 of
every 1000 fits of an analysis) against R's statistic-only fits, which is
what R's permutations cost; the full fits' ratio (with Satterthwaite's DF2)
is printed beside it.

A model the native engine does not fit (yet) is reported as "native: not
supported (<reason>)" and the rest goes on. ``--quick`` runs every part at
small sizes (a smoke run; the targets are then not judged), and
``--analysis-engine r`` runs the full analyses with R, to exercise them
before the native engine fits these models.

Usage: python benchmarks/bench_general.py [--quick] [--nperm 1000] [--r-times 10] [--repeats 3]
       [--workloads a,b,c,e] [--engine-only native|r] [--analysis-engine native|r|none]
       [--cross-check 3] [--n-jobs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

import clusterlmer as cl
from clusterlmer import datasets
from clusterlmer.design import build_design
from clusterlmer.engines import get_engine
from clusterlmer.engines.base import FitOptions
from clusterlmer.engines.native import UnsupportedModel
from clusterlmer.formula import parse_formula
from clusterlmer.spec import build_spec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_native import _peak_rss_mb  # noqa: E402  (this process's own peak, VmHWM)

TARGET_WALL_S = {"a": 20.0, "b": 60.0}
TARGET_SPEEDUP_FIT = {"a": 100.0, "b": 100.0, "c": 50.0}
TARGET_SPEEDUP_FULL = {"a": 100.0}
TARGET_PEAK_MB = 2048.0
WORKLOAD_NAMES = {"a": "subject-item", "b": "sample-slope", "c": "subject-item-slope"}
SUBJECT_ITEM_FORMULA = "y ~ cond_a * cond_b + (1|Subject) + (1|Item)"
SLOPE_FORMULA = "y ~ cond_a * cond_b + (1 + cond_a|Subject) + (1|Item)"
SAMPLE_SLOPE_FORMULA = "data ~ hit_miss * region + (1 + hit_miss|sid) + (1|sid:ch)"
# Both conditions vary within subjects and within items; each is shuffled among a subject's trials.
WITHIN_SUBJECT = {"cond_a": "within:Subject", "cond_b": "within:Subject"}
GROWTH_TERMS = {1: "y ~ cond_a * cond_b + (1|Subject)",
                2: "y ~ cond_a * cond_b + (1|Subject) + (1|Item)",
                3: "y ~ cond_a * cond_b + (1|Subject) + (1|Item) + (1|Subject:cond_a)"}
DATA_SEED, PERMUTATION_SEED = 7, 1  # apart: simulate and permute both seed default_rng
PERMUTATION_FITS = 8  # permuted designs timed per workload (x every timepoint)


def _spread(n_times, k):
    """``k`` timepoints spread evenly over ``n_times``."""
    return np.unique(np.linspace(0, n_times - 1, min(k, n_times)).round().astype(int))


def _rel(a, b):
    """Largest relative difference of ``a`` from ``b`` (NaNs ignored)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    with np.errstate(invalid="ignore"):
        d = np.abs(a - b) / np.where(b == 0, 1.0, np.abs(b))
    return float(np.nanmax(d)) if np.isfinite(d).any() else float("nan")


def _subject_item_shape(quick, n_subjects=None):
    """Keyword arguments of ``simulate_subject_item``: the study's shape (7.5 trials per subject, 16 items,
    40 bins), or with ``quick`` a smoke-run size (6 of 8 items per subject, 8 bins)."""
    if quick:
        n_subjects = n_subjects or 12
        return dict(n_subjects=n_subjects, n_items=8, n_trials=6 * n_subjects, n_times=8)
    n_subjects = n_subjects or 48
    return dict(n_subjects=n_subjects, n_items=16, n_trials=round(7.5 * n_subjects), n_times=40)


def workload(key, quick):
    """Data, formula, coding, schemes and a description of workload ``key``."""
    if key == "b":
        data = datasets.sample_2way()
        if quick:
            idx = _spread(data.n_times, 8)
            data = cl.TimeseriesData(data.design, data.values[:, idx], data.times[idx])
        return dict(data=data, formula=SAMPLE_SLOPE_FORMULA, coding="reference", schemes=None,
                    what=f"bundled 2-way sample, {data.n_obs} rows x {data.n_times} timepoints")
    slope = key == "c"
    data = cl.simulate_subject_item(seed=DATA_SEED, slope_sd=0.6 if slope else 0.0, **_subject_item_shape(quick))
    d = data.design
    return dict(data=data, formula=SLOPE_FORMULA if slope else SUBJECT_ITEM_FORMULA, coding="effects",
                schemes=WITHIN_SUBJECT,
                what=(f"simulate_subject_item: {d['Subject'].nunique()} subjects x {d['Item'].nunique()} items, "
                      f"{data.n_obs} trials x {data.n_times} bins, effects coding"))


def _spec(data, formula, coding):
    return build_spec(build_design(data.design, parse_formula(formula), coding=coding))


def _native_supports(spec, options):
    ok, why = get_engine("native").supports(spec, options)
    return None if ok else why


def _time_native(data, formula, coding, options, repeats, need="all"):
    """Native ms per fit on the whole block: (first call on a fresh spec, best warm, median warm), or the reason
    it is not supported."""
    spec = _spec(data, formula, coding)
    why = _native_supports(spec, options)
    if why:
        return None, why
    native, Y = get_engine("native"), data.values
    try:
        t0 = time.perf_counter()
        blk = native.fit_block(spec, Y, options, need)
        cold = time.perf_counter() - t0
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            native.fit_block(spec, Y, options, need)
            times.append(time.perf_counter() - t0)
    except UnsupportedModel as exc:
        return None, str(exc)
    k = Y.shape[1]
    return {"cold": cold / k * 1e3, "best": min(times) / k * 1e3, "median": float(np.median(times)) / k * 1e3,
            "block": blk}, None


def _r_timer(data, formula, coding, options, r_times, need="all"):
    """A function timing one pass of the R engine over ``r_times`` spread timepoints (R started beforehand):
    it returns ms per fit, the fits and their indices."""
    spec = _spec(data, formula, coding)
    r, Y = get_engine("r"), data.values
    r.fit_block(spec, Y[:, :1], options)  # starts R and loads lme4 outside the timing
    idx = _spread(Y.shape[1], r_times)

    def one_pass():
        t0 = time.perf_counter()
        ref = r.fit_block(spec, Y[:, idx], options, need)
        return (time.perf_counter() - t0) / len(idx) * 1e3, ref, idx
    return one_pass


def _time_r(data, formula, coding, options, r_times, need="all"):
    """R engine ms per fit on ``r_times`` spread timepoints (one pass), its fits and their indices."""
    return _r_timer(data, formula, coding, options, r_times, need)()


def _permutation_timer(w, options, n_permutations=PERMUTATION_FITS):
    """A function timing one pass of permutation fits as the analysis fits them (ms per fit):
    ``n_permutations`` permuted designs of the whole block, statistic only, each started at the
    observed fit's optimum."""
    spec = _spec(w["data"], w["formula"], w["coding"])
    native, Y = get_engine("native"), w["data"].values
    perms = cl.make_permutations(w["data"].design, w["formula"], n_permutations, seed=PERMUTATION_SEED,
                                 schemes=w["schemes"])
    specs = [spec.permuted({v: m[k] for v, m in perms.row_maps.items()}) for k in range(n_permutations)]
    native.fit_blocks([spec], Y, options)  # the observed fit, whose optimum starts every permutation's

    def one_pass():
        t0 = time.perf_counter()
        native.fit_blocks(specs, Y, options, "statistic", start_from=spec)
        return (time.perf_counter() - t0) / (n_permutations * Y.shape[1]) * 1e3
    return one_pass


def _judged_pair(w, options, args):
    """Best-of-``repeats`` ms per fit of R's statistic-only fits and of native permutation fits, measured
    in alternation so that both see the same machine: on a shared VM the speed of either moves by
    +-25% from one minute to the next, and timing them minutes apart would move their ratio with it."""
    native_pass = _permutation_timer(w, options)
    r_pass = (_r_timer(w["data"], w["formula"], w["coding"], options, args.r_times, "statistic")
              if args.engine_only != "native" else None)
    r_times, native_times = [], []
    for _ in range(max(1, args.repeats)):
        if r_pass is not None:
            r_times.append(r_pass()[0])
        native_times.append(native_pass())
    return (min(r_times) if r_times else None), min(native_times)


def per_fit(key, args, options):
    """Per-fit times of both engines on workload ``key``; prints them and returns a dict of figures."""
    w = workload(key, args.quick)
    print(f"\n== ({key}) {WORKLOAD_NAMES[key]}: {w['formula']} ==\n{w['what']}")
    out = {"r_ms": None, "native": None, "why": None}
    if args.engine_only != "native":
        out["r_ms"], ref, idx = _time_r(w["data"], w["formula"], w["coding"], options, args.r_times)
    full = stat = None
    if args.engine_only != "r":
        full, out["why"] = _time_native(w["data"], w["formula"], w["coding"], options, args.repeats)
    if full is not None:
        stat, _ = _time_native(w["data"], w["formula"], w["coding"], options, args.repeats, need="statistic")
        out["native"], out["native_stat"] = full["best"], stat["best"]
        out["r_stat_ms"], out["native_perm"] = _judged_pair(w, options, args)
    elif out["r_ms"] is not None:
        out["r_stat_ms"], _, _ = _time_r(w["data"], w["formula"], w["coding"], options, args.r_times, "statistic")
    if out["r_ms"] is not None:
        how = f" (best of {args.repeats}, alternating with the native permutation fits)" if full else ""
        print(f"R engine              : {out['r_ms']:9.3f} ms per fit ({1e3 / out['r_ms']:8.1f} fits/s; "
              f"{len(idx)} timepoints); statistic only (as permutations fit) {out['r_stat_ms']:.3f} ms{how}")
    if out["why"]:
        print(f"native: not supported ({out['why']})")
    if full is not None:
        k = w["data"].n_times
        print(f"native engine         : {full['best']:9.3f} ms per fit ({1e3 / full['best']:8.1f} fits/s; block of "
              f"{k}, best of {args.repeats}; median {full['median']:.3f} ms; first call on a fresh spec "
              f"{full['cold']:.3f} ms)")
        print(f"native, statistic only: {stat['best']:9.3f} ms per fit (F without DF2, from lme4's start)")
        print(f"native, permutations  : {out['native_perm']:9.3f} ms per fit (F without DF2, {PERMUTATION_FITS} "
              f"permuted designs started at the observed optimum, as the analysis fits them; best of {args.repeats})")
        if out["r_ms"] is not None:
            print(f"speed-up              : {out['r_ms'] / full['best']:9.1f} x (full fits); permutation fits "
                  f"{out['r_stat_ms'] / out['native_perm']:.1f} x (R's statistic-only fits)")
            blk = full["block"]
            diffs = ", ".join(f"{name} {_rel(getattr(blk, name)[:, idx], getattr(ref, name)):.1e}"
                              for name in ("F", "df2", "p"))
            print(f"native vs R on R's timepoints, max rel diff: {diffs}")
    return out


def analysis(key, quick, nperm, engine, cross_check, n_jobs):
    """Full analysis of workload ``key`` (in a child process); its figures, or why the engine cannot fit it."""
    w = workload(key, quick)
    options = FitOptions()
    if engine == "native":
        why = _native_supports(_spec(w["data"], w["formula"], w["coding"]), options)
        if why:
            return {"why": why}
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        res = cl.permutation_cluster_lmer(w["data"], w["formula"], n_permutations=nperm, seed=PERMUTATION_SEED,
                                          engine=engine, coding=w["coding"], schemes=w["schemes"],
                                          cross_check=cross_check if engine == "native" else 0, n_jobs=n_jobs,
                                          progress=False)
    except UnsupportedModel as exc:  # e.g. refused for the rows of one sample only
        return {"why": str(exc)}
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall": wall, "cpu": cpu, "n_fits": (nperm + 1) * w["data"].n_times, "peak_mb": _peak_rss_mb(),
            "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "clusters": len(res.clusters), "engine": res.fit.options.get("engine", engine)}


def _child(extra):
    """Run this script with ``extra`` arguments in a fresh process; its JSON result (``{"error": ...}`` if it
    failed, so that the other workloads still run)."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        proc = subprocess.run([sys.executable, __file__, *extra, "--json-out", path])
        if proc.returncode != 0:
            return {"error": f"the child process failed with exit code {proc.returncode} (its traceback is above)"}
        with open(path) as f:
            return json.load(f)
    finally:
        os.unlink(path)


def full_analysis(key, args, r_ms):
    """Run and print the full analysis of workload ``key`` in a child process."""
    engine = args.analysis_engine
    cross_check = 0 if args.engine_only == "native" else args.cross_check
    print(f"\n-- ({key}) full analysis: permutation_cluster_lmer(n_permutations={args.nperm}, engine={engine!r}, "
          f"cross_check={cross_check if engine == 'native' else 0}, n_jobs={args.n_jobs}) in a child process --")
    run = _child(["--analysis-only", key, "--nperm", str(args.nperm), "--analysis-engine", engine,
                  "--cross-check", str(cross_check), "--n-jobs", str(args.n_jobs),
                  *(["--quick"] if args.quick else [])])
    if "why" in run:
        print(f"{engine}: not supported ({run['why']})")
        return run
    if "error" in run:
        print(f"{engine}: {run['error']}")
        return run
    per_fit_ms = run["wall"] / run["n_fits"] * 1e3
    print(f"{run['wall']:.1f} s wall, {run['cpu']:.1f} s CPU ({per_fit_ms:.3f} ms per fit, "
          f"{run['n_fits'] / run['wall']:.0f} fits/s, {run['n_fits']} fits incl. the cluster test"
          + (f"; {r_ms / per_fit_ms:.0f}x R's fits/s" if r_ms and engine == "native" else "")
          + f"), {run['clusters']} cluster(s)")
    print(f"peak RSS: analysis process {run['peak_mb']:.0f} MB, its worker processes <= {run['workers_mb']:.0f} MB")
    return run


def growth(args, options):
    """(e) Native (and R) time per fit by number of subjects and random-effect terms; prints the table."""
    subjects = (12, 24) if args.quick else (24, 48, 96)
    rows = []
    for n_subjects in subjects:
        data = cl.simulate_subject_item(seed=DATA_SEED, **_subject_item_shape(args.quick, n_subjects))
        for n_terms, formula in GROWTH_TERMS.items():
            row = {"subjects": n_subjects, "rows": data.n_obs, "terms": n_terms, "native": None, "stat": None,
                   "r_ms": None, "why": None}
            if args.engine_only != "r":
                nat, row["why"] = _time_native(data, formula, "effects", options, args.repeats)
                if nat is not None:
                    stat, _ = _time_native(data, formula, "effects", options, args.repeats, need="statistic")
                    row["native"], row["stat"] = nat["best"], stat["best"]
            if args.engine_only != "native":
                row["r_ms"], _, _ = _time_r(data, formula, "effects", options, min(args.r_times, 3))
            rows.append(row)

    per_subject = data.design.groupby("Subject").size()
    print(f"\n== (e) growth: time per fit by subjects and random-effect terms (simulate_subject_item, "
          f"{data.design['Item'].nunique()} items, {per_subject.min()}-{per_subject.max()} trials per subject, "
          f"{data.n_times} bins fitted as one block, effects coding) ==")
    for n, formula in GROWTH_TERMS.items():
        print(f"  {n} term{'s' if n > 1 else ' '}: {formula}")
    base = next((r for r in rows if r["subjects"] == subjects[len(subjects) // 2] and r["terms"] == 2), {})
    print(f"{'subjects':>8s} {'rows':>5s} {'terms':>5s} {'native ms':>10s} {'stat. ms':>9s} {'x base':>7s} "
          f"{'R ms':>8s} {'R/native':>9s}")

    def cell(value, fmt, width):
        return f"{value:{width}{fmt}}" if value is not None else f"{'n/a':>{width}s}"

    for r in rows:
        rel = r["native"] / base["native"] if r["native"] and base.get("native") else None
        ratio = r["r_ms"] / r["native"] if r["native"] and r["r_ms"] else None
        print(f"{r['subjects']:8d} {r['rows']:5d} {r['terms']:5d} {cell(r['native'], '.3f', 10)} "
              f"{cell(r['stat'], '.3f', 9)} {cell(rel, '.2f', 7)} {cell(r['r_ms'], '.1f', 8)} {cell(ratio, '.0f', 9)}"
              + (f"   native: not supported ({r['why']})" if r["why"] else ""))
    print(f"(native ms: full fit, best of {args.repeats}; stat. ms: statistic only; x base: native ms relative to "
          f"{subjects[len(subjects) // 2]} subjects, 2 terms; R ms on {min(args.r_times, 3)} bins)")
    return rows


def _summary(fits, runs, args, script_s, load0):
    print(f"\n== summary ({os.cpu_count()} cores; load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end: "
          "timings are noisy when the machine is shared) ==")
    if args.quick:
        print("(--quick: small sizes, targets not judged)")

    def line(target, measured, ok):
        """``ok``: True/False judged against the target; None: nothing to judge (not run, or no target)."""
        verdict = "-" if ok is None else ("measured" if args.quick else ("PASS" if ok else "FAIL"))
        print(f"{target:52s} {measured:>30s}  {verdict}")

    for key, fit in fits.items():
        name = f"({key}) {WORKLOAD_NAMES[key]}"
        if key in TARGET_SPEEDUP_FIT:
            goal = TARGET_SPEEDUP_FIT[key]
            if fit.get("why"):
                line(f"{name}: per fit >= {goal:.0f}x R", "native: not supported", None)
            elif fit.get("native_perm") and fit.get("r_stat_ms"):
                ratio = fit["r_stat_ms"] / fit["native_perm"]
                line(f"{name}: per permutation fit >= {goal:.0f}x R", f"{ratio:.0f}x", ratio >= goal)
                line(f"{name}: per full fit (DF2 too; no target)", f"{fit['r_ms'] / fit['native']:.0f}x", None)
        run = runs.get(key)
        if run is None:
            continue
        if "why" in run or "error" in run:
            line(f"{name}: full analysis", f"{args.analysis_engine}: {'not supported' if 'why' in run else 'failed'}",
                 None)
            continue
        wall = f"{run['wall']:.1f} s (CPU {run['cpu']:.1f} s)"
        if args.analysis_engine != "native":
            line(f"{name}: full analysis ({args.analysis_engine} engine)", wall, None)
        else:
            if key in TARGET_WALL_S:
                line(f"{name}: full analysis <= {TARGET_WALL_S[key]:.0f} s", wall, run["wall"] <= TARGET_WALL_S[key])
            else:
                line(f"{name}: full analysis (no target)", wall, None)
            if key in TARGET_SPEEDUP_FULL and fit.get("r_ms"):
                ratio = fit["r_ms"] / (run["wall"] / run["n_fits"] * 1e3)
                line(f"{name}: full analysis >= {TARGET_SPEEDUP_FULL[key]:.0f}x R fits/s", f"{ratio:.0f}x",
                     ratio >= TARGET_SPEEDUP_FULL[key])
        peak = run["peak_mb"] + run["workers_mb"]
        line(f"{name}: (d) peak memory <= 2 GiB", f"{peak:.0f} MB ({run['peak_mb']:.0f} + {run['workers_mb']:.0f})",
             peak <= TARGET_PEAK_MB)
    print(f"whole benchmark: {script_s:.0f} s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run (targets not judged)")
    ap.add_argument("--nperm", type=int, default=None, help="permutations of the full analyses (default 1000; "
                    "20 with --quick)")
    ap.add_argument("--r-times", type=int, default=None, help="timepoints fitted by the R engine per workload "
                    "(default 10; 2 with --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="native block repeats, best taken (default 3; 1 with "
                    "--quick)")
    ap.add_argument("--workloads", default="a,b,c,e", help="which parts to run, of a,b,c,e (default all; (d) is "
                    "measured in the full analyses of a, b and c)")
    ap.add_argument("--engine-only", choices=("native", "r"), default=None,
                    help="time one engine's fits only (no ratios); 'native' also leaves out the R cross-check, "
                    "so that R never runs")
    ap.add_argument("--analysis-engine", choices=("native", "r", "none"), default="native",
                    help="engine of the full analyses (default native; r for a smoke run of them before the "
                    "native engine fits these models, at --quick sizes; none: skip them)")
    ap.add_argument("--cross-check", type=int, default=3,
                    help="R cross-check timepoints in the native full analyses (library default 3; 0: no R)")
    ap.add_argument("--n-jobs", type=int, default=1, help="worker processes of the full analyses (default 1)")
    ap.add_argument("--analysis-only", choices=tuple(WORKLOAD_NAMES), help=argparse.SUPPRESS)
    ap.add_argument("--json-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.nperm = args.nperm if args.nperm is not None else (20 if args.quick else 1000)
    args.r_times = args.r_times if args.r_times is not None else (2 if args.quick else 10)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if args.analysis_only:
        run = analysis(args.analysis_only, args.quick, args.nperm, args.analysis_engine, args.cross_check,
                       args.n_jobs)
        with open(args.json_out, "w") as f:
            json.dump(run, f)
        return
    chosen = [k.strip() for k in args.workloads.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in (*WORKLOAD_NAMES, "e")]
    if unknown:
        ap.error(f"--workloads: unknown part(s) {unknown}; choose from a, b, c, e")

    t_script, load0 = time.perf_counter(), os.getloadavg()[0]
    options = FitOptions()
    fits, runs = {}, {}
    for key in WORKLOAD_NAMES:
        if key not in chosen:
            continue
        fits[key] = per_fit(key, args, options)
        if args.analysis_engine != "none":
            runs[key] = full_analysis(key, args, fits[key]["r_ms"])
    if "e" in chosen:
        growth(args, options)
    _summary(fits, runs, args, time.perf_counter() - t_script, load0)


if __name__ == "__main__":
    main()
