"""The first block of the general path's blocked Cholesky factor: which random effects are factored level by level.

Every observation has one level of lme4's first term (the one with most
levels), so its part of ``Lambda' Z'Z Lambda + I`` is block diagonal and is
factored level by level; the other terms form the dense part
(:mod:`.blocked`). When the first term's levels nest in the second term's
(``(1|Subject:cond) + (1|Subject) + (1|Item)``: every ``Subject:cond`` level
belongs to one subject), a level of the second term together with the levels
nested in it is still a diagonal block: one subject's intercept and its
``Subject:cond`` intercepts share no observation with another subject's. The
two terms are then factored together, subject by subject, as MixedModels.jl's
blocked factor keeps a nested term's block diagonal, and the dense part keeps
only the crossed terms (16 items instead of 96 subjects and 16 items).

A subject with fewer nested levels than the largest fills the block's
remaining places with a zero row of ``Z'``: its block of ``A`` is the identity
there, which adds nothing to the criterion or its gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FirstBlock", "first_block", "tril_index"]

# Block size up to which a nested first term is merged into the second: the level loops cost
# about size^4 per level, against the dense part's (levels of the second term)^3.
MERGE_MAX = 6


def tril_index(k):
    """(k, k) map from a relative factor's entries to their place in lme4's theta (-1 above the diagonal)."""
    rows, cols = np.tril_indices(k)
    order = np.lexsort((rows, cols))  # column-major lower triangle: lme4's Lind
    out = np.full((k, k), -1)
    out[rows[order], cols[order]] = np.arange(len(order))
    return out


@dataclass(frozen=True)
class FirstBlock:
    """The random effects factored level by level.

    Attributes
    ----------
    n_terms : int
        Leading terms (lme4's order) it holds: 1, or 2 when the first nests in the second.
    codes : ndarray of int (n_obs,)
        Each observation's level of the block.
    n_levels, size : int
        Levels, and random effects per level.
    rows : ndarray of int (n_levels, size)
        Each level's rows of ``Z'`` (``q``: the zero row).
    tidx : ndarray of int (size, size)
        Entry of theta at each place of a level's relative factor (``n_theta``: zero).
    """

    n_terms: int
    codes: np.ndarray
    n_levels: int
    size: int
    rows: np.ndarray
    tidx: np.ndarray


def _nested_in(inner, outer):
    """The level of ``outer`` each level of ``inner`` lies in, or None when some lies in two."""
    owner = np.full(inner.n_levels, -1)
    owner[inner.codes] = outer.codes
    pairs = np.unique(np.stack([inner.codes, outer.codes]), axis=1)
    return owner if pairs.shape[1] == inner.n_levels else None


def first_block(terms, starts, tstarts, q, n_theta) -> FirstBlock:
    """The first block for ``terms`` in lme4's order (``starts``/``tstarts``: each term's first
    row of ``Z'`` and first theta entry; ``q`` random effects, ``n_theta`` theta entries)."""
    ks = [len(t.coef_names) for t in terms]
    first = terms[0]
    # With two terms a nested second term adds nothing to merge: each of its levels is already a
    # component of its own, a dense block of its k columns.
    owner = _nested_in(first, terms[1]) if len(terms) > 2 else None
    if owner is not None:
        outer = terms[1]
        members = [np.flatnonzero(owner == g) for g in range(outer.n_levels)]
        size = ks[1] + max(len(m) for m in members) * ks[0]
        if size <= MERGE_MAX:
            rows = np.full((outer.n_levels, size), q)
            for g, m in enumerate(members):
                rows[g, :ks[1]] = starts[1] + g * ks[1] + np.arange(ks[1])
                inner = starts[0] + m[:, None] * ks[0] + np.arange(ks[0])
                rows[g, ks[1]:ks[1] + inner.size] = inner.ravel()
            tidx = np.full((size, size), n_theta)
            _place(tidx, 0, tril_index(ks[1]), tstarts[1])
            for s in range(ks[1], size, ks[0]):
                _place(tidx, s, tril_index(ks[0]), tstarts[0])
            return FirstBlock(2, outer.codes, outer.n_levels, size, rows, tidx)
    k = ks[0]
    rows = starts[0] + np.arange(first.n_levels)[:, None] * k + np.arange(k)
    tidx = np.full((k, k), n_theta)
    _place(tidx, 0, tril_index(k), tstarts[0])
    return FirstBlock(1, first.codes, first.n_levels, k, rows, tidx)


def _place(tidx, at, tril, offset):
    """Write a term's relative factor map ``tril`` (theta from ``offset``) into ``tidx`` at diagonal place ``at``."""
    k = tril.shape[0]
    block = tidx[at:at + k, at:at + k]
    block[tril >= 0] = offset + tril[tril >= 0]
