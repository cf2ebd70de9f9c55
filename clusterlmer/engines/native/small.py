"""Arithmetic on stacks of small matrices, as the blocked factorisation needs it.

The first random-effects term's blocks are k1 x k1 with k1 small (1 for an
intercept), one per level of every fit: numpy's matmul and linalg pay a
per-matrix cost on such stacks (hundreds of thousands of tiny matrices), so
these helpers work on whole arrays, looping over the k1 columns in Python.
Stacks of a component's blocks (a few thousand) go to matmul directly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cholesky", "inv_lower", "small_cholesky", "small_inv_lower", "smm", "smm_t"]


def cholesky(A):
    """Lower Cholesky factors of a stack of matrices; NaN for any that is not positive definite.

    numpy's cholesky fails for the whole stack when one matrix is not (a
    response the fixed effects fit exactly, an extreme theta in numDeriv's
    steps): that fit fails alone and the others are kept.
    """
    try:
        return np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        flat = A.reshape((-1,) + A.shape[-2:])
        out = np.full(flat.shape, np.nan)
        for i, a in enumerate(flat):
            try:
                out[i] = np.linalg.cholesky(a)
            except np.linalg.LinAlgError:
                pass
        return out.reshape(A.shape)


def inv_lower(L):
    """Inverses of stacked lower-triangular matrices (well conditioned here: ``A >= I``)."""
    return np.linalg.inv(L)


def smm(a, b):
    """``a @ b`` for stacked small matrices a (..., r, k), b (..., k, s)."""
    out = a[..., :, 0, None] * b[..., None, 0, :]
    for j in range(1, a.shape[-1]):
        out = out + a[..., :, j, None] * b[..., None, j, :]
    return out


def smm_t(a, b):
    """``a' @ b`` for stacked small matrices a (..., k, r), b (..., k, s)."""
    out = a[..., 0, :, None] * b[..., 0, None, :]
    for j in range(1, a.shape[-2]):
        out = out + a[..., j, :, None] * b[..., j, None, :]
    return out


def small_cholesky(A):
    """Lower Cholesky factors of stacked small positive definite matrices."""
    k = A.shape[-1]
    if k == 1:
        return np.sqrt(A)
    L = np.zeros_like(A)
    for j in range(k):
        d = A[..., j, j] - (L[..., j, :j] ** 2).sum(-1)
        L[..., j, j] = np.sqrt(d)
        for i in range(j + 1, k):
            L[..., i, j] = (A[..., i, j] - (L[..., i, :j] * L[..., j, :j]).sum(-1)) / L[..., j, j]
    return L


def small_inv_lower(L):
    """Inverses of stacked small lower-triangular matrices."""
    k = L.shape[-1]
    if k == 1:
        return 1.0 / L
    out = np.zeros_like(L)
    for i in range(k):
        out[..., i, i] = 1.0 / L[..., i, i]
        for j in range(i):
            out[..., i, j] = -(L[..., i, j:i] * out[..., j:i, j]).sum(-1) / L[..., i, i]
    return out
