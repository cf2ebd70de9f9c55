"""What every engine receives and returns for one block of responses, and the checks of the fit options."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._checks import check_option, option_hint
from ..families import check_family

__all__ = ["FitOptions", "BlockFit", "DDF_METHODS", "TESTS", "OPTIMIZERS", "NEEDS", "check_fit_options"]

DDF_METHODS = ("satterthwaite", "residual", "kenward-roger", "none")
TESTS = ("marginal", "type3", "type2", "type1")
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
    family: str = "gaussian"  # anything else: a GLMM (clusterlmer.families), fitted by lme4::glmer
    weights: str | None = None  # binomial: the design column with each row's number of trials
    glmm_test: str = "wald"  # a GLMM's terms: Wald or likelihood-ratio chi-square
    # User contrasts (clusterlmer.contrasts.Contrast) tested after the terms, under their names.
    contrasts: tuple = ()

    def resolved_optimizer_options(self) -> dict:
        """Optimizer controls: clusterlmer's defaults, updated by the user's."""
        return {**DEFAULT_OPTIMIZER_OPTIONS.get(self.optimizer, {}), **self.optimizer_options}


def check_fit_options(reml, ddf, test, optimizer, optimizer_options, family="gaussian", weights=None,
                      glmm_test="wald") -> FitOptions:
    """Check the fit options of a public entry point and bundle them.

    Parameters
    ----------
    reml : bool
    ddf : {"satterthwaite", "residual", "kenward-roger", "none"}
    test : {"marginal", "type3", "type2", "type1"}
    optimizer : {"bobyqa", "nloptwrap", "Nelder_Mead"}
    optimizer_options : dict or None
        Numeric lme4 optimizer controls.
    family : {"gaussian", "binomial", "poisson"}
        Not Gaussian: a GLMM (:mod:`clusterlmer.families`; ``reml`` becomes
        False and ``ddf`` ``"none"``).
    weights : str or None
        Binomial: the design column with each row's number of trials.
    glmm_test : {"wald", "lrt"}
        A GLMM's test of each term (:mod:`clusterlmer.families`).

    Returns
    -------
    FitOptions

    Raises
    ------
    TypeError
        ``reml`` is not a bool, or an optimizer control is not a number.
    ValueError
        An option outside its choices, Kenward-Roger with ML, or a type I/II
        table of a GLMM.
    """
    if not isinstance(reml, (bool, np.bool_)):
        raise TypeError(f"reml must be True (REML) or False (ML, MATLAB's default), got {reml!r}.")
    check_option("ddf", ddf, DDF_METHODS)
    check_option("test", test, TESTS)
    check_option("optimizer", optimizer, OPTIMIZERS)
    reml, ddf = check_family(family, weights, reml, ddf, glmm_test, test)
    if family != "gaussian" and test in ("type1", "type2"):
        # lmerTest builds them from X'X, which a GLMM's weighted fit does not test: no such table exists there.
        raise ValueError(f"test={test!r} (lmerTest's type {'I' if test == 'type1' else 'II'} table) is defined "
                         f"for linear mixed models; for family={family!r} use "
                         f"{option_hint('test=' + repr('type3'), '--test type3')} or the marginal test.")
    if ddf == "kenward-roger" and not reml:
        raise ValueError(f"ddf='kenward-roger' needs a REML fit: {option_hint('use reml=True', 'leave out --ml')}, "
                         "or use another ddf method with ML.")
    opts = dict(optimizer_options or {})
    bad = {k: v for k, v in opts.items() if not isinstance(v, (int, float)) or isinstance(v, bool)}
    if bad:
        raise TypeError(f"optimizer_options values must be numbers, got {bad}.")
    return FitOptions(bool(reml), ddf, test, optimizer, opts, family, weights, glmm_test)


@dataclass(frozen=True, eq=False)
class BlockFit:
    """Results for ``k`` responses fitted under one design.

    Term arrays have shape ``(n_terms, k)``; coefficient arrays ``(n_coef, k)``;
    per-fit arrays ``(k,)``. ``coef_df`` and ``coef_se`` are the DF and standard
    error of each coefficient's t test as lmerTest's ``summary()`` reports it
    (``coef_se`` is ``se`` except under Kenward-Roger, whose SE is pbkrtest's
    adjusted one); NaN when the fit computed the statistic only.
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
    coef_df: np.ndarray
    coef_se: np.ndarray
