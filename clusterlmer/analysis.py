"""The whole method: observed fits, structure-preserving permutations, cluster test.

``permutation_cluster_lmer`` fits the model at every sample, refits it for
every permutation of the condition labels (drawn up front by
:func:`clusterlmer.make_permutations`), and corrects across samples with
:func:`clusterlmer.cluster_test` per tested term.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ._checks import check_option, option_hint
from ._memory import check_run_memory
from ._null_blocks import nan_counts
from ._analysis_checks import check_argument_types, check_term_names, warn_if_alpha_unreachable
from .adjacency import data_adjacency
from .checkpoint import Checkpoint, check_checkpoint_path, fingerprint
from .contrasts import check_tested_contrasts, require_zero_rhs
from .cluster import QUANTILE_METHODS, TAILS
from .corrections import check_correction_options, correct, resolve_correction, threshold_sweep
from .crosscheck import ReferenceProcess
from .data import TimeseriesData, _preview
from .engines import ENGINE_CHOICES, engine_properties
from .fit import FitPlan, check_fit_arguments, fit_plan
from .formula import parse_formula
from .permute import Permutations, make_permutations
from .results import STATISTICS, PermutationClusterResult, cluster_table, sweep_table
from .run import check_client, resolve_n_jobs, run_permutations
from .samples import fit_sample_sets, response_exponents, sample_responses
from .spec import ModelSpec

__all__ = ["permutation_cluster_lmer"]

# Most permutations fitted together: with few samples, batches stay small enough to share the
# permutations among workers (blocks of work are whole batches).
MAX_BATCH = 16


@dataclass(frozen=True)
class PermutationTask:
    """Everything a (worker) process needs to compute permutations' statistics.

    Permutations are fitted in batches of ``batch_size`` consecutive indices
    (``k // batch_size`` names the batch), all of a batch together: the
    engine's per-call costs are paid once per batch, and each fit starts at
    the observed design's optimum for its sample (the same optimum is
    reached in fewer steps). A permutation's statistics are always computed
    within its whole batch, so they do not depend on which permutations a
    worker was given.
    """

    spec: ModelSpec
    Y: np.ndarray
    options: object
    engine: str
    permutations: object
    terms: tuple
    statistic: str
    sample_shape: tuple

    @cached_property
    def responses(self):
        """What the fits take from ``Y`` alone (rescaling, rows per column), prepared once per process."""
        return sample_responses(self.Y)

    @property
    def batch_size(self) -> int:
        """Permutations per batch: as many as the engine fits together for the samples, 1 to ``MAX_BATCH``.

        It depends on the engine and the number of samples only, never on the
        workers or the number of permutations (a resumed run adds batches).
        """
        per = engine_properties(self.engine).fits_per_batch // max(1, self.Y.shape[1])
        return int(np.clip(per, 1, MAX_BATCH))

    def statistics(self, k) -> np.ndarray:
        """Statistics of the tested terms under permutation ``k``: (n_terms, *sample_shape)."""
        return self.statistics_of([k])[0]

    def statistics_of(self, indices) -> np.ndarray:
        """Statistics of permutations ``indices``: (len(indices), n_terms, *sample_shape).

        A fit that fails at a sample, or a term lme4 drops from a rank-deficient
        permuted design, gives NaN there (counted as a refit failure). Only
        the statistic is computed (no DF or p), which gives the same F.
        """
        indices = [int(k) for k in indices]
        B, n = self.batch_size, len(self.permutations)
        outside = [k for k in indices if not 0 <= k < n]
        if outside:
            raise IndexError(f"permutations {outside[:5]} out of range for {n} permutations.")
        done = {}
        for b in dict.fromkeys(k // B for k in indices):
            batch = range(b * B, min((b + 1) * B, n))
            for k, values in zip(batch, self._fit_batch(batch)):
                done[k] = values
        return np.stack([done[k] for k in indices])

    def _fit_batch(self, batch):
        maps = self.permutations.row_maps
        specs = [self.spec.permuted({v: m[k] for v, m in maps.items()}) for k in batch]
        fits, _ = fit_sample_sets(specs, self.responses, self.options, self.engine, need="statistic",
                                  start_from=self.spec)
        return [self._tested(blk) for blk in fits]

    def _tested(self, blk) -> np.ndarray:
        out = np.full((len(self.terms), self.Y.shape[1]), np.nan)
        for i, term in enumerate(self.terms):
            if term not in blk.terms:
                continue
            j = blk.terms.index(term)
            if self.statistic == "F":
                out[i] = blk.F[j]
            else:
                with np.errstate(invalid="ignore"):
                    out[i] = np.where(blk.df1[j] == 1, np.sign(blk.contrast_estimate[j]) * np.sqrt(blk.F[j]), np.nan)
        return out.reshape((len(self.terms),) + self.sample_shape)


def _observed_statistic(fit, term, statistic):
    i = fit.terms.index(term)
    return fit.F[i] if statistic == "F" else fit.t[i]


def _tested_terms(fit, terms, statistic):
    if terms is None:
        wanted = [t for t in fit.terms if t != "(Intercept)"]
        if not wanted:
            raise ValueError("the model has no term besides the intercept to test; add a fixed effect to the formula.")
    else:
        wanted = [terms] if isinstance(terms, str) else list(terms)
        if not wanted:
            raise ValueError("terms must name at least one term (or be None for every term but the intercept).")
        unknown = [t for t in wanted if t not in fit.terms]
        if unknown:
            raise ValueError(f"terms {_preview(unknown)} are not in the model; its terms are {_preview(fit.terms)}.")
        if "(Intercept)" in wanted:
            raise ValueError("the intercept cannot be tested by permuting condition labels (its null is not "
                             "generated by the permutations); test the condition terms instead.")
    if statistic == "t":
        multi = [t for t in wanted if np.nanmax(fit.df1[fit.terms.index(t)], initial=1) > 1]
        if multi:
            use_f = option_hint("statistic='F'", "--statistic F")
            raise ValueError(f"statistic='t' needs one-coefficient terms, but {_preview(multi)} have DF1 > 1; "
                             f"use {use_f} (or a numeric/two-level predictor).")
    return tuple(wanted)


def _term_variables(term, model):
    """The design columns behind a term (a transformation's sources for ``log(x)``)."""
    return [s for v in term.split(":") for s in model.sources(v) if s in model.fixed_variables]


def permutation_cluster_lmer(data, formula, *, n_permutations=1000, seed=None, statistic="F", terms=None,
                             tail=None, alpha=0.05, cluster_alpha=0.05, cluster_stat=None, correction=None,
                             thresholds=None, quantile_method="hazen", schemes=None, reml=True,
                             ddf="satterthwaite", coding="reference", test="marginal", optimizer="bobyqa",
                             optimizer_options=None, levels=None, engine="auto", cross_check=3, n_jobs=1,
                             checkpoint=None, progress=True, client=None, adjacency=None,
                             min_neighbours=0, family="gaussian", weights=None, glmm_test="wald",
                             level_order="appearance", na_action="omit",
                             contrasts=None) -> PermutationClusterResult:
    """Mixed model per sample with a cluster-based permutation test across samples.

    Parameters
    ----------
    data : TimeseriesData
        From :func:`clusterlmer.load_mat`, :func:`clusterlmer.from_dataframe`
        or :mod:`clusterlmer.datasets`.
    formula : str
        lme4 formula, e.g. ``"data ~ hit_miss * region + (1|sid) + (1|sid:ch)"``.
    n_permutations : int
        Number of permutations (the original uses 1000).
    seed : int or None
        Seed of ``np.random.default_rng`` drawing all permutations up front.
        ``None`` draws a fresh seed, reported as ``result.seed``.
    statistic : {"F", "t"}
        Cluster on F (upper-tailed; the 2-way original) or on the signed t of
        one-coefficient terms (two-tailed; the 1-way original).
    terms : str or list of str, optional
        Terms to test; default every term but the intercept.
    tail : {1, 0, -1}, optional
        Default 1 for F and 0 for t. F allows only 1.
    alpha : float
        Level at which a cluster is called significant (``h``).
    cluster_alpha : float
        Per-sample threshold: the ``1 - cluster_alpha`` quantile of each
        sample's permutation distribution (halved per tail for ``tail=0``).
    cluster_stat : {"sum", "size", "tfce"}, optional
        Cluster statistic (sum of the statistic over the cluster, number of
        samples; default ``"sum"``); ``"tfce"`` means ``correction="tfce"``.
    correction : {"cluster", "max", "tfce"}, optional
        Clusters (default), the max statistic (:func:`clusterlmer.max_statistic_test`)
        or TFCE, on the same null; a contradicting ``cluster_stat`` is refused.
    thresholds : list of float, optional
        Cluster-forming alphas (as ``cluster_alpha``) at which the cluster test
        is rerun on the same null (``result.threshold_sweep``, ``summary()``).
    quantile_method : str
        numpy quantile method for the thresholds: ``"hazen"`` is MATLAB's
        ``quantile`` (default); ``"linear"`` reproduces the Python notebook.
    schemes : dict, optional
        Permutation scheme per fixed-effect variable, overriding the one
        derived from the design; see :func:`clusterlmer.make_permutations`.
    reml, ddf, coding, test, optimizer, optimizer_options, levels, level_order, na_action
        As :func:`clusterlmer.fit_timeseries` (rows it leaves out are not permuted).
    family, weights, glmm_test
        As :func:`clusterlmer.fit_timeseries`: a GLMM, fitted and refitted by
        ``lme4::glmer``; statistic F is its chi-square / DF1, t its Wald z
        (signed root of the likelihood-ratio chi-square with ``"lrt"``).
    engine : {"auto", "r", "native"}
        As :func:`clusterlmer.fit_timeseries`, decided once on the observed
        design and used for every permutation: ``"auto"`` (default) runs
        every model on the native engine (tens to hundreds of times faster)
        unless an option needs R (Kenward-Roger, lme4 optimizer settings),
        which it says once; ``engine="r"`` forces
        lme4/lmerTest everywhere. The engine used is recorded in
        ``result.fit.options["engine"]`` and the summary.
    cross_check : int
        With the native engine, the observed fit also refits this many
        samples with R and reports the largest deviation (see
        :func:`clusterlmer.fit_timeseries`); 0 to skip. Permutations are
        not cross-checked.
    n_jobs : int
        Worker processes for the permutation fits (-1: every core; more
        than the cores are capped at the cores, with a warning). They are
        the package's own processes, so a script needs no
        ``if __name__ == "__main__":`` guard. The result does not depend
        on it.
    checkpoint : str or path-like, optional
        HDF5 file keeping finished permutations; rerunning with the same
        arguments resumes from it and gives the same result as an
        uninterrupted run. A null larger than half the available memory is
        kept in this file, mapped (see the README's memory section). A checkpoint of another analysis is refused,
        including one written with another engine (native and R statistics
        differ by ~1e-6, so one null must come from one engine).
    progress : bool
        Show a progress bar over permutations (only on a terminal).
    client : distributed.Client or str, optional
        Fit the permutations on a Dask cluster: a ``dask.distributed.Client``
        (e.g. of a ``LocalCluster`` or a dask-jobqueue ``SLURMCluster``) or a
        scheduler address such as ``"tcp://host:8786"`` (connected to, and
        disconnected at the end). Blocks of permutations go to the workers,
        each running R in a child process of its own (start workers with one
        thread each, one per core); finished blocks stream into the
        checkpoint, and the blocks of a worker that dies are refitted on the
        others. ``n_jobs`` must stay 1: the cluster's size decides the
        parallelism. The result is identical to ``n_jobs=1``. Needs
        ``pip install 'clusterlmer[dask]'``.
    adjacency : matrix, mne.Info, str or None
        For data with channels (``data.channels``): which channels are
        neighbours. Clusters then join neighbouring channels at the same
        sample and adjacent samples of a channel (MNE's and FieldTrip's
        convention). An ``mne.Info`` or the name of a FieldTrip neighbour
        template MNE ships (e.g. ``"biosemi64"``), ``"shaft"`` (iEEG contacts
        ``LA1, LA2, ...``: consecutive contacts of an electrode), a channel x
        channel 0/1 matrix, or ``"none"`` (clusters along time within each
        channel); None uses ``data.info`` when the data came from MNE and is
        an error otherwise. See :mod:`clusterlmer.adjacency`.
    min_neighbours : int
        FieldTrip's ``minnbchan``: a supra-threshold sample joins a cluster
        only with at least this many supra-threshold neighbouring channels.
    contrasts : dict, optional
        As :func:`clusterlmer.fit_timeseries` (e.g. a simple effect
        ``{"hit in hc": "hit_misshit + hit_misshit:regionhc"}``): tested like
        terms, under their names, with the same permutations.

    Returns
    -------
    PermutationClusterResult
        ``fit`` (observed :class:`TimeseriesFit`), ``stat``, ``null``,
        ``p_clust``, ``clusters`` table, ``refit_failures``; ``summary()``,
        ``save()``, ``plot()``.

    Notes
    -----
    Every permutation refits every sample, so the cost is about
    ``(n_permutations + 1) x n_samples`` model fits. A fit that fails inside
    a permutation gives NaN there: it never crosses a threshold, is counted
    in ``refit_failures`` and reported by ``summary()``.
    """
    plan = check_analysis_arguments(
        data, formula, n_permutations=n_permutations, seed=seed, statistic=statistic, terms=terms, tail=tail,
        alpha=alpha, cluster_alpha=cluster_alpha, cluster_stat=cluster_stat, correction=correction,
        thresholds=thresholds, quantile_method=quantile_method, schemes=schemes, reml=reml, ddf=ddf,
        coding=coding, test=test, optimizer=optimizer, optimizer_options=optimizer_options, levels=levels,
        engine=engine, cross_check=cross_check, n_jobs=n_jobs, checkpoint=checkpoint, progress=progress,
        client=client, adjacency=adjacency, min_neighbours=min_neighbours, family=family, weights=weights,
        glmm_test=glmm_test, level_order=level_order, na_action=na_action, contrasts=contrasts, stacklevel=3)
    start = time.perf_counter()
    # The engine's cross-check (R starting, a few refits) runs in a worker process beside the
    # observed fit and the permutations.
    checked = not engine_properties(plan.fit.engine).reference and plan.cross_check > 0
    reference = ReferenceProcess() if checked else None
    check = None
    try:
        fit, check = fit_plan(plan.fit, data, plan.cross_check, alongside=reference or True)
        result = _permute_and_cluster(plan.fit.missing.restrict(data), plan, fit, start)
        if check is not None:
            fit.options["cross_check"] = check.result(stacklevel=2)
    finally:
        if check is not None:
            check.cancel()
        if reference is not None:
            reference.stop()
    return result


@dataclass(frozen=True)
class AnalysisPlan:
    """A checked :func:`permutation_cluster_lmer` call: what the analysis runs, nothing fitted yet."""

    fit: FitPlan
    permutations: Permutations
    statistic: str
    terms: object
    tail: int
    alpha: float
    cluster_alpha: float
    cluster_stat: str
    quantile_method: str
    cross_check: int
    n_jobs: int
    checkpoint: object
    progress: bool
    client: object
    adjacency: object = None
    min_neighbours: int = 0
    mapped_null: bool = False  # the null kept in the checkpoint file (larger than half the memory)
    correction: str = "cluster"
    thresholds: tuple = ()

    @property
    def unpermuted(self) -> list:
        """Fixed-effect variables the permutations leave in place."""
        return [v for v, s in self.permutations.schemes.items() if s == "none"]


def check_analysis_arguments(data, formula, *, n_permutations=1000, seed=None, statistic="F", terms=None,
                             tail=None, alpha=0.05, cluster_alpha=0.05, cluster_stat=None, correction=None,
                             thresholds=None, quantile_method="hazen", schemes=None, reml=True,
                             ddf="satterthwaite", coding="reference", test="marginal", optimizer="bobyqa",
                             optimizer_options=None, levels=None, engine="auto", cross_check=3, n_jobs=1,
                             checkpoint=None, progress=True, client=None, adjacency=None, min_neighbours=0,
                             family="gaussian", weights=None, glmm_test="wald", level_order="appearance",
                             na_action="omit", contrasts=None, stacklevel=2) -> AnalysisPlan:
    """Check every argument of :func:`permutation_cluster_lmer` before anything is fitted.

    Builds the model (:func:`clusterlmer.fit.check_fit_arguments`) and draws
    the permutations; raises the errors :func:`permutation_cluster_lmer`
    documents, and gives its warnings (too few permutations, the engine
    ``"auto"`` chose) at ``stacklevel`` as :func:`warnings.warn` counts it
    from here (2: this function's caller).
    """
    if not isinstance(data, TimeseriesData):
        raise TypeError(
            f"data must be a TimeseriesData (from cl.load_mat, cl.from_dataframe or cl.datasets), got {type(data).__name__}."
        )
    check_option("statistic", statistic, STATISTICS)
    correction, cluster_stat = resolve_correction(correction, cluster_stat)
    if tail is None:
        tail = 1 if statistic == "F" else 0
    check_option("tail", tail, TAILS)
    if statistic == "F" and tail != 1:
        use_t = option_hint("statistic='t'", "--statistic t")
        raise ValueError(f"F statistics are never negative, so only {option_hint('tail=1', '--tail 1')} makes "
                         f"sense; use {use_t} for a two-tailed or lower-tailed test of one-coefficient terms.")
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) or n_permutations < 1:
        raise ValueError(f"n_permutations must be a positive integer, got {n_permutations!r}.")
    for name, value in (("alpha", alpha), ("cluster_alpha", cluster_alpha)):
        if not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}.")
    warn_if_alpha_unreachable(n_permutations, alpha, 1 if correction == "max" else tail, stacklevel + 1)
    n_jobs = resolve_n_jobs(n_jobs)
    check_client(client, n_jobs)
    # Everything is checked before the observed fit: a bad value found after the permutations loses them.
    check_option("quantile_method", quantile_method, QUANTILE_METHODS)
    check_option("engine", engine, ENGINE_CHOICES)
    check_argument_types(terms, schemes, levels, optimizer_options, cross_check, progress)
    checkpoint = check_checkpoint_path(checkpoint)
    adjacency = data_adjacency(data, adjacency, min_neighbours)
    thresholds = check_correction_options(correction, thresholds, min_neighbours)
    model = parse_formula(formula)
    counted = terms if terms is not None or not contrasts else list(model.fixed_terms.labels) + list(contrasts)
    mapped_null = check_run_memory(data, model, n_permutations, terms=counted, schemes=schemes,
                                   cluster_stat=cluster_stat, n_jobs=n_jobs, client=client,
                                   checkpoint=checkpoint)  # before anything large is allocated
    fit = check_fit_arguments(data, formula, reml=reml, ddf=ddf, coding=coding, test=test, optimizer=optimizer,
                              optimizer_options=optimizer_options, levels=levels, engine=engine, family=family,
                              weights=weights, glmm_test=glmm_test, level_order=level_order, na_action=na_action,
                              contrasts=contrasts, stacklevel=stacklevel + 1)
    require_zero_rhs(fit.options.contrasts)
    perms = make_permutations(fit.missing.restrict(data), model, n_permutations, seed, schemes=schemes)
    if terms is not None:
        check_term_names(terms, fit)
    if fit.engine_note:
        warnings.warn(fit.engine_note, UserWarning, stacklevel=stacklevel)
    return AnalysisPlan(fit, perms, statistic, terms, tail, alpha, cluster_alpha, cluster_stat, quantile_method,
                        int(cross_check), n_jobs, checkpoint, progress, client, adjacency, int(min_neighbours),
                        mapped_null, correction, thresholds)


