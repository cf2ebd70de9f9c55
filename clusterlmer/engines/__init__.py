"""Model-fitting engines. Each fits a block of responses under one design.

An engine is a module with ``fit_block(design, Y, options) -> BlockFit`` and
``describe(design, options) -> (terms, coef_names)``; see :mod:`clusterlmer.engines.base`.
"""

from __future__ import annotations

import importlib

from .._checks import check_option

ENGINES = ("r", "native")


def get_engine(name: str):
    """Return the engine module called ``name``."""
    check_option("engine", name, ENGINES)
    return importlib.import_module(f"{__name__}.{name}")
