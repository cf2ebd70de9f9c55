"""Fit one mixed model per sample: ``fit_timeseries``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._checks import option_hint
from .data import TimeseriesData, _preview, check_response
from .contrasts import with_contrasts
from .crosscheck import start_cross_check
from .coding import coding_label
from .design import build_design
from .engines import engine_properties, get_engine, resolve_engine
from .engines.base import FitOptions, check_fit_options
from .families import check_glmm_response, with_trials
from .formula import parse_formula
from .hypotheses import sign_convention, term_hypotheses
from .missing import MissingRows, missing_rows
from .results import FitSource, TimeseriesFit
from .samples import fit_samples
from .spec import ModelSpec, build_spec

__all__ = ["FitPlan", "check_fit_arguments", "fit_plan", "fit_timeseries"]


def _warn_if_all_nan(terms, F, errors, messages, stacklevel=3):
    """Warn when a term has no finite F at any sample: that is a failed analysis, not a result.

    The warning names the terms and the first error (else the first message)
    of the diagnostics, which usually says why.
    """
    empty = [t for t, row in zip(terms, F) if np.isnan(row).all()]
    if not empty:
        return
    which = ("every term" if len(empty) == len(terms) else
             f"{'the term' if len(empty) == 1 else 'the terms'} {_preview(empty)}")
    error = next((e for e in errors if e), "")
    message = next((m for m in messages if m), "")
    why = (f"; the first error: {error}" if error else
           f"; the first message: {message}" if message else "")
    warnings.warn(f"the fit gave no finite statistic at any sample for {which} (F is NaN everywhere){why}. "
                  "See fit.diagnostics['error'] and fit.diagnostics['messages'].", UserWarning, stacklevel=stacklevel)


def fit_timeseries(data, formula, *, reml=True, ddf="satterthwaite", coding="reference", test="marginal",
                   optimizer="bobyqa", optimizer_options=None, levels=None, terms=None,
                   engine="auto", cross_check=3, level_order="appearance", na_action="omit", family="gaussian",
                   weights=None, contrasts=None, glmm_test="wald") -> TimeseriesFit:
    """Fit a linear mixed model at every sample and test each fixed-effect term.

    Parameters
    ----------
    data : TimeseriesData
        From :func:`clusterlmer.from_dataframe` or :func:`clusterlmer.load_mat`.
    formula : str
        An lme4 formula, e.g. ``"data ~ hit_miss * region + (1|sid) + (1|sid:ch)"``.
        The left-hand side is bound to each sample's values.
    reml : bool
        REML (default, as lmerTest) or ML (``False``, MATLAB ``fitlme``'s default).
    ddf : {"satterthwaite", "residual", "kenward-roger", "none"}
        Denominator degrees of freedom: Satterthwaite as lmerTest computes it,
        ``n - rank(X)`` (MATLAB's default), Kenward-Roger (pbkrtest; REML
        only), or none (DF2 = Inf).
    coding : {"reference", "effects", "helmert", "poly"} or dict
        Factor coding, as R's contrasts: treatment contrasts against the
        first level (MATLAB's default), sum-to-zero contrasts with the last
        level coded -1 (``contr.sum``), ``contr.helmert`` or ``contr.poly``
        (orthogonal polynomials over the levels in order: ordered factors).
        A dict codes each variable, ``"*"`` the ones it does not name, e.g.
        ``{"*": "effects", "dose": "poly"}``; naming a numeric column makes
        it a factor with its values sorted. See :mod:`clusterlmer.coding`.
    test : {"marginal", "type3", "type2", "type1"}
        ``"marginal"`` tests that all of a term's coefficients are zero, as
        MATLAB's ``anova`` does (intercept included); ``"type3"``,
        ``"type2"`` and ``"type1"`` give lmerTest's ``anova(type = 3, 2, 1)``
        tables (no intercept row).
    optimizer : {"bobyqa", "nloptwrap", "Nelder_Mead"}
        lme4 optimizer. bobyqa runs with ``rhoend=1e-9`` unless
        ``optimizer_options`` says otherwise. Another optimizer makes
        ``engine="auto"`` use R (the native engine has its own, exact one).
    optimizer_options : dict, optional
        Passed to the optimizer as lme4's ``optCtrl``; R engine only, like
        ``optimizer``.
    levels : dict, optional
        Level order per factor column, reference level first. Naming a
        numeric column makes it a factor.
    terms : list of str, optional
        Report only these terms (default: all, intercept first).
    engine : {"auto", "r", "native"}
        ``"auto"`` (default): the native engine when it can fit the model and
        options, else R with one warning saying why. ``"native"``:
        clusterlmer's batched engine for every Gaussian random structure lmer
        accepts (nested random intercepts in closed form; slopes, ``||``,
        crossed and partially crossed groupings by lme4's penalized least
        squares with exact derivatives), REML/ML, Satterthwaite/residual/none,
        marginal and type I/II/III tests; equal to lmerTest within the precision of
        lme4's optimizer; a rank-deficient fixed-effect design (an
        interaction with empty cells) is fitted as lme4 does, the columns
        lme4 drops dropped; an option it lacks (Kenward-Roger, lme4 optimizer
        settings) is an error naming it. ``"r"``: lme4/lmerTest through R at
        every sample (pass it to get lmerTest's own numbers). The engine used
        is ``fit.options["engine"]``.
    cross_check : int
        When the native engine fits, also refit this many observed samples
        (spread over the finite ones) with the R engine and record the
        largest relative difference in F and DF2 in
        ``fit.options["cross_check"]`` and the summary; a difference above
        1e-4 is a ``RuntimeWarning``. 0 skips it (and R is then not needed);
        without R installed the check is skipped with a note.
    level_order : {"appearance", "sorted"}
        Order of the levels ``levels`` does not give: first appearance in the
        data (MATLAB, default) or sorted as R's ``factor()`` sorts them
        (lmerTest's default; numbers by value).
    na_action : {"omit", "fail"}
        Rows with a missing value (None/NaN) in a model variable: left out
        with a warning, as lme4's ``na.omit`` (default; counted in
        ``fit.options["rows_omitted"]`` and the summary), or an error.
    family : {"gaussian", "binomial", "poisson"}
        ``"gaussian"`` (default): a linear mixed model. Otherwise a
        generalized linear mixed model fitted by ``lme4::glmer`` (Laplace,
        canonical link) in the R engine: binomial responses are 0/1 per row,
        or proportions with ``weights``; Poisson responses are counts. There
        is no REML and no DF2: each term's Wald chi-square is reported as
        ``F = chi2 / DF1`` with ``DF2 = Inf`` (the chi-square p), ``t`` is the
        Wald z, and the summary says so (:mod:`clusterlmer.families`).
    weights : str, optional
        Binomial only: the design column holding each row's number of
        trials (lme4's prior weights), the response being the proportion of
        successes.
    glmm_test : {"wald", "lrt"}
        A GLMM's test of each term: Wald chi-square (default), or
        likelihood-ratio chi-square against a ``glmer`` fit without the
        term's columns (``test="marginal"`` only; one more fit per term).
    contrasts : dict, optional
        User contrasts ``{name: contrast}`` over the coefficients
        (``fit.coef_names``), e.g. ``{"hit in hc": "hit_misshit +
        hit_misshit:regionhc"}``, each tested as lmerTest's ``contest(model,
        L, joint = TRUE)`` and reported as an extra row of the F table under
        its name; see :mod:`clusterlmer.contrasts` for the forms a contrast
        takes, and :meth:`TimeseriesFit.contrast` to test one on a finished fit.

    Returns
    -------
    TimeseriesFit

    Notes
    -----
    Samples whose response is NaN/Inf for some observations are fitted
    without those observations; ``fit.diagnostics`` reports how many were
    left out. A fit that fails at one sample yields NaN statistics there and
    its error message in ``fit.diagnostics``; it never stops the run. A
    term whose F is NaN at every sample is a ``UserWarning`` naming the first
    error.

    A response column whose standard deviation is outside 2**-4 .. 2**8 is
    fitted multiplied by the power of two that brings it into [1, 2), which
    changes no value in floating point; estimates, standard errors, sigma and
    the deviance are mapped back, and F, DF and p need no mapping. lmerTest's
    Satterthwaite DF are wrong for such data as given (numDeriv's absolute
    steps and eigenvalue tolerance): on the bundled 2-way sample scaled by
    1e-6 (data in volts) an intercept DF2 of 22.9 became 4.3, scaled by 1e6 a
    DF2 of 167 became 6e22; beyond about 1e+-200 the fits fail.
    """
    plan = check_fit_arguments(data, formula, reml=reml, ddf=ddf, coding=coding, test=test, optimizer=optimizer,
                               optimizer_options=optimizer_options, levels=levels, terms=terms, engine=engine,
                               level_order=level_order, na_action=na_action, family=family, weights=weights,
                               glmm_test=glmm_test,
                               contrasts=contrasts, stacklevel=3)
    if plan.engine_note:
        warnings.warn(plan.engine_note, UserWarning, stacklevel=2)
    return fit_plan(plan, data, cross_check)


@dataclass(frozen=True)
class FitPlan:
    """A checked fit: the model specification, options and engine :func:`fit_plan` runs.

    Attributes
    ----------
    model : ModelFormula
    spec : ModelSpec
        Built once; its ``design`` is the coded table.
    options : FitOptions
    engine : str
        ``"r"`` or ``"native"`` (``"auto"`` resolved on the observed design).
    engine_note : str
        Why ``"auto"`` chose R, for one warning (empty otherwise).
    terms : list of str or None
        Terms to report (None: all).
    missing : MissingRows
        Rows left out for missing design values (:mod:`clusterlmer.missing`).
    """

    model: object
    spec: ModelSpec
    options: FitOptions
    engine: str
    engine_note: str
    terms: list | None
    missing: MissingRows


def check_fit_arguments(data, formula, *, reml=True, ddf="satterthwaite", coding="reference", test="marginal",
                        optimizer="bobyqa", optimizer_options=None, levels=None, terms=None,
                        engine="auto", level_order="appearance", na_action="omit", family="gaussian",
                        weights=None, contrasts=None, glmm_test="wald", stacklevel=2) -> FitPlan:
    """Check every argument of :func:`fit_timeseries` and build the model once (no fit).

    Raises the errors :func:`fit_timeseries` documents, before any fit, and
    warns (at ``stacklevel`` counted from here) when rows are left out for
    missing design values.
    """
    if not isinstance(data, TimeseriesData):
        raise TypeError(
            f"data must be a TimeseriesData (from cl.from_dataframe or cl.load_mat), got {type(data).__name__}."
        )
    options = check_fit_options(reml, ddf, test, optimizer, optimizer_options, family, weights, glmm_test)
    model = parse_formula(formula)
    check_response(data, model.response)
    missing = missing_rows(data, model, na_action)
    if missing.note():
        warnings.warn(missing.note(), UserWarning, stacklevel=stacklevel)
    kept = missing.restrict(data)
    check_glmm_response(kept.values, kept.design, family, weights)
    design = with_trials(build_design(kept.design, model, coding=coding, levels=levels, level_order=level_order,
                                      response_column=data.response), kept.design, weights)
    spec = build_spec(design)
    engine, engine_note = resolve_engine(engine, spec, options)
    if contrasts is not None:  # checked against the coefficient names before any fit
        options = with_contrasts(options, contrasts, *get_engine(engine).describe(spec, options))
    wanted = None
    if terms is not None or test != "marginal":  # checked before the long part
        model_terms, _ = get_engine(engine).describe(spec, options)
        if not model_terms:
            marginal = option_hint("test='marginal'", "--test marginal")
            raise ValueError(f"the model has no term besides the intercept, which a {test} table does not "
                             f"test: use {marginal} to test the intercept.")
    if terms is not None:
        wanted = [terms] if isinstance(terms, str) else list(terms)
        if not wanted:
            raise ValueError("terms must name at least one term (or be None for all terms).")
        unknown = [t for t in wanted if t not in model_terms]
        if unknown:
            raise ValueError(
                f"{'term' if len(unknown) == 1 else 'terms'} {_preview(unknown)} "
                f"{'is' if len(unknown) == 1 else 'are'} not in the model; its terms are {_preview(model_terms)}."
            )
    return FitPlan(model, spec, options, engine, engine_note, wanted, missing)


def fit_plan(plan: FitPlan, data, cross_check=3, *, alongside=False, stacklevel=3):
    """Run a checked fit (:func:`check_fit_arguments`) at every sample of ``data``.

    Parameters
    ----------
    plan : FitPlan
    data : TimeseriesData
    cross_check : int
        Samples the reference engine refits when another engine fits (see :mod:`clusterlmer.crosscheck`).
    alongside : bool or clusterlmer.crosscheck.ReferenceProcess
        Run the cross-check in a worker process (new, or the one given,
        already starting R) and return ``(fit, check)``:
        ``check.result()`` waits for it and is to be stored in
        ``fit.options["cross_check"]``. Otherwise the fit, checked.
    stacklevel : int
        Where warnings point, counted from this function (3: the caller's caller).
    """
    model, spec, options, engine, wanted = plan.model, plan.spec, plan.options, plan.engine, plan.terms
    data = plan.missing.restrict(data)  # the complete rows, as the model was built on
    design = spec.design
    ddf, test, optimizer = options.ddf, options.test, options.optimizer
    Y = data.values.reshape(data.n_obs, -1)
    blk, n_used = fit_samples(spec, Y, options, engine)
    check = None
    if not engine_properties(engine).reference:
        check = start_cross_check(spec, Y, options, blk, int(cross_check), alongside=alongside)
    keep = np.arange(len(blk.terms)) if wanted is None else np.array([blk.terms.index(t) for t in wanted])
    _warn_if_all_nan([blk.terms[i] for i in keep], blk.F[keep], blk.errors, blk.messages, stacklevel + 1)

    shape = data.sample_shape

    def per_sample(arr):
        return arr.reshape((arr.shape[0],) + shape)

    with np.errstate(invalid="ignore"):
        t = np.where(blk.df1 == 1, np.sign(blk.contrast_estimate) * np.sqrt(blk.F), np.nan)
    flat = np.arange(Y.shape[1])
    idx = dict(zip(data.sample_axes, np.unravel_index(flat, shape)))
    diag = {"sample": flat}
    if data.channels is not None:
        diag["channel"] = np.asarray(data.channels, dtype=object)[idx["channel"]]
    diag["time"] = np.asarray(data.times)[idx["time"]]
    if data.freqs is not None:
        diag["freq"] = np.asarray(data.freqs)[idx["freq"]]
    errors = np.array(blk.errors, dtype=object)
    diag.update(
        n_obs=n_used,
        n_excluded=data.n_obs - n_used,
        converged=blk.converged,
        singular=blk.singular,
        failed=errors != "",
        sigma=blk.sigma,
        deviance=blk.deviance,
        messages=blk.messages,
        error=errors,
    )
    fit = TimeseriesFit(
        formula=model.text,
        terms=tuple(blk.terms[i] for i in keep),
        F=per_sample(blk.F[keep]),
        df1=per_sample(blk.df1[keep]),
        df2=per_sample(blk.df2[keep]),
        p=per_sample(blk.p[keep]),
        t=per_sample(t[keep]),
        coef_names=blk.coef_names,
        estimates=per_sample(blk.estimate),
        se=per_sample(blk.se),
        coef_df=per_sample(blk.coef_df),
        coef_se=per_sample(blk.coef_se),
        times=np.asarray(data.times),
        freqs=data.freqs,
        diagnostics=pd.DataFrame(diag),
        options={
            "engine": engine,
            "reml": options.reml,
            "ddf": ddf,
            "test": test,
            "coding": coding_label(design.coding, design.codings),
            "codings": dict(design.codings),
            "optimizer": optimizer,
            "optimizer_options": options.resolved_optimizer_options(),
            # only for GLMMs, so that linear fits keep the options (and checkpoint fingerprints) they had
            **({"family": options.family, "weights": options.weights, "glmm_test": options.glmm_test}
               if options.family != "gaussian" else {}),
            **({"cross_check": check.result(stacklevel) if not alongside else None} if check is not None else {}),
            "hypotheses": {k: v for k, v in {**term_hypotheses(model.fixed_terms, design.factors, design.codings, test),
                                             **{c.name: c.text for c in options.contrasts}}.items()
                           if k in {blk.terms[i] for i in keep}},
            "sign": sign_convention(design.factors, design.codings),
            "numeric_as_factor": list(design.converted),
            **plan.missing.record(),
        },
        levels={k: list(v) for k, v in design.factors.items()},
        channels=data.channels,
        source=FitSource(design, Y),  # for fit.model_at; Y is data.values reshaped (a view when contiguous)
        info=data.info,  # channel positions for topographic maps (never saved)
    )
    return (fit, check) if alongside else fit
