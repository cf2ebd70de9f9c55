"""The native engine: closed-form, batched Gaussian LMMs with nested random intercepts.

For models whose random part is random intercepts of nested grouping factors
(``(1|sid) + (1|sid:ch)``, ``(1|sid/ch)``, a single ``(1|g)``, or deeper
nesting such as ``(1|a) + (1|a:b) + (1|a:b:c)``), the marginal covariance
``sigma^2 V(theta)`` with ``V = I + sum_g theta_g^2 Z_g Z_g'`` is block
diagonal by outermost group and can be inverted level by level (Woodbury).
Everything lme4's profiled criterion needs is then ``[X, y]' V^-1 [X, y]``
and ``log det V``, computed from the Gram matrix of ``[X, y]`` and sums of
``[X, y]`` per group, for a whole block of responses at once with numpy.

What is computed, and how it matches the R engine (lme4 + lmerTest):

* The profiled REML / ML criterion of lme4 (``deviance``/REML criterion as
  ``opt$fval``), minimised over ``theta >= 0`` per response by a batched
  projected Newton method in ``phi = theta^2`` with exact first and second
  derivatives (forward-mode "jets" through the nested recursion), started at
  lme4's ``theta = 1``. A component whose derivative at 0 is positive stays
  exactly at 0, as bobyqa ends on its lower bound.
* ``sigma``, ``beta``, ``vcov(beta)`` as lme4.
* lmerTest's Satterthwaite degrees of freedom with the same numerical
  derivatives lmerTest uses: ``numDeriv::hessian`` (``genD``, Richardson,
  ``d = 0.1``) of ``lmerTest:::devfun_vp`` and ``numDeriv::jacobian``
  (Richardson, ``d = 1e-4``) of ``lmerTest:::get_covbeta`` at
  ``(theta, sigma)``, evaluated at exactly the same points (replicated step
  for step), then ``contest1D`` / ``contestMD`` formulas as the R engine's
  ``cl_satterthwaite_F``.
* Marginal tests (identity rows per term, intercept included), Wald F with
  ``ddf="residual"`` (``n - p``) or ``"none"`` (``Inf``).

Agreement with the R engine: evaluated at the theta lme4 reports, every
statistic agrees to ~1e-9 relative or better (numDeriv's own rounding). The
native optimum is exact to ~1e-12 in theta, bobyqa's (rhoend = 1e-9) only to
~1e-8..1e-7 because the criterion is flat at the optimum and bobyqa sees only
rounded values; F and DF2 inherit that difference (typically 1e-7, at most a
few 1e-6 relative, more for values near zero). The criterion at the native
optimum is never above lme4's beyond rounding. lme4's optimizer settings
have no counterpart here: an ``optimizer`` other than ``"bobyqa"`` (the
default, whose optimum the native one matches) or any ``optimizer_options``
is refused. Messages mirror lme4's singular-fit message, lmerTest's Hessian
eigenvalue warnings and lme4's predictor-scale warning and grouping-factor
errors; lme4's gradient check (which flags bobyqa stopping early) has no
counterpart.

Not supported (``supports`` says why; ``fit_block`` raises ``ValueError``):
random slopes, crossed or non-nested groupings, fixed parts without an
intercept or not hierarchical (an interaction without all its lower-order
terms), ``test="type3"``, ``ddf="kenward-roger"``, lme4 optimizer settings.
A rank-deficient fixed design (which lme4 fits after dropping columns, e.g.
an interaction with empty cells) is refused by ``supports``; a block whose
rows alone are rank deficient (a permutation, rows left out for NaN) gives a
per-block error.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse, stats

from .._checks import option_hint
from .base import BlockFit, FitOptions

__all__ = ["UnsupportedModel", "describe", "fit_block", "supports"]

# Engine properties, read through clusterlmer.engines.engine_properties.
LABEL = "native"
NEEDS_OWN_PROCESS = False  # numpy only: fits in any thread, e.g. a Dask worker's
# Most permutations per block of work: eight take ~0.15 s on the 2-way sample, too little to pay
# for a Dask task or a worker round trip; 256 take a few seconds.
BLOCK_SIZE = 256

SINGULAR_MESSAGE = "boundary (singular) fit: see help('isSingular')"
SINGULAR_TOL = 1e-4  # lme4::isSingular
_EPS = np.finfo(float).eps
_SQRT_EPS = np.sqrt(_EPS)
_ZERO_TOL = np.sqrt(_EPS / 7e-07)  # numDeriv's zero.tol
_LOG_2PI = np.log(2 * np.pi)
# Above the leaves, Gram entries per pair of chains are used while they number
# at most this many per node; beyond, node-by-node sums (see _Block).
NODE_MODE_FACTOR = 4
# Responses fitted together (memory: the Satterthwaite step evaluates ~40
# points per response at once).
CHUNK = 512
_ENGINE_R = "engine='r'"


class UnsupportedModel(ValueError):
    """The model is outside the class the native engine fits."""


# ---------------------------------------------------------------------------
# Fixed part: R's terms() expansion and model.matrix coding
# ---------------------------------------------------------------------------


class _FixedPart:
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


# ---------------------------------------------------------------------------
# Random part: nested random intercepts
# ---------------------------------------------------------------------------


def _random_groupings(formula):
    """Column tuples and lme4 names of the random intercepts (``a/b`` -> ``a``,
    ``b:a``), or a reason they are not supported."""
    out, names = [], []
    for term in formula.random:
        if term.expr.replace(" ", "") != "1":
            return None, None, (f"the random term ({term.expr} | {term.group}) has a random slope or a "
                                "non-intercept part; the native engine fits random intercepts (1|g) only")
        parts = [[c.strip() for c in part.split(":")] for part in term.group.split("/")]
        if len(parts) > 1 and any(len(part) > 1 for part in parts):
            return None, None, f"the grouping {term.group!r} mixes ':' and '/'; write each nested term out"
        cols, name = [], ""
        for part in parts:
            cols = cols + part
            out.append(tuple(cols))
            # lme4 names a/b/c's terms a, b:a, c:(b:a)
            name = part[0] if not name else f"{part[0]}:{'(' + name + ')' if ':' in name else name}"
            names.append(name if len(parts) > 1 else ":".join(part))
    seen = set()
    for g in out:
        if frozenset(g) in seen:
            return None, None, f"the grouping {':'.join(g)!r} appears twice in the random part"
        seen.add(frozenset(g))
    return out, names, None


def _group_codes(frame, cols):
    codes = None
    for c in cols:
        k, uniq = pd.factorize(frame[c].to_numpy())
        codes = k if codes is None else codes * len(uniq) + k
    _, inv = np.unique(codes, return_inverse=True)
    return inv.ravel()


class _Nesting:
    """Groupings ordered coarsest to finest with the data's nesting checked."""

    def __init__(self, frame, groupings, names):
        codes = [_group_codes(frame, g) for g in groupings]
        nlev = [int(c.max()) + 1 for c in codes]
        order = sorted(range(len(groupings)), key=lambda i: nlev[i])
        self.groupings = [groupings[i] for i in order]
        self.codes = [codes[i] for i in order]
        self.nlev = [nlev[i] for i in order]
        self.names = [names[i] for i in order]
        self.problem = None
        for g in range(1, len(self.codes)):
            fine, coarse = self.codes[g], self.codes[g - 1]
            pairs = np.unique(fine * self.nlev[g - 1] + coarse).size
            if pairs != self.nlev[g]:
                self.problem = (f"the groupings {self.names[g - 1]!r} and {self.names[g]!r} are crossed, "
                                "not nested; the native engine fits nested random intercepts only")
                break
            if self.nlev[g] == self.nlev[g - 1]:
                self.problem = (f"the groupings {self.names[g - 1]!r} and {self.names[g]!r} define the same "
                                "groups, so their variances are not identifiable")
                break


