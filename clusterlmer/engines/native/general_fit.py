"""The native engine's general path: any random part lme4 fits, batched over fits.

Random slopes (numeric and factor, correlated and ``||``), crossed,
partially crossed and nested groupings: lme4's penalized least squares
(:mod:`.blocked`), minimised per fit by the projected Newton method of
:mod:`.optimize` in lme4's own theta (diagonal entries >= 0) with the exact
gradient and Hessian (:mod:`.blocked_hessian`), started at lme4's start
(diagonal 1, off-diagonal 0) or at the observed fit's optimum.
At the optimum, ``evaluate`` reports what the nested path reports: sigma,
beta, ``vcov(beta)``, marginal tests with lmerTest's Satterthwaite DF
(numDeriv's steps, replicated), lme4's and lmerTest's messages.

The nested-intercept path (:mod:`.engine`, :mod:`.criterion`) stays for the
models it fits: its closed form is faster there.
"""

from __future__ import annotations

import numpy as np

from ..base import BlockFit, FitOptions
from .blocked import DesignParts, GeneralBlock, GeneralStructure
from .marginal import coefficient_df, term_tests
from .optimize import minimize
from .satterthwaite import varpar_parts, vcov_varpar

__all__ = ["GeneralFits", "design_parts", "general_chunk", "start_point"]

SINGULAR_MESSAGE = "boundary (singular) fit: see help('isSingular')"
SINGULAR_TOL = 1e-4  # lme4::isSingular
# A warm start on a diagonal entry at (or near) its bound 0 would begin on a
# saddle when the permuted response's optimum is interior: start a little inside.
WARM_START_FLOOR = 0.05
# The last Newton step, once this small (relative), is taken without evaluating where it ends:
# the error left is of the order of its square, ~1e-12.
FINISH = 1e-6


# BFGS steps (warm starts) stop at a smaller step: their last step's error is not quadratic in it.
FINISH_QUASI = 1e-8
# A BFGS update needs curvature s'y above this fraction of |s||y| (otherwise it is skipped).
_CURVATURE = 1e-10
# Step into the interior along a diagonal entry on its bound, to read the curvature's sign there.
SADDLE_PROBE = 1e-4
# Forward-difference steps of the gradient (relative to max(|theta|, 0.1)) for a Hessian.
DIFFERENCE_STEP = 1e-6


def _positive_definite(H):
    """``H`` with its eigenvalues replaced by their absolute values (floored): a BFGS start.

    A fit whose ``H`` is not finite starts from the identity.
    """
    H = np.where(np.all(np.isfinite(H), axis=(1, 2))[:, None, None], H, np.eye(H.shape[1]))
    lam, vec = np.linalg.eigh(H)
    lam = np.maximum(np.abs(lam), 1e-8 * np.maximum(np.abs(lam).max(axis=1, keepdims=True), 1e-300))
    return np.einsum("rij,rj,rkj->rik", vec, lam, vec)


# Doubles one evaluation may hold per batch (~300 MB): bounds the fits evaluated together.
_WORK_BUDGET = 4e7


def _doubles_per_fit(structure, p):
    """Doubles the evaluation with gradient and Hessian holds per fit (the largest arrays, a few of each)."""
    s = structure
    per_level = s.k1 * (6 * s.m2 + 2 * s.k1 + 2 * (p + 1))  # W21, L21, B21, M21, ...; P1, B11; b1, c1
    per_component = s.m2 * (4 * s.m2 + 2 * (p + 1))
    return 12 * (s.n_levels1 * per_level + s.n_components * per_component) + 4 * p * p


