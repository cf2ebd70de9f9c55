"""The native optimiser: lme4's profiled criterion minimised over ``theta >= 0``.

A batched projected Newton method in ``phi = theta^2`` with the exact
gradient and Hessian of :meth:`.criterion.Block.criterion`, started at lme4's
``theta = 1`` for every response. A component whose derivative at 0 is
positive stays exactly at 0, as bobyqa ends on its lower bound. The optimum
is exact to ~1e-12 in theta, where bobyqa (rhoend = 1e-9) stops at
~1e-8..1e-7 because it sees only rounded values of a flat criterion.
"""

from __future__ import annotations

import numpy as np

__all__ = ["crit1", "optimize"]


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
    D, g, H, _ = crit1(block, phi, None, 2, reml)
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
            Dt, gt, Ht, _ = crit1(block, trial, act[pending], 2, reml)
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
