"""Model-fitting engines. Each fits a block of responses under one design.

An engine is a module with ``fit_block(design, Y, options, need="all") -> BlockFit``
(``need="statistic"``: only what a permutation keeps, see ``NEEDS`` in
:mod:`clusterlmer.engines.base`) and ``describe(design, options) -> (terms, coef_names)``.
"""

from __future__ import annotations

import importlib

from .._checks import check_option, option_hint

ENGINES = ("r", "native")
ENGINE_CHOICES = ("auto",) + ENGINES


def resolve_engine(engine, design, options):
    """The engine that will fit ``design``: ``engine``, or for ``"auto"`` native when it can.

    Parameters
    ----------
    engine : {"auto", "r", "native"}
    design : clusterlmer.design.ModelDesign
    options : FitOptions
        Options only lme4/lmerTest implement (Kenward-Roger, type III tests,
        lme4 optimizer settings) rule out the native engine like the model can.

    Returns
    -------
    name : str
        ``"r"`` or ``"native"``.
    note : str
        Why ``"auto"`` chose R (empty otherwise), for one warning.

    Raises
    ------
    ValueError
        ``engine="native"`` for a model or options it cannot fit (including a
        rank-deficient fixed-effect design, which lme4 fits after dropping
        columns), naming why.
    """
    check_option("engine", engine, ENGINE_CHOICES)
    if engine == "r":
        return "r", ""
    from . import native

    ok, reason = native.supports(design, options)
    use_r = option_hint("engine='r'", "--engine r")
    if engine == "native":
        if not ok:
            use_auto = option_hint("engine='auto'", "--engine auto")
            raise ValueError(f"the native engine cannot fit this model: {reason}. Use {use_r} to fit it with lme4 "
                             f"through R, or {use_auto} to pick R for such models.")
        return "native", ""
    return ("native", "") if ok else ("r", f"engine='auto' uses the R engine: {reason}. Pass {use_r} to "
                                               "choose R without this warning.")


def get_engine(name: str):
    """Return the engine module called ``name``."""
    check_option("engine", name, ENGINES)
    return importlib.import_module(f"{__name__}.{name}")