def general_chunk(structure, p, most) -> int:
    """Fits optimised together: as many as the memory budget allows, at most ``most``."""
    return int(np.clip(_WORK_BUDGET // _doubles_per_fit(structure, p), 1, most))


def start_point(structure: GeneralStructure, k: int) -> np.ndarray:
    """lme4's starting theta (diagonal entries 1, the others 0) for ``k`` fits."""
    return np.tile(np.where(structure.diagonal, 1.0, 0.0), (k, 1))


def design_parts(model) -> DesignParts:
    """The cross products of a prepared model's design (``Z'Z`` shared while ``Z`` is)."""
    return DesignParts(model.structure, model.zt, model.X)


class GeneralFits:
    """The fits of responses ``Y`` under designs that share one random structure.

    Fit ``d * k + r`` is response ``r`` under design ``d``. Responses are
    centred when every design has an intercept column (the criterion and
    beta but the intercept are unchanged; ``pwrss`` loses fewer digits).
    """

    def __init__(self, models, Y):
        self.models = models
        self.structure = models[0].structure
        parts = [design_parts(m) for m in models]
        n, k = Y.shape
        self.n, self.k = n, k
        self.centre = all(m.X.shape[1] and np.all(m.X[:, 0] == 1.0) for m in models)
        self.shift = Y.mean(axis=0) if self.centre else np.zeros(k)
        Yc = Y - self.shift
        pieces = [d.responses(self.structure, Yc) for d in parts]
        Zy1, Zy2, Xy, yy = (np.concatenate([pc[i] for pc in pieces]) for i in range(4))
        design = np.repeat(np.arange(len(models)), k)
        self.block = GeneralBlock(self.structure, parts, design, Zy1, Zy2, Xy, yy, n)
        self.F = len(design)

    def _newton(self, reml):
        """``fun`` for :func:`.optimize.minimize`: criterion, exact gradient and exact Hessian."""
        def fun(x, idx):
            out = self.block.evaluate(x, idx, reml, hessian=True)
            D = np.where(np.isfinite(out["criterion"]), out["criterion"], np.inf)
            return D, out["gradient"], out["hessian"]

        return fun

    def _difference_newton(self, reml):
        """``fun`` for :func:`.optimize.minimize`: the compiled criterion and gradient, and the
        Hessian from forward differences of the exact gradient (steps ``DIFFERENCE_STEP`` relative).

        For the few fits that leave a saddle or a reflected point: one compiled
        call for all their points, where the exact Hessian's numpy evaluation
        would cost milliseconds per call whatever the number of fits.
        """
        def fun(x, idx):
            idx = np.arange(self.F) if idx is None else idx
            R, G = x.shape
            h = DIFFERENCE_STEP * np.maximum(np.abs(x), 0.1)
            points = np.concatenate([x[None], x[None] + h.T[:, :, None] * np.eye(G)[:, None, :]])
            D, g = self.block.criterion_gradient(points.reshape(-1, G), np.tile(idx, G + 1), reml)
            g = g.reshape(G + 1, R, G)
            H = np.moveaxis((g[1:] - g[0]) / h.T[:, :, None], 0, 1)  # H[r, i, :] from the step in i
            H = 0.5 * (H + np.swapaxes(H, 1, 2))
            D = D[:R]
            return np.where(np.isfinite(D), D, np.inf), g[0], H

        return fun

    def _quasi_newton(self, reml, H0):
        """``fun`` for :func:`.optimize.minimize`: the compiled criterion and gradient, and a BFGS
        approximation of the Hessian per fit, starting from ``H0`` (F, n, n).

        Each evaluated point updates its fit's approximation with the secant
        pair from the fit's previous point (skipped without positive curvature).
        """
        state = {"x": np.full((self.F, H0.shape[1]), np.nan), "g": None, "H": H0.copy()}
        state["g"] = state["x"].copy()

        def fun(x, idx):
            idx = np.arange(self.F) if idx is None else idx
            D, g = self.block.criterion_gradient(x, idx, reml)
            step, dg, H = x - state["x"][idx], g - state["g"][idx], state["H"][idx]
            sy = np.einsum("ri,ri->r", step, dg)
            Hs = np.einsum("rij,rj->ri", H, step)
            sHs = np.einsum("ri,ri->r", step, Hs)
            with np.errstate(invalid="ignore"):
                upd = (sy > _CURVATURE * np.linalg.norm(step, axis=1) * np.linalg.norm(dg, axis=1)) & (sHs > 0.0)
            u = np.flatnonzero(upd)
            H[u] += (dg[u, :, None] * dg[u, None, :] / sy[u, None, None]
                     - Hs[u, :, None] * Hs[u, None, :] / sHs[u, None, None])
            state["x"][idx], state["g"][idx], state["H"][idx] = x, g, H
            return np.where(np.isfinite(D), D, np.inf), g, H

        return fun

    def optimum(self, reml, start=None, hessian=None):
        """theta (F, n_theta) at the optimum of every fit, converged (F,), Hessians there (F, n, n).

        Newton with the exact Hessian from lme4's start, or from ``start``
        (F, n_theta). Given ``hessian`` (F, n, n), the Hessian at ``start``
        (a warm start from the observed fit's optimum), the fits take BFGS
        steps from it with the compiled gradient instead; a fit that ends
        with a diagonal entry on its bound where the criterion is even in it
        is checked for a saddle there and, on one, finished by Newton.
        A diagonal entry held at 0 only by its column's sign is reflected
        and re-optimised.
        """
        s = self.structure
        if start is None:
            x0 = start_point(s, self.F)
        else:
            x0 = np.maximum(start, np.where(s.diagonal, WARM_START_FLOOR, -np.inf))
        if hessian is None:
            x, ok, _, H = minimize(self._newton(reml), x0, s.lower, return_hessian=True, finish=FINISH)
        else:
            x, ok, _, H = minimize(self._quasi_newton(reml, _positive_definite(hessian)), x0, s.lower,
                                   return_hessian=True, finish=FINISH_QUASI, positive_definite=True)
            rows = self._saddles(x, reml)
            if rows.size:
                sub = GeneralFits._subset(self, rows)
                x[rows], ok[rows], _, H[rows] = minimize(sub._difference_newton(reml), x[rows], s.lower,
                                                          return_hessian=True, finish=FINISH)
        for _ in range(3):
            flip = self._reflections(x, *self._on_bounds(x, reml))
            rows = np.flatnonzero(flip.any(axis=1))
            if not rows.size:
                break
            x[rows] = np.where(flip[rows], -x[rows], x[rows])
            sub = GeneralFits._subset(self, rows)
            x[rows], ok[rows], _, H[rows] = minimize(sub._difference_newton(reml), x[rows], s.lower,
                                                      return_hessian=True, finish=FINISH)
        return x, ok, H

    def _even(self, x):
        """Diagonal entries on their bound 0 whose column of the relative factor is zero below them:
        the criterion is even in such an entry (its column enters ``Lambda Lambda'`` as its square),
        so its derivative there is exactly 0 and the bound may be a saddle."""
        even = (x <= 0.0) & self.structure.diagonal
        for d, below in self.structure.columns_below:
            even[:, d] &= ~np.any(x[:, below] != 0.0, axis=1)
        return even

    def _on_bounds(self, x, reml):
        """The fits with a diagonal entry on its bound 0 that is not even (a column with entries
        below it: the only entries a reflection can move), and the gradient at their points."""
        rows = np.flatnonzero(((x <= 0.0) & self.structure.diagonal & ~self._even(x)).any(axis=1))
        if not rows.size:
            return rows, np.zeros((0, x.shape[1]))
        return rows, self.block.criterion_gradient(x[rows], rows, reml)[1]

    def _saddles(self, x, reml):
        """The fits with an even diagonal entry on its bound (see :meth:`_even`) and negative
        curvature along it: a saddle, not an optimum."""
        even = self._even(x)
        rows = np.flatnonzero(even.any(axis=1))
        if not rows.size:
            return rows
        even = even[rows]
        # The derivative is odd in such an entry: its value a small step in is the curvature times the step.
        _, g = self.block.criterion_gradient(x[rows] + SADDLE_PROBE * even, rows, reml)
        return rows[np.any(even & (g < 0.0), axis=1)]

    def _reflections(self, x, rows, g):
        """Entries to negate where a diagonal entry sits on its bound 0 only because of its column's sign
        (of the fits ``rows``, gradient ``g``: those :meth:`_on_bounds` returns).

        Lambda Lambda' is unchanged when a column of a relative factor changes
        sign. With the diagonal entry at 0 and a positive derivative there,
        the criterion decreases towards negative values, i.e. into the
        interior after negating the entries below it: the bound is no optimum.
        """
        flip = np.zeros(x.shape, bool)
        xr = x[rows]
        for d, below in self.structure.columns_below:
            stuck = (xr[:, d] <= 0.0) & (g[:, d] > 0.0) & np.any(xr[:, below] != 0.0, axis=1)
            flip[np.ix_(rows[stuck], below)] = True
        return flip

    def _subset(self, rows):
        """The same fits restricted to ``rows`` (a view for re-optimising a few)."""
        sub = object.__new__(GeneralFits)
        sub.__dict__.update(self.__dict__)
        sub.block = self.block.subset(rows)
        sub.F = len(rows)
        return sub

    def evaluate(self, theta, ok, options: FitOptions, need="all") -> list:
        """One BlockFit per design at ``theta`` (F, n_theta), lme4's layout.

        Fits whose criterion is not finite there are recorded as failed
        (NaN statistics and an error), without numpy's warnings.
        """
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return self._evaluate(theta, ok, options, need)

    def _evaluate(self, theta, ok, options, need):
        reml, s, blk = options.reml, self.structure, self.block
        out = blk.evaluate(theta, None, reml)
        n, p = self.n, blk.p
        dof = n - p if reml else n
        with np.errstate(invalid="ignore"):
            sigma = np.sqrt(out["pwrss"] / dof)
        beta = out["beta"].copy()
        if self.centre:
            beta[:, 0] += np.tile(self.shift, len(self.models))
        Vb = (sigma * sigma)[:, None, None] * (out["RXinv"] @ np.swapaxes(out["RXinv"], 1, 2))
        se = np.sqrt(np.diagonal(Vb, axis1=1, axis2=2))
        singular = np.any(theta[:, s.diagonal] < SINGULAR_TOL, axis=1)
        msgs = [[SINGULAR_MESSAGE] if sg else [] for sg in singular]
        varpar = None
        if options.ddf == "satterthwaite" and need == "all":
            Hvp, Jac = varpar_parts(self._values(reml), theta, sigma, reml, n, p)
            Avp, vp_msgs = vcov_varpar(Hvp)
            varpar = (Jac, Avp)
            for f in range(self.F):
                msgs[f] += vp_msgs[f]
        model = self.models[0]
        F_, df1, df2, pval, cest = term_tests(model, beta, Vb, options.ddf, n - p, varpar, need)
        cdf = coefficient_df(Vb, options.ddf, n - p, varpar, need)
        D = out["criterion"]
        failed = ~np.isfinite(D)
        for arr in (F_, df1, df2, pval, cest):
            arr[:, failed] = np.nan
        beta[failed], se[failed], cdf[failed], sigma[failed], D[failed] = np.nan, np.nan, np.nan, np.nan, np.nan
        k, fits = self.k, []
        for d, m in enumerate(self.models):
            cols = slice(d * k, (d + 1) * k)
            fits.append(_block_fit(m, F_[:, cols], df1[:, cols], df2[:, cols], pval[:, cols], cest[:, cols],
                                   beta[cols], se[cols], sigma[cols], D[cols], ok[cols], failed[cols],
                                   singular[cols], msgs[cols], cdf[cols]))
        return fits

    def _values(self, reml):
        blk = self.block

        def values(allth, jpts):
            P, F, G = allth.shape
            flat = allth.reshape(P * F, G)
            idx = np.tile(np.arange(F), P)
            # numDeriv visits ~100 points per fit: evaluate them in batches the memory budget allows.
            step = max(1, int(_WORK_BUDGET // _doubles_per_fit(blk.s, blk.p)))
            # numpy's evaluation, not the compiled loop: numDeriv's Richardson extrapolation magnifies
            # the criterion's last digits, and numpy's pairwise sums keep them closer to lme4's (with
            # the compiled loop's sequential sums TVbo's type III DF2 at lme4's theta moved 1.4e-7).
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                parts = [blk._evaluate(flat[a:a + step], idx[a:a + step], reml) for a in range(0, P * F, step)]
            cat = {key: np.concatenate([o[key] for o in parts]) for key in ("ldL2", "ldRX2", "pwrss", "RXinv")}
            ri = cat["RXinv"].reshape(P, F, blk.p, blk.p)[jpts]
            shape = (P, F)
            return (cat["ldL2"].reshape(shape), cat["ldRX2"].reshape(shape), cat["pwrss"].reshape(shape),
                    ri @ np.swapaxes(ri, -1, -2))

        return values


def scatter_columns(values, kept, n_columns):
    """(k, len(kept)) values placed at columns ``kept`` of (k, n_columns), NaN elsewhere."""
    out = np.full((values.shape[0], n_columns), np.nan)
    out[:, kept] = values
    return out


def _block_fit(model, F, df1, df2, p, cest, beta, se, sigma, D, ok, failed, singular, per_msgs, cdf):
    """A BlockFit of one design's fits (columns lme4 dropped get NaN estimates)."""
    n_coef = len(model.coef_names)
    if beta.shape[1] < n_coef:  # columns lme4 dropped: NaN estimates
        beta, se, cdf = (scatter_columns(x, model.kept, n_coef) for x in (beta, se, cdf))
    k = len(sigma)
    messages, converged = [""] * k, ok & ~failed
    for r in range(k):
        texts = list(dict.fromkeys(list(model.setup_messages) + per_msgs[r]))
        if not ok[r]:
            texts.append("native optimizer did not converge")
        if texts:
            messages[r] = "; ".join(texts)
            converged[r] = converged[r] and not any("converge" in t.lower() for t in texts)
    errors = ["the native engine's criterion is not finite at the optimum" if f else "" for f in failed]
    return BlockFit(terms=model.terms, coef_names=model.coef_names, F=F, df1=df1, df2=df2, p=p,
                    contrast_estimate=cest, estimate=beta.T.copy(), se=se.T.copy(), sigma=sigma, deviance=D,
                    converged=converged, singular=singular.astype(float), messages=messages, errors=errors,
                    coef_df=cdf.T.copy(), coef_se=se.T.copy())
