"""The test of each fixed term: F, its degrees of freedom and p.

A term is tested on a contrast matrix ``L`` of the coefficients: for the
marginal test (:func:`marginal_tests`) the identity rows of the term's own
coefficients (intercept included), as MATLAB's ``anova`` does; for
lmerTest's type III test (:func:`contrast_tests`) the matrices of
:func:`clusterlmer.type3.type3_contrasts`; user contrasts
(:mod:`clusterlmer.contrasts`) follow the terms, each tested as lmerTest's
``contest(joint = TRUE)`` with its right-hand side. With Satterthwaite DF the
formulas are lmerTest's ``contest1D`` (one row: ``F = t^2``) and
``contestMD`` (several: F over the positive eigenvalues of ``L vcov L'``,
DF combined by ``get_Fstat_ddf``), fed the derivatives of
:mod:`.satterthwaite`; otherwise a Wald F with ``n - p`` (``"residual"``)
or infinite (``"none"``) denominator DF. Asked for the statistic only, the
same F (computed by the same arithmetic) comes without DF2 or p.
"""

from __future__ import annotations

import numpy as np
from scipy import special  # scipy.stats' f.sf and chi2.sf call these; importing stats takes ~1 s

__all__ = ["coefficient_df", "contrast_tests", "f_sf", "marginal_tests", "satterthwaite_md", "term_tests"]

_SQRT_EPS = np.sqrt(np.finfo(float).eps)


def marginal_tests(assign, n_terms, beta, Vb, ddf, resid_df, varpar=None, need="all"):
    """F, DF1, DF2, p and the contrast estimate of every term's marginal test.

    Parameters
    ----------
    assign : ndarray of int, shape (p,)
        Term of each coefficient (R's ``assign``; 0 is the intercept).
    n_terms : int
    beta : ndarray, shape (k, p)
    Vb : ndarray, shape (k, p, p)
        ``vcov(beta)`` per response.
    ddf : {"satterthwaite", "residual", "none"}
    resid_df : int
        ``n - p``, DF2 of ``ddf="residual"``.
    varpar : tuple (Jac, A), optional
        Satterthwaite's Jacobian of ``vcov(beta)`` (k, nv, p, p) and
        covariance of the variance parameters (k, nv, nv) from
        :mod:`.satterthwaite`; needed for ``ddf="satterthwaite"`` with
        ``need="all"``.
    need : {"all", "statistic"}
        ``"statistic"``: F, DF1 and the contrast estimate only (DF2 and p NaN).

    Returns
    -------
    F, df1, df2, p, contrast_estimate : ndarray, shape (n_terms, k)
        ``contrast_estimate`` is the coefficient of one-coefficient terms
        (the sign of their t), NaN for the others.
    """
    columns = [np.flatnonzero(assign == ti) for ti in range(n_terms)]
    return _term_tests(columns, beta, Vb, ddf, resid_df, varpar, need)


def contrast_tests(contrasts, beta, Vb, ddf, resid_df, varpar=None, need="all", rhs=None):
    """F, DF1, DF2, p and the contrast estimate of the test ``L beta = 0`` of each ``L`` in ``contrasts``.

    Parameters
    ----------
    contrasts : list of ndarray, each shape (q_t, p)
        One contrast matrix per term (e.g. lmerTest's type III hypotheses,
        :func:`clusterlmer.type3.type3_contrasts`); a matrix without rows
        gives NaN. A matrix of identity rows is tested exactly as
        :func:`marginal_tests` tests those coefficients.
    beta, Vb, ddf, resid_df, varpar, need
        As for :func:`marginal_tests`.
    rhs : list of ndarray, optional
        Right-hand side per contrast (``L beta = rhs``, lmerTest's
        ``contest``; rows of ``L`` independent where it is not 0).

    Returns
    -------
    F, df1, df2, p, contrast_estimate : ndarray, shape (len(contrasts), k)
        DF1 is the rank of ``L vcov(beta) L'`` (lmerTest's NumDF);
        ``contrast_estimate`` is ``L beta - rhs`` for one-row contrasts (the
        sign of their t), NaN for the others.
    """
    return _term_tests([_identity_columns(L) for L in contrasts], beta, Vb, ddf, resid_df, varpar, need, rhs)


