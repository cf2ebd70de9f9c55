"""lme4's profiled criterion for any random-effects structure, batched over responses.

The nested-intercept path (:mod:`.criterion`) relies on ``V`` being block
diagonal by outermost group. This module needs no such structure: it follows
lme4's penalized least squares (Bates, Maechler, Bolker & Walker 2015, JSS
67(1), section 3) for every model a :class:`clusterlmer.spec.ModelSpec`
describes -- correlated and ``||`` slopes, nested, crossed and partially
crossed groupings. For a theta,

* ``Lambda(theta)`` is block diagonal: per term (in lme4's order, see
  :func:`lme4_term_order`) ``I_levels (x) T`` with ``T`` the term's
  :meth:`~clusterlmer.spec.RandomEffectsTerm.relative_factor`;
* ``L L' = Lambda' Z'Z Lambda + I``, ``R_ZX = L^-1 Lambda' Z'X``,
  ``R_X' R_X = X'X - R_ZX' R_ZX``;
* ``c_u = L^-1 Lambda' Z'y``, ``c_beta = R_X'^-1 (X'y - R_ZX' c_u)``,
  ``beta = R_X^-1 c_beta``, ``pwrss = y'y - |c_u|^2 - |c_beta|^2``;
* REML: ``ldL2 + ldRX2 + (n-p) (1 + log(2 pi pwrss / (n-p)))``,
  ML: ``ldL2 + n (1 + log(2 pi pwrss / n))``, as lme4's ``mkLmerDevfun``.

The data enter as cross products, MixedModels.jl's ``[Z X y]'[Z X y]`` idea:
``Z'Z`` once per random part (shared by a spec's permutations through
:meth:`~clusterlmer.spec.ModelSpec.shared` unless a permutation moves a
variable a random slope uses), ``Z'X`` and ``X'X`` once per ``X``, and only
``Z'y``, ``X'y``, ``y'y`` per response, so a block of responses costs one
matrix product with the data.

The factorisation here is dense numpy/scipy, one theta at a time: the plain
statement of lme4's criterion, which the fitting path (:mod:`.blocked`, blocked
and batched) is tested against, and :func:`lme4_term_order`, which lays out
theta for both. Small factorisations want one BLAS thread per process: on a
busy 2-core machine multi-threaded OpenBLAS made a 199 x 199 Cholesky 50 times
slower (10 ms against 0.2 ms with ``OPENBLAS_NUM_THREADS=1``).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg, sparse

__all__ = ["CrossProducts", "RandomLayout", "lme4_term_order", "profiled_criterion"]

_LOG_2PI = np.log(2 * np.pi)


def lme4_term_order(spec) -> list:
    """Indices into ``spec.random`` in lme4's order of the random-effects terms.

    lme4 (``mkReTrms``) takes the terms as ``findbars`` lists them -- formula
    order, but ``a/b`` as ``b:a`` then ``a`` (the reverse of ``spec.random``)
    -- and, if the numbers of levels ever increase along that list, reorders
    them by ``rev(order(nl))``: decreasing number of levels, ties in reverse.
    The theta vector (and so lme4's theta) is laid out in this order.
    """
    terms = spec.random
    findbars = sorted(range(len(terms)), key=lambda j: (terms[j].source, -terms[j].nest_level, j))
    nl = np.array([terms[j].n_levels for j in findbars])
    if np.any(np.diff(nl) > 0):
        findbars = [findbars[j] for j in np.argsort(nl, kind="stable")[::-1]]
    return findbars


class RandomLayout:
    """The random part in lme4's order: terms, their rows of ``Z'`` and their entries of theta.

    Attributes
    ----------
    terms : list of RandomEffectsTerm
        In lme4's order.
    slices : list of slice
        Each term's rows of ``Zt`` (``levels * k`` of them, level-major).
    theta_slices : list of slice
        Each term's entries of theta.
    n_theta, q : int
    lower : ndarray
        lme4's lower bounds of theta.
    Zt : scipy.sparse.csr_matrix
        ``Z'`` (q, n), lme4's ``Zt`` up to the order of levels within a term.
    ZtZ : ndarray
        Dense ``Z'Z`` (q, q).
    """

    def __init__(self, spec):
        self.terms = [spec.random[i] for i in lme4_term_order(spec)]
        self.slices, self.theta_slices = [], []
        row = th = 0
        for t in self.terms:
            width = t.n_levels * len(t.coef_names)
            self.slices.append(slice(row, row + width))
            self.theta_slices.append(slice(th, th + t.n_theta))
            row, th = row + width, th + t.n_theta
        self.q, self.n_theta = row, th
        self.lower = np.concatenate([t.theta_lower for t in self.terms])
        self.Zt = sparse.vstack([t.Zt(spec.values) for t in self.terms], format="csr")
        self.ZtZ = (self.Zt @ self.Zt.T).toarray()

    @classmethod
    def of(cls, spec) -> "RandomLayout":
        """The layout of ``spec``, shared with its permutations when they leave the random part alone."""
        slopes = {v for t in spec.random for v in t.variables}
        if slopes.intersection(spec.moved):
            # A permuted slope variable changes Z itself: nothing to share.
            return cls(spec)
        return spec.shared("general-layout", lambda: cls(spec))

    def factors(self, theta) -> list:
        """Each term's relative factor ``T`` (k x k) for ``theta`` (n_theta,)."""
        return [t.relative_factor(theta[s]) for t, s in zip(self.terms, self.theta_slices)]

    def times_lambda(self, M, factors) -> np.ndarray:
        """``M Lambda`` for M (r, q): per term, each level's k columns times ``T``."""
        out = np.empty_like(M)
        for t, s, T in zip(self.terms, self.slices, factors):
            k = T.shape[0]
            out[:, s] = (M[:, s].reshape(M.shape[0], t.n_levels, k) @ T).reshape(M.shape[0], -1)
        return out


class CrossProducts:
    """``Z'Z`` (from the layout), ``Z'X`` and ``X'X`` of one specification.

    Build once per ``X`` and pass it to :func:`profiled_criterion` while the
    design is reused (``Z'Z`` itself comes from :meth:`RandomLayout.of`,
    shared across permutations); :meth:`responses` adds the parts of a block
    of responses.
    """

    def __init__(self, spec):
        self.layout = RandomLayout.of(spec)
        X = np.asarray(spec.X, dtype=float)
        self.n, self.p = X.shape
        self.X = X
        self.ZtX = np.asarray(self.layout.Zt @ X)
        self.XtX = X.T @ X
        # With an intercept column, y - ybar has the same criterion and the same
        # beta but the intercept; centring keeps y'y close to pwrss, so the
        # subtraction pwrss = y'y - |c_u|^2 - |c_beta|^2 loses fewer digits.
        self.intercept_column = 0 if (spec.fixed.intercept and np.all(X[:, 0] == 1.0)) else None

    def responses(self, Y):
        """``(Z'y, X'y, y'y, shift)`` of responses Y (n, k), centred when the design has an intercept."""
        Y = np.asarray(Y, dtype=float)
        if Y.ndim == 1:
            Y = Y[:, None]
        if Y.shape[0] != self.n:
            raise ValueError(f"Y has {Y.shape[0]} rows, the design {self.n}")
        shift = Y.mean(axis=0) if self.intercept_column is not None else np.zeros(Y.shape[1])
        Yc = Y - shift
        return np.asarray(self.layout.Zt @ Yc), self.X.T @ Yc, np.einsum("ij,ij->j", Yc, Yc), shift


def _at_theta(cp, theta, Zty, Xty, yty):
    """Everything at one theta for responses with cross products (q, k), (p, k), (k,)."""
    lay = cp.layout
    F = lay.factors(theta)
    # Lambda' Z'Z Lambda = (Z'Z Lambda)' Lambda, Z'Z symmetric.
    A = lay.times_lambda(lay.times_lambda(lay.ZtZ, F).T, F)
    A = 0.5 * (A + A.T)
    A[np.diag_indices_from(A)] += 1.0
    L = linalg.cholesky(A, lower=True)
    ldL2 = 2.0 * np.log(np.diag(L)).sum()
    RZX = linalg.solve_triangular(L, lay.times_lambda(cp.ZtX.T, F).T, lower=True)  # (q, p)
    cu = linalg.solve_triangular(L, lay.times_lambda(Zty.T, F).T, lower=True)  # (q, k)
    XtX = cp.XtX - RZX.T @ RZX
    RX = linalg.cholesky(0.5 * (XtX + XtX.T), lower=False)  # upper: R_X' R_X
    ldRX2 = 2.0 * np.log(np.diag(RX)).sum()
    cb = linalg.solve_triangular(RX, Xty - RZX.T @ cu, trans="T", lower=False)
    beta = linalg.solve_triangular(RX, cb, lower=False)
    pwrss = yty - np.einsum("ij,ij->j", cu, cu) - np.einsum("ij,ij->j", cb, cb)
    RXi = linalg.solve_triangular(RX, np.eye(cp.p), lower=False)
    return ldL2, ldRX2, beta, pwrss, RXi @ RXi.T


def profiled_criterion(spec, Y, theta, reml=True, cross=None) -> dict:
    """lme4's profiled REML criterion or deviance at ``theta`` for responses ``Y``.

    Parameters
    ----------
    spec : ModelSpec
        Any random part lme4 fits (slopes, ``||``, nested, crossed). ``X``
        must have full column rank (lme4 would first drop columns).
    Y : ndarray (n,) or (n, k)
        Responses, one per column.
    theta : ndarray (n_theta,) or (n_theta, k)
        lme4's theta (terms in :func:`lme4_term_order`, each term's lower
        triangle column by column): one for all responses or one per response.
    reml : bool
        REML criterion (lme4's ``REML = TRUE``) or deviance (``-2 logLik``).
    cross : CrossProducts, optional
        The design's cross products, to reuse across calls (built if None).

    Returns
    -------
    dict
        ``criterion`` (k,), ``beta`` (p, k), ``sigma`` (k,), ``ldL2`` (k,),
        ``ldRX2`` (k,), ``pwrss`` (k,) and ``vcov_unscaled`` (p, p, k):
        ``(R_X' R_X)^-1``, which times ``sigma^2`` is lme4's ``vcov``.
    """
    cp = CrossProducts(spec) if cross is None else cross
    Zty, Xty, yty, shift = cp.responses(Y)
    k = yty.shape[0]
    theta = np.asarray(theta, dtype=float)
    if theta.shape[0] != cp.layout.n_theta or theta.ndim not in (1, 2) or (theta.ndim == 2 and theta.shape[1] != k):
        raise ValueError(f"theta must be ({cp.layout.n_theta},) or ({cp.layout.n_theta}, {k}); got {theta.shape}")
    if np.any(theta < cp.layout.lower[:, None] if theta.ndim == 2 else theta < cp.layout.lower):
        raise ValueError("theta is below lme4's lower bounds (diagonal entries of a relative factor >= 0)")
    n, p = cp.n, cp.p
    out = {"ldL2": np.empty(k), "ldRX2": np.empty(k), "beta": np.empty((p, k)), "pwrss": np.empty(k),
           "vcov_unscaled": np.empty((p, p, k))}
    # Responses that share a theta share the factorisation (one theta for all: one Cholesky).
    if theta.ndim == 1:
        groups = [(theta, np.arange(k))]
    else:
        uniq, inv = np.unique(theta.T, axis=0, return_inverse=True)
        groups = [(u, np.flatnonzero(inv.ravel() == g)) for g, u in enumerate(uniq)]
    for th, cols in groups:
        ldL2, ldRX2, beta, pwrss, vcov = _at_theta(cp, th, Zty[:, cols], Xty[:, cols], yty[cols])
        out["ldL2"][cols], out["ldRX2"][cols] = ldL2, ldRX2
        out["beta"][:, cols], out["pwrss"][cols] = beta, pwrss
        out["vcov_unscaled"][:, :, cols] = vcov[:, :, None]
    if cp.intercept_column is not None:
        out["beta"][cp.intercept_column] += shift
    dof = n - p if reml else n
    with np.errstate(invalid="ignore", divide="ignore"):
        out["criterion"] = (out["ldL2"] + (out["ldRX2"] if reml else 0.0)
                            + dof * (1.0 + _LOG_2PI + np.log(out["pwrss"] / dof)))
        out["sigma"] = np.sqrt(out["pwrss"] / dof)
    return out
