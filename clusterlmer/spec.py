"""The model specification: everything about the model that the responses do not change.

:func:`build_spec` turns a coded design (:mod:`clusterlmer.design`) into a
:class:`ModelSpec` once per analysis, in the role of lme4's ``lFormula`` and
of MixedModels.jl's model struct:

* the fixed part (:class:`FixedSpec`): R's term labels, coefficient names,
  ``assign`` vector and factor contrasts, each variable's values as integer
  level codes or numbers, and the fixed-effect matrix ``X`` built from them
  with numpy (R's ``model.matrix`` column order);
* the random part (:class:`RandomEffectsTerm`, one per lme4 term after
  ``a/b`` and ``||`` are expanded as lme4 expands them): grouping columns,
  each row's level, the term's model-matrix columns, the layout of theta and
  its lower bounds, and the relative covariance factor a theta gives;
* how the groupings relate (:meth:`ModelSpec.nesting`: nested coarsest to
  finest, or why not).

A permutation moves the values of some fixed-effect variables and nothing
else: :meth:`ModelSpec.permuted` returns a spec that shares the random part,
its caches and the unchanged columns with the original and recomputes only
``X`` (the coded table for the R engine is built only when asked for). A
subset of rows (responses missing at some samples) is :meth:`ModelSpec.subset`.
Engines keep what they derive from the random part (which permutations never
change) in :meth:`ModelSpec.shared`, so it is computed once per analysis.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pandas as pd

from .coding import contrast as _contrast
from .design import ModelDesign
from .formula import expand_fixed_terms
from .transforms import recompute, with_recomputed

__all__ = ["FixedSpec", "ModelSpec", "RandomEffectsTerm", "as_spec", "build_spec", "coded_design"]

INTERCEPT = "(Intercept)"


def variable_values(frame, factors, names, transforms=None) -> dict:
    """Each variable's values: int level codes for factors, floats otherwise ((n, k) for ``poly``'s k columns)."""
    out = {}
    for v in names:
        t = (transforms or {}).get(v)
        if t is not None and t.ncol > 1:
            out[v] = frame[list(t.columns)].to_numpy(dtype=float)
        elif v in factors:
            codes = pd.Categorical(frame[v].to_numpy(), categories=factors[v]).codes.astype(np.int64)
            if (codes < 0).any():
                raise ValueError(f"column {v!r} has values outside its levels {factors[v]}")
            out[v] = codes
        else:
            out[v] = frame[v].to_numpy(dtype=float)
    return out


def _model_columns(term_vars, values, contrasts, n, intercept, wide=None):
    """Columns, names and ``assign`` of R's ``model.matrix`` for expanded terms.

    Within an interaction the later variable varies slowest, as in R.
    ``values`` None gives names and ``assign`` only (columns None).
    ``wide``: per numeric variable of several columns (``poly``), their name suffixes.
    """
    cols, names, assign = ([np.ones(n)], [INTERCEPT], [0]) if intercept else ([], [], [])
    for ti, vars_ in enumerate(term_vars, start=1):
        tc, tn = [None], [""]
        for v in vars_:
            if wide and v in wide:
                vc = None if values is None else [values[v][:, j] for j in range(len(wide[v]))]
                vn = [f"{v}{s}" for s in wide[v]]
            elif v in contrasts:
                C, suffixes = contrasts[v]
                vc = None if values is None else [C[values[v], j] for j in range(C.shape[1])]
                vn = [f"{v}{s}" for s in suffixes]
            else:
                vc, vn = (None if values is None else [values[v]]), [v]
            new_c, new_n = [], []
            for j, n2 in enumerate(vn):
                for c1, n1 in zip(tc, tn):
                    c2 = None if vc is None else vc[j]
                    new_c.append(None if c2 is None else (c2 if c1 is None else c1 * c2))
                    new_n.append(n2 if n1 == "" else f"{n1}:{n2}")
            tc, tn = new_c, new_n
        cols += tc
        names += tn
        assign += [ti] * len(tn)
    return cols, tuple(names), np.array(assign, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class FixedSpec:
    """The fixed part: R's terms, coefficients and ``model.matrix`` recipe.

    Attributes
    ----------
    intercept : bool
    variables : tuple of str
        Fixed-effect variables in formula order.
    term_vars : tuple of tuple of str
        Each term's variables (R's ``terms()`` order; intercept not listed).
    labels : tuple of str
        R's term labels, e.g. ``("hit_miss", "region", "hit_miss:region")``.
    contrasts : dict
        Per factor: (contrast matrix, column suffixes).
    coef_names : tuple of str
        R's coefficient names.
    assign : ndarray of int
        Term of each coefficient (0: intercept), R's ``attr(X, "assign")``.
    problem : str or None
        Why R's model matrix cannot be built from these terms alone (no
        intercept, or a term that is not hierarchical), which only lme4
        then fits; None otherwise.
    wide : dict
        Per numeric variable of several columns (``poly(x, k)``): the
        suffixes of its columns' names.
    """

    intercept: bool
    variables: tuple
    term_vars: tuple
    labels: tuple
    contrasts: dict
    coef_names: tuple
    assign: np.ndarray
    problem: str | None
    wide: dict = None

    @property
    def terms(self) -> tuple:
        """Term labels with the intercept first, as the engines report them."""
        return ((INTERCEPT,) if self.intercept else ()) + self.labels

    def matrix(self, values, n) -> np.ndarray:
        """The fixed-effect matrix (n, p) from each variable's values on ``n`` rows."""
        cols, _, _ = _model_columns(self.term_vars, values, self.contrasts, n, self.intercept, self.wide)
        return np.column_stack(cols)

    def term_columns(self, i) -> np.ndarray:
        """Indices of the coefficients of term ``i`` (0: the intercept)."""
        return np.flatnonzero(self.assign == i)

    def marginal_contrast(self, i) -> np.ndarray:
        """lmerTest's marginal test of term ``i``: the identity rows of its coefficients."""
        return np.eye(len(self.coef_names))[self.term_columns(i)]


