"""Fit one mixed model per sample: ``fit_timeseries``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._checks import option_hint
from .data import TimeseriesData, _preview, check_response
from .design import build_design
from .crosscheck import start_cross_check
from .engines import engine_properties, get_engine, resolve_engine
from .engines.base import BlockFit, FitOptions, check_fit_options
from .formula import parse_formula
from .hypotheses import sign_convention, term_hypotheses
from .results import FitSource, TimeseriesFit
from .spec import ModelSpec, as_spec, build_spec

__all__ = ["FitPlan", "check_fit_arguments", "fit_plan", "fit_timeseries"]


def _mask_groups(finite):
    """Group columns of a (n_obs, n_samples) finiteness mask by identical pattern."""
    packed = np.packbits(finite, axis=0)
    _, inverse = np.unique(packed.T, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    return [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]


# lmerTest's Satterthwaite step (which the native engine replicates) differentiates the deviance
# in sigma with numDeriv, whose step is absolute below |sigma| = 1.8e-5, and drops Hessian
# eigenvalues below an absolute 1e-8 (the sigma one is about 2n / sigma^2). On the bundled samples
# (SD 1.5) DF2 moved by 1e-8 relative at a scale of 2**-10 and 1e-7 at 2**-12, was wrong by 90 %
# or more from 2**-16 down (data in volts) and from 2**18 up, and the fits failed beyond 1e+-200;
# from 2**-8 to 2**16 it stayed within 1e-9. A response column whose SD is outside
# [2**LO, 2**HI) is therefore fitted multiplied by the power of two that brings its SD into
# [1, 2): exact in floating point, F/DF/p unchanged in exact arithmetic, estimates, SEs, sigma and
# deviance mapped back. Columns inside the window are fitted as given (as lmerTest would).
RESCALE_EXPONENTS = (-4, 8)


def response_exponents(Y, finite):
    """Per column of ``Y``, the exponent ``e`` to fit ``Y * 2**e`` with (0 inside the window).

    Computed on ``Y`` divided by a power of two bounding its largest finite
    value, so that responses near the overflow limit do not overflow here.
    """
    Yf = np.where(finite, Y, 0.0)
    _, e_top = np.frexp(np.abs(Yf).max(axis=0))  # |Y| < 2**e_top
    Z = np.ldexp(Yf, -e_top)
    n = np.maximum(finite.sum(axis=0), 1)
    centred = np.where(finite, Z - Z.sum(axis=0) / n, 0.0)
    sd = np.sqrt((centred * centred).sum(axis=0) / n)
    _, e_sd = np.frexp(sd)
    top = e_top + e_sd  # SD of Y in [2**(top - 1), 2**top)
    lo, hi = RESCALE_EXPONENTS
    outside = (sd > 0) & ((top <= lo) | (top > hi))
    return np.where(outside, 1 - top, 0).astype(int)


def _scale_back(out, shift, n_used, reml):
    """Map the statistics of responses fitted as ``Y * 2**shift`` back to ``Y``'s scale, in place."""
    for name in ("estimate", "se", "contrast_estimate", "sigma"):
        out[name] = np.ldexp(out[name], -shift)
    # The density of c*y is that of y over c**n: the ML deviance (-2 log L) grows by 2 n log c,
    # the REML criterion by 2 (n - rank X) log c (checked against lme4 in the tests).
    rank = np.isfinite(out["estimate"]).sum(axis=0)
    dof = n_used - rank if reml else n_used
    out["deviance"] = out["deviance"] - 2.0 * dof * shift * np.log(2.0)


@dataclass(frozen=True)
class SampleResponses:
    """What :func:`fit_samples` derives from the responses alone.

    The same for every permutation of an analysis, so it is prepared once
    (:func:`sample_responses`) and passed to each permutation's fits.

    Attributes
    ----------
    Y : ndarray, shape (n_obs, n_samples)
        The responses, columns outside ``2**RESCALE_EXPONENTS`` rescaled.
    shift : ndarray of int, shape (n_samples,)
        The power of two each column was multiplied by.
    n_used : ndarray of int, shape (n_samples,)
        Finite observations per column.
    constant : ndarray of bool, shape (n_samples,)
        Columns without variance (not fitted).
    groups : tuple of (columns, rows)
        Columns to fit, grouped by the rows (boolean mask) they are fitted on.
    """

    Y: np.ndarray
    shift: np.ndarray
    n_used: np.ndarray
    constant: np.ndarray
    groups: tuple


