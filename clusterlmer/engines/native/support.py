"""What the native engine fits: the model and option checks behind ``supports``.

``analyse`` combines the option checks (marginal tests, Satterthwaite /
residual / no DF, bobyqa's optimum without lme4 optimizer settings) with
those of the model specification's random part (random intercepts of nested
groupings, :mod:`.nesting`) and fixed part (an intercept, hierarchical
terms), and returns the nesting of a supported model or the reason it is
not; ``supports``, ``require`` and ``describe`` are its three uses.
"""

from __future__ import annotations

from ...spec import as_spec
from ..base import FitOptions
from .nesting import Nesting, random_problem

__all__ = ["UnsupportedModel", "analyse", "describe", "require", "supports"]


class UnsupportedModel(ValueError):
    """The model is outside the class the native engine fits."""


def _option_problem(options):
    if options.ddf == "kenward-roger":
        return "ddf='kenward-roger' (pbkrtest) is not available in the native engine"
    if options.test != "marginal":
        return f"test={options.test!r} is not available in the native engine, which computes marginal tests only"
    # The native optimum is exact; silently ignoring a requested lme4 optimizer would misreport the run.
    if options.optimizer != "bobyqa":
        return (f"optimizer={options.optimizer!r} selects an lme4 optimizer, which the native engine does not use "
                "(it finds the optimum itself)")
    if options.optimizer_options:
        return (f"optimizer_options={options.optimizer_options!r} are lme4 optimizer controls, which the native "
                "engine does not use (it finds the optimum itself)")
    return None


def analyse(spec, options):
    """(nesting, None) of a supported model, or (None, reason)."""
    why = _option_problem(options) if options is not None else None
    why = why or random_problem(spec)
    if why:
        return None, why
    nest = Nesting.of(spec)
    if nest.problem:
        return None, nest.problem
    if spec.fixed.problem:
        return None, f"{spec.fixed.problem}, which the native engine does not fit"
    return nest, None


def supports(model, options: FitOptions | None = None):
    """Whether the native engine fits this model (and options).

    Parameters
    ----------
    model : clusterlmer.spec.ModelSpec or clusterlmer.design.ModelDesign
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
    of the block. A rank-deficient fixed-effect design is fitted as lme4
    fits it: the columns lme4 drops are dropped (their estimates NaN) and
    terms are tested on the remaining coefficients.
    """
    _, why = analyse(as_spec(model), options)
    return why is None, why or ""


def require(spec, options):
    """The nesting of a supported model; raises UnsupportedModel naming why not."""
    nest, why = analyse(spec, options)
    if why is not None:
        raise UnsupportedModel(f"the native engine cannot fit this model: {why}.")
    return nest


def describe(model, options: FitOptions):
    """Term labels and coefficient names of the fixed part, as the R engine's.

    Raises
    ------
    UnsupportedModel
        (a ValueError) if the model or options are outside the native class.
    """
    spec = as_spec(model)
    require(spec, options)
    return spec.fixed.terms, spec.fixed.coef_names