def _fixed_spec(design) -> FixedSpec:
    expanded = design.formula.fixed_terms
    variables = tuple(expanded.variables)
    term_sets = [frozenset(t) for t in expanded.terms]
    problem = None
    if not expanded.intercept:
        problem = "the fixed part has no intercept ('0 +' or '- 1')"
    for v in variables:
        if v not in design.factors and v not in design.numeric:
            problem = f"fixed-effect variable {v!r} is neither a factor nor a numeric column"
    present = set(term_sets)
    for t, label in zip(term_sets, expanded.labels):
        missing = [":".join(u for u in variables if u in t - {v})
                   for v in variables if v in t and len(t) > 1 and (t - {v}) not in present]
        if missing and problem is None:
            problem = (f"the fixed term {label!r} is not hierarchical (missing lower-order "
                       f"term(s) {', '.join(repr(m) for m in missing)})")
    contrasts = {v: _contrast(design.factors[v], design.codings[v]) for v in variables if v in design.factors}
    transforms = design.formula.transforms
    wide = {v: transforms[v].suffixes for v in variables if v in transforms and transforms[v].ncol > 1}
    _, names, assign = _model_columns(expanded.terms, None, contrasts, 0, expanded.intercept, wide)
    return FixedSpec(expanded.intercept, variables, tuple(expanded.terms), tuple(expanded.labels), contrasts,
                     names, assign, problem, wide)


@dataclass(frozen=True, eq=False)
class RandomEffectsTerm:
    """One random-effects term ``(expr | group)`` as lme4 builds it.

    Attributes
    ----------
    name : str
        lme4's name of the grouping factor (``a/b`` gives ``a`` and ``b:a``).
    columns : tuple of str
        Design columns whose combination defines the groups.
    expr : str
        The varying part, e.g. ``"1"`` or ``"1 + Days"``.
    coef_names : tuple of str
        Columns of the term's model matrix, e.g. ``("(Intercept)", "Days")``.
    term_vars : tuple of tuple of str
        The expanded terms of ``expr`` (for its model matrix).
    intercept : bool
        Whether ``expr`` has an intercept.
    contrasts : dict
        Per factor in ``expr``: (contrast matrix, column suffixes); the first
        factor of an ``expr`` without intercept gets one column per level, as in R.
    codes : ndarray of int
        Each row's level (0 .. n_levels - 1).
    n_levels : int
    source : int
        The formula's random term this term comes from (``formula.random`` index).
    nest_level : int
        Its place in that term's ``a/b/...`` expansion (0: ``a``, 1: ``b:a``, ...).
    """

    name: str
    columns: tuple
    expr: str
    coef_names: tuple
    term_vars: tuple
    intercept: bool
    contrasts: dict
    codes: np.ndarray
    n_levels: int
    source: int = 0
    nest_level: int = 0

    @property
    def variables(self) -> tuple:
        """Design columns the term's model matrix uses (its slopes)."""
        return tuple(dict.fromkeys(v for t in self.term_vars for v in t))

    @property
    def n_theta(self) -> int:
        """Entries of theta for this term: the lower triangle of a k x k factor."""
        k = len(self.coef_names)
        return k * (k + 1) // 2

    @property
    def theta_lower(self) -> np.ndarray:
        """lme4's lower bounds, column-major lower triangle: 0 on the diagonal, -inf below."""
        k = len(self.coef_names)
        rows, cols = np.tril_indices(k)
        order = np.lexsort((rows, cols))
        return np.where(rows[order] == cols[order], 0.0, -np.inf)

    def relative_factor(self, theta) -> np.ndarray:
        """The k x k lower-triangular block of Lambda for this term's ``theta`` (lme4's Lind order)."""
        k = len(self.coef_names)
        rows, cols = np.tril_indices(k)
        order = np.lexsort((rows, cols))
        T = np.zeros((k, k))
        T[rows[order], cols[order]] = theta
        return T

    def model_matrix(self, values) -> np.ndarray:
        """The term's raw model matrix (n, k) from the variables' ``values``: one row per observation."""
        n = len(self.codes)
        cols, _, _ = _model_columns(self.term_vars, values, self.contrasts, n, self.intercept)
        return np.column_stack(cols)

    def Zt(self, values):
        """lme4's ``Zt`` block of this term (levels * k, n), sparse; row ``l * k + j``: level l, column j."""
        from scipy import sparse

        M = self.model_matrix(values)
        n, k = M.shape
        rows = (self.codes[:, None] * k + np.arange(k)[None, :]).ravel()
        return sparse.csr_matrix((M.ravel(), (rows, np.repeat(np.arange(n), k))), shape=(self.n_levels * k, n))


