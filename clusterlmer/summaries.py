"""The text summaries of result objects: ``TimeseriesFit.summary()`` and ``PermutationClusterResult.summary()``.

Each part of a summary (fit health, the hypothesis each row tests, the engine and its
cross-check, the cluster thresholds) is one helper here; the result classes
(:mod:`clusterlmer.results`) only hold the numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .cluster import smallest_cluster_p
from .coding import coding_text
from .engines import engine_properties, get_engine
from .families import describe_family

__all__ = ["fit_summary", "result_summary", "fit_health", "fit_health_counts", "ONSET_CAVEAT"]

#: What a cluster (or TFCE) p does not say; printed under the clusters of such a result.
ONSET_CAVEAT = ("a cluster test shows that an effect exists somewhere in a significant cluster, but does not "
                "statistically certify the cluster's onset or extent (Sassenhagen & Draschkow 2019): report "
                "them as descriptive, or use the max-statistic correction, which tests every sample.")

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


def _missing_lines(options, label) -> list:
    """The rows left out for missing design values (:mod:`clusterlmer.missing`), when there were some."""
    if not options.get("rows_omitted"):
        return []
    per = ", ".join(f"{k!r} {v}" for k, v in options.get("rows_omitted_by_variable", {}).items())
    return [f"{label}{options['rows_omitted']} row(s) with missing values in model variables left out ({per}; "
            "na_action='omit', as lme4's na.omit)"]


def fit_summary(fit) -> str:
    """The text of :meth:`clusterlmer.TimeseriesFit.summary`: model, methods, coding, fit health and peak effects."""
    o, d = fit.options, fit.diagnostics
    # Fits saved before per-factor codings existed record one coding for every factor.
    codings = o.get("codings") or {k: o["coding"] for k in fit.levels}
    coding = coding_text(codings, fit.levels, o["coding"].split(";")[0])
    times = np.asarray(fit.times)
    lines = [
        f"Mixed-model fits per sample (clusterlmer, engine: {o['engine']})",
        f"Formula:     {fit.formula}",
        f"Fit method:  {describe_family(o) or ('REML' if o['reml'] else 'ML')}; "
        + get_engine(o["engine"]).fit_method(o),
        f"Test:        {_TEST_NAMES[o['test']]}; DF2: {_DDF_NAMES[o['ddf']]}",
        f"Coding:      {coding}",
        f"Samples:     {' x '.join(f'{n} {a}s' for n, a in zip(fit.sample_shape, fit.sample_axes))} "
        f"(times {times[0]:g} .. {times[-1]:g}); "
        f"observations: {int(d['n_obs'].max()) if len(d) else 0}",
        f"Fits:        {fit_health(d)}",
    ]
    lines += _missing_lines(o, "Missing:     ")
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


def _correction_lines(result) -> list:
    """The statistic, the correction across samples and its thresholds (if any)."""
    tail = f"{result.statistic} ({_TAIL_NAMES[result.tail]})"
    significant = f"significant at p < {result.alpha:g}"
    if result.correction == "max":
        largest = "|statistic|" if result.tail == 0 else "statistic" if result.tail == 1 else "-statistic"
        return [f"Statistic:     {tail}, max-statistic correction: each sample against the largest {largest} "
                f"of each permutation over all samples",
                f"Thresholds:    none; samples {significant} (family-wise, at every sample)"]
    if result.correction == "tfce":
        return [f"Statistic:     {tail}, threshold-free cluster enhancement (TFCE) against the largest score of "
                "each permutation", f"Thresholds:    none (TFCE integrates over heights); samples {significant}"]
    return [f"Statistic:     {tail}, cluster statistic '{result.cluster_stat}'",
            f"Thresholds:    per-sample {_quantiles(result.tail, result.cluster_alpha)} of the permutation "
            f"distribution (quantile method '{result.quantile_method}'); clusters {significant}"]


def _sweep_lines(result) -> list:
    """Per cluster-forming alpha of the sweep and term: clusters, significant ones, their span, smallest p."""
    table = result.threshold_sweep
    rows = []
    for threshold in result.thresholds:
        for term in result.terms:
            found = table[(table["threshold"] == threshold) & (table["term"] == term)] if table is not None else []
            sig = found[found["p"] < result.alpha] if len(found) else found
            rows.append({"cluster_alpha": threshold, "term": term, "clusters": len(found), "significant": len(sig),
                         "first t_start": sig["t_start"].min() if len(sig) else np.nan,
                         "last t_stop": sig["t_stop"].max() if len(sig) else np.nan,
                         "smallest p": found["p"].min() if len(found) else np.nan})
    return ["Threshold sweep (same permutations; every cluster: result.threshold_sweep):",
            pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-")]


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
        *_correction_lines(result),
        f"Permutations:  {result.n_permutations} (seed {result.seed}); "
        + ("\n               ".join(result.run["permutations"]) if result.run.get("permutations") else schemes),
        "Refit failures: " + (", ".join(f"{t}: {n} of {n_fits}" for t, n in fails.items())),
        f"Observed fits: {fit_health(fit.diagnostics)}",
        f"Engine:        {_engine_text(fit.options)}",
    ]
    lines += _missing_lines(fit.options, "Missing:       ")
    smallest = smallest_cluster_p(result.n_permutations, 1 if result.correction == "max" else result.tail)
    if smallest >= result.alpha:
        lines.append(f"Note:          with {result.n_permutations} permutations the smallest possible cluster p is "
                     f"{smallest:.3g}, not below alpha = {result.alpha:g}: no cluster can be significant.")
    if result.run.get("worker_restarts"):
        lines.append(f"Workers:       {result.run['worker_restarts']} worker process(es) died; their permutations "
                     "were refitted in fresh workers (the result is unaffected).")
    lines += _hypotheses_lines(fit.options, fit.levels, result.terms, "Note:          ")
    table = result.clusters
    significant = table[table["p"] < result.alpha] if len(table) else table
    lines.append(f"Significant clusters (p < {result.alpha:g}):" if result.correction == "cluster" else
                 f"Significant regions (connected samples with p < {result.alpha:g}; stat: their peak):")
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
        lines.append("  (no sample crossed its threshold in a cluster)" if result.correction == "cluster"
                     else "  (no significant sample)")
    if result.thresholds:
        lines += _sweep_lines(result)
    if result.correction != "max":
        lines.append(f"Note:          {ONSET_CAVEAT}")
    return "\n".join(lines)
