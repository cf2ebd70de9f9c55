"""Model-fitting engines. Each fits a block of responses under one design.

An engine is a module with ``fit_block(design, Y, options, need="all") -> BlockFit``
(``need="statistic"``: only what a permutation keeps, see ``NEEDS`` in
:mod:`clusterlmer.engines.base`), ``describe(design, options) -> (terms, coef_names)``, and the
constants ``LABEL``, ``BLOCK_SIZE`` and ``NEEDS_OWN_PROCESS`` that tell the runners of
permutation blocks (:mod:`clusterlmer.run`) how to run it, read through :func:`engine_properties`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .._checks import check_option, option_hint

ENGINES = ("r", "native")
ENGINE_CHOICES = ("auto",) + ENGINES
# A task that does not say which engine fits it (e.g. a wrapper around a task) is run as this
# engine's: in a process of its own and in small blocks, which is safe for any engine.
CAUTIOUS_ENGINE = "r"


@dataclass(frozen=True)
class EngineProperties:
    """How permutation blocks of one engine are run.

    Attributes
    ----------
    name : str
        The engine's name in :data:`ENGINES`.
    label : str
        How messages name it, e.g. ``"R"`` in "R process".
    block_size : int
        Most permutations per block of work (one worker round trip, one Dask task).
    needs_own_process : bool
        Whether its fits must run in the main thread of a process of their own (a Dask
        worker thread then drives a child process), rather than in any thread.
    """

    name: str
    label: str
    block_size: int
    needs_own_process: bool


def engine_properties(name=None) -> EngineProperties:
    """The :class:`EngineProperties` of engine ``name`` (None: those of :data:`CAUTIOUS_ENGINE`)."""
    name = CAUTIOUS_ENGINE if name is None else name
    module = get_engine(name)
    return EngineProperties(name, module.LABEL, int(module.BLOCK_SIZE), bool(module.NEEDS_OWN_PROCESS))


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
