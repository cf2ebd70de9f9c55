"""The exact Hessian in theta of lme4's profiled criterion, from :mod:`.blocked`'s factorisation.

With ``V = I + Z Lambda Lambda' Z'``, ``G_i = d(Lambda Lambda')/dtheta_i``
(``E_i Lambda' + Lambda E_i'``, ``E_i = dLambda/dtheta_i``) and
``G_ij = E_i E_j' + E_j E_i'``, the REML criterion's second derivatives are

``H_ij = tr(K G_ij) - tr(K G_i K G_j)
         - dof [(u' G_ij u - 2 v_i' K v_j) / pwrss + s_i s_j / pwrss^2]``

with ``K = Z'PZ``, ``u = Z'P y``, ``v_i = G_i u``, ``s_i = u' v_i`` and
``dof = n - p``. For ML the two trace terms take ``M = Z'V^-1 Z`` instead
of ``K`` and ``dof = n``; the ``v`` term keeps ``K`` (``pwrss`` is ``y'Py``
in both). ``M`` is block diagonal over components; ``K = M - N N'`` with
``N = Z'V^-1 X R_X^-1`` couples them only through ``p`` columns, so

``tr(K G_i K G_j) = tr(M G_i M G_j) - 2 tr(N' G_i M G_j N) + tr(N'G_i N N'G_j N)``.

``G_i`` touches one term: on the first term it is ``C_i = E_i T' + T E_i'``
in every level's block, on the dense part a matrix ``G2_i`` per component.
"""

from __future__ import annotations

import numpy as np

from .small import smm, smm_t

__all__ = ["exact_hessian"]


def _act(g, x1, x2):
    """``G_i`` times (x1 (F, L1, k1, r), x2 (F, C, m2, r)): ``g`` is ("first", C_i) or ("dense", G2_i).

    The part ``G_i`` does not touch is returned as None (zero).
    """
    kind, mat = g
    if kind == "first":
        return smm(mat[:, None], x1), None
    return None, mat @ x2


