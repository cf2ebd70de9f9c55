"""Products between the first term's levels and the dense part of their component.

The blocked factorisation (:mod:`.blocked`) keeps three kinds of arrays per fit:

* *level* arrays, one small block per level of the first term, in component
  order without padding: ``(F, L1, k1, r)``;
* *component* arrays, per connected component of levels: ``(F, C, a, b)``
  (the dense part has ``m2`` rows per component);
* *mixed* arrays, a component's dense rows against each of its levels:
  ``(F, a, L1, k1)``, i.e. per component the ``a x (levels * k1)`` matrix
  MixedModels.jl stores as an off-diagonal block.

With one component (crossed designs) a mixed array is that whole matrix and
the products below are single matrix products. With many (nested designs,
one component per subject) each level meets only its own component's rows,
and the products are sums over the few dense rows (``m2`` is the outer
term's columns, 1 or 2) and over each component's segment of levels; no
component is padded to the largest one.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LevelOps"]


class LevelOps:
    """The products for one structure's layout (``comp1``, ``segments`` from :class:`.blocked.GeneralStructure`)."""

    def __init__(self, comp1, segments, n_components):
        self.comp1, self.segments = comp1, segments
        self.single = n_components == 1

    def segment_sum(self, x):
        """Sums over levels (axis 1) by component: (F, L1, ...) -> (F, C, ...)."""
        if self.single:
            return x.sum(axis=1, keepdims=True)
        return np.add.reduceat(x, self.segments, axis=1)

    def per_level(self, x):
        """A component array for each level: (F, C, ...) -> (F, L1, ...) (a view with one component)."""
        return x if self.single else x[:, self.comp1]

    def comp_times_mixed(self, M, X):
        """Per level, its component's ``M`` (., C, a, m2) times ``X`` (., m2, L1, k1): (F, a, L1, k1)."""
        if self.single:
            lead, m2, L1, k1 = X.shape
            out = M[:, 0] @ X.reshape(lead, m2, L1 * k1)
            return out.reshape(out.shape[0], M.shape[-2], L1, k1)
        Ml = M[:, self.comp1]  # (., L1, a, m2)
        out = 0.0
        for m in range(X.shape[1]):
            out = out + np.swapaxes(Ml[..., m], 1, 2)[..., None] * X[:, m][:, None]
        return out if X.shape[1] else np.zeros(np.broadcast_shapes(Ml.shape[:1], X.shape[:1])
                                               + (M.shape[-2],) + X.shape[2:])

    def scale_mixed(self, lam, X):
        """``diag(lam) X`` per level, ``lam`` (F, C, m2) a diagonal component matrix."""
        if self.single:
            return lam[:, 0][:, :, None, None] * X
        return np.swapaxes(lam[:, self.comp1], 1, 2)[..., None] * X

    def mixed_times_level(self, X, Y):
        """Per component, the sum over its levels of ``X_l Y_l``: X (., a, L1, k1), Y (., L1, k1, r) -> (F, C, a, r)."""
        if self.single:
            lead, a, L1, k1 = X.shape
            return (X.reshape(lead, a, L1 * k1) @ Y.reshape(Y.shape[0], L1 * k1, -1))[:, None]
        out = 0.0
        for k in range(X.shape[-1]):
            out = out + np.swapaxes(X[..., k], 1, 2)[..., None] * Y[:, :, k, None, :]
        return self.segment_sum(out)

    def mixed_t_times_comp(self, X, V):
        """Per level, ``X_l' V[c(l)]``: X (., m2, L1, k1), V (., C, m2, r) -> (F, L1, k1, r)."""
        if self.single:
            lead, m2, L1, k1 = X.shape
            out = np.swapaxes(X.reshape(lead, m2, L1 * k1), 1, 2) @ V[:, 0]
            return out.reshape(out.shape[0], L1, k1, -1)
        Vl = V[:, self.comp1]  # (., L1, m2, r)
        out = 0.0
        for m in range(X.shape[1]):
            out = out + X[:, m][..., None] * Vl[:, :, m, None, :]
        if X.shape[1] == 0:
            return np.zeros(np.broadcast_shapes(X.shape[:1], V.shape[:1]) + X.shape[2:] + V.shape[-1:])
        return out

    def mixed_gram(self, X, Y):
        """Per component, the sum over its levels of ``X_l Y_l'``: X (., a, L1, k1), Y (., b, L1, k1) -> (F, C, a, b)."""
        if self.single:
            lead, a, L1, k1 = X.shape
            return (X.reshape(lead, a, L1 * k1) @ np.swapaxes(Y.reshape(Y.shape[0], Y.shape[1], L1 * k1), 1, 2))[:, None]
        out = 0.0
        for k in range(X.shape[-1]):
            out = out + np.swapaxes(X[..., k], 1, 2)[..., :, None] * np.swapaxes(Y[..., k], 1, 2)[..., None, :]
        return self.segment_sum(out)

    @staticmethod
    def level_gram(X):
        """The sum over all levels of ``X_l' X_l`` for a mixed X (F, a, L1, k1): (F, k1, k1)."""
        Xk = np.moveaxis(X, 3, 1).reshape(X.shape[0], X.shape[3], -1)
        return Xk @ np.swapaxes(Xk, 1, 2)
