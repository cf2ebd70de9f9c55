"""The native optimiser: lme4's profiled criterion minimised within lme4's bounds.

``minimize`` is a batched projected Newton method: every fit has its own
point, gradient and Hessian, and a coordinate on its lower bound whose
derivative there is not negative stays exactly on it, as bobyqa ends on its
lower bound. The optimum is exact to ~1e-12 in theta, where bobyqa
(rhoend = 1e-9) stops at ~1e-8..1e-7 because it sees only rounded values of
a flat criterion. ``optimize`` runs it for nested random intercepts in
``phi = theta^2`` (bounds 0) with the exact derivatives of
:meth:`.criterion.Block.criterion`, started at lme4's ``theta = 1``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["crit1", "minimize", "optimize"]

# Step off a saddle on a bound (theta's scale: relative standard deviations of order 1).
ESCAPE_STEP = 0.5


def _newton_direction(g, H, free, positive_definite=False):
    """Modified Newton direction on the free coordinates (descent guaranteed).

    With ``positive_definite`` (BFGS approximations are, by construction) the
    system is solved directly, ~5x cheaper than the eigendecomposition that
    replaces an indefinite Hessian's eigenvalues by their absolute values;
    a row whose Cholesky factorisation fails after all gets the eigendecomposition.
    """
    G = g.shape[1]
    gm = np.where(free, g, 0.0)
    Hm = np.where(free[:, :, None] & free[:, None, :], H, 0.0)
    Hm = Hm + np.where(free, 0.0, 1.0)[:, :, None] * np.eye(G)[None]
    if positive_definite:
        # Decided row by row (a fit's step must not depend on the fits batched with it).
        pd = np.ones(len(Hm), bool)
        try:
            np.linalg.cholesky(Hm)
        except np.linalg.LinAlgError:
            pd = np.array([_cholesky_ok(h) for h in Hm], bool)
        step = np.zeros_like(gm)
        step[pd] = -np.linalg.solve(Hm[pd], gm[pd][:, :, None])[:, :, 0]
        if not pd.all():
            step[~pd] = _modified_newton(gm[~pd], Hm[~pd])
        return np.where(free, step, 0.0)
    return np.where(free, _modified_newton(gm, Hm), 0.0)


def _cholesky_ok(h):
    try:
        np.linalg.cholesky(h)
        return True
    except np.linalg.LinAlgError:
        return False


def _modified_newton(gm, Hm):
    """``-|Hm|^-1 gm`` with ``|Hm|`` the eigenvalues' absolute values, floored (a descent direction)."""
    lam, vec = np.linalg.eigh(Hm)
    scale = np.maximum(np.abs(lam).max(axis=1, keepdims=True), 1e-300)
    lam = np.maximum(np.abs(lam), 1e-10 * scale)
    return -np.einsum("rij,rj->ri", vec, np.einsum("rji,rj->ri", vec, gm) / lam)


def _finite(D, g, H):
    """Rows whose criterion, gradient and Hessian are all finite."""
    return np.isfinite(D) & np.all(np.isfinite(g), axis=1) & np.all(np.isfinite(H), axis=(1, 2))


def crit1(block, phi, idx, order, reml):
    """criterion at one point per response: phi (R', G) -> D (R',), g (R', G), H (R', G, G)."""
    D, g, H, pc = block.criterion(np.ascontiguousarray(phi.T), idx, order, reml)
    return D, None if g is None else g.T, None if H is None else H.transpose(2, 0, 1), pc


def optimize(block, reml, max_iter=200, start=None):
    """Minimise the profiled criterion over phi >= 0 for every response.

    ``start`` (R, G): where to start (default lme4's theta = 1).
    Returns phi (R, G), converged (R,), iterations used.
    """
    R, G = block.R, block.G
    phi = np.ones((R, G)) if start is None else np.array(start, dtype=float)

    def fun(x, idx):
        D, g, H, _ = crit1(block, x, idx, 2, reml)
        return D, g, H

    return minimize(fun, phi, np.zeros(G), max_iter)