def exact_hessian(s, c, reml, dof):
    """Second derivatives (F, n_theta, n_theta) of the criterion at the point ``c`` describes.

    ``c`` holds :meth:`.blocked.GeneralBlock.evaluate`'s intermediate arrays
    (see there); ``s`` is the :class:`.blocked.GeneralStructure`.
    """
    T0, Lam2, Lam2t = c["T0"], c["Lam2"], c["Lam2t"]
    F = T0.shape[0]
    ops = s.ops
    B11, B21, B12t, B22 = c["B11"], c["B21"], c["B12t"], c["B22"]
    # M = Z'V^-1 Z per component: between levels M11 = D - B21' B21 (D per level; never formed
    # whole), M21 (mixed: dense rows against levels), M22 per component (levels.py's layouts).
    D = c["W11"] - smm_t(B11, B11)  # (F, L1, k1, k1)
    B12tB11 = sum(B12t[..., i, None] * B11[:, None, :, i, :] for i in range(s.k1))  # (B12' B11) per level
    M21 = c["W21"] - B12tB11 - ops.comp_times_mixed(np.swapaxes(B22, -1, -2), B21)  # (F, m2, L1, k1)
    M22 = c["M22"]

    def times_m(x1, x2):
        """M (x1 (F, L1, k1, r), x2 (F, C, m2, r)); a part that is None is zero."""
        if x1 is not None:
            y1 = smm(D, x1) - ops.mixed_t_times_comp(B21, ops.mixed_times_level(B21, x1))
            y2 = ops.mixed_times_level(M21, x1)
            if x2 is not None:
                y1, y2 = y1 + ops.mixed_t_times_comp(M21, x2), y2 + M22 @ x2
            return y1, y2
        return ops.mixed_t_times_comp(M21, x2), M22 @ x2

    def times_m_each(xs):
        """``times_m`` of each (x1, x2) in ``xs``, the first-term ones (x2 None) and the dense ones
        (x1 None) each in one call, their columns side by side.

        A dense theta's product is only ever dotted with another dense theta's vector (the pairs
        are taken with the first term's thetas first: ``tr(Y_i' M Y_j)`` for a first-term ``j``
        and a dense ``i`` uses ``M Y_j``), so its first-term rows are not computed (None).
        """
        out = [None] * len(xs)
        for part in (0, 1):
            which = [i for i, x in enumerate(xs) if x[1 - part] is None]
            if not which:
                continue
            widths = np.cumsum([0] + [xs[i][part].shape[-1] for i in which])
            stacked = np.concatenate([xs[i][part] for i in which], axis=-1)
            y1, y2 = times_m(stacked, None) if part == 0 else (None, M22 @ stacked)
            for n, i in enumerate(which):
                cols = slice(widths[n], widths[n + 1])
                out[i] = (None if y1 is None else y1[..., cols], y2[..., cols])
        return out

    def dot(a, b):
        """Sum over levels or components, rows and columns of a * b, both (part 1, part 2), None for zero."""
        out = 0.0
        for x, y in zip(a, b):
            if x is not None and y is not None:
                out = out + (x * y).sum(axis=(1, 2, 3))
        return out

    def t_dot(n, y):
        """N' y (F, p, r) summed over both parts, for y = (part 1, part 2) with None for zero."""
        out = 0.0
        for a, b in zip(n, y):
            if b is not None:
                out = out + np.swapaxes(a.reshape(F, -1, a.shape[-1]), 1, 2) @ b.reshape(F, -1, b.shape[-1])
        return out

    n0 = s.n_first
    gs = []
    for i in range(s.n_theta):
        if i < n0:
            E = s.first_patterns[i]
            gs.append(("first", E @ np.swapaxes(T0, 1, 2) + T0 @ E.T))
        else:
            E = s.dense_patterns[i - n0]
            gs.append(("dense", E @ Lam2t + Lam2 @ np.swapaxes(E, -1, -2)))
    N = (c["N1"], c["N2"])
    u = (c["u1"][..., None], c["u2"][..., None])
    Y = [_act(g, *N) for g in gs]  # G_i N
    V = [_act(g, *u) for g in gs]  # G_i u
    MV = times_m_each(V)
    NtV = [t_dot(N, v)[..., 0] for v in V]
    s_u = np.stack([dot(u, v) for v in V], axis=1)  # s_i = u' G_i u
    if reml:
        MY = times_m_each(Y)
        A = [t_dot(N, y) for y in Y]
    # The trace of M G_i M G_j, by the terms' parts. First term with first term:
    # tr(D Gi D Gj) - 2 tr(U' Gi D Gj U) + tr((U' Gi U)(U' Gj U)).
    if n0:
        # First term with first term, M11 = D - U U' (U's rows for level l: B21_l'):
        # tr(M11 G_i M11 G_j) = tr(D G_i D G_j) - 2 tr(U' G_i D G_j U) + tr((U' G_i U)(U' G_j U)).
        # The first two are sums over levels of k1 x k1 products (U_l U_l' = B21_l' B21_l), the
        # last per component from the grams of B21's columns.
        k1 = s.k1
        Q = np.einsum("fmla,fmlb->flab", B21, B21)  # B21_l' B21_l
        if k1 > 1:
            TD = np.einsum("flbc,flad->fbcda", D, D)
            TDQ = np.einsum("flbc,flda->fbcda", D, Q)
        else:
            TD = (D * D).sum(axis=1)[:, :, :, None, None]
            TDQ = (D * Q).sum(axis=1)[:, :, :, None, None]
        UU = [[ops.mixed_gram(B21[..., a:a + 1], B21[..., b:b + 1]) for b in range(k1)] for a in range(k1)]
        UGU = {i: sum(gs[i][1][:, a, b, None, None, None] * UU[a][b] for a in range(k1) for b in range(k1))
               for i in range(n0)}
    Z = {}
    if 0 < n0 < s.n_theta:  # products of M21's columns of each coefficient of the first term
        cross = [[ops.mixed_gram(M21[..., a:a + 1], M21[..., b:b + 1]) for b in range(k1)] for a in range(k1)]
    H = np.empty((F, s.n_theta, s.n_theta))
    scale = dof / c["pwrss"]
    for i in range(s.n_theta):
        for j in range(i + 1):
            (ki, gi), (kj, gj) = gs[i], gs[j]
            if ki == "first" and kj == "first":
                tr = (np.einsum("fab,fcd,fbcda->f", gi, gj, TD) - 2.0 * np.einsum("fab,fcd,fbcda->f", gi, gj, TDQ)
                      + (UGU[i] * np.swapaxes(UGU[j], -1, -2)).sum(axis=(1, 2, 3)))
            elif ki == "dense" and kj == "dense":
                tr = ((M22 @ gi) * np.swapaxes(M22 @ gj, -1, -2)).sum(axis=(1, 2, 3))
            else:
                first, dense = (gi, gj) if ki == "first" else (gj, gi)
                key = i if ki == "first" else j
                if key not in Z:  # M21 (I x C_i) M12 = sum over a, b of C_i[a, b] M21[., a] M12[b, .]
                    Z[key] = sum(first[:, a, b, None, None, None] * cross[a][b]
                                 for a in range(k1) for b in range(k1))
                tr = (Z[key] * dense).sum(axis=(1, 2, 3))
            if reml:
                tr = tr - 2.0 * dot(Y[i], MY[j]) + (A[i] * A[j]).sum(axis=(1, 2))
            same = i < n0 and j < n0
            both_dense = i >= n0 and j >= n0
            tKij = uGu = 0.0
            if same:
                P = s.first_pair(i, j)
                tKij = (c["K11sum"] * P).sum(axis=(1, 2))
                uGu = (c["U11sum"] * P).sum(axis=(1, 2))
            elif both_dense:
                P = s.dense_pair(i - n0, j - n0)
                tKij = (c["K22"] * P).sum(axis=(1, 2, 3))
                uGu = ((u[1] * np.swapaxes(u[1], -1, -2)) * P).sum(axis=(1, 2, 3))
            vKv = dot(V[i], MV[j]) - (NtV[i] * NtV[j]).sum(axis=1)
            H[:, i, j] = H[:, j, i] = (tKij - tr - scale * (uGu - 2.0 * vKv)
                                       - scale / c["pwrss"] * s_u[:, i] * s_u[:, j])
    return H
