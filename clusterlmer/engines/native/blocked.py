"""lme4's profiled criterion and its exact gradient for any random part, batched over fits.

The random effects are ordered as lme4 orders its terms (most levels first,
:func:`.general.lme4_term_order`). As in MixedModels.jl, the first term is
kept apart: every observation has one level of it, so its block of
``A = Lambda' Z'Z Lambda + I`` is block diagonal (one ``k x k`` block per
level) and is factored level by level. The other terms form a small dense
part, eliminated through the Schur complement
``S = A22 - L21 L21'``. The levels are further split into connected
components (levels linked when they share an observation): ``A`` is block
diagonal over components, so nested models (every component one subject)
cost a few small blocks and fully crossed ones a single dense block of the
other terms' levels. A first term nested in the second is factored together
with it, level of the second by level (:mod:`.first_block`), which keeps the
second term out of the dense block. The first term's levels are stored component by
component without padding, so unequal groups cost their own size
(:mod:`.levels` holds the products between levels and components).

For per-fit ``theta`` (lme4's layout), :meth:`GeneralBlock.evaluate`
returns lme4's criterion (``mkLmerDevfun``: REML or ML), ``beta``,
``pwrss``, ``log|L|^2``, ``log|R_X|^2``, ``R_X^-1`` and, when asked, the
gradient in theta, exact (not a difference quotient):

``d/dtheta_i = tr(G_i K) - dof * u' G_i u / pwrss``,
``G_i = d(Lambda Lambda')/dtheta_i``, ``K = Z'PZ`` (REML, ``P`` the REML
projection of ``V = I + Z Lambda Lambda' Z'``) or ``Z'V^-1 Z`` (ML),
``u = Z'P y``, ``dof = n - p`` (REML) or ``n``. Only the level-diagonal
blocks of ``K`` and the dense part's block are needed, so ``K`` is never
formed whole.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .blocked_hessian import exact_hessian
from .compiled import run as run_kernel
from .compiled import specialised
from .first_block import first_block
from .first_block import tril_index as _tril_index
from .general import lme4_term_order
from .levels import LevelOps
from .small import cholesky, inv_lower, small_cholesky, small_inv_lower, smm, smm_t

__all__ = ["GeneralBlock", "GeneralStructure"]

_LOG_2PI = np.log(2 * np.pi)


class GeneralStructure:
    """The random part's layout, which does not depend on theta or on the variables' values.

    Attributes
    ----------
    terms : list of RandomEffectsTerm
        In lme4's order; ``terms[0]`` (with ``terms[1]`` when it nests there) is factored level by level.
    q, n_theta, k1 : int
        Random effects, theta entries, random effects per level of the first block
        (the first term's columns, or :mod:`.first_block`'s merged size).
    lower : ndarray (n_theta,)
        lme4's lower bounds.
    diagonal : ndarray of bool (n_theta,)
        Entries on a relative factor's diagonal (lower bound 0): lme4's
        ``isSingular`` looks at these.
    idx1 : ndarray (L1, k1)
        Rows of ``Z'`` of the first block's levels, ordered by component (``q``: a zero row).
    comp1, segments : ndarray
        Each of those levels' component, and where each component's levels start.
    idx2 : ndarray (C, m2)
        Rows of ``Z'`` of the other terms' random effects per component.
    tidx0 : ndarray (k1, k1)
        Entry of theta at each place of the first block's factor (``n_theta``: zero).
    tidx2 : ndarray (C, m2, m2)
        Entry of theta at each place of the dense part's ``Lambda`` block.
    """

    def __init__(self, spec):
        order = lme4_term_order(spec)
        self.terms = [spec.random[i] for i in order]
        ks = [len(t.coef_names) for t in self.terms]
        starts = np.concatenate([[0], np.cumsum([t.n_levels * k for t, k in zip(self.terms, ks)])])
        tstarts = np.concatenate([[0], np.cumsum([t.n_theta for t in self.terms])])
        self.q, self.n_theta = int(starts[-1]), int(tstarts[-1])
        self.lower = np.concatenate([t.theta_lower for t in self.terms])
        self.diagonal = self.lower == 0.0
        self.n_obs = len(self.terms[0].codes)
        fb = first_block(self.terms, starts, tstarts, self.q, self.n_theta)
        self.k1, j0 = fb.size, fb.n_terms  # the dense part: terms j0, j0 + 1, ...
        # Components: the first block's levels and the dense terms' levels, linked through the observations.
        offsets = np.zeros(len(self.terms) + 1, int)  # offsets[j]: dense term j's first node
        offsets[j0:] = fb.n_levels + np.cumsum([0] + [t.n_levels for t in self.terms[j0:]])
        n_nodes = int(offsets[-1])
        if len(self.terms) > j0:
            a = np.concatenate([fb.codes] * (len(self.terms) - j0))
            b = np.concatenate([t.codes + offsets[j] for j, t in enumerate(self.terms) if j >= j0])
            graph = coo_matrix((np.ones(a.size), (a, b)), shape=(n_nodes, n_nodes))
            n_comp, label = connected_components(graph, directed=False)
        else:  # no dense part: a single block, factored level by level
            n_comp, label = 1, np.zeros(n_nodes, dtype=int)
        levels1 = [np.flatnonzero(label[:fb.n_levels] == c) for c in range(n_comp)]
        dense = [[] for _ in range(n_comp)]
        tdense = [[] for _ in range(n_comp)]  # (theta offset, tril map, level key, column) per dense row
        for j, t in enumerate(self.terms[j0:], start=j0):
            k, tril = ks[j], _tril_index(ks[j])
            for lev in range(t.n_levels):
                c = label[offsets[j] + lev]
                for col in range(k):
                    dense[c].append(starts[j] + lev * k + col)
                    tdense[c].append((tstarts[j], j, lev, col, tril))
        self.n_components = n_comp
        m2 = max((len(x) for x in dense), default=0)
        self.m2 = m2
        # The first term's levels, component by component (no padding): level i is in component
        # comp1[i]; component c's levels are the segment starting at segments[c].
        flat = np.concatenate(levels1)
        self.comp1 = np.repeat(np.arange(n_comp), [len(x) for x in levels1])
        self.segments = np.concatenate([[0], np.cumsum([len(x) for x in levels1])[:-1]]).astype(np.intp)
        self.n_levels1 = len(flat)
        self.idx1 = fb.rows[flat]
        self.ops = LevelOps(self.comp1, self.segments, n_comp)
        self.idx2 = np.full((n_comp, m2), self.q)
        self.tidx2 = np.full((n_comp, m2, m2), self.n_theta)
        for c in range(n_comp):
            self.idx2[c, :len(dense[c])] = dense[c]
            for i, (off_i, j_i, lev_i, a, tril) in enumerate(tdense[c]):
                for jj, (_, j_j, lev_j, b, _) in enumerate(tdense[c]):
                    if j_i == j_j and lev_i == lev_j and tril[a, b] >= 0:
                        self.tidx2[c, i, jj] = off_i + tril[a, b]
        # Per first-term level, the dense rows of its component it shares observations with (Z'Z
        # is zero against the others, and Lambda's blocks keep that pattern): the compiled kernel
        # (.compiled) loops over these only, which in crossed designs is a fraction of m2.
        seen = set()
        for j, t in enumerate(self.terms[j0:], start=j0):
            seen.update(zip(fb.codes.tolist(), [j] * len(t.codes), t.codes.tolist()))
        rows = [[i for i, (_, j, lev, _, _) in enumerate(tdense[c]) if (lv, j, lev) in seen]
                for lv, c in zip(flat.tolist(), self.comp1.tolist())]
        self.n_active = np.array([len(r) for r in rows], dtype=np.intp)
        self.active = np.zeros((len(rows), max(self.n_active, default=0)), dtype=np.intp)
        for i, r in enumerate(rows):
            self.active[i, :len(r)] = r
        # Per diagonal entry of theta, the entries below it in its column (their sign is free).
        self.columns_below = []
        for j, t in enumerate(self.terms):
            tril = _tril_index(ks[j])
            for c in range(ks[j] - 1):
                self.columns_below.append((tstarts[j] + tril[c, c], tstarts[j] + tril[c + 1:, c]))
        # dLambda/dtheta_i as 0/1 patterns: in the first term's k1 x k1 factor, or per component
        # in the dense part's Lambda block (exact_hessian).
        self.n_first = int(tstarts[j0])
        self.first_patterns = np.stack([(fb.tidx == i).astype(float) for i in range(self.n_first)])
        self.dense_patterns = np.stack([(self.tidx2 == i).astype(float)
                                        for i in range(self.n_first, self.n_theta)]) if self.n_theta > self.n_first \
            else np.zeros((0, n_comp, m2, m2))
        self.dense_diagonal = all(k == 1 for k in ks[j0:])
        self.diag2 = self.tidx2[:, np.arange(m2), np.arange(m2)]  # (C, m2): theta entry on the diagonal
        self.tidx0 = fb.tidx
        # Sums of the gradient's per-place terms into theta's entries.
        self._pick2 = np.zeros((n_comp * m2 * m2, self.n_theta + 1))
        self._pick2[np.arange(self._pick2.shape[0]), self.tidx2.ravel()] = 1.0
        self._pick2 = self._pick2[:, :self.n_theta]
        self._pick0 = np.zeros((self.k1 * self.k1, self.n_theta + 1))
        self._pick0[np.arange(self.k1 * self.k1), self.tidx0.ravel()] = 1.0
        self._pick0 = self._pick0[:, :self.n_theta]

    def first_pair(self, i, j) -> np.ndarray:
        """``E_i E_j' + E_j E_i'`` in the first term's factor (theta entries i, j of it)."""
        Ei, Ej = self.first_patterns[i], self.first_patterns[j]
        return Ei @ Ej.T + Ej @ Ei.T

    def dense_pair(self, i, j) -> np.ndarray:
        """``E_i E_j' + E_j E_i'`` per component of the dense part (its theta entries i, j)."""
        Ei, Ej = self.dense_patterns[i], self.dense_patterns[j]
        return Ei @ np.swapaxes(Ej, -1, -2) + Ej @ np.swapaxes(Ei, -1, -2)

    @classmethod
    def of(cls, spec) -> "GeneralStructure":
        """The structure of ``spec``, computed once per analysis (it depends on the groupings only)."""
        return spec.shared("native-general-structure", lambda: cls(spec))

    def zt(self, spec) -> np.ndarray:
        """Dense ``Z'`` (q + 1, n) in this layout, with a last row of zeros (the padding's)."""
        out = np.zeros((self.q + 1, self.n_obs))
        row = 0
        for t in self.terms:
            M = t.model_matrix(spec.values)
            k = M.shape[1]
            rows = row + t.codes[:, None] * k + np.arange(k)[None, :]
            out[rows.ravel(), np.repeat(np.arange(self.n_obs), k)] = M.ravel()
            row += t.n_levels * k
        return out

    def problem(self, n):
        """lme4's errors about the grouping factors for ``n`` observations (``lFormula``), or None."""
        if any(t.n_levels < 2 for t in self.terms):
            return "grouping factors must have > 1 sampled level"
        bad = [t.name for t in self.terms if t.n_levels >= n]
        if bad:
            return ("number of levels of each grouping factor must be < number of observations "
                    f"(problems: {', '.join(bad)})")
        for t in self.terms:
            n_re = t.n_levels * len(t.coef_names)
            if n_re >= n:
                return (f"number of observations (={n}) <= number of random effects (={n_re}) for term "
                        f"({t.expr} | {t.name}); the random-effects parameters and the residual variance "
                        "(or scale parameter) are probably unidentifiable")
        return None


