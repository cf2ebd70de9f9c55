"""The native engine's entry point: a block of responses in, a ``BlockFit`` out.

``fit_block`` prepares what the fits of a block share (``prepare``: the
supported model's parts, the fixed-effect matrix and lme4's checks on the
block's rows), then per chunk of responses builds the sufficient statistics
(:class:`.criterion.Block`), finds the optimum (:func:`.optimize.optimize`)
and evaluates everything lme4 and lmerTest report there (``evaluate``):
sigma, beta, ``vcov(beta)``, the marginal tests with Satterthwaite's
derivatives when asked, and lme4's messages. ``evaluate`` takes any theta, so
the model can also be evaluated where another optimiser (lme4's) ended.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..._checks import check_option, option_hint
from ..base import NEEDS, BlockFit, FitOptions
from .criterion import Block
from .fixed import FixedPart, rank_problem, scale_message
from .marginal import marginal_tests
from .nesting import Nesting, design_checks
from .optimize import optimize
from .satterthwaite import varpar_parts, vcov_varpar
from .support import UnsupportedModel, require

__all__ = ["CHUNK", "Prepared", "evaluate", "fit_block", "prepare"]

SINGULAR_MESSAGE = "boundary (singular) fit: see help('isSingular')"
SINGULAR_TOL = 1e-4  # lme4::isSingular
# Responses fitted together (memory: the Satterthwaite step evaluates ~40
# points per response at once).
CHUNK = 512
_ENGINE_R = "engine='r'"


@dataclass(frozen=True)
class Prepared:
    """What every fit of a block shares: the model's parts on the block's rows.

    ``error`` (non-empty) is why no response of the block can be fitted;
    ``fixed``, ``nest`` and ``X`` are then not to be used.
    """

    terms: tuple
    coef_names: tuple
    fixed: FixedPart
    nest: Nesting | None
    X: np.ndarray | None
    setup_messages: list
    error: str = ""


def prepare(design, options: FitOptions, n: int) -> Prepared:
    """The shared parts of the fits of ``n`` rows under ``design``.

    Raises
    ------
    UnsupportedModel
        If the model or options are outside the native class. Identical
        groupings, which a subset of rows can create from nested ones, are
        an error of the block instead (``Prepared.error``).
    """
    try:
        fixed, nest = require(design, options)
    except UnsupportedModel as exc:
        if "define the same groups" not in str(exc):
            raise
        fixed = FixedPart(design)
        return Prepared(("(Intercept)", *fixed.labels), fixed.coef_names, fixed, None, None, [], str(exc))
    terms, coefs = ("(Intercept)", *fixed.labels), fixed.coef_names
    err = design_checks(nest, n)
    if err:
        return Prepared(terms, coefs, fixed, nest, None, [], err)
    X = fixed.matrix(design.frame)
    why = rank_problem(fixed, X)
    if why:
        return Prepared(terms, coefs, fixed, nest, X, [],
                        f"{why}: fit these data with {option_hint(_ENGINE_R, '--engine r')}")
    return Prepared(terms, coefs, fixed, nest, X, [m for m in (scale_message(X),) if m])


def fit_block(design, Y, options: FitOptions, need: str = "all") -> BlockFit:
    """Fit every column of ``Y`` under one design (nested random intercepts only).

    Parameters
    ----------
    design : clusterlmer.design.ModelDesign
        Design restricted to the rows of ``Y``.
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
    check_option("need", need, NEEDS)
    Y = np.asarray(Y, dtype=float)
    if Y.ndim == 1:
        Y = Y[:, None]
    n, k = Y.shape
    model = prepare(design, options, n)
    if model.error:
        return _block_error(model.terms, model.coef_names, k, model.error)
    parts = [fit_chunk(model, Y[:, c:c + CHUNK], options, need) for c in range(0, k, CHUNK)]
    if len(parts) == 1:
        return parts[0]
    cat = {name: np.concatenate([getattr(b, name) for b in parts], axis=-1)
           for name in ("F", "df1", "df2", "p", "contrast_estimate", "estimate", "se", "sigma", "deviance",
                        "converged", "singular")}
    return BlockFit(terms=model.terms, coef_names=model.coef_names, messages=[m for b in parts for m in b.messages],
                    errors=[e for b in parts for e in b.errors], **cat)


def fit_chunk(model: Prepared, Y, options: FitOptions, need: str = "all") -> BlockFit:
    """The fits of a chunk of responses: optimum, then ``evaluate`` there."""
    block = Block(model.X, model.nest, Y)
    phi, ok, _ = optimize(block, options.reml)
    return evaluate(model, block, phi, ok, options, need)


def evaluate(model: Prepared, block: Block, phi, ok, options: FitOptions, need: str = "all") -> BlockFit:
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
        Hvp, Jac = varpar_parts(block, theta[:, ::-1], sigma, reml)
        Avp, vp_msgs = vcov_varpar(Hvp)
        varpar = (Jac, Avp)
        for r in range(k):
            per_msgs[r] += vp_msgs[r]
    F, df1, df2, pval, cest = marginal_tests(model.fixed.assign, len(model.terms), beta, Vb, options.ddf, n - p,
                                             varpar, need)

    failed = ~np.isfinite(D)
    if failed.any():  # e.g. a response fitted exactly by the fixed effects
        for arr in (F, df1, df2, pval, cest):
            arr[:, failed] = np.nan
        beta[failed], se[failed], sigma[failed], D[failed] = np.nan, np.nan, np.nan, np.nan
    messages, errors, converged = [], [], np.zeros(k, bool)
    for r in range(k):
        msgs = list(dict.fromkeys(model.setup_messages + per_msgs[r]))
        errors.append("the native engine's criterion is not finite at the optimum" if failed[r] else "")
        if not ok[r]:
            msgs.append("native optimizer did not converge")
        messages.append("; ".join(msgs))
        converged[r] = bool(ok[r]) and not failed[r] and not any("converge" in m.lower() for m in msgs)
    return BlockFit(
        terms=model.terms, coef_names=model.coef_names, F=F, df1=df1, df2=df2, p=pval, contrast_estimate=cest,
        estimate=beta.T.copy(), se=se.T.copy(), sigma=sigma, deviance=D, converged=converged,
        singular=singular.astype(float), messages=messages, errors=errors,
    )


def _block_error(terms, coefs, k, message):
    nt, nc = len(terms), len(coefs)
    nan = np.full
    return BlockFit(
        terms=terms, coef_names=coefs,
        F=nan((nt, k), np.nan), df1=nan((nt, k), np.nan), df2=nan((nt, k), np.nan), p=nan((nt, k), np.nan),
        contrast_estimate=nan((nt, k), np.nan), estimate=nan((nc, k), np.nan), se=nan((nc, k), np.nan),
        sigma=nan(k, np.nan), deviance=nan(k, np.nan), converged=np.zeros(k, bool),
        singular=nan(k, np.nan), messages=[""] * k, errors=[message] * k,
    )
