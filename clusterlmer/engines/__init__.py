"""Model-fitting engines. Each fits a block of responses under a model specification.

An engine is a module with ``fit_block(spec, Y, options, need="all") -> BlockFit``
(``need="statistic"``: only what a permutation keeps, see ``NEEDS`` in
:mod:`clusterlmer.engines.base`), ``fit_blocks(specs, Y, options, need)`` (the same block under
several permutations of one specification, fitted together where the engine can),
``describe(spec, options) -> (terms, coef_names)``, ``fit_method(options) -> str`` (how it
finds the optimum, for summaries), ``supports(spec, options) -> (ok, reason)``, and the
constants ``LABEL``, ``BLOCK_SIZE``, ``FITS_PER_BATCH``, ``NEEDS_OWN_PROCESS`` and ``REFERENCE``
that tell the runners of permutation blocks (:mod:`clusterlmer.run`) how to run it and whether
its numbers are lme4/lmerTest's own, read through :func:`engine_properties`. Adding an engine is
one module and its name in :data:`ENGINES` (ahead of :data:`REFERENCE_ENGINE` for ``"auto"`` to
prefer it). ``spec`` is a
:class:`clusterlmer.spec.ModelSpec`; a :class:`clusterlmer.design.ModelDesign` is accepted too.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .._checks import check_option, option_hint

ENGINES = ("r", "native")
ENGINE_CHOICES = ("auto",) + ENGINES
# The engine whose numbers are lme4/lmerTest's own: other engines are cross-checked against it.
REFERENCE_ENGINE = "r"
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
    fits_per_batch : int
        Fits (permutations x samples) the engine fits together in one call of ``fit_blocks``.
    needs_own_process : bool
        Whether its fits must run in the main thread of a process of their own (a Dask
        worker thread then drives a child process), rather than in any thread.
    reference : bool
        Whether its numbers are lme4/lmerTest's own (not cross-checked against another engine).
    """

    name: str
    label: str
    block_size: int
    fits_per_batch: int
    needs_own_process: bool
    reference: bool


def engine_properties(name=None) -> EngineProperties:
    """The :class:`EngineProperties` of engine ``name`` (None: those of :data:`CAUTIOUS_ENGINE`)."""
    name = CAUTIOUS_ENGINE if name is None else name
    module = get_engine(name)
    return EngineProperties(name, module.LABEL, int(module.BLOCK_SIZE), int(module.FITS_PER_BATCH),
                            bool(module.NEEDS_OWN_PROCESS), bool(module.REFERENCE))


def resolve_engine(engine, model, options):
    """The engine that will fit ``model``: ``engine``, or for ``"auto"`` the first that can.

    Parameters
    ----------
    engine : {"auto", "r", "native"}
    model : clusterlmer.spec.ModelSpec or clusterlmer.design.ModelDesign
    options : FitOptions
        Options only lme4/lmerTest implement (Kenward-Roger, lme4 optimizer
        settings) rule out the native engine like the model can.

    Returns
    -------
    name : str
        ``"r"`` or ``"native"``: ``"auto"`` takes the first engine of
        :data:`ENGINES` other than :data:`REFERENCE_ENGINE` that fits the
        model, else the reference engine.
    note : str
        Why ``"auto"`` chose the reference engine (empty otherwise), for one warning.

    Raises
    ------
    ValueError
        An engine other than the reference asked for a model or options it
        cannot fit, naming why.
    """
    check_option("engine", engine, ENGINE_CHOICES)
    if engine == REFERENCE_ENGINE:
        return engine, ""
    use_ref = option_hint(f"engine={REFERENCE_ENGINE!r}", f"--engine {REFERENCE_ENGINE}")
    reasons = []
    for name in ([engine] if engine != "auto" else [e for e in ENGINES if e != REFERENCE_ENGINE]):
        ok, reason = get_engine(name).supports(model, options)
        if ok:
            return name, ""
        if engine != "auto":
            use_auto = option_hint("engine='auto'", "--engine auto")
            raise ValueError(f"the {name} engine cannot fit this model: {reason}. Use {use_ref} to fit it with "
                             f"lme4 through R, or {use_auto} to pick R for such models.")
        reasons.append(reason)
    return REFERENCE_ENGINE, (f"engine='auto' uses the R engine: {'; '.join(reasons)}. Pass {use_ref} to choose R "
                              "without this warning.")


def get_engine(name: str):
    """Return the engine module called ``name``."""
    check_option("engine", name, ENGINES)
    return importlib.import_module(f"{__name__}.{name}")
