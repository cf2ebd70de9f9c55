"""R engine speed: naive per-timepoint lmerTest loop vs clusterlmer's block fit.

Both run in this one process on the same seed-shaped data (338 rows x 139
timepoints, 2-way model, REML, Satterthwaite, MATLAB marginal F-tests):

(a) naive: for every timepoint, Python hands R a data frame, R runs
    ``lmerTest::lmer`` and ``anova(type = "marginal")`` (+ the intercept
    contrast), and Python reads the table back;
(b) ``clusterlmer.fit_timeseries``: one R call for the whole block.

Prints ms per fit for each, their ratio, and the largest relative difference
between the two sets of numbers. ``--profile`` adds an R profile of (b).

Usage: python benchmarks/bench_r_engine.py [--n-times 139] [--repeats 1] [--profile]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import clusterlmer as cl
from clusterlmer.engines.base import DEFAULT_OPTIMIZER_OPTIONS

FORMULA = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"


def naive_loop(data):
    """The straightforward rpy2 loop a user would write (no clusterlmer code)."""
    import rpy2.robjects as ro
    from rpy2.robjects import vectors

    ro.r("suppressPackageStartupMessages(library(lmerTest))")
    fit_one = ro.r(
        """
        function(d, ctrl) {
          d$region <- factor(d$region, levels = unique(d$region))
          m <- lmerTest::lmer(data ~ hit_miss * region + (1|sid) + (1|sid:ch), data = d,
                              control = lme4::lmerControl(optimizer = "bobyqa", optCtrl = ctrl))
          tab <- anova(m, type = "marginal")
          L0 <- matrix(c(1, 0, 0, 0), nrow = 1)
          tab <- rbind(contestMD(m, L0)[, colnames(tab)], tab)
          cbind(tab[["F value"]], tab[["NumDF"]], tab[["DenDF"]], tab[["Pr(>F)"]])
        }
        """
    )
    ctrl = vectors.ListVector({k: vectors.FloatVector([v]) for k, v in DEFAULT_OPTIMIZER_OPTIONS["bobyqa"].items()})
    design = data.design
    base = {
        "sid": vectors.StrVector(design["sid"].tolist()),
        "ch": vectors.StrVector(design["ch"].tolist()),
        "hit_miss": vectors.FloatVector(design["hit_miss"].to_numpy()),
        "region": vectors.StrVector(design["region"].tolist()),
    }
    out = np.empty((4, 4, data.n_times))
    for t in range(data.n_times):
        frame = vectors.DataFrame({**base, "data": vectors.FloatVector(data.values[:, t])})
        out[:, :, t] = np.array(fit_one(frame, ctrl)).reshape(4, 4, order="F")
    return out  # (term, [F, DF1, DF2, p], time)


def profile_block(data):
    """R profile of clusterlmer's block fit: where the time goes."""
    import rpy2.robjects as ro

    ro.r('Rprof(tf <- tempfile(), interval = 0.002)')
    cl.fit_timeseries(data, FORMULA, engine="r")
    ro.r("Rprof(NULL)")
    tab = ro.r('s <- summaryRprof(tf)$by.total; s[order(-s$total.time), ][1:40, c("total.time", "total.pct")]')
    names = list(ro.r("rownames")(tab))
    pct = np.array(tab.rx2("total.pct"))
    wanted = ["lme4::lFormula", "lme4::mkLmerDevfun", "lme4::optimizeLmer", "lme4::checkConv",
              "lme4::mkMerMod", "lmerTest:::as_lmerModLT", "numDeriv::hessian", "numDeriv::jacobian",
              "lmerTest::contestMD"]
    print("\nWhere the time of (b) goes (R profile, % of total):")
    for name, p in zip(names, pct):
        if name.strip('"') in wanted:
            print(f"  {name.strip(chr(34)):28s} {p:5.1f} %")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-times", type=int, default=139)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each; the best is reported")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    data = cl.simulate_ieeg("2way", n_times=args.n_times, seed=0)
    print(f"Data: {data.n_obs} rows x {data.n_times} timepoints; model {FORMULA}; REML, Satterthwaite, marginal F")
    # Warm-up: start R, load lme4/lmerTest and byte-compile, outside the timings.
    small = cl.TimeseriesData(data.design, data.values[:, :2], data.times[:2])
    cl.fit_timeseries(small, FORMULA, engine="r")
    naive_loop(small)

    t_naive, t_block = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ref = naive_loop(data)
        t_naive.append(time.perf_counter() - start)
        start = time.perf_counter()
        fit = cl.fit_timeseries(data, FORMULA, engine="r")
        t_block.append(time.perf_counter() - start)
    ms_naive = 1000 * min(t_naive) / data.n_times
    ms_block = 1000 * min(t_block) / data.n_times

    diffs = {}
    for k, name in enumerate(["F", "df1", "df2", "p"]):
        ours = getattr(fit, name)
        diffs[name] = float(np.nanmax(np.abs(ours - ref[:, k, :]) / np.abs(ref[:, k, :])))
    print(f"(a) naive lmerTest::lmer + anova per timepoint from Python: {ms_naive:7.2f} ms per fit")
    print(f"(b) clusterlmer.fit_timeseries (one R call per block):     {ms_block:7.2f} ms per fit")
    print(f"speed-up (a)/(b): {ms_naive / ms_block:.2f}x")
    print("largest relative difference (b) vs (a): " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    print(f"paper estimate, 139 timepoints x 1001 fits: (a) {ms_naive * 139 * 1001 / 3.6e6:.2f} h, "
          f"(b) {ms_block * 139 * 1001 / 3.6e6:.2f} h on one core")
    if args.profile:
        profile_block(data)


if __name__ == "__main__":
    main()
