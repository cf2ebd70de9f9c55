"""lmerTest's type III hypotheses: one contrast matrix per fixed term.

lmerTest's ``anova(type = 3)`` tests each term ``t`` by ``contestMD`` on a
contrast matrix ``L_t`` built by ``lmerTest:::get_contrasts_type3`` from the
design alone. :func:`type3_contrasts` builds the same matrices with numpy,
step for step:

1. ``X``: the fixed-effect matrix with every factor treatment coded and the
   columns a QR with tolerance 1e-7 finds dependent dropped (lmerTest's
   ``ensure_full_rank``, the columns lme4 drops); under reference coding it
   is the fitted matrix itself.
2. ``rdX``: the intercept and, per term, the products of one indicator per
   level of each factor (no level left out) and the numeric variables
   (lmerTest's ``get_rdX``: ``model.matrix(~ 0 + term)`` for each term).
3. ``L = t(ginv(X) rdX)`` (rows: the columns of ``rdX``; columns: those of
   ``X``), rounded by R's ``zapsmall``.
4. Highest-order terms first, the columns of a term are replaced by their
   residuals from a least-squares fit on the columns of the terms that
   contain it (same numeric variables, strictly more variables), rounded by
   ``zapsmall`` (lmerTest's ``containment`` and ``extract_contrasts_type3``).
5. The rows of ``L`` named like the columns of ``X`` are kept (a square
   matrix ``M``); term ``t``'s contrast is the transpose of ``M``'s columns
   of ``t``, without rows whose absolute values sum to 1e-8 or less.
6. Under effects coding the contrasts are mapped onto the fitted coding by
   ``zapsmall(ginv(X) X_fitted)``.

A model with a single term (or a single fitted column) takes lmerTest's
type I rows instead, as ``get_contrasts_type3`` does: the rows of the term's
columns in the transposed unit lower factor of ``crossprod(X_fitted)``
(``lmerTest:::doolittle``).

lmerTest rounds with ``zapsmall`` (seven significant digits of the largest
entry) in steps 3, 4 and 6; so do we, with R's rounding rule, so the
matrices are lmerTest's own and not only their row spaces. That matters:
the Satterthwaite DF of a several-row contrast depends on the basis of its
rows, not only on the hypothesis.
"""

from __future__ import annotations

import math

import numpy as np

from .spec import _model_columns

__all__ = ["type3_contrasts"]

_R_DIGITS = 7  # getOption("digits"), which zapsmall uses
_QR_TOL = 1e-7  # tolerance of R's qr() / lm.fit (LINPACK dqrdc2)


