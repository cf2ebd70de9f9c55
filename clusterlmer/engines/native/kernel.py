"""The compiled loop over fits behind :mod:`.compiled`: lme4's criterion, its exact gradient, beta and R_X^-1.

The algebra is :mod:`.blocked`'s, written per fit and per level (see its
docstring for the names): ``A11 = T'W11 T + I = L11 L11'``,
``P1 = L11^-1 T'``, ``E21 = W21 P1'``, ``V = W22 - sum E21 E21'`` (the
first term projected out, once per fit), ``S = Lam2' V Lam2 + I = L22 L22'``
(``L21 = Lam2' E21`` is never formed), then ``R_X`` and the criterion; the
gradient ``d/dtheta_i = tr(G_i K) - dof u'G_i u / pwrss`` from the level
sums of ``K`` and the dense part's blocks. Lambda is block diagonal: every
loop over it visits its blocks' entries only. Errors follow numpy's model: a
matrix that is not positive definite gives NaN, not an exception.

Every compiled function lives in this one file: numba's on-disk cache of a
caller holds its callees' code but checks only its own file's time stamp, so
a callee edited in another module would leave the caller's cache stale.
"""

from __future__ import annotations

import numpy as np
from numba import literally, njit

__all__ = ["criterion_gradient", "kernel"]

_LOG_2PI = float(np.log(2.0 * np.pi))

@njit(cache=True, error_model="numpy")
def _cholesky(A, L):
    """Lower Cholesky factor of ``A`` into ``L``; NaN where ``A`` is not positive definite."""
    n = A.shape[0]
    for j in range(n):
        s = A[j, j]
        for k in range(j):
            s -= L[j, k] * L[j, k]
        d = np.sqrt(s)
        L[j, j] = d
        for i in range(j + 1, n):
            t = A[i, j]
            for k in range(j):
                t -= L[i, k] * L[j, k]
            L[i, j] = t / d
        for i in range(j):
            L[i, j] = 0.0


@njit(cache=True, error_model="numpy")
def _inv_lower(L, out):
    """Inverse of the lower-triangular ``L`` into ``out``."""
    n = L.shape[0]
    for j in range(n):
        for i in range(j):
            out[i, j] = 0.0
        out[j, j] = 1.0 / L[j, j]
        for i in range(j + 1, n):
            t = 0.0
            for k in range(j, i):
                t -= L[i, k] * out[k, j]
            out[i, j] = t / L[i, i]


@njit(cache=True)
def criterion_gradient(theta, fit, design, W11, W21, W22, ZX1, ZX2, XtX, Zy1, Zy2, Xy, yy,
                       tidx0, tidx2, segments, active, n_active, n, reml, gradient, crit, grad, fixed, K1, M2, P):
    """:func:`kernel`, compiled once per ``K1, M2, P`` (see :func:`.compiled.specialised`): loops of one or
    two iterations, which dominate small structures, are unrolled with their lengths known at compile
    time (about twice as fast for the bundled sample's random-slope model). Cached on disk."""
    kernel(theta, fit, design, W11, W21, W22, ZX1, ZX2, XtX, Zy1, Zy2, Xy, yy, tidx0, tidx2, segments, active,
            n_active, n, reml, gradient, crit, grad, fixed, literally(K1), literally(M2), literally(P))


