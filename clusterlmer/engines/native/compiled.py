"""The general path's criterion and exact gradient as one compiled loop over fits (numba).

:meth:`.blocked.GeneralBlock.evaluate` computes lme4's profiled criterion
with numpy on whole stacks of fits, whose arrays are stacks of tiny blocks
(``k1 x k1`` per level, ``m2 x m2`` per component): numpy pays a
per-operation cost there that dwarfs the arithmetic (~90 us per fit and
gradient for the bundled sample's random-slope model, 199 random effects,
against ~11 us compiled). Every evaluation without the Hessian (the
optimiser's steps, the statistics at the optimum) runs :func:`.kernel.kernel`;
numpy keeps the exact Hessian (Newton from lme4's start) and Satterthwaite's
numDeriv points, and ``tests/test_compiled_kernel.py`` holds the two to
1e-10 of each other.

This module chooses and calls the compiled version: one per block shape
(:func:`specialised`), found once and then called directly (:func:`run`).
"""

from __future__ import annotations

import numpy as np
from numba import typeof

from .kernel import criterion_gradient

__all__ = ["criterion_gradient", "run", "specialised"]

# The dense part's rows per component and the fixed-effects columns up to which the kernel is
# compiled for the exact number (above, it reads them from the arrays): each compiled version costs
# ~10 s once (then it is cached on disk), so only the small sizes that gain most are specialised.
SPECIALISED_M2 = 4
SPECIALISED_P = 8


def specialised(k1, m2, p):
    """The shape arguments of :func:`criterion_gradient` for a structure: ``k1`` always, ``m2`` and
    ``p`` when at most ``SPECIALISED_M2`` and ``SPECIALISED_P`` (else -1: read from the arrays)."""
    return k1, (m2 if m2 <= SPECIALISED_M2 else -1), (p if p <= SPECIALISED_P else -1)


_ENTRY_POINTS = {}


def _key(args):
    """What selects a compiled version: the arrays' types, the scalars' types and the shape's values."""
    return tuple((a.dtype.char, a.ndim, a.flags.c_contiguous, a.flags.writeable) if isinstance(a, np.ndarray)
                 else type(a) for a in args[:-3]) + tuple(args[-3:])


def run(*args):
    """Call :func:`criterion_gradient` with ``args`` (its arguments, the shape last).

    Numba dispatches a function with literal arguments by retrying the
    compilation on every call (milliseconds); the compiled version for these
    argument types is looked up once and called directly afterwards.
    """
    key = _key(args)
    entry = _ENTRY_POINTS.get(key)
    if entry is not None:
        entry(*args)
        return
    criterion_gradient(*args)  # compiles this version, or loads it from the cache
    types = [typeof(a) for a in args[:-3]]
    for sig, compiled in criterion_gradient.overloads.items():
        literal = tuple(getattr(t, "literal_value", None) for t in sig[-3:])
        if literal == tuple(args[-3:]) and list(sig[:-3]) == types:
            _ENTRY_POINTS[key] = compiled.entry_point
            break