def type3_contrasts(fixed, values, n_obs, kept=None):
    """lmerTest's type III contrast matrices of every term, intercept first.

    Parameters
    ----------
    fixed : clusterlmer.spec.FixedSpec
        A fixed part with an intercept and hierarchical terms
        (``fixed.problem`` None), the models lmerTest's construction assumes.
    values : dict
        Each fixed-effect variable's values (level codes or numbers), as
        :attr:`clusterlmer.spec.ModelSpec.values`.
    n_obs : int
        Rows of ``values``.
    kept : array of int, optional
        The columns of ``fixed``'s matrix that are fitted: lme4 drops the
        dependent columns of a rank-deficient matrix (``kept`` of
        :func:`clusterlmer.engines.native.fixed.rank_deficiency`, which is
        also the default).

    Returns
    -------
    list of ndarray
        One matrix per term of ``fixed.terms``, shape (rows, ``len(kept)``):
        contrasts of the fitted coefficients. The first is the intercept's
        identity row, as in the marginal tests: lmerTest's type III table
        has no intercept row (nor has the R engine's ``test="type3"``
        table), it is here only so the list lines up with ``fixed.terms``.
        A term without a hypothesis (every column of it dropped) has zero
        rows.

    Notes
    -----
    The matrices depend on the design only through the fitted columns and
    the empty cells: with every column kept they are the same for every
    permutation of the rows. The cost is a pseudo-inverse of the
    (n_obs, p) matrix.
    """
    from .engines.native.fixed import rank_deficiency

    if not fixed.intercept or fixed.problem:
        raise ValueError("type III contrasts need a fixed part with an intercept and hierarchical terms"
                         + (f": {fixed.problem}" if fixed.problem else ""))
    X = fixed.matrix(values, n_obs)
    kept = rank_deficiency(X)[0] if kept is None else np.asarray(kept, dtype=np.int64)
    X, assign = X[:, kept], fixed.assign[kept]
    n_terms = len(fixed.terms)
    intercept_row = np.eye(len(kept))[assign == 0]
    if len(kept) <= 1 or n_terms <= 2:  # one term: lmerTest's type I rows
        rows = _doolittle_rows(X)
        return [intercept_row] + [rows[assign == t] for t in range(1, n_terms)]

    # Level i of factor v is named "#i", so a treatment column and the
    # indicator column of the same cell share a name, as they do in R.
    n_levels = {v: C.shape[0] for v, (C, _) in fixed.contrasts.items()}
    treatment = {v: (np.eye(k)[:, 1:], [f"#{i}" for i in range(1, k)]) for v, k in n_levels.items()}
    indicators = {v: (np.eye(k), [f"#{i}" for i in range(k)]) for v, k in n_levels.items()}
    reference = all(np.array_equal(fixed.contrasts[v][0], treatment[v][0]) for v in n_levels)
    t_cols, t_names, t_assign = _model_columns(fixed.term_vars, values, treatment, n_obs, True, fixed.wide)
    if reference:
        Xt, t_kept = X, kept
    else:
        Xt = np.column_stack(t_cols)
        t_kept = rank_deficiency(Xt)[0]
        Xt = Xt[:, t_kept]
    rd_cols, rd_names, rd_assign = _model_columns(fixed.term_vars, values, indicators, n_obs, True, fixed.wide)
    rows = _rows_by_name(Xt, np.column_stack(rd_cols), list(zip(rd_assign, rd_names)),
                         [(t_assign[j], t_names[j]) for j in t_kept], t_assign[t_kept], fixed)
    if not reference:
        to_fitted = zapsmall(_ginv(Xt) @ X)
        rows = [L @ to_fitted for L in rows]
    return [intercept_row] + rows


def _rows_by_name(Xt, rdX, rd_keys, t_keys, t_assign, fixed):
    """Steps 3 to 5 of the module docstring: each term's rows over the columns of ``Xt``.

    ``rd_keys`` and ``t_keys``: (term, name) of each column of ``rdX`` and ``Xt``.
    """
    L = zapsmall((_ginv(Xt) @ rdX).T)
    n_terms = len(fixed.terms)
    cols = [np.flatnonzero(t_assign == t) for t in range(n_terms)]
    containers = _containers(fixed)
    # Highest order first, so a term is made orthogonal to terms already made orthogonal to theirs.
    for t in sorted(range(1, n_terms), key=lambda t: -len(fixed.term_vars[t - 1])):
        if containers[t] and len(cols[t]):
            others = np.concatenate([cols[c] for c in containers[t]])
            L[:, cols[t]] = zapsmall(_residuals(L[:, others], L[:, cols[t]]))
    row_of = {key: i for i, key in enumerate(rd_keys)}
    M = L[[row_of[key] for key in t_keys]]
    out = []
    for t in range(1, n_terms):
        Lt = M[:, cols[t]].T
        out.append(Lt[np.abs(Lt).sum(axis=1) > 1e-8])
    return out


def _containers(fixed):
    """Per term (index into ``fixed.terms``), the terms containing it (lmerTest's ``containment``).

    Term b contains term a when b has every variable of a and more, and the
    same numeric variables.
    """
    numeric = [frozenset(v for v in t if v not in fixed.contrasts) for t in fixed.term_vars]
    sets = [frozenset(t) for t in fixed.term_vars]
    out = [[]]
    for a in range(len(sets)):
        out.append([b + 1 for b in range(len(sets))
                    if sets[a] < sets[b] and numeric[a] == numeric[b]])
    return out


