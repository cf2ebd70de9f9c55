"""Fitting every sample of a block: responses grouped by missing values, rescaled when extreme.

``fit_samples`` fits each column of a (n_obs, n_samples) response block with
an engine under one model specification; ``fit_sample_sets`` does the same
under several (the permutations of one analysis), fitted together by the
engine where it can. Columns are grouped by the rows they are finite on
(each group fitted on those rows), constant columns are not fitted, and a
column whose scale would spoil lmerTest's numerical derivatives is fitted
multiplied by a power of two and mapped back. What depends on the responses
alone is prepared once (``sample_responses``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .engines import get_engine
from .engines.base import BlockFit
from .spec import as_spec

__all__ = ["RESCALE_EXPONENTS", "SampleResponses", "fit_sample_sets", "fit_samples", "response_exponents",
           "sample_responses"]


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
    for name in ("estimate", "se", "coef_se", "contrast_estimate", "sigma"):
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
    out.update(estimate=full(nc), se=full(nc), coef_df=full(nc), coef_se=full(nc))
    out.update(sigma=np.full(n_samples, np.nan), deviance=np.full(n_samples, np.nan),
               singular=np.full(n_samples, np.nan), converged=np.zeros(n_samples, bool))
    messages = [""] * n_samples
    errors = ["the response is constant at this sample (no variance to model)" if c
              else "no finite response values at this sample" for c in constant]
    for cols, blk in blocks:
        for name in ("F", "df1", "df2", "p", "contrast_estimate", "estimate", "se", "coef_df", "coef_se"):
            out[name][:, cols] = getattr(blk, name)
        for name in ("sigma", "deviance", "singular", "converged"):
            out[name][cols] = getattr(blk, name)
        for j, c in enumerate(cols):
            messages[c], errors[c] = blk.messages[j], blk.errors[j]
    if shift.any():
        _scale_back(out, shift, resp.n_used, options.reml)
    return BlockFit(terms=terms, coef_names=coefs, messages=messages, errors=errors, **out)
