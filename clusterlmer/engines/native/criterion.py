"""lme4's profiled criterion for one design and a block of responses.

With random intercepts of nested groupings the marginal covariance
``sigma^2 V(theta)``, ``V = I + sum_g theta_g^2 Z_g Z_g'``, is block diagonal
by outermost group and is inverted level by level (Woodbury). Everything the
profiled REML criterion or deviance needs is then ``[X, y]' V^-1 [X, y]`` and
``log det V``. ``Block`` computes them from sufficient statistics (Gram
matrices of row sums per group and "chain", see its docstring) for all
responses at once, with exact first and second derivatives in
``phi = theta^2`` through :class:`.jets.Jets`; batched Cholesky helpers
(matrices laid out ``(q, q, N)``) finish the criterion, ``beta`` and
``(X'V^-1X)^-1``.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from .jets import Jets

__all__ = ["Block", "NODE_MODE_FACTOR", "Responses", "Structure"]

_LOG_2PI = np.log(2 * np.pi)
# Above the leaves, Gram entries per pair of chains are used while they number
# at most this many per node; beyond, node-by-node sums (see Block).
NODE_MODE_FACTOR = 4


class _Level:
    """Per grouping level: node types, row chains, the entries of the Gram sums and the row sums."""

    __slots__ = ("chain_types", "j1", "j2", "t", "ind", "sel", "nb", "J")


class Structure:
    """What the groupings alone decide: node types, chains and the row-sum operators.

    Permutations move fixed-effect values, never rows between groups, so one
    ``Structure`` serves every permutation of an analysis (and every block
    of responses with the same rows).

    Levels are ordered coarsest (0) to finest (G-1). Nodes of a level are
    typed by their composition (leaves by their size); a row's "chain" below
    a level is the types of its descendant nodes. ``[X, y]' V^-1 [X, y]`` is
    then a combination, with coefficients that depend only on the node types
    and theta, of Gram matrices of the row sums per (node, chain), the
    "entries" ``(t, j1, j2)`` of each level.
    """

    def __init__(self, nest, n):
        self.n = n
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
            self.node_nb, self.node_K = nlev[-2], K
            self.node_ind = sparse.csr_matrix((np.ones(n), (par[leaf] * K + types[-1][leaf], np.arange(n))),
                                              shape=(nlev[-2] * K, n))
            self.up = [None] * G
            for g in range(G - 2):
                m = np.zeros(nlev[g + 1], dtype=np.int64)
                m[codes[g + 1]] = codes[g]
                up = np.zeros((nlev[g], nlev[g + 1]))
                up[m, np.arange(nlev[g + 1])] = 1.0
                self.up[g] = up

        self.levels = []
        for g in range(G):
            lv = _Level()
            lv.chain_types, chain = chains[g]
            lv.ind = None
            if self.node_mode and g < G - 1:
                lv.t = lv.j1 = lv.j2 = np.zeros(0, dtype=np.int64)
                self.levels.append(lv)
                continue
            J, nb = len(lv.chain_types), nlev[g]
            lv.J, lv.nb = J, nb
            lv.ind = sparse.csr_matrix((np.ones(n), (codes[g] * J + chain, np.arange(n))), shape=(nb * J, n))
            present = (np.asarray(lv.ind.sum(axis=1)).reshape(nb, J) > 0).astype(float)
            onehot = np.zeros((nb, ntypes[g]))
            onehot[np.arange(nb), types[g]] = 1.0
            pairs = np.einsum("bt,bj,bk->tjk", onehot, present, present) > 0
            lv.t, lv.j1, lv.j2 = np.nonzero(pairs)
            lv.sel = onehot[:, lv.t]  # (nb, E): node b has the entry's type
            self.levels.append(lv)
        self.summed = [lv for lv in self.levels if lv.ind is not None]


class Responses:
    """What the responses add, the same for every design on the same rows: centred ``Y`` and its row sums."""

    def __init__(self, structure, Y):
        self.R = Y.shape[1]
        self.ybar = Y.mean(axis=0)
        self.Yc = Y - self.ybar
        self.yy = np.einsum("ij,ij->j", self.Yc, self.Yc)
        self.Zy, Wyy = [], []
        for lv in structure.summed:
            Zy = np.asarray(lv.ind @ self.Yc).T.reshape(self.R, lv.nb, lv.J)
            y2 = Zy[:, :, lv.j2] * lv.sel  # (R, nb, E)
            self.Zy.append(np.ascontiguousarray(y2.transpose(2, 0, 1)))  # (E, R, nb), for X'y per design
            Wyy.append(np.einsum("rbe,rbe->re", y2, Zy[:, :, lv.j1]))
        self.WyyT = np.ascontiguousarray(np.concatenate(Wyy, axis=1).T)  # (E, R)
        if structure.node_mode:
            s = structure
            self.Zbk_y = np.ascontiguousarray(np.asarray(s.node_ind @ self.Yc).reshape(s.node_nb, s.node_K, self.R))


class Block:
    """Sufficient statistics of ``P`` designs (``X`` matrices on the same rows) and a block of responses.

    The fits are the ``P * R`` pairs (design ``d``, response ``r``), ordered
    design-major: fit ``d * R + r``. ``V^-1`` is applied level by level: at
    level ``g`` a node ``b`` contributes ``-phi_g / a_b * T_b T_b'`` to
    ``[X, y]' V^-1 [X, y]``, where ``a_b = 1 + phi_g M_b`` and ``T_b`` (the
    node's sums of ``V_child^-1 [X, y]``) combines the row sums per chain
    (see :class:`Structure`), so everything that depends on theta is a
    small array per fit; the data enter once, as Gram matrices ``W`` of the
    chain sums, in parts: ``X'X`` per design, ``X'y`` per fit, ``y'y`` per
    response.
    """

    def __init__(self, structure, responses, Xs):
        if structure.node_mode and len(Xs) > 1:
            raise ValueError("designs are fitted together only without node-by-node sums (one X per Block)")
        X0 = Xs[0]
        n, p = X0.shape
        self.structure = structure
        self.n, self.p, self.G = n, p, structure.G
        self.comp, self.ntype, self.leaf_k = structure.comp, structure.ntype, structure.leaf_k
        self.levels, self.node_mode = structure.levels, structure.node_mode
        self.P, Ry = len(Xs), responses.R
        self.Ry = Ry
        R = self.R = self.P * Ry
        self.ybar = np.tile(responses.ybar, self.P)
        q = p + 1
        Yc = responses.Yc
        ZZ = np.empty((R, q, q))
        WXX, WXy = [], []
        for d, X in enumerate(Xs):
            fits = slice(d * Ry, (d + 1) * Ry)
            XY = X.T @ Yc
            ZZ[fits, :p, :p] = X.T @ X
            ZZ[fits, :p, p] = XY.T
            ZZ[fits, p, :p] = XY.T
            ZZ[fits, p, p] = responses.yy
            wxx, wxy = [], []
            for lv, y2 in zip(structure.summed, responses.Zy):
                Zx = np.asarray(lv.ind @ X).reshape(lv.nb, lv.J, p)
                x1, x2 = Zx[:, lv.j1, :], Zx[:, lv.j2, :]  # (nb, E, p)
                wxx.append(np.einsum("be,bei,bej->eij", lv.sel, x1, x2).reshape(-1, p * p))
                # One design (observed fits): each response summed on its own (einsum), so a
                # sample's fit never depends on the samples beside it. Permutation batches are
                # fixed (see clusterlmer.analysis.PermutationTask), so they may use BLAS, 10x faster.
                wxy.append(np.einsum("erb,bei->eri", y2, x1) if self.P == 1
                           else np.matmul(y2, x1.transpose(1, 0, 2)))  # (E, Ry, p)
            WXX.append(np.concatenate(wxx, axis=0))  # (E, p*p)
            WXy.append(np.concatenate(wxy, axis=0))  # (E, Ry, p)
        # Layout: the batch (fits x points) is the last axis everywhere.
        self.ZZT = np.ascontiguousarray(ZZ.reshape(R, q * q).T)  # (q*q, R)
        self.WXXT = np.ascontiguousarray(WXX[0].T)  # (p*p, E), design 0
        self.WXXd = np.ascontiguousarray(np.stack(WXX, axis=0).transpose(0, 2, 1)) if self.P > 1 else None  # (P, p*p, E)
        self.WXyT = np.ascontiguousarray(np.concatenate(WXy, axis=1).transpose(0, 2, 1))  # (E, p, R)
        self.WyyT = responses.WyyT  # (E, Ry)
        if self.node_mode:
            s = structure
            self.types, self.up = s.types, s.up
            self.Zbk_x = np.asarray(s.node_ind @ X0).reshape(s.node_nb, s.node_K, p)
            self.Zbk_y = responses.Zbk_y

    def _contract(self, x, ridx):
        """``sum_e x[e] W_e`` for x (E, M): (q*q, M). Column m of x belongs to
        fit ``ridx[m % N]`` (N = len(ridx), or R with ``ridx=None``)."""
        p, q = self.p, self.p + 1
        E, M = x.shape
        N = self.R if ridx is None else len(ridx)
        WXy = self.WXyT if ridx is None else self.WXyT[:, :, ridx]  # (E, p, N)
        xm = x.reshape(E, M // N, N)
        out = np.empty((q, q, M))
        if self.P == 1:
            Wyy = self.WyyT if ridx is None else self.WyyT[:, ridx]  # (E, N)
            out[:p, :p] = np.einsum("ke,eM->kM", self.WXXT, x).reshape(p, p, M)  # no BLAS threads
            out[p, p] = np.einsum("eN,emN->mN", Wyy, xm).reshape(M)
        elif ridx is None:  # fits are design-major: contract per design without gathering
            xd = x.reshape(E, M // N, self.P, self.Ry)
            by_design = np.einsum("dke,demr->dkmr", self.WXXd, np.ascontiguousarray(xd.transpose(2, 0, 1, 3)))
            out[:p, :p] = by_design.transpose(1, 2, 0, 3).reshape(p, p, M)
            out[p, p] = np.einsum("er,emdr->mdr", self.WyyT, xd).reshape(M)
        else:
            design = ridx // self.Ry
            if np.all(design[1:] >= design[:-1]):  # the optimiser's subsets are ascending: one run per design
                bounds = np.searchsorted(design, np.arange(self.P + 1))
                xx = np.empty((p * p, M // N, N))
                for d in np.flatnonzero(bounds[1:] > bounds[:-1]):
                    run = slice(bounds[d], bounds[d + 1])
                    xx[:, :, run] = np.einsum("ke,emN->kmN", self.WXXd[d], xm[:, :, run])
            else:
                xx = np.einsum("NkE,EmN->kmN", self.WXXd[design], xm)
            out[:p, :p] = xx.reshape(p, p, M)
            out[p, p] = np.einsum("eN,emN->mN", self.WyyT[:, ridx % self.Ry], xm).reshape(M)
        xy = np.einsum("eiN,emN->imN", WXy, xm).reshape(p, M)
        out[:p, p] = xy
        out[p, :p] = xy
        return out.reshape(q * q, M)

    def quad(self, phi, ridx, order):
        """``Q = [X, y]' V^-1 [X, y]`` (q*q, C, N) and ``log det V`` (C, N) as jets.

        ``phi`` (G, N): N evaluation points; column n belongs to response
        ``ridx[n]`` (``ridx=None``: N is a multiple of R, column n is response n % R).
        """
        G = self.G
        J = Jets(G, order)
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
                a = J.plus(J.mul_var(M, phi[g][None, :], g), 1.0)
                ia = J.recip(a)
                m = J.mul(ia, M)
            inva[g] = ia
            ldV = ldV + np.einsum("t,ctN->cN", self.ntype[g], J.log(a))
        coefs = []
        for g in range(G):
            lv = self.levels[g]
            if not len(lv.t):
                continue
            c = J.mul_var(inva[g][:, lv.t], phi[g][None, :], g)
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
            Q -= self._node_corrections(J, phi, inva, ridx, N).transpose(1, 2, 0, 3).reshape(Q.shape)
        return Q, ldV, J

    def _node_corrections(self, J, phi, inva, ridx, N):
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
            coef = J.mul_var(inva[g][:, self.types[g]], phi[g][None, :], g)  # (C, nb, N)
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
