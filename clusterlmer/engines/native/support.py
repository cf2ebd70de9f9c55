"""What the native engine fits: the model and option checks behind ``supports``.

``analyse`` combines the option checks (marginal tests, Satterthwaite /
residual / no DF, bobyqa's optimum without lme4 optimizer settings) with
those of the model specification's fixed part (an intercept, hierarchical
terms) and random part: nested random intercepts (:mod:`.nesting`) take
the closed-form path, every other random structure the general one. It
returns the nesting (or None) of a supported model or the reason it is
not; ``supports``, ``require`` and ``describe`` are its three uses.
"""

from __future__ import annotations

from ...spec import as_spec
from ..base import FitOptions
from .nesting import Nesting, random_problem

__all__ = ["UnsupportedModel", "analyse", "describe", "require", "supports", "tested_terms"]


class UnsupportedModel(ValueError):
    """The model is outside the class the native engine fits."""


def _option_problem(options):
    if options.family != "gaussian":
        return (f"family={options.family!r} makes a generalized linear mixed model, which lme4::glmer fits; the "
                "native engine fits linear (Gaussian) mixed models")
    if options.ddf == "kenward-roger":
        return "ddf='kenward-roger' (pbkrtest) is not available in the native engine"
    # The native optimum is exact; silently ignoring a requested lme4 optimizer would misreport the run.
    if options.optimizer != "bobyqa":
        return (f"optimizer={options.optimizer!r} selects an lme4 optimizer, which the native engine does not use "
                "(it finds the optimum itself)")
    if options.optimizer_options:
        return (f"optimizer_options={options.optimizer_options!r} are lme4 optimizer controls, which the native "
                "engine does not use (it finds the optimum itself)")
    return None


def analyse(spec, options):
    """(nesting, None) for nested random intercepts, (None, None) for any other supported model, or (None, reason).

    Nested random intercepts take the closed-form path (faster there); every
    other random part lme4 fits takes the general path
    (:mod:`.general_fit`).
    """
    why = _option_problem(options) if options is not None else None
    if why:
        return None, why
    if spec.fixed.problem:
        return None, f"{spec.fixed.problem}, which the native engine does not fit"
    if random_problem(spec) is None:
        nest = Nesting.of(spec)
        if nest.problem is None:
            return nest, None
        if "define the same groups" in nest.problem:
            return None, nest.problem
    why = general_problem(spec)
    return None, why


def general_problem(spec):
    """Why the general path cannot fit the random part, or None."""
    for term in spec.formula.random:
        parts = term.group.split("/")
        if len(parts) > 1 and any(":" in part for part in parts):
            return f"the grouping {term.group!r} mixes ':' and '/'; write each nested term out"
    if not spec.random:
        return "the model has no random-effects term"
    seen = set()
    for t in spec.random:
        key = (frozenset(t.columns), t.coef_names)
        if key in seen:
            return (f"the term ({t.expr} | {':'.join(t.columns)}) appears twice in the random part; its two "
                    "variances would not be identifiable")
        seen.add(key)
    return None


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
    """The nesting of a nested-intercept model, None for another supported one; raises UnsupportedModel."""
    nest, why = analyse(spec, options)
    if why is not None:
        raise UnsupportedModel(f"the native engine cannot fit this model: {why}.")
    return nest


def describe(model, options: FitOptions):
    """Term labels (then the user contrasts' names) and coefficient names of the fixed part, as the R engine's.

    Raises
    ------
    UnsupportedModel
        (a ValueError) if the model or options are outside the native class.
    """
    spec = as_spec(model)
    require(spec, options)
    return tested_terms(spec, options), spec.fixed.coef_names


def tested_terms(spec, options):
    """The terms the tests report (lmerTest's type I, II and III tables have no intercept row), then the user
    contrasts' names."""
    terms = spec.fixed.terms
    terms = terms if options.test == "marginal" else tuple(t for t in terms if t != "(Intercept)")
    return terms + tuple(c.name for c in options.contrasts)
