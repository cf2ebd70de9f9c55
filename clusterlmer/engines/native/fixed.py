"""The fixed part as the native engine fits it: R's ``model.matrix`` and its checks.

``FixedPart`` expands the formula's fixed terms (already expanded by
:mod:`clusterlmer.formula`) into R's coefficient names, ``assign`` vector and
model-matrix recipe under the design's factor coding, and says why a fixed
part is outside the native class (no intercept, not hierarchical). The other
functions are lme4's checks of a fixed-effect matrix: the columns its
``check.rankX`` would drop, and its ``check.scaleX`` message.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["FixedPart", "rank_problem", "scale_message"]


class FixedPart:
    """Terms, coefficient names and the model-matrix recipe of the fixed part."""

    def __init__(self, design):
        expanded = design.formula.fixed_terms
        self.var_order = list(expanded.variables)
        self.intercept = expanded.intercept
        self.term_sets = [frozenset(t) for t in expanded.terms]
        self.term_vars = list(expanded.terms)
        self.labels = list(expanded.labels)
        self.factors = {v: list(design.factors[v]) for v in self.var_order if v in design.factors}
        self.coding = design.coding
        self.problem = self._check(design)
        if self.problem is None:
            self.coef_names, self.assign = self._names()

    def _check(self, design):
        if not self.intercept:
            return "the fixed part has no intercept ('0 +' or '- 1'), which the native engine does not fit"
        for v in self.var_order:
            if v not in design.factors and v not in design.numeric:
                return f"fixed-effect variable {v!r} is neither a factor nor a numeric column"
        present = set(self.term_sets)
        for t, label in zip(self.term_sets, self.labels):
            if len(t) > 1:
                missing = [":".join(u for u in self.var_order if u in t - {v})
                           for v in self.var_order if v in t and (t - {v}) not in present]
                if missing:
                    return (f"the fixed term {label!r} is not hierarchical (missing lower-order "
                            f"term(s) {', '.join(repr(m) for m in missing)})")
        return None

    def _contrast(self, var):
        levels = self.factors[var]
        k = len(levels)
        if self.coding == "effects":
            C = np.vstack([np.eye(k - 1), -np.ones((1, k - 1))])
            names = levels[:-1]
        else:
            C = np.eye(k)[:, 1:]
            names = levels[1:]
        return C, [f"{var}{n}" for n in names]

    def _var_columns(self, frame, var):
        if var in self.factors:
            C, names = self._contrast(var)
            codes = pd.Categorical(frame[var].to_numpy(), categories=self.factors[var]).codes
            if (codes < 0).any():
                raise ValueError(f"column {var!r} has values outside its levels")
            M = C[codes]
            return [M[:, j] for j in range(M.shape[1])], names
        return [frame[var].to_numpy(dtype=float)], [var]

    def _build(self, frame, n):
        cols, names, assign = [np.ones(n)], ["(Intercept)"], [0]
        cache = {v: self._var_columns(frame, v) for v in self.var_order} if frame is not None else None
        for ti, vars_ in enumerate(self.term_vars, start=1):
            tc, tn = [None], [""]
            for v in vars_:
                vc, vn = cache[v] if cache is not None else ([None] * len(self._names_of(v)), self._names_of(v))
                new_c, new_n = [], []
                for c2, n2 in zip(vc, vn):  # later variables vary slowest
                    for c1, n1 in zip(tc, tn):
                        new_c.append(None if c2 is None else (c2 if c1 is None else c1 * c2))
                        new_n.append(n2 if n1 == "" else f"{n1}:{n2}")
                tc, tn = new_c, new_n
            cols += tc
            names += tn
            assign += [ti] * len(tn)
        return cols, names, np.array(assign)

    def _names_of(self, v):
        return self._contrast(v)[1] if v in self.factors else [v]

    def _names(self):
        _, names, assign = self._build(None, 0)
        return tuple(names), assign

    def matrix(self, frame):
        cols, _, _ = self._build(frame, len(frame))
        return np.column_stack(cols)


def _dropped_columns(X, tol=1e-7):
    """Columns lme4 drops from a rank-deficient ``X`` (``check.rankX = "message+drop.cols"``).

    lme4 keeps the columns R's ``qr(X, tol = 1e-7)`` (LINPACK ``dqrdc2``)
    ranks first: going left to right, a column whose norm after removing the
    kept columns is below ``tol`` times its own norm is moved to the end, and
    those columns are dropped.
    """
    Q = np.zeros((X.shape[0], 0))
    dropped = []
    for j in range(X.shape[1]):
        x = X[:, j]
        r = x - Q @ (Q.T @ x)
        r -= Q @ (Q.T @ r)  # a second pass keeps Q orthogonal to rounding
        norm, rnorm = np.linalg.norm(x), np.linalg.norm(r)
        if rnorm <= tol * norm or norm == 0:
            dropped.append(j)
        else:
            Q = np.column_stack([Q, r / rnorm])
    return dropped


def rank_problem(fixed, X):
    """Why ``X`` is rank deficient, naming the columns lme4 would drop; None if it has full rank."""
    dropped = _dropped_columns(X)
    if not dropped:
        return None
    p = X.shape[1]
    names = [fixed.coef_names[j] for j in dropped]
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return (f"the fixed-effect design is rank deficient (rank {p - len(dropped)} < {p} columns: {shown} "
            f"{'is a linear combination' if len(names) == 1 else 'are linear combinations'} of earlier "
            "columns, e.g. empty cells of an interaction); lme4 drops such columns, the native engine does not")


def scale_message(X):
    """lme4's check.scaleX warning (message only)."""
    cont = [j for j in range(X.shape[1]) if not np.all(np.isin(X[:, j], (0.0, 1.0)))]
    if not cont:
        return None
    sd = X[:, cont].std(axis=0, ddof=1)
    with np.errstate(divide="ignore"):
        logsd = np.abs(np.log(sd))
        comp = np.abs(np.log(sd[:, None] / sd[None, :]))
    if np.any(np.concatenate([comp[np.tril_indices(len(sd), -1)], logsd]) > np.log(1000)):
        return "Some predictor variables are on very different scales: consider rescaling"
    return None