def _identity_columns(L):
    """The column of each row's single 1 when ``L`` is made of identity rows, else ``L`` itself."""
    L = np.asarray(L, dtype=float)
    if L.shape[0] and np.all((L == 0) | (L == 1)) and np.all(L.sum(axis=1) == 1):
        return np.argmax(L, axis=1)
    return L


def _project(item, beta, Vb, Jac):
    """``L beta``, ``L Vb L'`` and ``L Jac L'`` for a contrast ``item``: column indices or a matrix ``L``."""
    if item.ndim == 1:  # identity rows: select, which is exact and cheap
        cols = item
        JL = None if Jac is None else Jac[:, :, cols[:, None], cols[None, :]]
        return beta[:, cols], Vb[:, cols[:, None], cols[None, :]], JL
    L = item
    JL = None if Jac is None else L @ Jac @ L.T
    return beta @ L.T, L @ Vb @ L.T, JL


def _term_tests(items, beta, Vb, ddf, resid_df, varpar, need, rhs=None):
    nt, k = len(items), beta.shape[0]
    F, df1, df2, pval, cest = (np.full((nt, k), np.nan) for _ in range(5))
    full = need == "all"
    Jac = varpar[0] if (ddf == "satterthwaite" and full) else None
    for ti, item in enumerate(items):
        q = item.shape[0]
        if q == 0:  # every column of the term was dropped (rank-deficient X): nothing to test
            continue
        bL, VL, JL = _project(item, beta, Vb, Jac)
        if rhs is not None:  # L (beta - L^+ rhs) as contestMD shifts beta, for independent rows
            bL = bL - rhs[ti]
        if q == 1:
            cest[ti] = bL[:, 0]
        if ddf == "satterthwaite":
            A = varpar[1] if full else None
            if q == 1:
                var_con = VL[:, 0, 0]
                tval = bL[:, 0] / np.sqrt(var_con)
                F[ti], df1[ti] = tval**2, 1.0
                if full:
                    grad = JL[:, :, 0, 0]
                    df2[ti] = 2 * var_con**2 / np.einsum("ri,rij,rj->r", grad, A, grad)
            else:
                F[ti], df1[ti], df2[ti] = satterthwaite_md(VL, bL, JL, A)
        else:
            lam, vec = np.linalg.eigh(VL)
            tol = np.maximum(_SQRT_EPS * lam[:, -1:], 0.0)
            pos = lam > tol
            z = np.einsum("rji,rj->ri", vec, bL)
            qq = pos.sum(axis=1)
            F[ti] = np.where(pos, z * z / np.where(pos, lam, 1.0), 0.0).sum(axis=1) / qq
            df1[ti] = qq
            if full:
                df2[ti] = resid_df if ddf == "residual" else np.inf
        if full:
            pval[ti] = f_sf(F[ti], df1[ti], df2[ti])
    return F, df1, df2, pval, cest


def satterthwaite_md(VL, bL, JL=None, A=None, eps=_SQRT_EPS):
    """lmerTest's contestMD for a batch: F, NumDF, DenDF (each (k,)).

    ``VL`` (k, q, q), ``bL`` (k, q), ``JL`` (k, nv, q, q), ``A`` (k, nv, nv);
    without ``JL`` and ``A`` DenDF is NaN (the statistic only).
    """
    lam, vec = np.linalg.eigh(VL)
    lam, vec = lam[:, ::-1], vec[:, :, ::-1]  # R's decreasing order; columns = rows of PtL
    pos = lam > np.maximum(eps * lam[:, :1], 0.0)
    q = pos.sum(axis=1)
    safe = np.where(pos, lam, 1.0)
    z = np.einsum("rim,ri->rm", vec, bL)
    with np.errstate(invalid="ignore", divide="ignore"):
        F = np.where(pos, z * z / safe, 0.0).sum(axis=1) / q
        if JL is not None:
            grad = np.einsum("rim,rkij,rjm->rmk", vec, JL, vec)
            nu = 2 * safe**2 / np.einsum("rmk,rkl,rml->rm", grad, A, grad)
    if JL is None:
        ddf = np.full(len(F), np.nan)
    elif np.all(q == nu.shape[1]):
        ddf = _fstat_ddf_batch(nu)
    else:
        ddf = np.array([_fstat_ddf(nu[r, : q[r]]) if q[r] > 0 else np.nan for r in range(len(F))])
    F[q == 0] = np.nan
    return F, np.where(q > 0, q, np.nan).astype(float), ddf


