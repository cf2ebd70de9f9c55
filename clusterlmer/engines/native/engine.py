"""The native engine's entry point: blocks of responses in, ``BlockFit`` out.

``fit_blocks`` fits one block of responses under several model
specifications on the same rows (the permutations of one analysis) and
``fit_block`` under one. ``prepare`` gathers what the fits of one
specification share (its nesting, ``X`` and lme4's checks on them); the
grouping structure and the responses' row sums are computed once and shared
by every specification (:class:`.criterion.Structure`,
:class:`.criterion.Responses`), so per specification only the parts of
``X`` are summed. Per chunk the specifications' fits are stacked into one
:class:`.criterion.Block`, optimised together (:func:`.optimize.optimize`)
and evaluated (``evaluate``): sigma, beta, ``vcov(beta)``, the marginal tests
with Satterthwaite's derivatives when asked, and lme4's messages.
``evaluate`` takes any theta, so the model can also be evaluated where
another optimiser (lme4's) ended.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..._checks import check_option
from ...spec import as_spec
from ...anova_types import anova_contrasts
from ..base import NEEDS, BlockFit, FitOptions
from .blocked import GeneralStructure
from .criterion import Block, Responses, Structure
from .general_fit import SINGULAR_MESSAGE, SINGULAR_TOL, GeneralFits, general_chunk, scatter_columns
from .fixed import rank_deficiency, scale_message
from .marginal import coefficient_df, term_tests
from .nesting import Nesting, design_checks
from .optimize import optimize
from .satterthwaite import nested_values, varpar_parts, vcov_varpar
from .support import UnsupportedModel, require, tested_terms

__all__ = ["CHUNK", "Prepared", "evaluate", "evaluate_at", "fit_block", "fit_blocks", "prepare"]

# Fits (specification x response) optimised together: the per-call cost of
# numpy is paid once per chunk. The Satterthwaite step evaluates ~40 points
# per fit at once, so full fits use smaller chunks.
CHUNK = 512
CHUNK_STATISTIC = 2048


@dataclass(frozen=True)
class Prepared:
    """What every fit under one specification shares on the block's rows.

    ``error`` (non-empty) is why no response can be fitted under it;
    ``nest`` and ``X`` are then not to be used. ``X`` holds the columns
    lme4 keeps (``kept``, indices into the specification's columns) and
    ``assign`` their terms.
    """

    terms: tuple
    coef_names: tuple
    assign: np.ndarray
    nest: Nesting | None
    X: np.ndarray | None
    setup_messages: list
    structure: Structure | GeneralStructure | None = None
    error: str = ""
    kept: np.ndarray | None = None
    contrasts: list | None = None  # type I/II/III: lmerTest's contrast per term in ``terms`` (None: marginal)
    zt: np.ndarray | None = None  # general path: dense Z' of this design (GeneralStructure.zt)
    user: tuple = ()  # (L, rhs) of each user contrast on the kept columns, tested after the terms

    @property
    def general(self) -> bool:
        """Fitted by the general path (:mod:`.general_fit`) rather than the nested one."""
        return isinstance(self.structure, GeneralStructure)


def prepare(spec, options: FitOptions, n: int) -> Prepared:
    """The shared parts of the fits of ``n`` rows under ``spec``.

    Raises
    ------
    UnsupportedModel
        If the model or options are outside the native class. Identical
        groupings, which a subset of rows can create from nested ones, are
        an error of the block instead (``Prepared.error``).
    """
    fixed = spec.fixed
    terms, coefs = tested_terms(spec, options), fixed.coef_names
    try:
        nest = require(spec, options)
    except UnsupportedModel as exc:
        if "define the same groups" not in str(exc):
            raise
        return Prepared(terms, coefs, fixed.assign, None, None, [], error=str(exc))
    general = GeneralStructure.of(spec) if nest is None else None
    err = design_checks(nest, n) if nest is not None else general.problem(n)
    if err:
        return Prepared(terms, coefs, fixed.assign, nest, None, [], error=err)
    kept, rank_message = rank_deficiency(spec.X)
    X = spec.X if rank_message is None else spec.X[:, kept]
    messages = [m for m in (rank_message, scale_message(X)) if m]
    contrasts = anova_contrasts(spec, kept, options.test)
    user = tuple(c.on_columns(kept) for c in options.contrasts)
    if general is not None:
        slopes = {v for t in spec.random for v in t.variables}
        # A permuted slope variable changes Z itself: such a design has its own Z'.
        zt = (general.zt(spec) if slopes.intersection(spec.moved)
              else spec.shared("native-general-zt", lambda: general.zt(spec)))
        return Prepared(terms, coefs, fixed.assign[kept], None, X, messages, general, kept=kept, zt=zt,
                        contrasts=contrasts, user=user)
    structure = spec.shared("native-structure", lambda: Structure(nest, n))
    return Prepared(terms, coefs, fixed.assign[kept], nest, X, messages, structure, kept=kept, contrasts=contrasts,
                    user=user)


def fit_block(model, Y, options: FitOptions, need: str = "all") -> BlockFit:
    """Fit every column of ``Y`` under one model.

    Parameters
    ----------
    model : clusterlmer.spec.ModelSpec or clusterlmer.design.ModelDesign
        The model on the rows of ``Y``.
    Y : ndarray, shape (n_obs, k)
        Responses, all finite.
    options : FitOptions
    need : {"all", "statistic"}
        ``"statistic"`` (permutations): F, DF1, the estimates and their
        standard errors, without Satterthwaite's derivatives; DF2 and p are
        NaN, and lmerTest's Hessian warnings are not looked for. F is the
        one ``"all"`` gives, computed the same way.

    Returns
    -------
    BlockFit

    Raises
    ------
    UnsupportedModel
        (a ValueError) for a model or options outside the native class.
    """
    return fit_blocks([as_spec(model)], Y, options, need)[0]


def fit_blocks(specs, Y, options: FitOptions, need: str = "all", start_from=None) -> list:
    """Fit every column of ``Y`` under each specification, all fitted together.

    ``specs`` share their random part and rows (permutations of one
    specification, :meth:`clusterlmer.spec.ModelSpec.permuted`). Every fit is
    computed exactly as alone; which fits share a chunk only changes how
    numpy's work is grouped, and a given list of specifications is always
    grouped the same way.

    Parameters
    ----------
    specs : list of clusterlmer.spec.ModelSpec
    Y, options, need
        As :func:`fit_block`.
    start_from : clusterlmer.spec.ModelSpec, optional
        Start each response's optimisation at its optimum under this
        specification (the observed design, for its permutations) instead of
        lme4's theta = 1. The Newton iterations end at the same optimum (to
        rounding, ~1e-14 in theta) in fewer steps. That optimum is computed
        once per specification's rows and responses and kept.

    Returns
    -------
    list of BlockFit
        One per specification, as :func:`fit_block` describes.
    """
    check_option("need", need, NEEDS)
    Y = np.asarray(Y, dtype=float)
    if Y.ndim == 1:
        Y = Y[:, None]
    n, k = Y.shape
    models = [prepare(spec, options, n) for spec in specs]
    out = [_block_error(m.terms, m.coef_names, k, m.error) if m.error else None for m in models]
    ok = [i for i, m in enumerate(models) if not m.error]
    if not ok:
        return out
    if models[ok[0]].general:
        _fit_general(specs, models, ok, Y, options, need, start_from, out)
        return out
    structure = models[ok[0]].structure
    chunk = CHUNK_STATISTIC if need == "statistic" else CHUNK
    # Specifications per chunk: as many whole response blocks as fit (node-by-node sums: one).
    per = 1 if structure.node_mode else max(1, chunk // k)
    cols = [slice(c, c + chunk) for c in range(0, k, chunk)] if per == 1 and k > chunk else [slice(0, k)]
    # Kept per responses and column chunks: full fits and statistic-only fits of the same
    # responses chunk them differently, and each must always be chunked the same way.
    key = (hashlib.sha1(np.ascontiguousarray(Y).tobytes()).hexdigest(), tuple((c.start, c.stop) for c in cols))
    responses = specs[ok[0]].shared(("native-responses", key),
                                    lambda: [Responses(structure, Y[:, c]) for c in cols])
    starts = [None] * len(cols)
    if start_from is not None:
        starts = start_from.shared(("native-start", key, options.reml),
                                   lambda: _optima(prepare(start_from, options, n), responses, options))
    # Specifications whose X keeps the same columns (all, unless lme4 drops some) are fitted together.
    same_columns = {}
    for i in ok:
        same_columns.setdefault(tuple(models[i].kept), []).append(i)
    for members in same_columns.values():
        for g in range(0, len(members), per):
            group = [models[i] for i in members[g:g + per]]
            parts = [fit_chunk(group, r, options, need, start) for r, start in zip(responses, starts)]
            for j, i in enumerate(members[g:g + per]):
                out[i] = _concatenate([p[j] for p in parts])
    return out


def _fit_general(specs, models, ok, Y, options, need, start_from, out):
    """The general path's part of :func:`fit_blocks`: fills ``out`` for the specifications ``ok``."""
    n, k = Y.shape
    first = models[ok[0]]
    per_chunk = general_chunk(first.structure, first.X.shape[1], CHUNK_STATISTIC if need == "statistic" else CHUNK)
    cols = max(1, min(k, per_chunk))
    col_chunks = [slice(c, c + cols) for c in range(0, k, cols)]
    # Each response's optimum under a specification is kept: its permutations start there.
    key = ("native-general-start", hashlib.sha1(np.ascontiguousarray(Y).tobytes()).hexdigest(), options.reml)
    start = None
    if start_from is not None:
        def optima():
            m = prepare(start_from, options, n)
            if m.error or not m.general:
                return None
            optima = [GeneralFits([m], Y[:, c]).optimum(options.reml) for c in col_chunks]
            return np.concatenate([o[0] for o in optima]), np.concatenate([o[2] for o in optima])

        start = start_from.shared(key, optima)
    per = max(1, per_chunk // cols)
    same_columns = {}
    for i in ok:
        same_columns.setdefault(tuple(models[i].kept), []).append(i)
    for members in same_columns.values():
        for g in range(0, len(members), per):
            group = members[g:g + per]
            parts, optimum = [], []
            for c in col_chunks:
                fits = GeneralFits([models[i] for i in group], Y[:, c])
                st = H0 = None
                if start is not None:  # the observed optimum and the Hessian there
                    st, H0 = np.tile(start[0][c], (len(group), 1)), np.tile(start[1][c], (len(group), 1, 1))
                theta, conv, H = fits.optimum(options.reml, st, H0)
                parts.append(fits.evaluate(theta, conv, options, need))
                optimum.append((theta, H))
            for j, i in enumerate(group):
                out[i] = _concatenate([p[j] for p in parts])
            if start_from is None and len(group) == 1:  # an observed fit: its permutations will start here
                specs[group[0]].shared(key, lambda: tuple(np.concatenate(o) for o in zip(*optimum)))


def evaluate_at(model, Y, options: FitOptions, theta, need: str = "all") -> BlockFit:
    """What :func:`fit_block` reports, at a given theta instead of the native optimum.

    Parameters
    ----------
    model : clusterlmer.spec.ModelSpec or clusterlmer.design.ModelDesign
    Y : ndarray (n, k)
    options : FitOptions
    theta : ndarray (n_theta,) or (n_theta, k)
        lme4's theta (its term order and layout, as ``getME(fit, "theta")``).
    need : {"all", "statistic"}

    Returns
    -------
    BlockFit
        ``converged`` says only that the criterion is finite there.
    """
    spec = as_spec(model)
    Y = np.asarray(Y, dtype=float)
    Y = Y[:, None] if Y.ndim == 1 else Y
    n, k = Y.shape
    m = prepare(spec, options, n)
    if m.error:
        return _block_error(m.terms, m.coef_names, k, m.error)
    theta = np.asarray(theta, dtype=float)
    theta = np.tile(theta[:, None], (1, k)) if theta.ndim == 1 else theta
    ok = np.ones(k, bool)
    if m.general:
        return GeneralFits([m], Y).evaluate(np.ascontiguousarray(theta.T), ok, options, need)[0]
    responses = Responses(m.structure, Y)
    block = Block(m.structure, responses, [m.X])
    # lme4 orders nested intercepts finest first; the nested path works coarsest first in theta^2.
    return evaluate(m, block, np.ascontiguousarray(theta.T[:, ::-1] ** 2), ok, options, need)


def _optima(model, responses, options):
    """phi at the optimum under ``model`` per response chunk (None where that model cannot be fitted)."""
    if model.error:
        return [None] * len(responses)
    out = []
    for r in responses:
        phi, _, _ = optimize(Block(model.structure, r, [model.X]), options.reml)
        out.append(np.where(np.isfinite(phi), phi, 1.0))
    return out


def fit_chunk(models, responses: Responses, options: FitOptions, need: str = "all", start=None) -> list:
    """The fits of the responses under each of ``models`` (one Block): optimum, then ``evaluate`` there.

    ``start`` (R, G): where each response's optimisation starts (the same for every model).
    """
    block = Block(models[0].structure, responses, [m.X for m in models])
    phi, ok, _ = optimize(block, options.reml, start=None if start is None else np.tile(start, (len(models), 1)))
    R = responses.R
    setup = [m.setup_messages for m in models for _ in range(R)]
    fit = evaluate(models[0], block, phi, ok, options, need, setup)
    return [fit] if len(models) == 1 else [_columns(fit, slice(d * R, (d + 1) * R)) for d in range(len(models))]


_ARRAYS = ("F", "df1", "df2", "p", "contrast_estimate", "estimate", "se", "coef_df", "coef_se", "sigma", "deviance",
           "converged", "singular")


def _columns(fit, cols):
    """The fits ``cols`` of a BlockFit (one specification's)."""
    per_fit = {name: getattr(fit, name)[..., cols] for name in _ARRAYS}
    return BlockFit(terms=fit.terms, coef_names=fit.coef_names, messages=fit.messages[cols],
                    errors=fit.errors[cols], **per_fit)


def _concatenate(parts):
    """One BlockFit from the fits of consecutive response chunks."""
    if len(parts) == 1:
        return parts[0]
    cat = {name: np.concatenate([getattr(b, name) for b in parts], axis=-1) for name in _ARRAYS}
    return BlockFit(terms=parts[0].terms, coef_names=parts[0].coef_names,
                    messages=[m for b in parts for m in b.messages], errors=[e for b in parts for e in b.errors],
                    **cat)


def evaluate(model: Prepared, block: Block, phi, ok, options: FitOptions, need: str = "all",
             setup=None) -> BlockFit:
    """Everything lme4 and lmerTest report for the responses of ``block`` at ``phi``.

    Parameters
    ----------
    model : Prepared
    block : Block
        The sufficient statistics of the responses.
    phi : ndarray, shape (k, G)
        ``theta**2`` per response, coarsest grouping first (lme4's theta
        ``t``, finest first, gives ``t[:, ::-1] ** 2``).
    ok : ndarray of bool, shape (k,)
        Whether the optimiser converged (False adds a message).
    options : FitOptions
    need : {"all", "statistic"}
        As :func:`fit_block`.
    setup : list of list of str, optional
        lme4's set-up messages per fit (default: ``model``'s for every fit).

    Returns
    -------
    BlockFit
    """
    n, p = model.X.shape
    k = phi.shape[0]
    reml = options.reml
    D, _, _, pc = block.criterion(np.ascontiguousarray(phi.T), None, 0, reml, ainv=True)
    theta = np.sqrt(phi)
    dof = n - p if reml else n
    sigma = np.sqrt(pc["r2"] / dof)
    beta = pc["beta"].T.copy()
    beta[:, 0] += block.ybar
    Vb = (sigma * sigma)[:, None, None] * pc["Ainv"].transpose(2, 0, 1)
    se = np.sqrt(np.diagonal(Vb, axis1=1, axis2=2))
    singular = np.any(theta < SINGULAR_TOL, axis=1)

    per_msgs = [[] for _ in range(k)]
    for r in np.flatnonzero(singular):
        per_msgs[r].append(SINGULAR_MESSAGE)
    varpar = None
    if options.ddf == "satterthwaite" and need == "all":
        Hvp, Jac = varpar_parts(nested_values(block, reml), theta[:, ::-1], sigma, reml, n, p)
        Avp, vp_msgs = vcov_varpar(Hvp)
        varpar = (Jac, Avp)
        for r in range(k):
            per_msgs[r] += vp_msgs[r]
    F, df1, df2, pval, cest = term_tests(model, beta, Vb, options.ddf, n - p, varpar, need)
    cdf = coefficient_df(Vb, options.ddf, n - p, varpar, need)
    if p < len(model.coef_names):  # columns lme4 dropped: NaN estimates
        beta, se, cdf = (scatter_columns(x, model.kept, len(model.coef_names)) for x in (beta, se, cdf))

    failed = ~np.isfinite(D)
    if failed.any():  # e.g. a response fitted exactly by the fixed effects
        for arr in (F, df1, df2, pval, cest):
            arr[:, failed] = np.nan
        beta[failed], se[failed], cdf[failed], sigma[failed], D[failed] = np.nan, np.nan, np.nan, np.nan, np.nan
    errors = ["the native engine's criterion is not finite at the optimum" if f else "" for f in failed]
    setup = [model.setup_messages] * k if setup is None else setup
    messages, converged = [""] * k, ok & ~failed
    # Most fits have nothing to say: only those with a message are assembled one by one.
    speak = ~ok | np.array([bool(a) or bool(b) for a, b in zip(setup, per_msgs)], dtype=bool)
    for r in np.flatnonzero(speak):
        msgs = list(dict.fromkeys(setup[r] + per_msgs[r]))
        if not ok[r]:
            msgs.append("native optimizer did not converge")
        messages[r] = "; ".join(msgs)
        converged[r] = converged[r] and not any("converge" in m.lower() for m in msgs)
    return BlockFit(
        terms=model.terms, coef_names=model.coef_names, F=F, df1=df1, df2=df2, p=pval, contrast_estimate=cest,
        estimate=beta.T.copy(), se=se.T.copy(), sigma=sigma, deviance=D, converged=converged,
        singular=singular.astype(float), messages=messages, errors=errors, coef_df=cdf.T.copy(), coef_se=se.T.copy(),
    )


def _block_error(terms, coefs, k, message):
    nt, nc = len(terms), len(coefs)
    nan = np.full
    return BlockFit(
        terms=terms, coef_names=coefs,
        F=nan((nt, k), np.nan), df1=nan((nt, k), np.nan), df2=nan((nt, k), np.nan), p=nan((nt, k), np.nan),
        contrast_estimate=nan((nt, k), np.nan), estimate=nan((nc, k), np.nan), se=nan((nc, k), np.nan),
        coef_df=nan((nc, k), np.nan), coef_se=nan((nc, k), np.nan),
        sigma=nan(k, np.nan), deviance=nan(k, np.nan), converged=np.zeros(k, bool),
        singular=nan(k, np.nan), messages=[""] * k, errors=[message] * k,
    )
