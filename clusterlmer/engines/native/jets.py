"""Second-order forward-mode derivatives ("jets") in ``phi = theta^2``.

The criterion of :mod:`.criterion` is evaluated on jets so that one pass
gives its value, gradient and Hessian in the G variance parameters, which
the Newton optimiser of :mod:`.optimize` needs exactly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Jets"]


class Jets:
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
        # (component, i, j) of each second derivative d2/dphi_i dphi_j (components of the first derivatives)
        self.slots = [(1 + G + k, 1 + i, 1 + j) for k, (i, j) in enumerate(self.pairs)]

    def var(self, x, g):
        out = np.zeros((self.C,) + x.shape)
        out[0] = x
        if self.order:
            out[1 + g] = 1.0
        return out

    def mul(self, a, b):
        # Component by component on views (no gathered copies); the same
        # products summed in the same order as the product rule reads.
        if self.C == 1:
            return a * b
        out = a * b[0]
        out[1:] += a[0] * b[1:]
        for h, i, j in self.slots:
            t = a[i] * b[j]
            if i == j:
                t += t
            else:
                t += a[j] * b[i]
            out[h] += t
        return out

    def mul_var(self, x, phi, g):
        """``x`` times the variable ``phi_g`` (value ``phi``): ``mul(var(phi, g), x)`` without the
        products by the variable's zero derivatives (the same values)."""
        out = x * phi
        if self.C == 1:
            return out
        d = 1 + g
        out[d] += x[0]
        for h, i, j in self.slots:
            if i == j == d:
                out[h] += 2.0 * x[d]
            elif i == d or j == d:
                out[h] += x[j if i == d else i]
        return out

    def _unary(self, a, g0, g1, g2):
        v = a[0]
        if self.C == 1:
            return g0(v)[None]
        out = g1(v) * a
        out[0] = g0(v)
        if self.pairs:
            d2 = g2(v)
            for h, i, j in self.slots:
                t = d2 * a[i]
                t *= a[j]
                out[h] += t
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
