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

__all__ = ["Block", "NODE_MODE_FACTOR"]

_LOG_2PI = np.log(2 * np.pi)
# Above the leaves, Gram entries per pair of chains are used while they number
# at most this many per node; beyond, node-by-node sums (see Block).
NODE_MODE_FACTOR = 4


class _Level:
    """Per grouping level: node types, row chains and the Gram entries."""

    __slots__ = ("chain_types", "j1", "j2", "t")


class Block:
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