def _fstat_ddf(nu, tol=1e-8):
    """lmerTest:::get_Fstat_ddf for one vector of nu."""
    if len(nu) == 1:
        return nu[0]
    if np.all(np.abs(np.diff(nu)) < tol):
        return np.mean(nu)
    if np.any(nu <= 2):
        return 2.0
    E = np.sum(nu / (nu - 2))
    return 2 * E / (E - len(nu))


def _fstat_ddf_batch(nu, tol=1e-8):
    """get_Fstat_ddf for each row of nu (k, q), q >= 2."""
    with np.errstate(invalid="ignore", divide="ignore"):
        E = np.sum(nu / (nu - 2), axis=1)
        out = 2 * E / (E - nu.shape[1])
    out = np.where(np.any(nu <= 2, axis=1), 2.0, out)
    return np.where(np.all(np.abs(np.diff(nu, axis=1)) < tol, axis=1), nu.mean(axis=1), out)


def f_sf(F, df1, df2):
    """Upper tail of F(df1, df2); chi-squared(df1) / df1 where ``df2`` is infinite; NaN where F is not finite."""
    F, df1, df2 = np.broadcast_arrays(np.asarray(F, float), np.asarray(df1, float), np.asarray(df2, float))
    out = np.full(F.shape, np.nan)
    inf = np.isinf(df2) & np.isfinite(F)
    fin = np.isfinite(df2) & np.isfinite(F)
    out[inf] = special.chdtrc(df1[inf], F[inf] * df1[inf])
    out[fin] = special.fdtrc(df1[fin], df2[fin], F[fin])
    return out


def term_tests(model, beta, Vb, ddf, resid_df, varpar=None, need="all"):
    """F, DF1, DF2, p and contrast estimates of a prepared model's terms: marginal, or type III.

    ``model`` has ``assign`` and ``terms`` (marginal tests) and ``contrasts``:
    None, or lmerTest's type III contrast per term; ``user`` (optional): the
    ``(L, rhs)`` of user contrasts, whose rows follow the terms' (their
    names end ``terms``).
    """
    user = getattr(model, "user", ())
    if model.contrasts is None:
        out = marginal_tests(model.assign, len(model.terms) - len(user), beta, Vb, ddf, resid_df, varpar, need)
    else:
        out = contrast_tests(model.contrasts, beta, Vb, ddf, resid_df, varpar, need)
    if not user:
        return out
    extra = contrast_tests([L for L, _ in user], beta, Vb, ddf, resid_df, varpar, need, [r for _, r in user])
    return tuple(np.vstack([a, b]) for a, b in zip(out, extra))


def coefficient_df(Vb, ddf, resid_df, varpar=None, need="all"):
    """DF of each coefficient's t test (lmerTest's ``summary()``: ``contest1D`` on an identity row).

    Parameters
    ----------
    Vb : ndarray, shape (k, p, p)
    ddf, resid_df, varpar, need
        As for :func:`marginal_tests`.

    Returns
    -------
    ndarray, shape (k, p)
        Satterthwaite's ``2 V_jj^2 / (g' A g)`` with ``g`` the derivatives of
        ``V_jj``; ``n - p`` or infinite for ``"residual"`` and ``"none"``; NaN
        for the statistic only (permutations never need it).
    """
    k, p = Vb.shape[0], Vb.shape[1]
    if need != "all":
        return np.full((k, p), np.nan)
    if ddf != "satterthwaite":
        return np.full((k, p), float(resid_df) if ddf == "residual" else np.inf)
    Jac, A = varpar
    var = np.diagonal(Vb, axis1=1, axis2=2)  # (k, p)
    grad = np.diagonal(Jac, axis1=2, axis2=3)  # (k, nv, p)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * var**2 / np.einsum("rip,rij,rjp->rp", grad, A, grad)