def _analyse(design, options):
    """(fixed part, nesting, None) of a supported model, or (None, None, reason)."""
    if options is not None:
        if options.ddf == "kenward-roger":
            return None, None, "ddf='kenward-roger' (pbkrtest) is not available in the native engine"
        if options.test != "marginal":
            return None, None, (f"test={options.test!r} is not available in the native engine, which computes "
                                "marginal tests only")
        # The native optimum is exact; silently ignoring a requested lme4 optimizer would misreport the run.
        if options.optimizer != "bobyqa":
            return None, None, (f"optimizer={options.optimizer!r} selects an lme4 optimizer, which the native "
                                "engine does not use (it finds the optimum itself)")
        if options.optimizer_options:
            return None, None, (f"optimizer_options={options.optimizer_options!r} are lme4 optimizer controls, "
                                "which the native engine does not use (it finds the optimum itself)")
    groupings, names, why = _random_groupings(design.formula)
    if why:
        return None, None, why
    nest = _Nesting(design.frame, groupings, names)
    if nest.problem:
        return None, None, nest.problem
    try:
        fixed = _FixedPart(design)
    except UnsupportedModel as exc:
        return None, None, str(exc)
    if fixed.problem:
        return None, None, fixed.problem
    return fixed, nest, None


def supports(design, options: FitOptions | None = None):
    """Whether the native engine fits this design (and options).

    Parameters
    ----------
    design : clusterlmer.design.ModelDesign
    options : FitOptions, optional
        Also check the test and ddf method.

    Returns
    -------
    ok : bool
    reason : str
        Empty when ``ok``; otherwise what is not supported.

    Notes
    -----
    Groupings that are nested in the whole design stay nested in any subset
    of its rows, but a subset can make two groupings identical (every
    subject left with one channel); ``fit_block`` reports that as an error
    of the block. The rank of the fixed-effect design is checked here, on
    the observed rows; a subset or a permutation that loses rank is an error
    of that block too.
    """
    fixed, _, why = _analyse(design, options)
    if why is None:
        why = _rank_problem(fixed, fixed.matrix(design.frame))
    return why is None, why or ""


def _require(design, options):
    fixed, nest, why = _analyse(design, options)
    if why is not None:
        raise UnsupportedModel(f"the native engine cannot fit this model: {why}.")
    return fixed, nest


def describe(design, options: FitOptions):
    """Term labels and coefficient names of the fixed part, as the R engine's.

    Raises
    ------
    UnsupportedModel
        (a ValueError) if the model or options are outside the native class.
    """
    fixed, _ = _require(design, options)
    return ("(Intercept)", *fixed.labels), fixed.coef_names


# ---------------------------------------------------------------------------
# Jets: values with first and second derivatives in phi (forward mode)
# ---------------------------------------------------------------------------


class _Jets:
    """Dense second-order forward-mode derivatives in ``phi`` (G variables).

    A jet is an array whose first axis holds [value, d/dphi_0 .. d/dphi_{G-1},
    d2/dphi_i dphi_j for i <= j] (``order`` 0: value only; 1: with gradient).
    Linear maps act on the trailing axes and apply to every component.
    """

    def __init__(self, G, order):
        self.G, self.order = G, order
        self.pairs = [(i, j) for i in range(G) for j in range(i, G)] if order == 2 else []
        self.C = 1 + (G if order >= 1 else 0) + len(self.pairs)
        self.pi = np.array([1 + i for i, _ in self.pairs], dtype=np.int64)
        self.pj = np.array([1 + j for _, j in self.pairs], dtype=np.int64)
        self.hs = slice(1 + G, self.C)

    def var(self, x, g):
        out = np.zeros((self.C,) + x.shape)
        out[0] = x
        if self.order:
            out[1 + g] = 1.0
        return out

    def mul(self, a, b):
        if self.C == 1:
            return a * b
        out = a * b[:1] + a[:1] * b
        out[0] = a[0] * b[0]
        if self.pairs:
            out[self.hs] += a[self.pi] * b[self.pj] + a[self.pj] * b[self.pi]
        return out

    def _unary(self, a, g0, g1, g2):
        v = a[0]
        if self.C == 1:
            return g0(v)[None]
        out = g1(v) * a
        out[0] = g0(v)
        if self.pairs:
            out[self.hs] += g2(v) * a[self.pi] * a[self.pj]
        return out

    def recip(self, a):
        return self._unary(a, lambda v: 1.0 / v, lambda v: -1.0 / (v * v), lambda v: 2.0 / (v * v * v))

    def log(self, a):
        return self._unary(a, np.log, lambda v: 1.0 / v, lambda v: -1.0 / (v * v))

    def contract_nodes(self, a, b):
        """``sum_b a_b b_b'`` for jets a, b (C, nb, q, N) -> (C, q, q, N)."""

        def e(x, y):
            return np.einsum("biN,bjN->ijN", x, y)

        out = np.empty((self.C,) + a.shape[2:3] * 2 + a.shape[3:])
        out[0] = e(a[0], b[0])
        if self.order:
            for i in range(1, 1 + self.G):
                out[i] = e(a[i], b[0]) + e(a[0], b[i])
            for k, (i, j) in enumerate(zip(self.pi, self.pj)):
                h = 1 + self.G + k
                out[h] = e(a[h], b[0]) + e(a[0], b[h]) + e(a[i], b[j]) + e(a[j], b[i])
        return out

    @staticmethod
    def plus(a, c):
        out = a.copy()
        out[0] += c
        return out