def sample_responses(Y) -> SampleResponses:
    """Rescale ``Y`` (n_obs, n_samples) where needed and group its columns by their finite rows."""
    finite = np.isfinite(Y)
    n_samples = Y.shape[1]
    shift = response_exponents(Y, finite)
    if shift.any():
        Y = np.ldexp(Y, shift)
    # A response without variance has no model to fit; lme4 would return a
    # degenerate "fit" with F ~ 1e30 that would dominate any cluster sum.
    masked = np.where(finite, Y, np.nan)
    first = masked[np.argmax(finite, axis=0), np.arange(n_samples)]
    constant = finite.any(axis=0) & np.all(~finite | (masked == first), axis=0)
    groups = []
    for cols in _mask_groups(finite):
        cols = cols[~constant[cols]]
        if len(cols) == 0 or not finite[:, cols[0]].any():
            continue  # nothing to fit: stays NaN with its reason
        groups.append((cols, finite[:, cols[0]]))
    return SampleResponses(Y, shift, finite.sum(axis=0), constant, tuple(groups))


def fit_samples(model, Y, options, engine, need="all"):
    """Fit each column of ``Y`` (n_obs, n_samples) with ``engine`` (``"r"`` or
    ``"native"``, already resolved) under ``model`` (a
    :class:`~clusterlmer.spec.ModelSpec` or :class:`~clusterlmer.design.ModelDesign`);
    rows with non-finite values are left out of that column's fit. Returns a
    :class:`BlockFit` over all columns plus the count of observations used
    per column. ``Y`` may also be the :class:`SampleResponses` of the
    responses, prepared once for many models (permutations).
    ``need="statistic"`` asks the engine for the test statistic only
    (permutations; see :data:`clusterlmer.engines.base.NEEDS`): the same F,
    DF2 and p NaN.

    A column whose SD is outside ``2**RESCALE_EXPONENTS`` is fitted multiplied
    by a power of two (see :data:`RESCALE_EXPONENTS`) and its estimates, SEs,
    sigma and deviance mapped back.
    """
    fits, n_used = fit_sample_sets([as_spec(model)], Y, options, engine, need)
    return fits[0], n_used


def fit_sample_sets(specs, Y, options, engine, need="all", start_from=None):
    """:func:`fit_samples` under each of ``specs`` (permutations of one specification), fitted together.

    ``start_from``: the specification whose optimum starts each fit (the
    engine's ``fit_blocks``). Returns a list of :class:`BlockFit` (one per
    specification) and the count of observations used per column.
    """
    eng = get_engine(engine)
    resp = Y if isinstance(Y, SampleResponses) else sample_responses(Y)
    groups = [(cols, eng.fit_blocks([spec.subset(rows) for spec in specs], resp.Y[np.ix_(rows, cols)], options,
                                    need=need, start_from=None if start_from is None else start_from.subset(rows)))
              for cols, rows in resp.groups]
    if groups:
        terms, coefs = groups[0][1][0].terms, groups[0][1][0].coef_names
    else:
        terms, coefs = eng.describe(specs[0], options)
    fits = [_assemble(terms, coefs, [(cols, blocks[d]) for cols, blocks in groups], resp, options)
            for d in range(len(specs))]
    return fits, resp.n_used


