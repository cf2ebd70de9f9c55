"""The text summaries of result objects: ``TimeseriesFit.summary()`` and ``PermutationClusterResult.summary()``.

Each part of a summary (fit health, the hypothesis each row tests, the engine and its
cross-check, the cluster thresholds) is one helper here; the result classes
(:mod:`clusterlmer.results`) only hold the numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .cluster import smallest_cluster_p
from .engines import engine_properties, get_engine

__all__ = ["fit_summary", "result_summary", "fit_health", "fit_health_counts"]

_DDF_NAMES = {
    "satterthwaite": "Satterthwaite",
    "residual": "residual (n - rank X)",
    "kenward-roger": "Kenward-Roger",
    "none": "none (DF2 = Inf)",
}
_TEST_NAMES = {
    "marginal": "marginal F-test of each term's coefficients (MATLAB anova)",
    "type3": "lmerTest type III F-test",
    "type2": "lmerTest type II F-test",
    "type1": "lmerTest type I (sequential) F-test",
}


def fit_health_counts(d: pd.DataFrame) -> dict:
    """Disjoint fit categories of a fit's ``diagnostics``, which sum to the number of samples.

    A sample counts once, in the first of: ``failed`` (an error, or nothing to
    fit: no statistics), ``not_converged`` (the optimizer or lme4's/lmerTest's
    checks reported non-convergence, singular or not), ``singular`` (converged
    on the boundary: a variance component estimated as zero) and ``regular``
    (converged inside the parameter space). ``rows_excluded`` counts, apart
    from these, the samples fitted (or attempted) without some observations
    (non-finite responses); ``not_converged_singular`` is the part of
    ``not_converged`` that is also singular.
    """
    failed = d["failed"].to_numpy(dtype=bool)
    converged = d["converged"].to_numpy(dtype=bool) & ~failed
    singular = d["singular"].to_numpy(dtype=float) == 1
    not_converged = ~failed & ~converged
    return {
        "n_fits": len(d),
        "regular": int((converged & ~singular).sum()),
        "singular": int((converged & singular).sum()),
        "not_converged": int(not_converged.sum()),
        "failed": int(failed.sum()),
        "not_converged_singular": int((not_converged & singular).sum()),
        "rows_excluded": int((d["n_excluded"].to_numpy() > 0).sum()),
    }


def fit_health(d: pd.DataFrame) -> str:
    """One line: :func:`fit_health_counts` in words."""
    c = fit_health_counts(d)
    also = f" ({c['not_converged_singular']} of them also singular)" if c["not_converged_singular"] else ""
    return (f"{c['n_fits']} fits = {c['regular']} converged and regular + {c['singular']} singular (converged at a "
            f"boundary) + {c['not_converged']} not converged{also} + {c['failed']} failed (no statistics); "
            f"separately, {c['rows_excluded']} sample(s) had rows excluded (non-finite responses)")


def _hypotheses_lines(options, levels, terms, note) -> list:
    """The hypothesis each row tests, the sign convention, and numeric columns read as factors."""
    hypotheses = options.get("hypotheses")
    if hypotheses is None:  # a result file written before the fits recorded them
        if options["coding"] == "reference" and any(":" in term for term in terms):
            return [f"{note}reference coding: a main effect next to an interaction is the simple effect at "
                    "the other factors' reference levels (coding='effects' averages)."]
        return []
    width = max((len(t) for t in terms), default=0)
    lines = ["Each row tests (H0):"]
    lines += [f"  {t:<{width}}  {hypotheses[t]}" for t in terms if t in hypotheses]
    if options.get("sign"):
        lines.append(f"{note}{options['sign']}.")
    for name in options.get("numeric_as_factor", []):
        lines.append(f"{note}{name!r} is numeric with two values and interacts with another variable, so it "
                     f"is coded as a factor with levels {', '.join(levels.get(name, []))} (sorted).")
    return lines


def fit_summary(fit) -> str:
    """The text of :meth:`clusterlmer.TimeseriesFit.summary`: model, methods, coding, fit health and peak effects."""
    o, d = fit.options, fit.diagnostics
    if o["coding"] == "reference":
        coding = "reference (treatment); reference levels: " + (
            ", ".join(f"{k} = {v!r}" for k, v in fit.reference_levels.items()) or "no factors"
        )
    else:
        coding = "effects (sum to zero, last level -1); levels: " + (
            ", ".join(f"{k} = {v}" for k, v in fit.levels.items()) or "no factors"
        )
    times = np.asarray(fit.times)
    lines = [
        f"Mixed-model fits per sample (clusterlmer, engine: {o['engine']})",
        f"Formula:     {fit.formula}",
        f"Fit method:  {'REML' if o['reml'] else 'ML'}; "
        + get_engine(o["engine"]).fit_method(o),
        f"Test:        {_TEST_NAMES[o['test']]}; DF2: {_DDF_NAMES[o['ddf']]}",
        f"Coding:      {coding}",
        f"Samples:     {' x '.join(f'{n} {a}s' for n, a in zip(fit.sample_shape, fit.sample_axes))} "
        f"(times {times[0]:g} .. {times[-1]:g}); "
        f"observations: {int(d['n_obs'].max()) if len(d) else 0}",
        f"Fits:        {fit_health(d)}",
    ]
    check = o.get("cross_check")
    if check is not None:
        lines.append("Cross-check: " + (f"R engine refit at samples {check['samples']}: largest relative "
                                        f"difference in F/DF2 {check['max_rel_diff']:.2g}"
                                        if check["max_rel_diff"] is not None else check["note"] or "not run"))
    lines += _hypotheses_lines(o, fit.levels, fit.terms, "Note:        ")
    lines.append("Peak F per term:")
    rows = []
    for i, term in enumerate(fit.terms):
        f = fit.F[i].ravel()
        if np.all(np.isnan(f)):
            rows.append((term, np.nan, np.nan) + ((None,) if fit.channels is not None else ()) + (np.nan,))
            continue
        j = int(np.nanargmax(f))
        where = fit.sample_coordinates(j)
        rows.append((term, f[j], where["time"]) + ((where["channel"],) if fit.channels is not None else ())
                    + (fit.p[i].ravel()[j],))
    table = pd.DataFrame(rows, columns=["Term", "max FStat", "at time"]
                         + (["at channel"] if fit.channels is not None else []) + ["pValue"])
    lines.append(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    return "\n".join(lines)


_TAIL_NAMES = {1: "upper-tailed", 0: "two-tailed", -1: "lower-tailed"}


def _engine_text(options) -> str:
    if engine_properties(options["engine"]).reference:
        return f"{options['engine']} (lme4 + lmerTest at every fit)"
    check = options.get("cross_check") or {}
    if check.get("max_rel_diff") is None:
        return f"native (no R cross-check: {check.get('note') or 'not run'})"
    return (f"native; cross-checked with lme4/lmerTest at samples {check['samples']}: largest relative "
            f"difference in F/DF2 {check['max_rel_diff']:.2g}")


def _quantiles(tail, cluster_alpha):
    if tail == 1:
        return f"{1 - cluster_alpha:g} quantile"
    if tail == -1:
        return f"{cluster_alpha:g} quantile"
    return f"{cluster_alpha / 2:g} and {1 - cluster_alpha / 2:g} quantiles"


def result_summary(result) -> str:
    """The text of :meth:`clusterlmer.PermutationClusterResult.summary`: the method, its settings,
    the cluster table and fit health."""
    fit = result.fit
    schemes = ", ".join(f"{v}: {s}" for v, s in result.schemes.items())
    fails = {t: int(f.sum()) for t, f in result.refit_failures.items()}
    n_fits = result.n_permutations * int(np.prod(fit.sample_shape))
    lines = [
        "Cluster-based permutation test of per-sample mixed models (clusterlmer)",
        f"Formula:       {fit.formula}",
        f"Statistic:     {result.statistic} ({_TAIL_NAMES[result.tail]}), cluster statistic '{result.cluster_stat}'",
        f"Thresholds:    per-sample {_quantiles(result.tail, result.cluster_alpha)} of the permutation "
        f"distribution (quantile method '{result.quantile_method}'); clusters significant at p < {result.alpha:g}",
        f"Permutations:  {result.n_permutations} (seed {result.seed}); "
        + ("\n               ".join(result.run["permutations"]) if result.run.get("permutations") else schemes),
        "Refit failures: " + (", ".join(f"{t}: {n} of {n_fits}" for t, n in fails.items())),
        f"Observed fits: {fit_health(fit.diagnostics)}",
        f"Engine:        {_engine_text(fit.options)}",
    ]
    smallest = smallest_cluster_p(result.n_permutations, result.tail)
    if smallest >= result.alpha:
        lines.append(f"Note:          with {result.n_permutations} permutations the smallest possible cluster p is "
                     f"{smallest:.3g}, not below alpha = {result.alpha:g}: no cluster can be significant.")
    if result.run.get("worker_restarts"):
        lines.append(f"Workers:       {result.run['worker_restarts']} worker process(es) died; their permutations "
                     "were refitted in fresh workers (the result is unaffected).")
    lines += _hypotheses_lines(fit.options, fit.levels, result.terms, "Note:          ")
    table = result.clusters
    significant = table[table["p"] < result.alpha] if len(table) else table
    lines.append(f"Significant clusters (p < {result.alpha:g}):")
    if len(significant):
        lines.append(significant.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    else:
        lines.append("  none")
    rest = len(table) - len(significant)
    if rest:
        best = table.loc[table["p"] >= result.alpha, "p"].min()
        lines.append(f"  ... and {rest} cluster(s) with p >= {result.alpha:g} (smallest p = {best:.3g}); "
                     "the full table is result.clusters.")
    elif not len(table):
        lines.append("  (no sample crossed its threshold in a cluster)")
    return "\n".join(lines)
