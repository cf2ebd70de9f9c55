"""What the native engine fits: the model and option checks behind ``supports``.

``analyse`` combines the option checks (marginal tests, Satterthwaite /
residual / no DF, bobyqa's optimum without lme4 optimizer settings) with
those of the random part (:mod:`.nesting`) and the fixed part
(:mod:`.fixed`), and returns the parts of a supported model or the reason
it is not; ``supports``, ``require`` and ``describe`` are its three uses.
"""

from __future__ import annotations

from ..base import FitOptions
from .fixed import FixedPart, rank_problem
from .nesting import Nesting, random_groupings

__all__ = ["UnsupportedModel", "analyse", "describe", "require", "supports"]


class UnsupportedModel(ValueError):
    """The model is outside the class the native engine fits."""


def analyse(design, options):
    """(fixed part, nesting, None) of a supported model, or (None, None, reason)."""
    if options is not None:
        if options.ddf == "kenward-roger":
            return None, None, "ddf='kenward-roger' (pbkrtest) is not available in the native engine"
        if options.test != "marginal":
            return None, None, (f"test={options.test!r} is not available in the native engine, which computes "
                                "marginal tests only")
        # The native optimum is exact; silently ignoring a requested lme4 optimizer would misreport the run.
        if options.optimizer != "bobyqa":
            return None, None, (f"optimizer={options.optimizer!r} selects an lme4 optimizer, which the native "
                                "engine does not use (it finds the optimum itself)")
        if options.optimizer_options:
            return None, None, (f"optimizer_options={options.optimizer_options!r} are lme4 optimizer controls, "
                                "which the native engine does not use (it finds the optimum itself)")
    groupings, names, why = random_groupings(design.formula)
    if why:
        return None, None, why
    nest = Nesting(design.frame, groupings, names)
    if nest.problem:
        return None, None, nest.problem
    fixed = FixedPart(design)
    if fixed.problem:
        return None, None, fixed.problem
    return fixed, nest, None


def supports(design, options: FitOptions | None = None):
    """Whether the native engine fits this design (and options).

    Parameters
    ----------
    design : clusterlmer.design.ModelDesign
    options : FitOptions, optional
        Also check the test and ddf method.

    Returns
    -------
    ok : bool
    reason : str
        Empty when ``ok``; otherwise what is not supported.

    Notes
    -----
    Groupings that are nested in the whole design stay nested in any subset
    of its rows, but a subset can make two groupings identical (every
    subject left with one channel); ``fit_block`` reports that as an error
    of the block. The rank of the fixed-effect design is checked here, on
    the observed rows; a subset or a permutation that loses rank is an error
    of that block too.
    """
    fixed, _, why = analyse(design, options)
    if why is None:
        why = rank_problem(fixed, fixed.matrix(design.frame))
    return why is None, why or ""


def require(design, options):
    """(fixed part, nesting) of a supported model; raises UnsupportedModel naming why not."""
    fixed, nest, why = analyse(design, options)
    if why is not None:
        raise UnsupportedModel(f"the native engine cannot fit this model: {why}.")
    return fixed, nest


def describe(design, options: FitOptions):
    """Term labels and coefficient names of the fixed part, as the R engine's.

    Raises
    ------
    UnsupportedModel
        (a ValueError) if the model or options are outside the native class.
    """
    fixed, _ = require(design, options)
    return ("(Intercept)", *fixed.labels), fixed.coef_names
