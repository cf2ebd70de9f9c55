"""lmerTest's Satterthwaite ingredients, replicated step for step.

lmerTest takes the Hessian of its ``devfun_vp`` (the deviance as a function
of ``(theta, sigma)``) with ``numDeriv::hessian`` (``genD``: Richardson
extrapolation, ``d = 0.1``) and the Jacobian of ``get_covbeta`` (``vcov(beta)``
as a function of ``(theta, sigma)``) with ``numDeriv::jacobian`` (Richardson,
``d = 1e-4``). ``varpar_parts`` evaluates the criterion at exactly the points
numDeriv visits, for every response at once, and applies the same
extrapolation, so the DF agree with lmerTest's to numDeriv's own rounding;
``vcov_varpar`` is lmerTest's covariance of the variance parameters with its
Hessian-eigenvalue warnings. The tests that use them are in :mod:`.marginal`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nested_values", "varpar_parts", "vcov_varpar"]

_ZERO_TOL = np.sqrt(np.finfo(float).eps / 7e-07)  # numDeriv's zero.tol


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


def nested_values(block, reml):
    """``values`` for :func:`varpar_parts` from a nested-intercept :class:`.criterion.Block`."""
    def values(allth, jpts):
        P, R, G = allth.shape
        phi = np.ascontiguousarray((allth * allth)[:, :, ::-1].transpose(2, 0, 1).reshape(G, P * R))
        cols = (np.array(jpts)[:, None] * R + np.arange(R)).ravel()
        _, _, _, pc = block.criterion(phi, None, 0, reml, ainv=cols)
        ldV, ldA, r2 = (pc[k].reshape(P, R) for k in ("ldV", "ldA", "r2"))
        return ldV, ldA, r2, pc["Ainv"].reshape(block.p, block.p, len(jpts), R).transpose(2, 3, 0, 1)

    return values


def varpar_parts(values, theta_lme4, sigma, reml, n_obs, p):
    """Hessian of devfun_vp (R, n, n) and Jacobian of covbeta (R, n, p, p) as numDeriv.

    Parameters
    ----------
    values : callable
        ``values(theta (P, R, G), jpts) -> (ldL2, ldRX2, pwrss, RtRinv)``:
        lme4's ``log|L|^2``, ``log|R_X|^2`` and ``pwrss`` (P, R) at every
        point, and ``(R_X' R_X)^-1`` (len(jpts), R, p, p) at points ``jpts``.
        Points may lie below lme4's bounds (numDeriv steps there).
    theta_lme4 : ndarray (R, G)
        lme4's theta at the optimum, in lme4's layout.
    sigma : ndarray (R,)
    reml : bool
    n_obs, p : int
        Observations and fixed-effect columns.
    """
    R, G = theta_lme4.shape
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
    jpts = [0] + sorted(v for kk, v in key.items() if kk[0] == "J")  # covbeta needed here only
    ldV, ldA, r2, at_j = values(allth, jpts)
    Ainv = np.full((P, R, p, p), np.nan)
    Ainv[jpts] = at_j  # (P, R, p, p)

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


def vcov_varpar(H, tol=1e-8):
    """2 * pseudo-inverse of H over eigenvalues > tol, and lmerTest's warnings (NaN where H is not finite)."""
    finite = np.all(np.isfinite(H), axis=(1, 2))
    lam, vec = np.linalg.eigh(np.where(finite[:, None, None], H, np.eye(H.shape[1])))
    lam = np.where(finite[:, None], lam, np.nan)
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