def _permute_and_cluster(data, plan: AnalysisPlan, fit, start):
    """The permutations of a checked analysis and the cluster test on their null."""
    model, perms, statistic, tail = plan.fit.model, plan.permutations, plan.statistic, plan.tail
    engine, options, n_permutations = plan.fit.engine, plan.fit.options, len(perms)
    alpha, cluster_alpha, cluster_stat = plan.alpha, plan.cluster_alpha, plan.cluster_stat
    quantile_method, n_jobs, checkpoint = plan.quantile_method, plan.n_jobs, plan.checkpoint
    tested = _tested_terms(fit, plan.terms, statistic)
    unpermuted = plan.unpermuted
    user = {c.name: c for c in options.contrasts}
    check_tested_contrasts([user[t] for t in tested if t in user], statistic, plan.fit.spec.fixed, unpermuted)
    for term in tested:
        if term not in user and all(v in unpermuted for v in _term_variables(term, model)):
            raise ValueError(f"term {term!r} uses only variables that are not permuted ({_preview(unpermuted)}), "
                             "so the permutations give it no null distribution; permute one of its variables.")

    Y = data.values.reshape(data.n_obs, -1)
    task = PermutationTask(plan.fit.spec, Y, options, engine, perms, tested, statistic, data.sample_shape)
    keys = {
        "data": fingerprint([data.values, data.design]),
        "formula": model.text,
        "engine": engine,  # also inside "fit options"; kept apart so a refusal can name it
        # The options' descriptive texts (hypotheses, sign) follow from the rest and are left out.
        "fit options": fingerprint([{k: v for k, v in fit.options.items()
                                     if k not in ("cross_check", "hypotheses", "sign")}, fit.levels]),
        "seed": str(perms.seed),
        "permutation schemes": fingerprint(perms.schemes),
        "statistic": statistic,
        "terms": fingerprint(list(tested)),
    }
    if user:  # the contrasts' weights, not only their names
        keys["contrasts"] = fingerprint([[c.name, c.L, c.rhs] for c in user.values()])
    shift = response_exponents(Y, np.isfinite(Y))
    if shift.any():  # fitted at another scale than before the rescaling existed: never mix the two
        keys["response scaling"] = fingerprint(shift)
    store = Checkpoint(checkpoint, keys, (len(tested),) + data.sample_shape, n_permutations,
                       mapped=plan.mapped_null)
    if store.resumed:
        print(f"clusterlmer: resuming from {store.path}: {store.resumed} of {n_permutations} permutations "
              "already done.", file=sys.stderr)
    try:
        restarts = run_permutations(task, store, n_jobs=n_jobs, progress=plan.progress, client=plan.client)
    except KeyboardInterrupt:
        if store.path is not None:
            print(f"\nclusterlmer: interrupted; {int(store.done.sum())} of {n_permutations} permutations are "
                  f"saved in {store.path}. Rerun with the same arguments to resume.", file=sys.stderr)
        raise

    stat, null, p_clust, info, failures = {}, {}, {}, {}, {}
    tests = dict(tail=tail, alpha=alpha, cluster_stat=cluster_stat, quantile_method=quantile_method,
                 adjacency=plan.adjacency, min_neighbours=plan.min_neighbours)
    for i, term in enumerate(tested):
        stat[term] = np.asarray(_observed_statistic(fit, term, statistic))
        null[term] = np.moveaxis(store.values[:, i], 0, -1)
        p_clust[term], info[term] = correct(stat[term], null[term], correction=plan.correction,
                                            cluster_alpha=cluster_alpha, **tests)
        failures[term] = nan_counts(null[term])
    sweep = threshold_sweep(stat, null, plan.thresholds, done=(cluster_alpha, info), **tests)
    where = dict(times=fit.times, freqs=fit.freqs, statistic=statistic, channels=fit.channels, stat=stat)
    return PermutationClusterResult(
        fit=fit,
        statistic=statistic,
        terms=tested,
        stat=stat,
        null=null,
        p_clust=p_clust,
        cluster_info=info,
        clusters=cluster_table(info, **where),
        refit_failures=failures,
        n_permutations=int(n_permutations),
        seed=perms.seed,
        schemes=dict(perms.schemes),
        tail=tail,
        alpha=float(alpha),
        cluster_alpha=float(cluster_alpha),
        cluster_stat=cluster_stat,
        quantile_method=quantile_method,
        correction=plan.correction,
        thresholds=plan.thresholds,
        threshold_sweep=sweep_table(sweep, **where) if sweep else None,
        run={"n_jobs": n_jobs, "elapsed_s": time.perf_counter() - start, "resumed": store.resumed,
             "worker_restarts": restarts, "checkpoint": store.path,
             "null_in_checkpoint": store.mapped, "permutations": perms.summary_lines()},
    )