def _assemble(terms, coefs, blocks, resp, options):
    """One BlockFit over every sample from the fits of the column groups."""
    n_samples, constant, shift = resp.Y.shape[1], resp.constant, resp.shift
    nt, nc = len(terms), len(coefs)

    def full(rows):
        return np.full((rows, n_samples), np.nan)

    out = {name: full(nt) for name in ("F", "df1", "df2", "p", "contrast_estimate")}
    out.update(estimate=full(nc), se=full(nc))
    out.update(sigma=np.full(n_samples, np.nan), deviance=np.full(n_samples, np.nan),
               singular=np.full(n_samples, np.nan), converged=np.zeros(n_samples, bool))
    messages = [""] * n_samples
    errors = ["the response is constant at this sample (no variance to model)" if c
              else "no finite response values at this sample" for c in constant]
    for cols, blk in blocks:
        for name in ("F", "df1", "df2", "p", "contrast_estimate", "estimate", "se"):
            out[name][:, cols] = getattr(blk, name)
        for name in ("sigma", "deviance", "singular", "converged"):
            out[name][cols] = getattr(blk, name)
        for j, c in enumerate(cols):
            messages[c], errors[c] = blk.messages[j], blk.errors[j]
    if shift.any():
        _scale_back(out, shift, resp.n_used, options.reml)
    return BlockFit(terms=terms, coef_names=coefs, messages=messages, errors=errors, **out)


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
                   engine="auto", cross_check=3) -> TimeseriesFit:
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
    coding : {"reference", "effects"}
        Factor coding: treatment contrasts against the first level (MATLAB's
        default) or sum-to-zero contrasts with the last level coded -1.
    test : {"marginal", "type3"}
        ``"marginal"`` tests that all of a term's coefficients are zero, as
        MATLAB's ``anova`` does (intercept included); ``"type3"`` gives
        lmerTest's type III table.
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
        clusterlmer's batched closed-form engine for nested random
        intercepts (e.g. ``(1|sid) + (1|sid:ch)``), REML/ML,
        Satterthwaite/residual/none, marginal tests, bobyqa's optimum;
        hundreds of times faster, equal to lmerTest within the precision of
        lme4's optimizer; a rank-deficient fixed-effect design (an
        interaction with empty cells) is fitted as lme4 does, the columns
        lme4 drops dropped; a model or option outside that class (random
        slopes, crossed groupings, Kenward-Roger, type III, other optimizer
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
                               optimizer_options=optimizer_options, levels=levels, terms=terms, engine=engine)
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
    """

    model: object
    spec: ModelSpec
    options: FitOptions
    engine: str
    engine_note: str
    terms: list | None


def check_fit_arguments(data, formula, *, reml=True, ddf="satterthwaite", coding="reference", test="marginal",
                        optimizer="bobyqa", optimizer_options=None, levels=None, terms=None,
                        engine="auto") -> FitPlan:
    """Check every argument of :func:`fit_timeseries` and build the model once (no fit).

    Raises the errors :func:`fit_timeseries` documents, before any fit.
    """
    if not isinstance(data, TimeseriesData):
        raise TypeError(
            f"data must be a TimeseriesData (from cl.from_dataframe or cl.load_mat), got {type(data).__name__}."
        )
    options = check_fit_options(reml, ddf, test, optimizer, optimizer_options)
    model = parse_formula(formula)
    check_response(data, model.response)
    design = build_design(data.design, model, coding=coding, levels=levels, response_column=data.response)
    spec = build_spec(design)
    engine, engine_note = resolve_engine(engine, spec, options)
    wanted = None
    if terms is not None or test == "type3":  # checked before the long part
        model_terms, _ = get_engine(engine).describe(spec, options)
        if not model_terms:
            marginal = option_hint("test='marginal'", "--test marginal")
            raise ValueError("the model has no term besides the intercept, which a type III table does not "
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
    return FitPlan(model, spec, options, engine, engine_note, wanted)


def fit_plan(plan: FitPlan, data, cross_check=3, *, alongside=False, stacklevel=3):
    """Run a checked fit (:func:`check_fit_arguments`) at every sample of ``data``.

    Parameters
    ----------
    plan : FitPlan
    data : TimeseriesData
    cross_check : int
        Samples the reference engine refits when another engine fits (see :mod:`clusterlmer.crosscheck`).
    alongside : bool
        Run the cross-check in a worker process and return ``(fit, check)``:
        ``check.result()`` waits for it and is to be stored in
        ``fit.options["cross_check"]``. Otherwise the fit, checked.
    stacklevel : int
        Where warnings point, counted from this function (3: the caller's caller).
    """
    model, spec, options, engine, wanted = plan.model, plan.spec, plan.options, plan.engine, plan.terms
    design = spec.design
    ddf, test, coding, optimizer = options.ddf, options.test, design.coding, options.optimizer
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
    idx = np.unravel_index(flat, shape)
    diag = {"sample": flat, "time": np.asarray(data.times)[idx[0]]}
    if data.freqs is not None:
        diag["freq"] = np.asarray(data.freqs)[idx[1]]
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
        times=np.asarray(data.times),
        freqs=data.freqs,
        diagnostics=pd.DataFrame(diag),
        options={
            "engine": engine,
            "reml": options.reml,
            "ddf": ddf,
            "test": test,
            "coding": coding,
            "optimizer": optimizer,
            "optimizer_options": options.resolved_optimizer_options(),
            **({"cross_check": check.result(stacklevel) if not alongside else None} if check is not None else {}),
            "hypotheses": {k: v for k, v in term_hypotheses(model.fixed_terms, design.factors, coding,
                                                             test).items()
                           if k in {blk.terms[i] for i in keep}},
            "sign": sign_convention(design.factors, coding),
            "numeric_as_factor": list(design.converted),
        },
        levels={k: list(v) for k, v in design.factors.items()},
        source=FitSource(design, Y),  # for fit.model_at; Y is data.values reshaped (a view when contiguous)
    )
    return (fit, check) if alongside else fit
