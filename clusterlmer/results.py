"""Result objects: plain NumPy arrays in small frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._checks import check_option
from .cluster import smallest_cluster_p

__all__ = ["TimeseriesFit", "FitSource", "PermutationClusterResult", "cluster_table"]

_DDF_NAMES = {
    "satterthwaite": "Satterthwaite",
    "residual": "residual (n - rank X)",
    "kenward-roger": "Kenward-Roger",
    "none": "none (DF2 = Inf)",
}
_TEST_NAMES = {
    "marginal": "marginal F-test of each term's coefficients (MATLAB anova)",
    "type3": "lmerTest type III F-test",
}


def _fit_health_counts(d: pd.DataFrame) -> dict:
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


def _fit_health(d: pd.DataFrame) -> str:
    c = _fit_health_counts(d)
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


@dataclass(frozen=True, eq=False)
class FitSource:
    """What a :class:`TimeseriesFit` was computed from, kept in memory for
    :meth:`TimeseriesFit.model_at` (never saved to a result file).

    Attributes
    ----------
    design : clusterlmer.design.ModelDesign
        The design as the engine received it (columns, level order, coding, formula).
    values : numpy.ndarray
        The responses, shape ``(n_obs, n_samples)`` (samples flattened in C order).
    """

    design: object
    values: np.ndarray

    def __repr__(self) -> str:
        return f"<FitSource | {self.values.shape[0]} observations x {self.values.shape[1]} samples>"


@dataclass(frozen=True, eq=False)
class TimeseriesFit:
    """Per-sample mixed-model fits and their F/t tests.

    Term arrays (``F``, ``df1``, ``df2``, ``p``, ``t``) have shape
    ``(n_terms, *sample_shape)``; coefficient arrays (``estimates``, ``se``)
    ``(n_coef, *sample_shape)``. A sample whose fit failed holds NaN, and
    ``diagnostics`` says why.

    Attributes
    ----------
    formula : str
    terms : tuple of str
        Tested terms, ``"(Intercept)"`` first when present.
    F, df1, df2, p : ndarray
        F statistic, numerator and denominator degrees of freedom, p-value.
    t : ndarray
        Signed t for one-coefficient terms (``sign * sqrt(F)``); NaN otherwise.
    coef_names : tuple of str
    estimates, se : ndarray
        Fixed-effect estimates and standard errors.
    times : ndarray
    freqs : ndarray or None
    diagnostics : pandas.DataFrame
        One row per sample: observations used and excluded, convergence,
        singular fit, R's warnings and messages, error.
    options : dict
        Fit method, ddf method, test, coding, optimizer and its controls.
    levels : dict
        Level order per factor (reference level first).
    source : FitSource or None
        The design and responses, for :meth:`model_at`; ``None`` in a fit
        loaded from a file (result files do not hold the data).
    """

    formula: str
    terms: tuple
    F: np.ndarray
    df1: np.ndarray
    df2: np.ndarray
    p: np.ndarray
    t: np.ndarray
    coef_names: tuple
    estimates: np.ndarray
    se: np.ndarray
    times: np.ndarray
    freqs: np.ndarray | None
    diagnostics: pd.DataFrame
    options: dict
    levels: dict
    # Not part of the result: left out of comparisons, repr and result files.
    source: FitSource | None = field(default=None, repr=False, compare=False)

    @property
    def sample_shape(self) -> tuple:
        """``(n_times,)`` or ``(n_times, n_freqs)``."""
        return self.F.shape[1:]

    @property
    def reference_levels(self) -> dict:
        """Reference level of each factor (meaningful for reference coding)."""
        return {k: v[0] for k, v in self.levels.items()}

    def _sample_index(self, t, time):
        if (t is None) == (time is None):
            raise ValueError("give exactly one of t (sample index) or time (in the data's time unit).")
        if time is not None:
            if len(self.sample_shape) != 1:
                raise ValueError("time= selects a sample of 1-D data; for time x frequency data pass t=(i, j).")
            return (int(np.argmin(np.abs(np.asarray(self.times, dtype=float) - float(time)))),)
        idx = (t,) if np.isscalar(t) else tuple(t)
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in idx):
            raise TypeError(f"t must be an integer sample index (or a tuple of them), got {t!r}; use time= for times.")
        if len(idx) != len(self.sample_shape):
            raise ValueError(f"t must have {len(self.sample_shape)} index(es) for samples of shape {self.sample_shape}.")
        for i, n in zip(idx, self.sample_shape):
            if not -n <= int(i) < n:
                raise IndexError(f"sample index {i} is out of range for {n} samples.")
        return tuple(int(i) for i in idx)

    def anova(self, t=None, *, time=None) -> pd.DataFrame:
        """MATLAB-layout ANOVA table at one sample.

        Parameters
        ----------
        t : int or tuple of int
            Sample index (``(time, freq)`` for 2-D samples).
        time : float
            Alternatively, the time in the data's unit (nearest sample).

        Returns
        -------
        pandas.DataFrame
            Columns ``Term, FStat, DF1, DF2, pValue``, one row per term.
        """
        idx = self._sample_index(t, time)
        sel = (slice(None),) + idx
        return pd.DataFrame(
            {
                "Term": list(self.terms),
                "FStat": self.F[sel],
                "DF1": self.df1[sel],
                "DF2": self.df2[sel],
                "pValue": self.p[sel],
            }
        )

    def model_at(self, t=None, *, time=None):
        """Open one sample's model as a fitted pymer4 ``Lmer`` for post-hoc work.

        The model is refitted by lme4/lmerTest through pymer4 with this fit's
        formula, rows (observations whose response is NaN/Inf at the sample
        left out), factor level order, coding (reference: treatment contrasts
        against the first level; effects: sum-to-zero, last level -1), REML/ML
        and optimizer, so its coefficients, named as in ``coef_names``, equal
        ``estimates`` at that sample (a warning says otherwise).

        Parameters
        ----------
        t : int or tuple of int
            Sample index (``(time, freq)`` for 2-D samples).
        time : float
            Alternatively, the time in the data's unit (nearest sample).

        Returns
        -------
        pymer4.models.Lmer
            E.g. ``model.coefs``, ``model.anova()`` (lmerTest's type III
            table), ``model.post_hoc(marginal_vars=..., grouping_vars=...)``
            (emmeans), ``model.summary()``.

        Raises
        ------
        ValueError
            When the fit holds no data (loaded from a file).
        ImportError
            When pymer4 0.8 is not installed: ``pip install
            'clusterlmer[pymer4]'`` in its own environment (pymer4 0.8 needs
            pandas < 3).
        """
        sample = self._sample_index(t, time)
        if self.source is None:
            raise ValueError("this fit holds no data (result files do not store it, so a loaded result's fit has "
                             "none): refit with cl.fit_timeseries(data, formula, ...) and call model_at on that fit.")
        from .pymer4_bridge import lmer_at

        return lmer_at(self, sample)

    def to_frame(self) -> pd.DataFrame:
        """Tidy long table: one row per term and sample."""
        n_samples = int(np.prod(self.sample_shape))
        grid = {"sample": np.tile(np.arange(n_samples), len(self.terms))}
        time_idx = np.unravel_index(np.arange(n_samples), self.sample_shape)
        grid["time"] = np.tile(np.asarray(self.times)[time_idx[0]], len(self.terms))
        if self.freqs is not None:
            grid["freq"] = np.tile(np.asarray(self.freqs)[time_idx[1]], len(self.terms))
        grid["Term"] = np.repeat(list(self.terms), n_samples)
        for col, arr in (("FStat", self.F), ("DF1", self.df1), ("DF2", self.df2), ("pValue", self.p), ("t", self.t)):
            grid[col] = arr.reshape(len(self.terms), n_samples).ravel()
        return pd.DataFrame(grid)

    def summary(self) -> str:
        """A text summary: model, methods, coding, fit health and peak effects."""
        o, d = self.options, self.diagnostics
        opt_ctrl = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in o["optimizer_options"].items())
        if o["coding"] == "reference":
            coding = "reference (treatment); reference levels: " + (
                ", ".join(f"{k} = {v!r}" for k, v in self.reference_levels.items()) or "no factors"
            )
        else:
            coding = "effects (sum to zero, last level -1); levels: " + (
                ", ".join(f"{k} = {v}" for k, v in self.levels.items()) or "no factors"
            )
        times = np.asarray(self.times)
        lines = [
            f"Mixed-model fits per sample (clusterlmer, engine: {o['engine']})",
            f"Formula:     {self.formula}",
            f"Fit method:  {'REML' if o['reml'] else 'ML'}; "
            + (f"optimizer {o['optimizer']} ({opt_ctrl})" if o["engine"] == "r"
               else "native engine (profiled criterion optimised by batched Newton to ~1e-12 in theta)"),
            f"Test:        {_TEST_NAMES[o['test']]}; DF2: {_DDF_NAMES[o['ddf']]}",
            f"Coding:      {coding}",
            f"Samples:     {'x'.join(map(str, self.sample_shape))} (times {times[0]:g} .. {times[-1]:g}); "
            f"observations: {int(d['n_obs'].max()) if len(d) else 0}",
            f"Fits:        {_fit_health(d)}",
        ]
        check = o.get("cross_check")
        if check is not None:
            lines.append("Cross-check: " + (f"R engine refit at samples {check['samples']}: largest relative "
                                            f"difference in F/DF2 {check['max_rel_diff']:.2g}"
                                            if check["max_rel_diff"] is not None else check["note"] or "not run"))
        lines += _hypotheses_lines(o, self.levels, self.terms, "Note:        ")
        lines.append("Peak F per term:")
        rows = []
        for i, term in enumerate(self.terms):
            f = self.F[i].ravel()
            if np.all(np.isnan(f)):
                rows.append((term, np.nan, np.nan, np.nan))
                continue
            j = int(np.nanargmax(f))
            at = times[np.unravel_index(j, self.sample_shape)[0]]
            rows.append((term, f[j], at, self.p[i].ravel()[j]))
        table = pd.DataFrame(rows, columns=["Term", "max FStat", "at time", "pValue"])
        lines.append(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"<TimeseriesFit | {self.formula} | {len(self.terms)} terms x "
            f"{'x'.join(map(str, self.sample_shape))} samples>"
        )


def cluster_table(cluster_info: dict, times, freqs=None, *, statistic) -> pd.DataFrame:
    """One row per cluster of every term, with its extent in samples and in the data's units.

    Parameters
    ----------
    cluster_info : dict of str to ClusterTestInfo
        Per term, the ``info`` returned by :func:`clusterlmer.cluster_test`.
    times : array-like
        Sample times (first axis of the statistic).
    freqs : array-like, optional
        Frequencies (second axis) for time x frequency statistics.
    statistic : {"F", "t"}
        The statistic the clusters were formed on: ``sign`` is ``"+"``/``"-"``
        for signed t, and empty for F, which has no sign (an F cluster is
        where a term's effect is large, whatever its direction).

    Returns
    -------
    pandas.DataFrame
        Columns ``term, sign, start, stop, t_start, t_stop`` (first and last
        sample, inclusive, and their times), ``f_start, f_stop`` for 2-D
        data, then ``size, stat, p``; sorted by term and start.
    """
    check_option("statistic", statistic, ("F", "t"))
    times = np.asarray(times)
    rows = []
    for term, info in cluster_info.items():
        for c in info.clusters:
            idx = [np.asarray(i) for i in c.indices]
            row = {"term": term, "sign": "" if statistic == "F" else "+" if c.sign > 0 else "-",
                   "start": int(idx[0].min()), "stop": int(idx[0].max())}
            row.update(t_start=times[row["start"]], t_stop=times[row["stop"]])
            if freqs is not None and len(idx) > 1:
                row.update(f_start=np.asarray(freqs)[idx[1].min()], f_stop=np.asarray(freqs)[idx[1].max()])
            row.update(size=int(idx[0].size), stat=float(c.stat), p=float(c.p))
            rows.append(row)
    columns = ["term", "sign", "start", "stop", "t_start", "t_stop"]
    columns += ["f_start", "f_stop"] if freqs is not None else []
    columns += ["size", "stat", "p"]
    table = pd.DataFrame(rows, columns=columns)
    if len(table):
        order = {t: i for i, t in enumerate(cluster_info)}
        table = table.sort_values(["term", "start"], key=lambda s: s.map(order) if s.name == "term" else s)
    return table.reset_index(drop=True)


_TAIL_NAMES = {1: "upper-tailed", 0: "two-tailed", -1: "lower-tailed"}


def _engine_text(options) -> str:
    if options["engine"] == "r":
        return "r (lme4 + lmerTest at every fit)"
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


@dataclass(frozen=True, eq=False)
class PermutationClusterResult:
    """Result of :func:`clusterlmer.permutation_cluster_lmer`.

    Per-term arrays are keyed by term name and shaped like the samples
    (``(n_times,)`` or ``(n_times, n_freqs)``); nulls carry the permutation
    axis last.

    Attributes
    ----------
    fit : TimeseriesFit
        The observed fits (all terms, DF1/DF2, parametric p).
    statistic : {"F", "t"}
    terms : tuple of str
        Tested terms.
    stat : dict
        Observed statistic per tested term.
    null : dict
        Statistic under each permutation, shape ``sample_shape + (n_permutations,)``.
    p_clust : dict
        Cluster-corrected p per sample (1 outside clusters).
    cluster_info : dict
        The :class:`~clusterlmer.cluster.ClusterTestInfo` of each term
        (thresholds, clusters, null distributions of the cluster statistic).
    clusters : pandas.DataFrame
        Every cluster of every term: extent in samples and time, statistic, p.
    refit_failures : dict
        Per term, the number of permutations whose refit failed at each sample.
    n_permutations, seed : int
    schemes : dict
        How each fixed-effect variable was permuted.
    tail : int
    alpha, cluster_alpha : float
    cluster_stat, quantile_method : str
    run : dict
        Worker count, wall time, permutations resumed from a checkpoint.
    """

    fit: TimeseriesFit
    statistic: str
    terms: tuple
    stat: dict
    null: dict
    p_clust: dict
    cluster_info: dict
    clusters: pd.DataFrame
    refit_failures: dict
    n_permutations: int
    seed: int
    schemes: dict
    tail: int
    alpha: float
    cluster_alpha: float
    cluster_stat: str
    quantile_method: str
    run: dict

    @property
    def h(self) -> dict:
        """Per term, where the cluster-corrected p is below ``alpha``."""
        return {term: p < self.alpha for term, p in self.p_clust.items()}

    @property
    def times(self) -> np.ndarray:
        return self.fit.times

    def to_frame(self) -> pd.DataFrame:
        """Tidy table, one row per tested term and sample: the fit's columns plus ``stat`` and ``p_clust``."""
        table = self.fit.to_frame()
        table = table[table["Term"].isin(self.terms)].reset_index(drop=True)
        n = int(np.prod(self.fit.sample_shape))
        table["stat"] = np.concatenate([self.stat[t].ravel() for t in self.terms])
        table["p_clust"] = np.concatenate([self.p_clust[t].ravel() for t in self.terms])
        table["refit_failures"] = np.concatenate([self.refit_failures[t].ravel() for t in self.terms])
        assert len(table) == n * len(self.terms)
        return table

    def summary(self) -> str:
        """Text summary: the method, its settings, the cluster table and fit health."""
        schemes = ", ".join(f"{v}: {s}" for v, s in self.schemes.items())
        fails = {t: int(f.sum()) for t, f in self.refit_failures.items()}
        n_fits = self.n_permutations * int(np.prod(self.fit.sample_shape))
        lines = [
            "Cluster-based permutation test of per-sample mixed models (clusterlmer)",
            f"Formula:       {self.fit.formula}",
            f"Statistic:     {self.statistic} ({_TAIL_NAMES[self.tail]}), cluster statistic '{self.cluster_stat}'",
            f"Thresholds:    per-sample {_quantiles(self.tail, self.cluster_alpha)} of the permutation "
            f"distribution (quantile method '{self.quantile_method}'); clusters significant at p < {self.alpha:g}",
            f"Permutations:  {self.n_permutations} (seed {self.seed}); "
            + ("\n               ".join(self.run["permutations"]) if self.run.get("permutations") else schemes),
            f"Refit failures: " + (", ".join(f"{t}: {n} of {n_fits}" for t, n in fails.items())),
            f"Observed fits: {_fit_health(self.fit.diagnostics)}",
            f"Engine:        {_engine_text(self.fit.options)}",
        ]
        smallest = smallest_cluster_p(self.n_permutations, self.tail)
        if smallest >= self.alpha:
            lines.append(f"Note:          with {self.n_permutations} permutations the smallest possible cluster p is "
                         f"{smallest:.3g}, not below alpha = {self.alpha:g}: no cluster can be significant.")
        if self.run.get("worker_restarts"):
            lines.append(f"Workers:       {self.run['worker_restarts']} worker process(es) died; their permutations "
                         "were refitted in fresh workers (the result is unaffected).")
        lines += _hypotheses_lines(self.fit.options, self.fit.levels, self.terms, "Note:          ")
        table = self.clusters
        significant = table[table["p"] < self.alpha] if len(table) else table
        lines.append(f"Significant clusters (p < {self.alpha:g}):")
        if len(significant):
            lines.append(significant.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        else:
            lines.append("  none")
        rest = len(table) - len(significant)
        if rest:
            best = table.loc[table["p"] >= self.alpha, "p"].min()
            lines.append(f"  ... and {rest} cluster(s) with p >= {self.alpha:g} (smallest p = {best:.3g}); "
                         "the full table is result.clusters.")
        elif not len(table):
            lines.append("  (no sample crossed its threshold in a cluster)")
        return "\n".join(lines)

    def save(self, path):
        """Write the result: ``.mat`` (MATLAB struct ``lme``), ``.h5`` (everything) or ``.csv`` (tidy table)."""
        from .saving import save_result

        return save_result(self, path)

    def plot(self, path=None, *, terms=None, show=False):
        """Plot each tested term's statistic with thresholds and clusters; see :func:`clusterlmer.plotting.plot_result`."""
        from .plotting import plot_result

        return plot_result(self, path, terms=terms, show=show)

    def __repr__(self) -> str:
        n_sig = int((self.clusters["p"] < self.alpha).sum()) if len(self.clusters) else 0
        return (f"<PermutationClusterResult | {self.fit.formula} | {self.statistic}, "
                f"{self.n_permutations} permutations | {n_sig} significant cluster(s)>")