def _codes(frame, cols):
    """Level per row of the groups defined by ``cols`` (0 .. m-1)."""
    codes = None
    for c in cols:
        k, uniq = pd.factorize(frame[c].to_numpy())
        codes = k if codes is None else codes * len(uniq) + k
    _, inv = np.unique(codes, return_inverse=True)
    return inv.ravel().astype(np.int64)


def _expr_parts(expr, correlated):
    """(intercept, term_vars) per lme4 term of ``expr``; ``||`` splits the terms apart."""
    expanded = expand_fixed_terms("y ~ " + expr)
    if correlated or (len(expanded.terms) + expanded.intercept) <= 1:
        return [(expanded.intercept, tuple(expanded.terms))]
    parts = [(True, ())] if expanded.intercept else []
    return parts + [(False, (t,)) for t in expanded.terms]


def _random_terms(design) -> tuple:
    """lme4's random-effects terms, ``a/b`` and ``||`` expanded."""
    frame, out = design.frame, []
    for source, term in enumerate(design.formula.random):
        groups, cols, name = [], [], ""
        split = [[c.strip() for c in part.split(":")] for part in term.group.split("/")]
        for part in split:
            cols = cols + part
            # lme4 names a/b/c's terms a, b:a, c:(b:a)
            text = ":".join(part)
            name = text if not name else f"{text}:{'(' + name + ')' if ':' in name else name}"
            groups.append((tuple(cols), name if len(split) > 1 else text))
        for nest_level, (cols_, gname) in enumerate(groups):
            codes = _codes(frame, cols_)
            for intercept, term_vars in _expr_parts(term.expr, term.correlated):
                contrasts = {v: _contrast(design.factors[v], design.codings[v],
                                          full=not intercept and term_vars and term_vars[0] == (v,))
                             for t in term_vars for v in t if v in design.factors}
                _, names, _ = _model_columns(term_vars, None, contrasts, 0, intercept)
                out.append(RandomEffectsTerm(gname, cols_, term.expr, names, term_vars, intercept, contrasts,
                                             codes, int(codes.max()) + 1, source, nest_level))
    return tuple(out)