# ---------------------------------------------------------------------------
# The block problem: design-level and response-level sufficient statistics
# ---------------------------------------------------------------------------


class _Level:
    """Per grouping level: node types, row chains and the Gram entries."""

    __slots__ = ("chain_types", "j1", "j2", "t")


class _Block:
    """Sufficient statistics of one design and a block of responses.

    Levels are ordered coarsest (0) to finest (G-1); ``phi[..., g] = theta_g^2``.
    ``V^-1`` is applied level by level: at level ``g`` a node ``b`` contributes
    ``-phi_g / a_b * T_b T_b'`` to ``[X, y]' V^-1 [X, y]``, where ``a_b = 1 +
    phi_g M_b`` and ``T_b`` (the node's sums of ``V_child^-1 [X, y]``) is a
    combination of raw sums over the node's rows grouped by "chain" (the types
    of the row's descendant nodes), with coefficients that depend only on the
    node types. Nodes of a level are typed by their composition (leaves by
    their size), so everything that depends on theta is a small array per
    response; the data enter once, as Gram matrices ``W`` of the chain sums.
    """

    def __init__(self, X, nest, Y):
        n, p = X.shape
        self.n, self.p = n, p
        G = self.G = len(nest.codes)
        codes, nlev = nest.codes, nest.nlev
        types = [None] * G
        self.comp = [None] * G
        sizes = np.bincount(codes[-1], minlength=nlev[-1])
        ks, t = np.unique(sizes, return_inverse=True)
        types[-1] = t.ravel()
        self.leaf_k = ks.astype(float)
        ntypes = [0] * G
        ntypes[-1] = len(ks)
        for g in range(G - 2, -1, -1):
            parent = np.zeros(nlev[g + 1], dtype=np.int64)
            parent[codes[g + 1]] = codes[g]
            cnt = np.zeros((nlev[g], ntypes[g + 1]))
            np.add.at(cnt, (parent, types[g + 1]), 1.0)
            comp, t = np.unique(cnt, axis=0, return_inverse=True)
            types[g], self.comp[g], ntypes[g] = t.ravel(), comp, len(comp)
        self.ntype = [np.bincount(types[g], minlength=ntypes[g]).astype(float) for g in range(G)]
        rowtype = [types[g][codes[g]] for g in range(G)]

        self.ybar = Y.mean(axis=0)
        Yc = Y - self.ybar
        R = self.R = Y.shape[1]
        q = p + 1
        XY = X.T @ Yc
        ZZ = np.empty((R, q, q))
        ZZ[:, :p, :p] = X.T @ X
        ZZ[:, :p, p] = XY.T
        ZZ[:, p, :p] = XY.T
        ZZ[:, p, p] = np.einsum("ij,ij->j", Yc, Yc)
        # Layout: the batch (responses x points) is the last axis everywhere.
        self.ZZT = np.ascontiguousarray(ZZ.reshape(R, q * q).T)  # (q*q, R)

        # Chains of every row below each level (leaf level: the row's leaf).
        chains = []
        for g in range(G):
            if g == G - 1:
                chains.append((np.zeros((1, 0), dtype=np.int64), np.zeros(n, dtype=np.int64)))
            else:
                ct = np.stack([rowtype[l] for l in range(g + 1, G)], axis=1)
                chain_types, chain = np.unique(ct, axis=0, return_inverse=True)
                chains.append((chain_types, chain.ravel()))
        # Gram entries per pair of chains grow quadratically with the chains
        # of a node; with many distinct compositions (deep, unbalanced
        # nesting) the levels above the leaves are handled node by node.
        self.node_mode = False
        if G >= 2:
            n_pairs = 0  # sum over nodes of (distinct chains in the node)^2
            for g in range(G - 1):
                keys = np.unique(codes[g] * len(chains[g][0]) + chains[g][1])
                n_pairs += int((np.bincount(keys // len(chains[g][0])) ** 2).sum())
            self.node_mode = n_pairs > NODE_MODE_FACTOR * sum(nlev[g] for g in range(G - 1))
        if self.node_mode:
            self.types = types
            leaf, K = codes[-1], len(ks)
            par = np.zeros(nlev[-1], dtype=np.int64)
            par[leaf] = codes[-2]
            nb = nlev[-2]
            ind = sparse.csr_matrix((np.ones(n), (par[leaf] * K + types[-1][leaf], np.arange(n))),
                                    shape=(nb * K, n))
            self.Zbk_x = np.asarray(ind @ X).reshape(nb, K, p)
            self.Zbk_y = np.ascontiguousarray(np.asarray(ind @ Yc).reshape(nb, K, R))
            self.up = [None] * G
            for g in range(G - 2):
                m = np.zeros(nlev[g + 1], dtype=np.int64)
                m[codes[g + 1]] = codes[g]
                up = np.zeros((nlev[g], nlev[g + 1]))
                up[m, np.arange(nlev[g + 1])] = 1.0
                self.up[g] = up

        self.levels = []
        WXX, WXy, Wyy = [], [], []
        for g in range(G):
            lv = _Level()
            lv.chain_types, chain = chains[g]
            if self.node_mode and g < G - 1:
                lv.t = lv.j1 = lv.j2 = np.zeros(0, dtype=np.int64)
                self.levels.append(lv)
                continue
            J, nb = len(lv.chain_types), nlev[g]
            ind = sparse.csr_matrix((np.ones(n), (codes[g] * J + chain, np.arange(n))), shape=(nb * J, n))
            Zx = np.asarray(ind @ X).reshape(nb, J, p)
            Zy = np.asarray(ind @ Yc).T.reshape(R, nb, J)
            present = (np.asarray(ind.sum(axis=1)).reshape(nb, J) > 0).astype(float)
            onehot = np.zeros((nb, ntypes[g]))
            onehot[np.arange(nb), types[g]] = 1.0
            pairs = np.einsum("bt,bj,bk->tjk", onehot, present, present) > 0
            lv.t, lv.j1, lv.j2 = np.nonzero(pairs)
            sel = onehot[:, lv.t]  # (nb, E): node b has the entry's type
            x1, x2 = Zx[:, lv.j1, :], Zx[:, lv.j2, :]  # (nb, E, p)
            WXX.append(np.einsum("be,bei,bej->eij", sel, x1, x2).reshape(-1, p * p))
            y2 = Zy[:, :, lv.j2] * sel  # (R, nb, E)
            WXy.append(np.einsum("rbe,bei->rei", y2, x1))
            Wyy.append(np.einsum("rbe,rbe->re", y2, Zy[:, :, lv.j1]))
            self.levels.append(lv)
        # sum_e C_e * (entry e's Gram matrix), in parts: X'X (shared), X'y, y'y
        self.WXXT = np.ascontiguousarray(np.concatenate(WXX, axis=0).T)  # (p*p, E)
        self.WXyT = np.ascontiguousarray(np.concatenate(WXy, axis=1).transpose(1, 2, 0))  # (E, p, R)
        self.WyyT = np.ascontiguousarray(np.concatenate(Wyy, axis=1).T)  # (E, R)

    def _contract(self, x, ridx):
        """``sum_e x[e] W_e`` for x (E, M): (q*q, M). Column n of x belongs to
        response ``ridx[n % N]`` (N = len(ridx), or R with ``ridx=None``)."""
        p, q = self.p, self.p + 1
        E, M = x.shape
        WXy = self.WXyT if ridx is None else self.WXyT[:, :, ridx]  # (E, p, N)
        Wyy = self.WyyT if ridx is None else self.WyyT[:, ridx]  # (E, N)
        N = Wyy.shape[1]
        xm = x.reshape(E, M // N, N)
        out = np.empty((q, q, M))
        out[:p, :p] = np.einsum("ke,eM->kM", self.WXXT, x).reshape(p, p, M)  # no BLAS threads
        xy = np.einsum("eiN,emN->imN", WXy, xm).reshape(p, M)
        out[:p, p] = xy
        out[p, :p] = xy
        out[p, p] = np.einsum("eN,emN->mN", Wyy, xm).reshape(M)
        return out.reshape(q * q, M)

    def quad(self, phi, ridx, order):
        """``Q = [X, y]' V^-1 [X, y]`` (q*q, C, N) and ``log det V`` (C, N) as jets.

        ``phi`` (G, N): N evaluation points; column n belongs to response
        ``ridx[n]`` (``ridx=None``: N is a multiple of R, column n is response n % R).
        """
        G = self.G
        J = _Jets(G, order)
        ph = [J.var(phi[g], g)[:, None, :] for g in range(G)]  # (C, 1, N)
        inva = [None] * G
        ldV = 0.0
        m = None
        for g in range(G - 1, -1, -1):
            if g == G - 1:
                kk = self.leaf_k[:, None]
                a = J.plus(ph[g] * kk, 1.0)  # (C, K, N)
                ia = J.recip(a)
                m = ia * kk
            else:
                M = np.einsum("tu,cuN->ctN", self.comp[g], m)
                a = J.plus(J.mul(ph[g], M), 1.0)
                ia = J.recip(a)
                m = J.mul(ia, M)
            inva[g] = ia
            ldV = ldV + np.einsum("t,ctN->cN", self.ntype[g], J.log(a))
        coefs = []
        for g in range(G):
            lv = self.levels[g]
            if not len(lv.t):
                continue
            c = J.mul(ph[g], inva[g][:, lv.t])
            if g < G - 1:
                gam = None
                for l in range(g + 1, G):
                    f = inva[l][:, lv.chain_types[:, l - g - 1]]
                    gam = f if gam is None else J.mul(gam, f)
                c = J.mul(J.mul(c, gam[:, lv.j1]), gam[:, lv.j2])
            coefs.append(c)
        Cc = np.concatenate(coefs, axis=1) if len(coefs) > 1 else coefs[0]  # (C, E, N)
        nC, E, N = Cc.shape
        x = Cc[0] if nC == 1 else Cc.transpose(1, 0, 2).reshape(E, nC * N)
        Q = self._contract(x, ridx).reshape(-1, nC, N)  # (q*q, C, N)
        np.negative(Q, out=Q)
        if ridx is not None:
            Q[:, 0] += self.ZZT[:, ridx]
        else:
            Q[:, 0].reshape(-1, N // self.R, self.R)[...] += self.ZZT[:, None, :]
        if self.node_mode:
            Q -= self._node_corrections(J, ph, inva, ridx, N).transpose(1, 2, 0, 3).reshape(Q.shape)
        return Q, ldV, J

    def _node_corrections(self, J, ph, inva, ridx, N):
        """``sum_b phi_g / a_b T_b T_b'`` over the nodes of the levels above the
        leaves (node mode): (C, q, q, N)."""
        G, q = self.G, self.p + 1
        Zy = self.Zbk_y if ridx is None else self.Zbk_y[:, :, ridx]  # (nb, K, N')
        w = inva[G - 1]  # (C, K, N)
        C, K = w.shape[:2]
        m = N // Zy.shape[2]
        Tx = np.einsum("bki,ckN->cbiN", self.Zbk_x, w)
        Ty = np.einsum("bkR,ckmR->cbmR", Zy, w.reshape(C, K, m, -1)).reshape(C, -1, 1, N)
        T = np.concatenate([Tx, Ty], axis=2)  # (C, nb, q, N): sums of V_child^-1 [X, y]
        out = np.zeros((C, q, q, N))
        for g in range(G - 2, -1, -1):
            if g < G - 2:
                S = J.mul(inva[g + 1][:, self.types[g + 1]][:, :, None, :], T)
                T = np.einsum("ab,cbiN->caiN", self.up[g], S)
            coef = J.mul(ph[g], inva[g][:, self.types[g]])  # (C, nb, N)
            U = J.mul(coef[:, :, None, :], T)
            out += J.contract_nodes(U, T)
        return out

    def criterion(self, phi, ridx, order, reml, ainv=False):
        """lme4's profiled criterion (REML criterion or deviance) with derivatives.

        ``phi`` (G, N). Returns D (N,), gradient (G, N) or None, Hessian
        (G, G, N) or None, and the pieces at the points: r2, ldV, ldA (N,),
        beta (p, N) and, if ``ainv``, Ainv = (X'V^-1X)^-1 (p, p, N).

        With ``Q = [[A, q], [q', s]]`` (``A = X'V^-1X``): ``r2 = s - q'A^-1 q``
        = 1 / (Q^-1)_yy and ``log det Q = log det A + log r2``, so
        REML: ``D = ldV + log det Q + (n-p-1) log r2 + c``; ML: ``D = ldV + n log r2 + c``.
        """
        p, n, q = self.p, self.n, self.p + 1
        Q, ldV, J = self.quad(phi, ridx, order)
        N = Q.shape[-1]
        Q0 = Q[:, 0].reshape(q, q, N)
        L = _chol_soa(Q0)
        dl = np.einsum("iin->in", L)
        r2 = dl[p] * dl[p]
        with np.errstate(invalid="ignore", divide="ignore"):
            ldA = 2.0 * np.log(dl[:p]).sum(axis=0)
            dof = n - p if reml else n
            const = dof * (1.0 + _LOG_2PI - np.log(dof))
            D = ldV[0] + (ldA if reml else 0.0) + dof * np.log(r2) + const
        pieces = {"r2": r2, "ldV": ldV[0], "ldA": ldA}
        if ainv is not False:
            # (X'V^-1X)^-1 and beta at the columns asked for (all with ainv=True)
            sel = slice(None) if ainv is True else ainv
            LiA = _trinv_soa(L[:p, :p, sel])
            Ai = np.einsum("kin,kjn->ijn", LiA, LiA)
            pieces["Ainv"] = Ai
            pieces["beta"] = np.einsum("ijn,jn->in", Ai, Q0[:p, p, sel])
        if order == 0:
            return D, None, None, pieces
        Li = _trinv_soa(L)
        Qi = np.einsum("kin,kjn->ijn", Li, Li)
        G = self.G
        c2 = n - p - 1.0 if reml else float(n)
        v = Qi[:, p] * r2  # [-beta, 1]
        dQ = np.moveaxis(Q[:, 1:1 + G], 1, 0).reshape(G, q, q, N)
        z = np.einsum("gabn,bn->gan", dQ, v)
        dr2 = np.einsum("gan,an->gn", z, v)
        g = ldV[1:1 + G] + c2 * dr2 / r2
        if reml:
            g = g + np.einsum("abn,gabn->gn", Qi, dQ)
        if order == 1:
            return D, g, None, pieces
        hQ = np.moveaxis(Q[:, J.hs], 1, 0).reshape(-1, q, q, N)
        hv = np.einsum("kabn,an,bn->kn", hQ, v, v)
        Qz = np.einsum("abn,gbn->gan", Qi, z)
        zQz = np.einsum("gan,han->ghn", z, Qz)
        pi, pj = J.pi - 1, J.pj - 1
        di, dj = dr2[pi], dr2[pj]
        hr2 = hv - 2.0 * zQz[pi, pj] + 2.0 * di * dj / r2
        val = c2 * (hr2 / r2 - di * dj / (r2 * r2)) + ldV[J.hs]
        if reml:
            Mq = np.einsum("abn,gbcn->gacn", Qi, dQ)
            trMM = np.einsum("gabn,hban->ghn", Mq, Mq)
            val = val + np.einsum("abn,kabn->kn", Qi, hQ) - trMM[pi, pj]
        H = np.empty((G, G, N))
        H[pi, pj] = val
        H[pj, pi] = val
        return D, g, H, pieces


def _chol_soa(A):
    """Cholesky factors (lower) of a batch of SPD matrices laid out (q, q, N)."""
    q = A.shape[0]
    L = np.zeros(A.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in range(q):
            s = A[j, j] - (L[j, :j] * L[j, :j]).sum(axis=0) if j else A[j, j]
            d = np.sqrt(s)
            L[j, j] = d
            if j < q - 1:
                t = A[j + 1:, j] - (L[j + 1:, :j] * L[j, :j][None]).sum(axis=1) if j else A[j + 1:, j]
                L[j + 1:, j] = t / d
    return L


def _trinv_soa(L):
    """Inverses of a batch of lower-triangular matrices laid out (q, q, N)."""
    q = L.shape[0]
    Li = np.zeros(L.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(q):
            Li[i, i] = 1.0 / L[i, i]
            if i:
                Li[i, :i] = -(L[i, :i, None] * Li[:i, :i]).sum(axis=0) * Li[i, i]
    return Li


# ---------------------------------------------------------------------------
# Optimisation of theta (batched projected Newton in phi = theta^2)
# ---------------------------------------------------------------------------


def _newton_direction(g, H, free):
    """Modified Newton direction on the free coordinates (descent guaranteed)."""
    G = g.shape[1]
    gm = np.where(free, g, 0.0)
    Hm = np.where(free[:, :, None] & free[:, None, :], H, 0.0)
    Hm = Hm + np.where(free, 0.0, 1.0)[:, :, None] * np.eye(G)[None]
    lam, vec = np.linalg.eigh(Hm)
    scale = np.maximum(np.abs(lam).max(axis=1, keepdims=True), 1e-300)
    lam = np.maximum(np.abs(lam), 1e-10 * scale)
    step = -np.einsum("rij,rj->ri", vec, np.einsum("rji,rj->ri", vec, gm) / lam)
    return np.where(free, step, 0.0)


def _crit1(block, phi, idx, order, reml):
    """criterion at one point per response: phi (R', G) -> D (R',), g (R', G), H (R', G, G)."""
    D, g, H, pc = block.criterion(np.ascontiguousarray(phi.T), idx, order, reml)
    return D, None if g is None else g.T, None if H is None else H.transpose(2, 0, 1), pc


def _optimize(block, reml, max_iter=200):
    """Minimise the profiled criterion over phi >= 0 for every response.

    Returns phi (R, G), converged (R,), iterations used.
    """
    R, G = block.R, block.G
    phi = np.ones((R, G))
    D, g, H, _ = _crit1(block, phi, None, 2, reml)
    done = np.zeros(R, bool)
    ok = np.ones(R, bool)
    it = 0
    for it in range(max_iter):
        act = np.flatnonzero(~done)
        if act.size == 0:
            break
        ph, Da, ga, Ha = phi[act], D[act], g[act], H[act]
        free = ~((ph <= 0.0) & (ga >= 0.0))
        step = np.maximum(ph + _newton_direction(ga, Ha, free), 0.0) - ph
        # Converged: the projected Newton step is negligible (quadratic
        # convergence: the error left after it is far smaller still).
        tiny = np.all(np.abs(step) <= 1e-10 * np.maximum(ph, 1e-4), axis=1)
        phi[act[tiny]] += step[tiny]
        done[act[tiny]] = True
        keep = ~tiny
        act, ph, Da, ga, step = act[keep], ph[keep], Da[keep], ga[keep], step[keep]
        # Within the region of quadratic convergence the decrease a step
        # brings is below the criterion's rounding: take it without a line
        # search (which could not see the decrease).
        decrement = -np.einsum("ri,ri->r", ga, step)
        near = decrement <= 1e-12 * np.maximum(np.abs(Da), 1e3)
        alpha = np.ones(act.size)
        pending = np.arange(act.size)
        accepted = np.zeros(act.size, bool)
        for ls in range(60):
            if pending.size == 0:
                break
            trial = np.maximum(ph[pending] + alpha[pending, None] * step[pending], 0.0)
            Dt, gt, Ht, _ = _crit1(block, trial, act[pending], 2, reml)
            dec = np.einsum("ri,ri->r", ga[pending], trial - ph[pending])
            moved = np.any(trial != ph[pending], axis=1)
            good = np.isfinite(Dt) & moved & ((Dt <= Da[pending] + 1e-4 * np.minimum(dec, 0.0)) | near[pending])
            if ls > 0:
                stop = ~good & ~moved  # no decrease found down to rounding
                pending, good = pending[~stop], good[~stop]
                Dt, gt, Ht, trial = Dt[~stop], gt[~stop], Ht[~stop], trial[~stop]
            idx = act[pending[good]]
            D[idx], g[idx], H[idx], phi[idx] = Dt[good], gt[good], Ht[good], trial[good]
            accepted[pending[good]] = True
            pending = pending[~good]
            alpha[pending] *= 0.5
        # No decrease along a descent direction: at the optimum to rounding,
        # unless the Newton decrement says otherwise (a failure).
        stuck = ~accepted
        done[act[stuck]] = True
        ok[act[stuck & ~(decrement <= 1e-8 * np.maximum(np.abs(Da), 1e3))]] = False
    ok &= done
    return phi, ok, it


# ---------------------------------------------------------------------------
# lmerTest's Satterthwaite ingredients, replicated (numDeriv steps included)
# ---------------------------------------------------------------------------


def _richardson(a):
    """numDeriv's Richardson extrapolation over the last axis (r = 4, v = 2)."""
    r = a.shape[-1]
    for m in range(1, r):
        a = (a[..., 1:] * (4.0**m) - a[..., :-1]) / (4.0**m - 1.0)
    return a[..., 0]


def _numderiv_steps(x, d, eps=1e-4, r=4):
    """Step sizes h_k (k = 0..r-1) per coordinate: (R, n, r)."""
    h0 = np.abs(d * x) + eps * (np.abs(x) < _ZERO_TOL)
    out = np.empty(x.shape + (r,))
    h = h0
    for k in range(r):
        out[..., k] = h
        h = h / 2.0
    return out


def _varpar_parts(block, theta_lme4, sigma, reml):
    """Hessian of devfun_vp (R, n, n) and Jacobian of covbeta (R, n, p, p) as numDeriv.

    ``theta_lme4`` is in lme4's order (finest grouping first).
    """
    R, G, p, n_obs = block.R, block.G, block.p, block.n
    nv = G + 1
    x = np.concatenate([theta_lme4, sigma[:, None]], axis=1)  # (R, nv)
    hH = _numderiv_steps(x, 0.1)  # hessian: d = 0.1
    hJ = _numderiv_steps(x, 1e-4)  # jacobian: d = 1e-4
    # theta points (lme4 order) to evaluate: centre, +-hH e_i, +-hH (e_i + e_j), +-hJ e_i
    pts = [theta_lme4]
    key = {}

    def add(name, th):
        key[name] = len(pts)
        pts.append(th)

    for i in range(G):
        for k in range(4):
            for s, sgn in (("p", 1), ("m", -1)):
                th = theta_lme4.copy()
                th[:, i] = theta_lme4[:, i] + hH[:, i, k] if sgn > 0 else theta_lme4[:, i] - hH[:, i, k]
                add(("H", i, k, s), th)
                th = theta_lme4.copy()
                th[:, i] = theta_lme4[:, i] + hJ[:, i, k] if sgn > 0 else theta_lme4[:, i] - hJ[:, i, k]
                add(("J", i, k, s), th)
        for j in range(i):
            for k in range(4):
                th = theta_lme4.copy()
                th[:, i] = theta_lme4[:, i] + hH[:, i, k]
                th[:, j] = theta_lme4[:, j] + hH[:, j, k]
                add(("HH", i, j, k, "p"), th)
                th = theta_lme4.copy()
                th[:, i] = theta_lme4[:, i] - hH[:, i, k]
                th[:, j] = theta_lme4[:, j] - hH[:, j, k]
                add(("HH", i, j, k, "m"), th)
    P = len(pts)
    allth = np.stack(pts)  # (P, R, G) lme4 order
    phi = np.ascontiguousarray((allth * allth)[:, :, ::-1].transpose(2, 0, 1).reshape(G, P * R))
    jpts = [0] + sorted(v for kk, v in key.items() if kk[0] == "J")  # covbeta needed here only
    cols = (np.array(jpts)[:, None] * R + np.arange(R)).ravel()
    _, _, _, pc = block.criterion(phi, None, 0, reml, ainv=cols)
    ldV, ldA, r2 = (pc[k].reshape(P, R) for k in ("ldV", "ldA", "r2"))
    Ainv = np.full((P, R, p, p), np.nan)
    Ainv[jpts] = pc["Ainv"].reshape(p, p, len(jpts), R).transpose(2, 3, 0, 1)  # (P, R, p, p)

    def devfun_vp(pt, sig):
        sigma2 = sig * sig
        dev = ldV[pt] + r2[pt] / sigma2 + n_obs * np.log(2 * np.pi * sigma2)
        if not reml:
            return dev
        return dev + ldA[pt] - p * np.log(2 * np.pi * sigma2)

    sig0 = x[:, G]
    f0 = devfun_vp(0, sig0)
    Hd = np.empty((R, nv))
    Hm = np.empty((R, nv, nv))
    for i in range(nv):
        Dk = np.empty((R, 4))
        for k in range(4):
            h = hH[:, i, k]
            if i < G:
                f1 = devfun_vp(key[("H", i, k, "p")], sig0)
                f2 = devfun_vp(key[("H", i, k, "m")], sig0)
            else:
                f1 = devfun_vp(0, sig0 + h)
                f2 = devfun_vp(0, sig0 - h)
            Dk[:, k] = (f1 - 2 * f0 + f2) / (h * h)
        Hd[:, i] = _richardson(Dk)
        Hm[:, i, i] = Hd[:, i]
    for i in range(nv):
        for j in range(i):
            Dk = np.empty((R, 4))
            for k in range(4):
                hi, hj = hH[:, i, k], hH[:, j, k]
                if i < G:
                    f1 = devfun_vp(key[("HH", i, j, k, "p")], sig0)
                    f2 = devfun_vp(key[("HH", i, j, k, "m")], sig0)
                else:  # i is sigma, j a theta
                    f1 = devfun_vp(key[("H", j, k, "p")], sig0 + hi)
                    f2 = devfun_vp(key[("H", j, k, "m")], sig0 - hi)
                Dk[:, k] = (f1 - 2 * f0 + f2 - Hd[:, i] * (hi * hi) - Hd[:, j] * (hj * hj)) / (2 * hi * hj)
            Hm[:, i, j] = Hm[:, j, i] = _richardson(Dk)
    # Jacobian of covbeta = sigma^2 * (X'V^-1X)^-1
    Jac = np.empty((R, nv, p, p))
    s2 = (sig0 * sig0)[:, None, None]
    for i in range(nv):
        ak = np.empty((R, p, p, 4))
        for k in range(4):
            h = hJ[:, i, k]
            if i < G:
                f1 = s2 * Ainv[key[("J", i, k, "p")]]
                f2 = s2 * Ainv[key[("J", i, k, "m")]]
            else:
                sp, sm = sig0 + h, sig0 - h
                f1 = (sp * sp)[:, None, None] * Ainv[0]
                f2 = (sm * sm)[:, None, None] * Ainv[0]
            ak[..., k] = (f1 - f2) / (2 * h)[:, None, None]
        Jac[:, i] = _richardson(ak)
    return Hm, Jac


def _vcov_varpar(H, tol=1e-8):
    """2 * pseudo-inverse of H over eigenvalues > tol, and lmerTest's warnings."""
    lam, vec = np.linalg.eigh(H)
    lam, vec = lam[:, ::-1], vec[:, :, ::-1]  # R's decreasing order
    pos = lam > tol
    inv = np.where(pos, 1.0 / np.where(pos, lam, 1.0), 0.0)
    A = 2.0 * np.einsum("rik,rk,rjk->rij", vec, inv, vec)
    msgs = [[] for _ in range(H.shape[0])]
    for r in np.flatnonzero(np.any(np.abs(lam) < tol, axis=1) | np.any(lam < -tol, axis=1)):
        out = msgs[r]
        ev = lam[r]
        neg = ev < -tol
        zero = (ev > -tol) & (ev < tol)
        if neg.any():
            out.append(f"Model failed to converge with {neg.sum()} negative "
                       f"{'eigenvalues' if neg.sum() > 1 else 'eigenvalue'}: "
                       + " ".join(f"{e:1.1e}" for e in ev[neg]))
        if zero.any():
            out.append(f"Model may not have converged with {zero.sum()} "
                       f"{'eigenvalues' if zero.sum() > 1 else 'eigenvalue'} close to zero: "
                       + " ".join(f"{e:1.1e}" for e in ev[zero]))
    return A, msgs


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
    """get_Fstat_ddf for each row of nu (R, q), q >= 2."""
    with np.errstate(invalid="ignore", divide="ignore"):
        E = np.sum(nu / (nu - 2), axis=1)
        out = 2 * E / (E - nu.shape[1])
    out = np.where(np.any(nu <= 2, axis=1), 2.0, out)
    return np.where(np.all(np.abs(np.diff(nu, axis=1)) < tol, axis=1), nu.mean(axis=1), out)


def _f_sf(F, df1, df2):
    F, df1, df2 = np.broadcast_arrays(np.asarray(F, float), np.asarray(df1, float), np.asarray(df2, float))
    out = np.full(F.shape, np.nan)
    inf = np.isinf(df2) & np.isfinite(F)
    fin = np.isfinite(df2) & np.isfinite(F)
    out[inf] = stats.chi2.sf(F[inf] * df1[inf], df1[inf])
    out[fin] = stats.f.sf(F[fin], df1[fin], df2[fin])
    return out


# ---------------------------------------------------------------------------
# The engine entry point
# ---------------------------------------------------------------------------


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


def _design_checks(nest, n):
    """lme4's checks on the grouping factors (lFormula errors)."""
    if any(m < 2 for m in nest.nlev):
        return "grouping factors must have > 1 sampled level"
    # lme4 lists the factors in its term order (most levels first).
    bad = [name for name, m in sorted(zip(nest.names, nest.nlev), key=lambda t: -t[1]) if m >= n]
    if bad:
        return ("number of levels of each grouping factor must be < number of observations "
                f"(problems: {', '.join(bad)})")
    return None


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


def _rank_problem(fixed, X):
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


def _scale_message(X):
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


def fit_block(design, Y, options: FitOptions) -> BlockFit:
    """Fit every column of ``Y`` under one design (nested random intercepts only).

    Parameters
    ----------
    design : clusterlmer.design.ModelDesign
        Design restricted to the rows of ``Y``.
    Y : ndarray, shape (n_obs, k)
        Responses, all finite.
    options : FitOptions

    Returns
    -------
    BlockFit
    """
    return _fit(design, Y, options)


def _fit(design, Y, options, theta=None):
    """fit_block, or (``theta`` given, lme4's order, shape (k, G)) everything
    lmerTest computes at that theta instead of the optimum (for tests)."""
    Y = np.asarray(Y, dtype=float)
    if Y.ndim == 1:
        Y = Y[:, None]
    n, k = Y.shape
    try:
        fixed, nest = _require(design, options)
    except UnsupportedModel as exc:
        # Identical groupings can appear in a subset of rows only: an error
        # of this block, not of the model.
        if "define the same groups" not in str(exc) or theta is not None:
            raise
        fixed = _FixedPart(design)
        return _block_error(("(Intercept)", *fixed.labels), fixed.coef_names, k, str(exc))
    terms = ("(Intercept)", *fixed.labels)
    coefs = fixed.coef_names
    err = _design_checks(nest, n)
    if err:
        return _block_error(terms, coefs, k, err)
    X = fixed.matrix(design.frame)
    why = _rank_problem(fixed, X)
    if why:
        return _block_error(terms, coefs, k, f"{why}: fit these data with {option_hint(_ENGINE_R, '--engine r')}")
    setup_msgs = [m for m in (_scale_message(X),) if m]
    parts = [_fit_chunk(fixed, nest, X, Y[:, c:c + CHUNK], options, terms, coefs, setup_msgs,
                        None if theta is None else theta[c:c + CHUNK])
             for c in range(0, k, CHUNK)]
    if len(parts) == 1:
        return parts[0]
    cat = {name: np.concatenate([getattr(b, name) for b in parts], axis=-1)
           for name in ("F", "df1", "df2", "p", "contrast_estimate", "estimate", "se", "sigma", "deviance",
                        "converged", "singular")}
    return BlockFit(terms=terms, coef_names=coefs, messages=[m for b in parts for m in b.messages],
                    errors=[e for b in parts for e in b.errors], **cat)


def _fit_chunk(fixed, nest, X, Y, options, terms, coefs, setup_msgs, theta):
    """The fits of a chunk of responses (all of fit_block's numerics)."""
    n, p = X.shape
    k = Y.shape[1]
    block = _Block(X, nest, Y)
    reml = options.reml
    if theta is None:
        phi, ok, _ = _optimize(block, reml)
    else:
        phi, ok = np.asarray(theta, float)[:, ::-1] ** 2, np.ones(k, bool)
    D, _, _, pc = block.criterion(np.ascontiguousarray(phi.T), None, 0, reml, ainv=True)
    theta = np.sqrt(phi)
    theta_lme4 = theta[:, ::-1]
    r2 = pc["r2"]
    dof = n - p if reml else n
    sigma = np.sqrt(r2 / dof)
    beta = pc["beta"].T.copy()
    beta[:, 0] += block.ybar
    Vb = (sigma * sigma)[:, None, None] * pc["Ainv"].transpose(2, 0, 1)
    se = np.sqrt(np.diagonal(Vb, axis1=1, axis2=2))
    singular = np.any(theta < SINGULAR_TOL, axis=1)

    per_msgs = [[] for _ in range(k)]
    for r in np.flatnonzero(singular):
        per_msgs[r].append(SINGULAR_MESSAGE)
    if options.ddf == "satterthwaite":
        Hvp, Jac = _varpar_parts(block, theta_lme4, sigma, reml)
        Avp, vp_msgs = _vcov_varpar(Hvp)
        for r in range(k):
            per_msgs[r] += vp_msgs[r]

    nt = len(terms)
    F = np.full((nt, k), np.nan)
    df1 = np.full((nt, k), np.nan)
    df2 = np.full((nt, k), np.nan)
    pval = np.full((nt, k), np.nan)
    cest = np.full((nt, k), np.nan)
    for ti in range(nt):
        cols = np.flatnonzero(fixed.assign == ti)
        q = len(cols)
        bL = beta[:, cols]
        VL = Vb[:, cols[:, None], cols[None, :]]
        if q == 1:
            cest[ti] = bL[:, 0]
        if options.ddf == "satterthwaite":
            JL = Jac[:, :, cols[:, None], cols[None, :]]  # (R, nv, q, q)
            if q == 1:
                var_con = VL[:, 0, 0]
                grad = JL[:, :, 0, 0]
                ddf = 2 * var_con**2 / np.einsum("ri,rij,rj->r", grad, Avp, grad)
                tval = bL[:, 0] / np.sqrt(var_con)
                F[ti], df1[ti], df2[ti] = tval**2, 1.0, ddf
            else:
                F[ti], df1[ti], df2[ti] = _satterthwaite_md(VL, bL, JL, Avp)
        else:
            lam, vec = np.linalg.eigh(VL)
            tol = np.maximum(_SQRT_EPS * lam[:, -1:], 0.0)
            pos = lam > tol
            z = np.einsum("rji,rj->ri", vec, bL)
            qq = pos.sum(axis=1)
            F[ti] = np.where(pos, z * z / np.where(pos, lam, 1.0), 0.0).sum(axis=1) / qq
            df1[ti] = qq
            df2[ti] = (n - p) if options.ddf == "residual" else np.inf
        pval[ti] = _f_sf(F[ti], df1[ti], df2[ti])

    failed = ~np.isfinite(D)
    if failed.any():  # e.g. a response fitted exactly by the fixed effects
        for arr in (F, df1, df2, pval, cest):
            arr[:, failed] = np.nan
        beta[failed], se[failed], sigma[failed], D[failed] = np.nan, np.nan, np.nan, np.nan
    messages, errors, converged = [], [], np.zeros(k, bool)
    for r in range(k):
        msgs = list(dict.fromkeys(setup_msgs + per_msgs[r]))
        errors.append("the native engine's criterion is not finite at the optimum" if failed[r] else "")
        if not ok[r]:
            msgs.append("native optimizer did not converge")
        messages.append("; ".join(msgs))
        converged[r] = bool(ok[r]) and not failed[r] and not any("converge" in m.lower() for m in msgs)
    return BlockFit(
        terms=terms, coef_names=coefs, F=F, df1=df1, df2=df2, p=pval, contrast_estimate=cest,
        estimate=beta.T.copy(), se=se.T.copy(), sigma=sigma, deviance=D, converged=converged,
        singular=singular.astype(float), messages=messages, errors=errors,
    )


def _satterthwaite_md(VL, bL, JL, A, eps=_SQRT_EPS):
    """lmerTest's contestMD for a batch: VL (R, q, q), bL (R, q), JL (R, nv, q, q),
    A (R, nv, nv) -> F, NumDF, DenDF (each (R,))."""
    lam, vec = np.linalg.eigh(VL)
    lam, vec = lam[:, ::-1], vec[:, :, ::-1]  # R's decreasing order; columns = rows of PtL
    pos = lam > np.maximum(eps * lam[:, :1], 0.0)
    q = pos.sum(axis=1)
    safe = np.where(pos, lam, 1.0)
    z = np.einsum("rim,ri->rm", vec, bL)
    with np.errstate(invalid="ignore", divide="ignore"):
        F = np.where(pos, z * z / safe, 0.0).sum(axis=1) / q
        grad = np.einsum("rim,rkij,rjm->rmk", vec, JL, vec)
        nu = 2 * safe**2 / np.einsum("rmk,rkl,rml->rm", grad, A, grad)
    ddf = _fstat_ddf_batch(nu) if np.all(q == nu.shape[1]) else np.array(
        [_fstat_ddf(nu[r, : q[r]]) if q[r] > 0 else np.nan for r in range(len(F))])
    F[q == 0] = np.nan
    return F, np.where(q > 0, q, np.nan).astype(float), ddf