def _residuals(x, y):
    """Residuals of least-squares fits of the columns of ``y`` on those of ``x`` (R's ``lm.fit``).

    Columns of ``x`` that R's QR (tolerance 1e-7) finds dependent on earlier
    ones are left out, as ``lm.fit`` leaves them.
    """
    Q = np.zeros((x.shape[0], 0))
    for j in range(x.shape[1]):
        r = x[:, j] - Q @ (Q.T @ x[:, j])
        r -= Q @ (Q.T @ r)  # a second pass keeps Q orthogonal to rounding
        norm = np.linalg.norm(x[:, j])
        if norm > 0 and np.linalg.norm(r) > _QR_TOL * norm:
            Q = np.column_stack([Q, r / np.linalg.norm(r)])
    res = y - Q @ (Q.T @ y)
    return res - Q @ (Q.T @ res)


def _doolittle_rows(X):
    """Rows of ``t(lmerTest:::doolittle(crossprod(X))$L)``: lmerTest's type I contrasts.

    Gaussian elimination of ``X'X`` without pivoting; entries below 1e-6
    are set to 0 and a pivot below 1e-6 gives a zero column, as lmerTest's
    ``doolittle`` does.
    """
    A = X.T @ X
    p, eps = A.shape[0], 1e-6
    if p == 1:
        return np.ones((1, 1))
    Lo, U = np.eye(p), np.zeros((p, p))
    for i in range(p):
        U[i] = A[i] - Lo[i, :i] @ U[:i]
        below = A[i + 1:, i] - Lo[i + 1:, :i] @ U[:i, i]
        Lo[i + 1:, i] = 0.0 if abs(U[i, i]) < eps else below / U[i, i]
    Lo[np.abs(Lo) < eps] = 0.0
    return Lo.T


def _ginv(X):
    """``MASS::ginv``: the pseudo-inverse, singular values below sqrt(eps) times the largest ignored."""
    return np.linalg.pinv(X, rcond=np.sqrt(np.finfo(float).eps))


def zapsmall(x, digits=_R_DIGITS):
    """R's ``zapsmall``: ``x`` rounded to ``digits`` significant digits of its largest absolute entry."""
    x = np.asarray(x, dtype=float)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return x.copy()
    mx = np.max(np.abs(finite))
    d = max(0.0, digits - math.log10(mx)) if mx > 0 else float(digits)
    return _r_round(x, int(math.floor(d + 0.5)))


def _r_round(x, dig):
    """R's ``round(x, dig)`` for ``dig >= 0`` (R >= 4.0: the nearer of the two candidates in double)."""
    if dig == 0:
        return np.rint(x)
    a = np.abs(x)
    out = x.copy()
    l10x = math.log10(2) * (0.5 + (np.frexp(a)[1] - 1))  # C's logb(a): a's binary exponent
    todo = np.isfinite(x) & (x != 0) & (l10x + dig <= 15)  # DBL_DIG: otherwise no rounding is needed
    pow10 = _pow_di(10.0, dig)
    x10 = a[todo] * pow10
    i10 = np.floor(x10)
    xd, xu = i10 / pow10, np.ceil(x10) / pow10
    du, dd = xu - a[todo], a[todo] - xd
    up = (du < dd) | ((np.fmod(i10, 2.0) == 1) & (du == dd))
    out[todo] = np.sign(x[todo]) * np.where(up, xu, xd)
    return out


def _pow_di(x, n):
    """R's ``R_pow_di`` (repeated squaring), for ``n >= 0``."""
    out = 1.0
    while True:
        if n & 1:
            out *= x
        n >>= 1
        if not n:
            return out
        x *= x