class DesignParts:
    """The cross products of one design (``Z``, ``X``) that every response's fit uses.

    ``W11`` (L1, k1, k1): the first term's level blocks of ``Z'Z``; ``W21``
    (m2, L1, k1): each such level against its component's dense rows (see
    :mod:`.levels` for this layout); ``W22`` (C, m2, m2); ``ZX1`` (L1, k1,
    p), ``ZX2`` (C, m2, p): of ``Z'X``; ``XtX`` (p, p). ``zt`` (q + 1, n)
    and ``X`` give the responses' parts (:meth:`responses`).
    """

    def __init__(self, structure: GeneralStructure, zt, X):
        s = structure
        W = zt @ zt.T
        i1, i2 = s.idx1, s.idx2
        self.W11 = W[i1[:, :, None], i1[:, None, :]]
        self.W21 = np.ascontiguousarray(W[i2[s.comp1][:, :, None], i1[:, None, :]].transpose(1, 0, 2))
        self.W22 = W[i2[:, :, None], i2[:, None, :]]
        ZX = zt @ X
        self.ZX1, self.ZX2 = ZX[i1], ZX[i2]
        self.XtX = X.T @ X
        self.zt, self.X = zt, X

    def responses(self, structure, Y):
        """``(Zy1 (k, L1, k1), Zy2 (k, C, m2), Xy (k, p), yy (k,))`` of responses ``Y`` (n, k)."""
        Zy = (self.zt @ Y).T
        return Zy[:, structure.idx1], Zy[:, structure.idx2], (self.X.T @ Y).T, np.einsum("ij,ij->j", Y, Y)