def minimize(fun, x0, lower, max_iter=200, return_hessian=False, finish=None, positive_definite=False):
    """Minimise ``fun`` over ``x >= lower`` from ``x0`` (R, G), every row on its own.

    Parameters
    ----------
    fun : callable
        ``fun(x, idx) -> (D (R',), g (R', G), H (R', G, G))``: the criterion,
        gradient and Hessian at points ``x`` (R', G) of rows ``idx`` (all when None).
    x0 : ndarray (R, G)
        Starting points, within the bounds.
    lower : ndarray (G,)
        Lower bounds (``-inf`` for none).
    finish : float, optional
        Take a Newton step no larger than ``finish`` times the coordinates
        (at least 1e-2) as the last one without evaluating its end point:
        in the region of quadratic convergence the error left after it is of
        the order of its square. Steps onto a bound are always evaluated.
    return_hessian : bool
        Also return the last Hessian (or approximation) of every row.
    positive_definite : bool
        ``fun``'s Hessians are positive definite (a BFGS approximation):
        Newton steps solve them directly (see :func:`_newton_direction`).

    Returns
    -------
    x (R, G), converged (R,), iterations used[, Hessians (R, G, G)].
    """
    phi = np.array(x0, dtype=float)
    R, G = phi.shape
    D, g, H = fun(phi, None)
    # A fit whose criterion or derivatives are not finite at the start (e.g. a response the fixed
    # effects fit exactly) cannot be optimised: it fails alone, the others go on.
    ok = _finite(D, g, H)
    done = ~ok
    it = 0
    for it in range(max_iter):
        act = np.flatnonzero(~done)
        if act.size == 0:
            break
        ph, Da, ga, Ha = phi[act], D[act], g[act], H[act]
        bound = ph <= lower
        # On a bound where the derivative vanishes (a relative factor's column of zeros: the
        # criterion is even in it) but the curvature is negative, the bound is a saddle, not
        # an optimum: step into the interior, where the line search finds the decrease.
        saddle = bound & (ga == 0.0) & (np.diagonal(Ha, axis1=1, axis2=2) < 0.0)
        free = ~(bound & (ga >= 0.0))
        step = np.maximum(ph + _newton_direction(ga, Ha, free, positive_definite), lower) - ph
        step = np.where(saddle, ESCAPE_STEP, step)
        # Converged: the projected Newton step is negligible (quadratic
        # convergence: the error left after it is far smaller still).
        tiny = np.all(np.abs(step) <= 1e-10 * np.maximum(np.abs(ph), 1e-4), axis=1)
        if finish is not None:
            onto_bound = np.any((ph + step <= lower) & (step != 0.0), axis=1)
            tiny |= ~onto_bound & np.all(np.abs(step) <= finish * np.maximum(np.abs(ph), 1e-2), axis=1)
        phi[act[tiny]] += step[tiny]
        done[act[tiny]] = True
        keep = ~tiny
        act, ph, Da, ga, step = act[keep], ph[keep], Da[keep], ga[keep], step[keep]
        # Within the region of quadratic convergence the decrease a step
        # brings is below the criterion's rounding: take it without a line
        # search (which could not see the decrease).
        decrement = -np.einsum("ri,ri->r", ga, step)
        # (A step off a saddle has no first-order decrease either, but must show a real one.)
        near = (decrement <= 1e-12 * np.maximum(np.abs(Da), 1e3)) & ~np.any(saddle[keep], axis=1)
        alpha = np.ones(act.size)
        pending = np.arange(act.size)
        accepted = np.zeros(act.size, bool)
        for ls in range(60):
            if pending.size == 0:
                break
            trial = np.maximum(ph[pending] + alpha[pending, None] * step[pending], lower)
            Dt, gt, Ht = fun(trial, act[pending])
            dec = np.einsum("ri,ri->r", ga[pending], trial - ph[pending])
            moved = np.any(trial != ph[pending], axis=1)
            good = _finite(Dt, gt, Ht) & moved & ((Dt <= Da[pending] + 1e-4 * np.minimum(dec, 0.0)) | near[pending])
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
    return (phi, ok, it, H) if return_hessian else (phi, ok, it)