@njit(cache=True, error_model="numpy")
def kernel(theta, fit, design, W11, W21, W22, ZX1, ZX2, XtX, Zy1, Zy2, Xy, yy,
            tidx0, tidx2, segments, active, n_active, n, reml, gradient, crit, grad, fixed, K1, M2, P):
    """lme4's criterion and its exact gradient at ``theta[r]`` for fit ``fit[r]``, for every row ``r``.

    Parameters
    ----------
    theta : ndarray (R, G)
        Points, lme4's layout.
    fit : ndarray of int (R,)
        The fit (response) of each point; ``design[fit[r]]`` its design.
    W11, W21, W22, ZX1, ZX2, XtX : ndarray
        Per design (leading axis), :class:`.blocked.DesignParts`'s layouts.
    Zy1, Zy2, Xy, yy : ndarray
        Per fit, :meth:`.blocked.DesignParts.responses`'s layouts.
    tidx0, tidx2, segments, active, n_active : ndarray of int
        :class:`.blocked.GeneralStructure`'s maps (``segments`` with the
        number of levels appended). Level ``l`` meets only the dense rows
        ``active[l, :n_active[l]]``: the level loops visit those alone.
    n : int
        Observations.
    reml : bool
    gradient : bool
        Whether to compute the gradient (``grad`` is left alone otherwise).
    crit : ndarray (R,), grad : ndarray (R, G), fixed : ndarray (R, 3 + p + p * p)
        Filled in; NaN where the criterion is not defined. ``fixed`` holds
        per row ``log|L|^2``, ``log|R_X|^2``, ``pwrss``, ``beta`` and
        ``R_X^-1`` (row-major; ``R_X^-1 R_X^-T`` is lme4's unscaled ``vcov``).
    K1, M2, P : int
        ``k1``, ``m2`` and ``p`` as compile-time constants (-1: read ``m2``, ``p`` from the arrays).
    """
    R, G = theta.shape
    k1 = K1
    p = P if P >= 0 else XtX.shape[1]
    m2 = M2 if M2 >= 0 else W21.shape[1]
    L1, C = W21.shape[2], W22.shape[1]
    # With few dense rows per component (nested designs) every level loops over all of them, with
    # loop lengths known at compile time; a row the level does not meet only adds zeros.
    every_row = M2 >= 0
    dof = n - p if reml else n
    th = np.zeros(G + 1)
    T = np.zeros((k1, k1))
    A = np.zeros((k1, k1))
    L11 = np.zeros((k1, k1))
    Li = np.zeros((k1, k1))
    P1 = np.zeros((L1, k1, k1))
    E21 = np.zeros((L1, m2, k1))
    V = np.zeros((C, m2, m2))
    Vb = np.zeros((C, m2, p + 1))
    X21 = np.zeros((m2, k1))
    c1 = np.zeros((L1, k1, p + 1))
    B11 = np.zeros((L1, k1, k1))
    TW = np.zeros((L1, m2, k1))
    Sinv = np.zeros((m2, m2))
    SW = np.zeros((m2, k1))
    Q2 = np.zeros((C, m2, p + 1))
    Lam = np.zeros((C, m2, m2))
    L22i = np.zeros((C, m2, m2))
    c2 = np.zeros((C, m2, p + 1))
    B22 = np.zeros((C, m2, m2))
    M22 = np.zeros((C, m2, m2))
    S = np.zeros((m2, m2))
    L22 = np.zeros((m2, m2))
    rhs = np.zeros((m2, max(p + 1, m2)))
    RtR = np.zeros((p, p))
    RX = np.zeros((p, p))
    RXit = np.zeros((p, p))
    rz = np.zeros(p)
    cb = np.zeros(p)
    beta = np.zeros(p)
    M11 = np.zeros((k1, k1))
    G0 = np.zeros((k1, k1))
    cr1 = np.zeros((L1, k1))
    cr2 = np.zeros((C, m2))
    u1 = np.zeros((L1, k1))
    u2 = np.zeros((C, m2))
    w1 = np.zeros((L1, k1, p))
    w2 = np.zeros((C, m2, p))
    N1 = np.zeros((L1, k1, p))
    N2 = np.zeros((C, m2, p))
    lu = np.zeros(m2)
    # Lambda's dense part is block diagonal (one lower-triangular block per level of a term): column a
    # is non-zero in rows a..hi2[c, a] - 1 only, row a in columns lo2[c, a]..a. The loops visit those.
    hi2 = np.empty((C, m2), dtype=np.intp)
    lo2 = np.empty((C, m2), dtype=np.intp)
    for c in range(C):
        for a in range(m2):
            e = a + 1
            while e < m2 and tidx2[c, e, a] < G:
                e += 1
            hi2[c, a] = e
            lo2[c, a] = a if a == 0 or hi2[c, a - 1] == a else lo2[c, a - 1]  # blocks are contiguous
    for r in range(R):
        f = fit[r]
        d = design[f]
        for g in range(G):
            th[g] = theta[r, g]
        th[G] = 0.0
        for a in range(k1):
            for b in range(k1):
                T[a, b] = th[tidx0[a, b]]
        for c in range(C):
            for a in range(m2):
                for b in range(m2):
                    Lam[c, a, b] = th[tidx2[c, a, b]]
        ldL2 = 0.0
        # log|L|^2 as logs of products of pivots (each >= 1), taken before they overflow: few logs.
        piv = 1.0
        # First term, level by level.
        for c in range(C):
            for lv in range(segments[c], segments[c + 1]):
                for a in range(k1):  # A = T' W11 T + I
                    for b in range(k1):
                        s = 0.0
                        for i in range(k1):
                            for j in range(k1):
                                s += T[i, a] * W11[d, lv, i, j] * T[j, b]
                        A[a, b] = s + (1.0 if a == b else 0.0)
                _cholesky(A, L11)
                _inv_lower(L11, Li)
                for a in range(k1):
                    piv *= L11[a, a] * L11[a, a]
                    for b in range(k1):  # P1 = L11^-1 T'
                        s = 0.0
                        for i in range(k1):
                            s += Li[a, i] * T[b, i]
                        P1[lv, a, b] = s
                if piv > 1e200:
                    ldL2 += np.log(piv)
                    piv = 1.0
                na = (m2 if every_row else n_active[lv])
                for ia in range(na):  # E21 = W21 P1' (on the level's rows)
                    a = (ia if every_row else active[lv, ia])
                    for j in range(k1):
                        s = 0.0
                        for b in range(k1):
                            s += W21[d, a, lv, b] * P1[lv, j, b]
                        E21[lv, a, j] = s
                for a in range(k1):  # c1 = P1 [Z'X Z'y]
                    for col in range(p + 1):
                        s = 0.0
                        for b in range(k1):
                            s += P1[lv, a, b] * (ZX1[d, lv, b, col] if col < p else Zy1[f, lv, b])
                        c1[lv, a, col] = s
        # Dense part, per component, with the first term projected out: V = W22 - sum E21 E21',
        # Vb = [Z'X Z'y]2 - sum E21 c1; S = Lam' V Lam + I = L22 L22' (L21 = Lam' E21 is never formed).
        for c in range(C):
            for a in range(m2):
                for b in range(a + 1):
                    V[c, a, b] = W22[d, c, a, b]
                for col in range(p + 1):
                    Vb[c, a, col] = ZX2[d, c, a, col] if col < p else Zy2[f, c, a]
            for lv in range(segments[c], segments[c + 1]):
                na = (m2 if every_row else n_active[lv])
                for ia in range(na):  # active rows ascend: ib <= ia is the lower triangle
                    a = (ia if every_row else active[lv, ia])
                    for ib in range(ia + 1):
                        b = (ib if every_row else active[lv, ib])
                        s = 0.0
                        for j in range(k1):
                            s += E21[lv, a, j] * E21[lv, b, j]
                        V[c, a, b] -= s
                    for col in range(p + 1):
                        s = 0.0
                        for j in range(k1):
                            s += E21[lv, a, j] * c1[lv, j, col]
                        Vb[c, a, col] -= s
            for a in range(m2):
                for b in range(a):
                    V[c, b, a] = V[c, a, b]
            for a in range(m2):  # the lower triangle: all the Cholesky factorisation reads
                for b in range(a + 1):
                    s = 0.0
                    for i in range(a, (m2 if every_row else hi2[c, a])):
                        for j in range(b, (m2 if every_row else hi2[c, b])):
                            s += Lam[c, i, a] * V[c, i, j] * Lam[c, j, b]
                    S[a, b] = s + (1.0 if a == b else 0.0)
            _cholesky(S, L22)
            _inv_lower(L22, L22i[c])
            for a in range(m2):
                piv *= L22[a, a] * L22[a, a]
                if piv > 1e200:
                    ldL2 += np.log(piv)
                    piv = 1.0
            for a in range(m2):  # rhs = Lam' Vb
                for col in range(p + 1):
                    s = 0.0
                    for e in range(a, (m2 if every_row else hi2[c, a])):
                        s += Lam[c, e, a] * Vb[c, e, col]
                    rhs[a, col] = s
            for a in range(m2):
                for col in range(p + 1):
                    s = 0.0
                    for e in range(a + 1):
                        s += L22i[c, a, e] * rhs[e, col]
                    c2[c, a, col] = s
        # Fixed effects: R_X' R_X = X'X - R_ZX' R_ZX.
        cusq = 0.0
        for a in range(p):
            rz[a] = 0.0
            for b in range(p):
                RtR[a, b] = XtX[d, a, b]
        for lv in range(L1):
            for i in range(k1):
                cusq += c1[lv, i, p] * c1[lv, i, p]
                for a in range(p):
                    rz[a] += c1[lv, i, a] * c1[lv, i, p]
                    for b in range(p):
                        RtR[a, b] -= c1[lv, i, a] * c1[lv, i, b]
        for c in range(C):
            for i in range(m2):
                cusq += c2[c, i, p] * c2[c, i, p]
                for a in range(p):
                    rz[a] += c2[c, i, a] * c2[c, i, p]
                    for b in range(p):
                        RtR[a, b] -= c2[c, i, a] * c2[c, i, b]
        for a in range(p):
            for b in range(a):
                v = 0.5 * (RtR[a, b] + RtR[b, a])
                RtR[a, b] = v
                RtR[b, a] = v
        _cholesky(RtR, RX)
        _inv_lower(RX, RXit)
        ldRX2 = 0.0
        for a in range(p):
            ldRX2 += 2.0 * np.log(RX[a, a])
        cbsq = 0.0
        for a in range(p):
            s = 0.0
            for b in range(a + 1):
                s += RXit[a, b] * (Xy[f, b] - rz[b])
            cb[a] = s
            cbsq += s * s
        for a in range(p):  # beta = R_X^-1 cb, R_X^-1 = RXit'
            s = 0.0
            for b in range(a, p):
                s += RXit[b, a] * cb[b]
            beta[a] = s
        pwrss = yy[f] - cusq - cbsq
        ldL2 += np.log(piv)
        crit[r] = ldL2 + (ldRX2 if reml else 0.0) + dof * (1.0 + _LOG_2PI + np.log(pwrss / dof))
        fixed[r, 0], fixed[r, 1], fixed[r, 2] = ldL2, ldRX2, pwrss
        for a in range(p):
            fixed[r, 3 + a] = beta[a]
            for b in range(p):
                fixed[r, 3 + p + a * p + b] = RXit[b, a]
        if not gradient:
            continue
        # Gradient: B = L^-1 Lambda' Z'Z by blocks; M = Z'V^-1 Z = W - B'B; K = M - N N' (REML).
        for a in range(k1):
            for b in range(k1):
                M11[a, b] = 0.0
        for c in range(C):
            for a in range(m2):  # S^-1 = L22^-T L22^-1
                for b in range(a + 1):
                    s = 0.0
                    for e in range(a, m2):
                        s += L22i[c, e, a] * L22i[c, e, b]
                    Sinv[a, b] = s
                    Sinv[b, a] = s
            for a in range(m2):  # rhs = Lam' V
                for b in range(m2):
                    s = 0.0
                    for e in range(a, (m2 if every_row else hi2[c, a])):
                        s += Lam[c, e, a] * V[c, e, b]
                    rhs[a, b] = s
            for lv in range(segments[c], segments[c + 1]):
                for a in range(k1):  # B11 = P1 W11
                    for b in range(k1):
                        s = 0.0
                        for i in range(k1):
                            s += P1[lv, a, i] * W11[d, lv, i, b]
                        B11[lv, a, b] = s
                na = (m2 if every_row else n_active[lv])
                # B21 = L22^-1 TW, TW = Lam' (W21 - E21 B11) on the level's rows, enters M11 as
                # TW' S^-1 TW and u1, w1 as TW' L22^-T [c2 cr2]: B21 itself (m2 rows) is never formed.
                for ie in range(na):
                    e = (ie if every_row else active[lv, ie])
                    for j in range(k1):
                        t = W21[d, e, lv, j]
                        for i in range(k1):
                            t -= E21[lv, e, i] * B11[lv, i, j]
                        X21[e, j] = t
                for ie in range(na):
                    e = (ie if every_row else active[lv, ie])
                    for j in range(k1):
                        t = 0.0
                        for i in range(e, (m2 if every_row else hi2[c, e])):  # e's block: active with e
                            t += Lam[c, i, e] * X21[i, j]
                        TW[lv, ie, j] = t
                for ie in range(na):
                    e = (ie if every_row else active[lv, ie])
                    for j in range(k1):
                        s = 0.0
                        for ie2 in range(na):
                            s += Sinv[e, (ie2 if every_row else active[lv, ie2])] * TW[lv, ie2, j]
                        SW[ie, j] = s
                for a in range(k1):
                    for b in range(k1):
                        s = W11[d, lv, a, b]
                        for i in range(k1):
                            s -= B11[lv, i, a] * B11[lv, i, b]
                        for ie in range(na):
                            s -= TW[lv, ie, a] * SW[ie, b]
                        M11[a, b] += s
            for a in range(m2):  # B22 = L22^-1 rhs
                for b in range(m2):
                    s = 0.0
                    for e in range(a + 1):
                        s += L22i[c, a, e] * rhs[e, b]
                    B22[c, a, b] = s
            for a in range(m2):  # M22 = V - B22' B22 within blocks (all the gradient reads), mirrored below
                for b in range((0 if every_row else lo2[c, a]), a + 1):
                    s = V[c, a, b]
                    for i in range(m2):
                        s -= B22[c, i, a] * B22[c, i, b]
                    M22[c, a, b] = s
        # u = Z'P y = Z'(y - X beta) - B' (cu - R_ZX beta); N = (Z'X - B' R_ZX) R_X^-1.
        for lv in range(L1):
            for a in range(k1):
                s = c1[lv, a, p]
                for b in range(p):
                    s -= c1[lv, a, b] * beta[b]
                cr1[lv, a] = s
        for c in range(C):
            for a in range(m2):
                s = c2[c, a, p]
                for b in range(p):
                    s -= c2[c, a, b] * beta[b]
                cr2[c, a] = s
            for e in range(m2):  # Q2 = L22^-T [c2 cr2]
                for col in range(p + 1):
                    s = 0.0
                    for a in range(e, m2):
                        s += L22i[c, a, e] * (c2[c, a, col] if col < p else cr2[c, a])
                    Q2[c, e, col] = s
        for c in range(C):
            for a in range(m2):  # Vb holds Z'y, Z'X less the first term's sum E21 c1
                s = Vb[c, a, p]
                for b in range(p):
                    s -= Vb[c, a, b] * beta[b]
                for b in range(m2):
                    s -= B22[c, b, a] * cr2[c, b]
                u2[c, a] = s
                for col in range(p):
                    t = ZX2[d, c, a, col] - Vb[c, a, col]
                    for b in range(m2):
                        t += B22[c, b, a] * c2[c, b, col]
                    w2[c, a, col] = t
            for lv in range(segments[c], segments[c + 1]):
                na = (m2 if every_row else n_active[lv])
                for a in range(k1):
                    s = Zy1[f, lv, a]
                    for b in range(p):
                        s -= ZX1[d, lv, a, b] * beta[b]
                    for b in range(k1):
                        s -= B11[lv, b, a] * cr1[lv, b]
                    for ie in range(na):
                        s -= TW[lv, ie, a] * Q2[c, (ie if every_row else active[lv, ie]), p]
                    u1[lv, a] = s
                    for col in range(p):
                        t = 0.0
                        for b in range(k1):
                            t += B11[lv, b, a] * c1[lv, b, col]
                        for ie in range(na):
                            t += TW[lv, ie, a] * Q2[c, (ie if every_row else active[lv, ie]), col]
                        w1[lv, a, col] = t
        scale = dof / pwrss
        if reml:
            for lv in range(L1):
                for a in range(k1):
                    for col in range(p):
                        s = 0.0
                        for b in range(col + 1):  # R_X^-1 is upper: (R_X^-1)[b, col] = RXit[col, b]
                            s += (ZX1[d, lv, a, b] - w1[lv, a, b]) * RXit[col, b]
                        N1[lv, a, col] = s
                for a in range(k1):
                    for b in range(k1):
                        s = 0.0
                        for col in range(p):
                            s += N1[lv, a, col] * N1[lv, b, col]
                        M11[a, b] -= s
            for c in range(C):
                for a in range(m2):
                    for col in range(p):
                        s = 0.0
                        for b in range(col + 1):
                            s += (ZX2[d, c, a, b] - w2[c, a, b]) * RXit[col, b]
                        N2[c, a, col] = s
                for a in range(m2):
                    for b in range((0 if every_row else lo2[c, a]), a + 1):
                        s = 0.0
                        for col in range(p):
                            s += N2[c, a, col] * N2[c, b, col]
                        M22[c, a, b] -= s
        for c in range(C):
            for a in range(m2):
                for b in range((0 if every_row else lo2[c, a]), a):
                    M22[c, b, a] = M22[c, a, b]
        for g in range(G):
            grad[r, g] = 0.0
        # First term: G0 = (sum of K's level blocks - scale sum u1 u1') T.
        for a in range(k1):
            for b in range(k1):
                s = 0.0
                for lv in range(L1):
                    s += u1[lv, a] * u1[lv, b]
                A[a, b] = M11[a, b] - scale * s
        for a in range(k1):
            for b in range(k1):
                s = 0.0
                for i in range(k1):
                    s += A[a, i] * T[i, b]
                G0[a, b] = s
                if tidx0[a, b] < G:
                    grad[r, tidx0[a, b]] += 2.0 * s
        # Dense part: G2 = K22 Lam2 - scale u2 (Lam2' u2)'.
        for c in range(C):
            for b in range(m2):
                s = 0.0
                for e in range(b, (m2 if every_row else hi2[c, b])):
                    s += Lam[c, e, b] * u2[c, e]
                lu[b] = s
            for a in range(m2):
                for b in range(m2):
                    if tidx2[c, a, b] < G:
                        s = 0.0
                        for e in range(b, (m2 if every_row else hi2[c, b])):  # within a's block: where M22 is computed
                            s += M22[c, a, e] * Lam[c, e, b]
                        grad[r, tidx2[c, a, b]] += 2.0 * (s - scale * u2[c, a] * lu[b])
