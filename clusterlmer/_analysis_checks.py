"""Checks of :func:`clusterlmer.permutation_cluster_lmer`'s arguments that no other stage owns.

Each runs before the observed fit: argument types, the tested term names
against the model's, and whether ``alpha`` is reachable with the number of
permutations asked for.
"""

from __future__ import annotations

import warnings

import numpy as np

from .cluster import smallest_cluster_p
from .data import _preview
from .engines import get_engine

__all__ = ["check_argument_types", "check_term_names", "warn_if_alpha_unreachable"]


def check_argument_types(terms, schemes, levels, optimizer_options, cross_check, progress):
    """Types of the arguments no other check covers before the observed fit."""
    if terms is not None and not isinstance(terms, str) and not (
            isinstance(terms, (list, tuple)) and all(isinstance(t, str) for t in terms)):
        raise TypeError(f"terms must be a term name, a list of term names or None, got {terms!r}.")
    for name, value in (("schemes", schemes), ("levels", levels), ("optimizer_options", optimizer_options)):
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"{name} must be a dict or None, got {type(value).__name__}.")
    if isinstance(cross_check, bool) or not isinstance(cross_check, (int, np.integer)) or cross_check < 0:
        raise ValueError(f"cross_check must be 0 or a positive number of samples, got {cross_check!r}.")
    if not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be True or False, got {progress!r}.")


def check_term_names(terms, plan):
    """Tested term names against the model's, before the observed fit (minutes with R)."""
    wanted = [terms] if isinstance(terms, str) else list(terms)
    model_terms, _ = get_engine(plan.engine).describe(plan.spec, plan.options)
    unknown = [t for t in wanted if t not in model_terms and t != "(Intercept)"]
    if unknown:
        raise ValueError(f"terms {_preview(unknown)} are not in the model; its terms are {_preview(model_terms)}.")


def warn_if_alpha_unreachable(n_permutations, alpha, tail, stacklevel):
    """Warn when no cluster p can fall below ``alpha`` with ``n_permutations``."""
    smallest = smallest_cluster_p(n_permutations, tail)
    if smallest >= alpha:
        need = int(np.floor((2 if tail == 0 else 1) / alpha))  # smallest n with 1 / (n + 1) < alpha (per tail)
        warnings.warn(f"with {n_permutations} permutations the smallest possible cluster p is {smallest:.3g}, "
                      f"not below alpha = {alpha:g}: no cluster can be significant. Use at least {need} "
                      "permutations (1000 or more for a publication).", UserWarning, stacklevel=stacklevel)