class GeneralBlock:
    """Fits sharing one structure: fit ``f`` is design ``design[f]`` with its own response.

    Parameters
    ----------
    structure : GeneralStructure
    designs : list of DesignParts
    design : ndarray of int (F,)
        Each fit's design.
    Zy1, Zy2, Xy, yy : ndarray
        Each fit's response parts (leading axis F), from :meth:`DesignParts.responses`.
    n : int
        Observations.
    """

    def __init__(self, structure, designs, design, Zy1, Zy2, Xy, yy, n):
        self.s, self.n = structure, n
        self.F = len(design)
        self.p = designs[0].XtX.shape[0]
        one = self.one_design = len(designs) == 1  # design arrays then have a leading axis of 1

        def per_fit(name):
            arrays = [getattr(d, name) for d in designs]
            return arrays[0][None] if one else np.stack(arrays)[design]

        self.W11, self.W21, self.W22 = per_fit("W11"), per_fit("W21"), per_fit("W22")
        # The compiled kernel takes each design once and every fit's design index.
        self.design = np.asarray(design, dtype=np.intp)
        self.by_design = tuple(np.ascontiguousarray(np.stack([getattr(d, name) for d in designs]))
                               for name in ("W11", "W21", "W22", "ZX1", "ZX2", "XtX"))
        self.bounds = np.append(structure.segments, structure.n_levels1).astype(np.intp)
        self.ZX1, self.ZX2, self.XtX = per_fit("ZX1"), per_fit("ZX2"), per_fit("XtX")
        # C order once: the compiled kernel takes them so, and would otherwise copy them at every call.
        self.Zy1, self.Zy2, self.Xy, self.yy = (np.ascontiguousarray(a) for a in (Zy1, Zy2, Xy, yy))

    def subset(self, rows) -> "GeneralBlock":
        """The fits ``rows`` only."""
        out = object.__new__(GeneralBlock)
        out.__dict__.update(self.__dict__)
        out.F = len(rows)
        if not self.one_design:
            for name in ("W11", "W21", "W22", "ZX1", "ZX2", "XtX"):
                setattr(out, name, getattr(self, name)[rows])
        for name in ("Zy1", "Zy2", "Xy", "yy", "design"):
            setattr(out, name, getattr(self, name)[rows])
        return out

    def criterion_gradient(self, theta, idx=None, reml=True):
        """The criterion (F',) and its exact gradient (F', n_theta) at ``theta`` for fits ``idx``."""
        out = self._compiled(theta, idx, reml, True)
        return out["criterion"], out["gradient"]

    def _compiled(self, theta, idx, reml, gradient):
        """:meth:`evaluate` without the Hessian, from the compiled kernel (:mod:`.compiled`)."""
        theta = np.ascontiguousarray(theta, dtype=float)
        fits = np.arange(self.F, dtype=np.intp) if idx is None else np.ascontiguousarray(idx, dtype=np.intp)
        R, p = len(theta), self.p
        crit, grad, fixed = np.empty(R), np.empty(theta.shape), np.empty((R, 3 + p + p * p))
        s = self.s
        responses = (np.ascontiguousarray(a) for a in (self.Zy1, self.Zy2, self.Xy, self.yy))
        run_kernel(theta, fits, self.design, *self.by_design, *responses, s.tidx0, s.tidx2, self.bounds, s.active,
                   s.n_active, self.n, bool(reml), bool(gradient), crit, grad, fixed, *specialised(s.k1, s.m2, p))
        out = {"criterion": crit, "ldL2": fixed[:, 0], "ldRX2": fixed[:, 1], "pwrss": fixed[:, 2],
               "beta": fixed[:, 3:3 + p], "RXinv": fixed[:, 3 + p:].reshape(R, p, p)}
        if gradient:
            out["gradient"] = grad
        return out

    def evaluate(self, theta, idx=None, reml=True, gradient=False, hessian=False):
        """Everything at ``theta`` for fits ``idx``: see :meth:`_evaluate`.

        A fit that cannot be evaluated (a response the fixed effects fit
        exactly, an extreme theta) gets NaN or infinite values, which the
        optimiser and the results record per fit; numpy's warnings about
        them are not raised.
        """
        if not hessian:
            return self._compiled(theta, idx, reml, gradient)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return self._evaluate(theta, idx, reml, gradient, hessian)

    def _evaluate(self, theta, idx=None, reml=True, gradient=False, hessian=False):
        """Everything at ``theta`` (F', n_theta) for fits ``idx`` (all when None).

        Returns a dict: ``criterion``, ``ldL2``, ``ldRX2``, ``pwrss`` (F',),
        ``beta`` (F', p), ``RXinv`` (F', p, p) with ``RXinv RXinv'`` lme4's
        unscaled ``vcov``, ``gradient`` (F', n_theta) when asked, and the
        exact ``hessian`` (F', n_theta, n_theta) with it
        (:func:`.blocked_hessian.exact_hessian`).
        Any theta is accepted, also below lme4's bounds (numDeriv steps there).
        """
        s, p, n = self.s, self.p, self.n
        per_design = lambda a: a if idx is None or self.one_design else a[idx]  # noqa: E731
        per_fit = lambda a: a if idx is None else a[idx]  # noqa: E731
        W11, W21, W22 = per_design(self.W11), per_design(self.W21), per_design(self.W22)
        ZX1, ZX2, XtX = per_design(self.ZX1), per_design(self.ZX2), per_design(self.XtX)
        Zy1, Zy2, Xy, yy = per_fit(self.Zy1), per_fit(self.Zy2), per_fit(self.Xy), per_fit(self.yy)
        F = theta.shape[0]
        C, m2, k1, L1 = s.n_components, s.m2, s.k1, s.n_levels1
        ops = s.ops
        th = np.concatenate([theta, np.zeros((F, 1))], axis=1)
        T0 = th[:, s.tidx0]  # (F, k1, k1)
        Lam2 = th[:, s.tidx2]  # (F, C, m2, m2)
        T0e = T0[:, None]
        T0t = np.swapaxes(T0e, -1, -2)
        # First term, level by level: A11 = T0' W11 T0 + I = L11 L11'; P1 = L11^-1 T0'.
        A11 = smm_t(T0e, smm(W11, T0e)) + np.eye(k1)
        L11 = small_cholesky(A11)
        P1 = smm(small_inv_lower(L11), T0t)  # (F, L1, k1, k1)
        ldL2 = 2.0 * np.log(np.diagonal(L11, axis1=-2, axis2=-1)).sum(axis=(1, 2))
        # Dense part (levels.py's layouts): L21 = Lam2' W21 P1' (mixed),
        # S = Lam2' W22 Lam2 + I - L21 L21' = L22 L22' per component.
        Lam2t = np.swapaxes(Lam2, -1, -2)
        if s.dense_diagonal:  # intercepts only beyond the first term: Lambda's dense block is diagonal
            lam = th[:, s.diag2]

            def lt(X):  # Lam2' X, per component
                return lam[..., :, None] * X

            def lt_mixed(X):  # the same on a mixed array
                return ops.scale_mixed(lam, X)

            def xl(X):  # X Lam2
                return X * lam[..., None, :]
        else:
            def lt(X):
                return Lam2t @ X

            def lt_mixed(X):
                return ops.comp_times_mixed(Lam2t, X)

            def xl(X):
                return X @ Lam2
        # W21 P1' per level, which is also B12' = (P1 W12)' below.
        E21 = sum(W21[..., j, None] * P1[:, None, :, :, j] for j in range(k1))  # (F, m2, L1, k1)
        L21 = lt_mixed(E21)
        S = xl(lt(W22)) - ops.mixed_gram(L21, L21) + np.eye(m2)
        L22 = cholesky(S)
        L22i = inv_lower(L22)
        ldL2 = ldL2 + 2.0 * np.log(np.diagonal(L22, axis1=-2, axis2=-1)).sum(axis=(1, 2))
        # L c = Lambda' [Z'X Z'y]: c1 = P1 b1, c2 = L22^-1 (Lam2' b2 - L21 c1).
        b1 = np.concatenate([np.broadcast_to(ZX1, (F,) + ZX1.shape[1:]), Zy1[..., None]], axis=-1)
        b2 = np.concatenate([np.broadcast_to(ZX2, (F,) + ZX2.shape[1:]), Zy2[..., None]], axis=-1)
        c1 = smm(P1, b1)  # (F, L1, k1, p + 1)
        c2 = L22i @ (lt(b2) - ops.mixed_times_level(L21, c1))  # (F, C, m2, p + 1)
        c_all = np.concatenate([c1.reshape(F, -1, p + 1), c2.reshape(F, -1, p + 1)], axis=1)
        RZX, cu = c_all[..., :p], c_all[..., p]  # (F, N, p), (F, N): both parts' rows
        RtR = XtX - np.swapaxes(RZX, 1, 2) @ RZX
        RX = cholesky(0.5 * (RtR + np.swapaxes(RtR, -1, -2)))  # lower: R_X' in lme4's terms
        ldRX2 = 2.0 * np.log(np.diagonal(RX, axis1=-2, axis2=-1)).sum(axis=1)
        RXinv_t = inv_lower(RX)  # (R_X')^-1
        cb = (RXinv_t @ (Xy - (np.swapaxes(RZX, 1, 2) @ cu[..., None])[..., 0])[..., None])[..., 0]
        RXinv = np.swapaxes(RXinv_t, -1, -2)  # R_X^-1 (upper)
        beta = (RXinv @ cb[..., None])[..., 0]
        pwrss = yy - (cu * cu).sum(1) - (cb * cb).sum(1)
        dof = n - p if reml else n
        with np.errstate(invalid="ignore", divide="ignore"):
            crit = ldL2 + (ldRX2 if reml else 0.0) + dof * (1.0 + _LOG_2PI + np.log(pwrss / dof))
        out = {"criterion": crit, "ldL2": ldL2, "ldRX2": ldRX2, "pwrss": pwrss, "beta": beta, "RXinv": RXinv}
        if not (gradient or hessian):
            return out
        # B = L^-1 Lambda' Z'Z by blocks: B11 (per level), B21 (mixed), B12 (its transpose is
        # mixed: E21), B22 (per component).
        B11 = smm(P1, W11)  # (F, L1, k1, k1)
        L21B11 = sum(L21[..., i, None] * B11[:, None, :, i, :] for i in range(k1))
        B21 = ops.comp_times_mixed(L22i, lt_mixed(np.broadcast_to(W21, (F,) + W21.shape[1:])) - L21B11)
        B12t = E21
        B22 = L22i @ (lt(W22) - ops.mixed_gram(L21, B12t))
        B22t = np.swapaxes(B22, -1, -2)
        # Level sums of M = Z'V^-1 Z = W - B'B over the first term; M's dense block.
        M11 = W11.sum(axis=1) - smm_t(B11, B11).sum(axis=1) - ops.level_gram(B21)
        M22 = W22 - ops.mixed_gram(B12t, B12t) - B22t @ B22

        def bt(v1, v2):
            """B' v for v = (v1 (F, L1, k1, r), v2 (F, C, m2, r))."""
            w1 = smm_t(B11, v1) + ops.mixed_t_times_comp(B21, v2)
            w2 = ops.mixed_times_level(B12t, v1) + B22t @ v2
            return w1, w2

        # u = Z'P y = Z'(y - X beta) - B' L^-1 Lambda' Z'(y - X beta).
        cr = cu - (RZX @ beta[..., None])[..., 0]
        n1 = L1 * k1
        w1, w2 = bt(cr[:, :n1].reshape(F, L1, k1, 1), cr[:, n1:].reshape(F, C, m2, 1))
        u1 = Zy1 - (ZX1 @ beta[:, None, :, None])[..., 0] - w1[..., 0]
        u2 = Zy2 - (ZX2 @ beta[:, None, :, None])[..., 0] - w2[..., 0]
        M22_ml = M22
        if reml or hessian:  # K = M - N N', N = Z'V^-1 X R_X^-1 = (Z'X - B' R_ZX) R_X^-1
            w1, w2 = bt(c1[..., :p], c2[..., :p])
            N1 = ((b1[..., :p] - w1).reshape(F, -1, p) @ RXinv).reshape(F, L1, k1, p)
            N2 = (b2[..., :p] - w2) @ RXinv[:, None]
        if reml:
            N1k = np.swapaxes(N1, 1, 2).reshape(F, k1, -1)
            M11 = M11 - N1k @ np.swapaxes(N1k, 1, 2)
            M22 = M22 - N2 @ np.swapaxes(N2, -1, -2)
        scale = dof / pwrss
        U11 = np.swapaxes(u1, 1, 2) @ u1  # sum over levels of u_l u_l'
        G0 = (M11 - scale[:, None, None] * U11) @ T0
        lu2 = lt(u2[..., None])[..., 0]  # Lam2' u2
        G2 = xl(M22) - scale[:, None, None, None] * u2[..., :, None] * lu2[..., None, :]
        out["gradient"] = 2.0 * (G0.reshape(F, -1) @ s._pick0 + G2.reshape(F, -1) @ s._pick2)
        if hessian:
            parts = dict(T0=T0, Lam2=Lam2, Lam2t=Lam2t, W11=W11, W21=W21, B11=B11, B21=B21, B12t=B12t,
                         B22=B22, M22=M22_ml, N1=N1, N2=N2, u1=u1, u2=u2, pwrss=pwrss, K11sum=M11, K22=M22,
                         U11sum=U11)
            out["hessian"] = exact_hessian(s, parts, reml, dof)
        return out
