"""What every engine receives and returns for one block of responses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["FitOptions", "BlockFit", "DDF_METHODS", "TESTS", "OPTIMIZERS", "NEEDS"]

DDF_METHODS = ("satterthwaite", "residual", "kenward-roger", "none")
TESTS = ("marginal", "type3")
OPTIMIZERS = ("bobyqa", "nloptwrap", "Nelder_Mead")
# What a fit_block call computes: everything, or what a permutation keeps (F,
# DF1, estimates and SEs: the same F as "all", without the DF computation);
# DF2 and p are then NaN unless the F itself needs them (Kenward-Roger's F is
# scaled by its DF, so that fit stays complete).
NEEDS = ("all", "statistic")

# bobyqa with a tight final trust radius: lme4's defaults stop early enough to
# move F by about 1% on data shaped like the bundled iEEG samples.
DEFAULT_OPTIMIZER_OPTIONS = {"bobyqa": {"rhoend": 1e-9, "maxfun": 100000}}


@dataclass(frozen=True)
class FitOptions:
    """How each model is fitted and tested (see :func:`clusterlmer.fit_timeseries`)."""

    reml: bool = True
    ddf: str = "satterthwaite"
    test: str = "marginal"
    optimizer: str = "bobyqa"
    optimizer_options: dict = field(default_factory=dict)

    def resolved_optimizer_options(self) -> dict:
        """Optimizer controls: clusterlmer's defaults, updated by the user's."""
        return {**DEFAULT_OPTIMIZER_OPTIONS.get(self.optimizer, {}), **self.optimizer_options}


@dataclass(frozen=True, eq=False)
class BlockFit:
    """Results for ``k`` responses fitted under one design.

    Term arrays have shape ``(n_terms, k)``; coefficient arrays ``(n_coef, k)``;
    per-fit arrays ``(k,)``.
    """

    terms: tuple
    coef_names: tuple
    F: np.ndarray
    df1: np.ndarray
    df2: np.ndarray
    p: np.ndarray
    contrast_estimate: np.ndarray
    estimate: np.ndarray
    se: np.ndarray
    sigma: np.ndarray
    deviance: np.ndarray
    converged: np.ndarray
    singular: np.ndarray
    messages: list
    errors: list