class ModelSpec:
    """The model specification of one analysis (see the module docstring).

    Attributes
    ----------
    formula : ModelFormula
    coding : str
    fixed : FixedSpec
    random : tuple of RandomEffectsTerm
    values : dict
        Each model variable's values (level codes or numbers), rows of the design.
    n_obs : int
    X : ndarray, shape (n_obs, p)
        The fixed-effect matrix (built on first use).
    design : ModelDesign
        The coded table (built on first use for a permuted specification).
    moved : tuple of str
        The variables a permutation moved (empty for the observed design).
    key : str
        Names the rows of this specification among the subsets of one analysis
        (the key of :meth:`shared`'s caches).
    """

    def __init__(self, design: ModelDesign | None, *, fixed=None, random=None, values=None, shared=None,
                 make_design=None, formula=None, coding=None, key=""):
        self._design = design
        self._make_design = make_design  # builds the coded table of a permuted spec when asked
        self.formula = design.formula if design is not None else formula
        self.coding = design.coding if design is not None else coding
        self.fixed = fixed if fixed is not None else _fixed_spec(design)
        self.random = random if random is not None else _random_terms(design)
        if values is None:
            names = dict.fromkeys((*self.fixed.variables, *(v for t in self.random for v in t.variables)))
            values = variable_values(design.frame, design.factors, names, design.formula.transforms)
        self.values = values
        self.n_obs = len(self.random[0].codes)
        self._shared = {} if shared is None else shared
        self.key = key  # names the rows of this spec among the subsets of one analysis
        self.moved = ()  # variables a permutation moved (see permuted)

    def __getstate__(self):
        # Sent to worker processes: the coded table built, the caches left behind (rebuilt there).
        state = dict(self.__dict__, _shared={}, _make_design=None, _design=self.design)
        state.pop("X", None)
        return state

    @property
    def design(self) -> ModelDesign:
        """The coded table (what the R engine fits); built on first use for a permuted spec."""
        if self._design is None:
            self._design = self._make_design()
        return self._design

    @cached_property
    def X(self) -> np.ndarray:
        """The fixed-effect matrix (n_obs, p)."""
        return self.fixed.matrix({v: self.values[v] for v in self.fixed.variables}, self.n_obs)

    def shared(self, key, make):
        """``make()``, computed once for this spec, its permutations and its equal subsets."""
        full = (self.key, key)
        if full not in self._shared:
            self._shared[full] = make()
        return self._shared[full]

    def _derived(self, values, make_design, random=None, key=None) -> "ModelSpec":
        return ModelSpec(None, fixed=self.fixed, random=self.random if random is None else random, values=values,
                         shared=self._shared, make_design=make_design, formula=self.formula, coding=self.coding,
                         key=self.key if key is None else key)

    def permuted(self, maps) -> "ModelSpec":
        """The spec with variable ``v``'s values taken from rows ``maps[v]``.

        Groupings never move, so the random part's levels are shared; a
        permuted variable that a random slope uses changes that term's model
        matrix, which is built from ``values`` (``moved`` names what moved).
        A transformation of a moved column is recomputed from the moved
        column(s) (``maps`` covers the rows of this specification).
        """
        moved = tuple(v for v in maps if v in self.values)
        values = dict(self.values)
        for v in moved:
            values[v] = self.values[v][maps[v]]
        computed = recompute(self.design, maps) if self.formula.transforms else {}
        values.update({k: v for k, v in computed.items() if k in self.values})
        moved += tuple(k for k in computed if k in self.values)

        def make_design():
            frame = self.design.frame.copy()
            for name in moved:
                if name not in computed:
                    frame[name] = frame[name].to_numpy()[maps[name]]
            return with_recomputed(replace(self.design, frame=frame), computed, maps)

        spec = self._derived(values, make_design)
        spec.moved = moved
        return spec

    def subset(self, rows) -> "ModelSpec":
        """The spec restricted to ``rows`` (boolean mask or indices); groups without rows disappear."""
        rows = np.asarray(rows)
        idx = np.flatnonzero(rows) if rows.dtype == bool else rows
        if len(idx) == self.n_obs and np.array_equal(idx, np.arange(self.n_obs)):
            return self
        digest = hashlib.sha1(np.ascontiguousarray(idx, dtype=np.int64).tobytes()).hexdigest()[:16]
        key = f"{self.key}/{digest}"

        def restrict():
            out = []
            for t in self.random:
                _, codes = np.unique(t.codes[idx], return_inverse=True)
                out.append(replace(t, codes=codes.ravel().astype(np.int64), n_levels=int(codes.max()) + 1))
            return tuple(out)

        if (key, "random") not in self._shared:
            self._shared[(key, "random")] = restrict()
        values = {v: a[idx] for v, a in self.values.items()}
        spec = self._derived(values, lambda: self.design.subset(idx), self._shared[(key, "random")], key)
        spec.moved = self.moved
        return spec

    def nesting(self):
        """The random intercepts' groupings ordered coarsest to finest when they are nested.

        Returns
        -------
        order : list of int or None
            Indices into ``random``, coarsest first; None when they are not nested.
        problem : str or None
            Why not (crossed groupings, identical groupings), else None.
        """
        terms = self.random
        order = sorted(range(len(terms)), key=lambda i: terms[i].n_levels)
        for a, b in zip(order, order[1:]):
            coarse, fine = terms[a], terms[b]
            if np.unique(fine.codes * coarse.n_levels + coarse.codes).size != fine.n_levels:
                return None, f"the groupings {coarse.name!r} and {fine.name!r} are crossed, not nested"
            if fine.n_levels == coarse.n_levels:
                return None, (f"the groupings {coarse.name!r} and {fine.name!r} define the same groups, so their "
                              "variances are not identifiable")
        return order, None


def build_spec(design: ModelDesign) -> ModelSpec:
    """The model specification of a coded design (see :class:`ModelSpec`)."""
    return ModelSpec(design)


def coded_design(model) -> ModelDesign:
    """The coded table of a :class:`ModelSpec` or :class:`ModelDesign` (what the R engine fits)."""
    return model.design if isinstance(model, ModelSpec) else model


def as_spec(model) -> ModelSpec:
    """``model`` as a :class:`ModelSpec` (a :class:`ModelDesign` is specified here)."""
    return model if isinstance(model, ModelSpec) else build_spec(model)
