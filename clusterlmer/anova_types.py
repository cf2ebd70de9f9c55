"""lmerTest's type I and type II hypotheses, and the contrasts of each ``test=`` choice.

lmerTest's ``anova(type = 1)`` and ``anova(type = 2)`` test each term ``t``
by ``contestMD`` on a contrast matrix built from the fitted fixed-effect
matrix ``X`` (the columns lme4 keeps):

* type I (sequential; ``lmerTest:::get_contrasts_type1``): the rows of the
  term's columns in ``t(L)``, where ``L`` is the unit lower factor of the
  Doolittle (LU, no pivoting) decomposition of ``X'X``. Row ``j`` of ``t(L)``
  tests column ``j`` adjusted for the columns before it, so a term is
  adjusted for the terms before it in the formula (R's order: main effects,
  then interactions) and not for those after it.
* type II (``lmerTest:::get_contrasts_type2_unfolded``): a term that no other
  term contains (same numeric variables, strictly more variables) is tested
  on the identity rows of its coefficients, as the marginal test; any other
  term ``t`` by the Doolittle rows of ``t`` with the columns of ``X``
  reordered so that every term except ``t`` and the terms containing it
  comes first, then ``t``, then its containers (``get_contrasts_type2``):
  ``t`` adjusted for every term that does not contain it.

A model with a single term (or a single fitted column) takes the type I rows
for type II, as lmerTest does. Both depend on ``X'X``, so a permutation that
moves a fixed-effect variable has contrasts of its own (a p x p
elimination per term, negligible next to a fit).
"""

from __future__ import annotations

import numpy as np

from .type3 import _containers, _doolittle_rows, type3_contrasts

__all__ = ["ANOVA_TESTS", "anova_contrasts", "type1_contrasts", "type2_contrasts"]

# test= choices tested on contrast matrices (the marginal test selects coefficients instead).
ANOVA_TESTS = ("type1", "type2", "type3")


def type1_contrasts(X, assign, n_terms):
    """lmerTest's type I contrast matrices of every term, intercept first.

    Parameters
    ----------
    X : ndarray, shape (n, p)
        The fitted fixed-effect matrix (the columns lme4 keeps).
    assign : ndarray of int, shape (p,)
        Term of each column (0: intercept).
    n_terms : int
        Terms, intercept included.

    Returns
    -------
    list of ndarray
        One (rows, p) matrix per term; the first is the intercept's (its
        Doolittle row, which lmerTest's table does not report). A term
        whose columns were all dropped has zero rows.
    """
    rows = _doolittle_rows(X)
    return [rows[assign == t] for t in range(n_terms)]


def type2_contrasts(fixed, X, assign):
    """lmerTest's type II contrast matrices of every term, intercept first.

    Parameters
    ----------
    fixed : clusterlmer.spec.FixedSpec
        A fixed part with an intercept and hierarchical terms.
    X : ndarray, shape (n, p)
        The fitted fixed-effect matrix (the columns lme4 keeps).
    assign : ndarray of int, shape (p,)
        Term of each column (0: intercept).

    Returns
    -------
    list of ndarray
        One (rows, p) matrix per term of ``fixed.terms``; the first is the
        intercept's identity row (not in lmerTest's table).
    """
    n_terms, p = len(fixed.terms), X.shape[1]
    if p <= 1 or n_terms <= 2:  # one term: lmerTest's type I rows
        return type1_contrasts(X, assign, n_terms)
    identity = np.eye(p)
    containers = _containers(fixed)
    out = [identity[assign == 0]]
    for t in range(1, n_terms):
        if not containers[t]:
            out.append(identity[assign == t])
            continue
        # The term's columns, then its containers' (in term order), after every other column.
        moved = np.concatenate([np.flatnonzero(assign == c) for c in [t] + containers[t]])
        order = np.concatenate([np.setdiff1d(np.arange(p), moved), moved])
        rows = _doolittle_rows(X[:, order])[assign[order] == t]
        L = np.zeros_like(rows)
        L[:, order] = rows  # back to X's column order
        out.append(L)
    return out


def anova_contrasts(spec, kept, test):
    """The contrast matrix of each tested term under ``test`` (no intercept), or None for the marginal test.

    Parameters
    ----------
    spec : clusterlmer.spec.ModelSpec
    kept : ndarray of int
        The columns of ``spec.X`` lme4 keeps.
    test : {"marginal", "type1", "type2", "type3"}

    Returns
    -------
    list of ndarray or None
        One matrix per term of ``spec.fixed.terms[1:]``, over the kept columns.
    """
    if test == "marginal":
        return None
    if test == "type3":
        # With every column kept they depend only on the codings, not on the rows: computed once
        # per analysis. Dropped columns depend on which cells are empty: computed per specification.
        def make():
            return type3_contrasts(spec.fixed, spec.values, spec.n_obs, kept)[1:]

        return spec.shared("native-type3", make) if len(kept) == spec.X.shape[1] else make()
    X, assign = spec.X[:, kept], spec.fixed.assign[kept]
    if test == "type1":
        return type1_contrasts(X, assign, len(spec.fixed.terms))[1:]
    return type2_contrasts(spec.fixed, X, assign)[1:]
