"""From a user's design table to the columns, levels and coding the engines fit.

MATLAB's conventions decide which columns are factors and in which level
order:

* text labels are factors, levels in order of first appearance;
* pandas categoricals are factors, levels in category order (unused dropped);
* numbers (including a 0/1 condition and booleans) stay one numeric column,
  unless ``levels=`` names the column, which makes it a factor with that order;
* the reference level is the first level; ``levels=`` overrides the order;
* ``level_order="sorted"`` orders the levels as R's ``factor()`` does
  instead of by first appearance (:func:`clusterlmer.coding.sorted_levels`);
* ``coding=`` sets the contrasts of every factor or, as a dict, of each
  variable (:mod:`clusterlmer.coding`); naming a numeric column there makes
  it a factor with its values sorted, as R's ``factor()`` and ``ordered()``
  would.

One rule departs from MATLAB, because the numeric reading changes what the
neighbouring rows mean without a word: a numeric column with exactly two
values that interacts with another fixed-effect variable is coded as a factor
with its values sorted (as MATLAB orders numeric levels when it makes them
categorical), unless the two values are centred on 0 (e.g. -0.5/0.5), a
coding chosen on purpose. As a number, the main effects next to it would be
effects at the value 0: outside the data for a 1/2 condition, and never the
average that ``coding="effects"`` promises. For a 0/1 condition under
reference coding the factor gives the same numbers as the number did.
A numeric variable with more values stays numeric; when 0 lies outside its
range a warning says that the neighbouring main effects are extrapolated.

Grouping factors (right of ``|``) are passed as text; their level order does
not change the fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import warnings

import numpy as np
import pandas as pd

from ._checks import check_option
from .coding import CODINGS, LEVEL_ORDERS, check_coding, factor_codings, sorted_levels, zero_sum
from .data import _preview
from .formula import ModelFormula
from .transforms import TransformError, compute_columns

__all__ = ["CODINGS", "ModelDesign", "build_design", "DesignError"]


class DesignError(ValueError):
    """The design table does not fit the formula."""


@dataclass(frozen=True, eq=False)
class ModelDesign:
    """The design as the engines receive it.

    Attributes
    ----------
    frame : pandas.DataFrame
        Only the columns the formula uses: factors and grouping columns as
        text, numeric predictors as float.
    factors : dict of str to list of str
        Level order of every fixed-effect factor (reference level first).
    coding : str
        The coding of the factors ``coding=`` did not name one for
        (:mod:`clusterlmer.coding`).
    formula : ModelFormula
        The checked formula.
    numeric : tuple of str
        Fixed-effect and slope variables kept as one numeric column.
    converted : tuple of str
        Numeric two-valued columns coded as factors because they interact
        with another variable (see the module notes).
    codings : dict of str to str
        Coding of every factor (``"reference"``, ``"effects"``, ``"helmert"``
        or ``"poly"``).
    sources : dict of str to ndarray
        The numeric source columns of the formula's transformations (see
        :mod:`clusterlmer.transforms`), from which a permutation recomputes
        them. The transformations' values are columns of ``frame`` named by
        their labels (``poly(x, 2)1``, ``poly(x, 2)2`` for poly's columns),
        never coded as factors.
    """

    frame: pd.DataFrame
    factors: dict
    coding: str
    formula: ModelFormula
    numeric: tuple = field(default=())
    converted: tuple = field(default=())
    codings: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)

    @property
    def reference_levels(self) -> dict:
        """Reference (first) level of each factor."""
        return {name: levels[0] for name, levels in self.factors.items()}

    def subset(self, rows) -> "ModelDesign":
        """The same design restricted to ``rows`` (a boolean mask or indices)."""
        idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else rows
        return replace(self, frame=self.frame.iloc[idx].reset_index(drop=True),
                       sources={k: v[idx] for k, v in self.sources.items()})


def _label_text(values) -> list:
    """Text form of labels, identical for a value wherever it appears."""
    out = []
    for v in values:
        if isinstance(v, (bytes, np.bytes_)):
            v = v.decode()
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
        out.append(str(v))
    return out


def _first_appearance(texts) -> list:
    return list(dict.fromkeys(texts))


def _factor_levels(name, series, given, order="appearance"):
    """Level order for one factor column (texts): MATLAB's rules, or R's sorted order."""
    texts = _label_text(series)
    observed = _first_appearance(texts)
    if given is not None:
        levels = _label_text(given)
        if len(set(levels)) != len(levels):
            raise DesignError(f"levels[{name!r}] repeats a level: {levels}.")
        unknown = [v for v in observed if v not in levels]
        if unknown:
            raise DesignError(
                f"column {name!r} has values missing from levels[{name!r}]: {_preview(unknown)}. "
                f"List every level, reference first; observed levels: {_preview(observed)}."
            )
        absent = [v for v in levels if v not in observed]
        if absent:
            raise DesignError(
                f"levels[{name!r}] lists levels that never occur in column {name!r}: {_preview(absent)}."
            )
    elif isinstance(series.dtype, pd.CategoricalDtype):
        levels = [t for t in _label_text(series.cat.categories) if t in set(observed)]
    elif order == "sorted" or pd.api.types.is_numeric_dtype(series):
        levels = sorted_levels(name, series.tolist(), texts)
    else:
        levels = observed
    return texts, levels


def _is_factor(series, name, levels, named=()):
    if (levels is not None and name in levels) or name in named:
        return True
    if isinstance(series.dtype, pd.CategoricalDtype):
        return True
    return not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series))


def build_design(design: pd.DataFrame, formula: ModelFormula, *, coding="reference", levels=None,
                 level_order="appearance", response_column=None) -> ModelDesign:
    """Check a design table against a formula and prepare it for fitting.

    Parameters
    ----------
    design : pandas.DataFrame
        One row per observation.
    formula : ModelFormula
        The parsed formula.
    coding : {"reference", "effects", "helmert", "poly"} or dict
        Coding of factors (:mod:`clusterlmer.coding`): treatment contrasts
        with the first level as reference (MATLAB's default), sum-to-zero
        contrasts with the last level coded -1, R's Helmert or orthogonal
        polynomial contrasts; a dict gives a coding per variable (``"*"``:
        the others). Naming a numeric column makes it a factor.
    levels : dict, optional
        Level order per column, reference level first. Naming a numeric
        column makes it a factor.
    level_order : {"appearance", "sorted"}
        Order of the levels ``levels`` does not give: first appearance
        (MATLAB) or sorted as R's ``factor()`` sorts them.
    response_column : str, optional
        Name of the response when the data came from a single column.

    Returns
    -------
    ModelDesign
    """
    default, named = check_coding(coding)
    check_option("level_order", level_order, LEVEL_ORDERS)
    levels = dict(levels or {})
    columns = list(design.columns)
    if formula.response in columns and formula.response != response_column:
        raise DesignError(
            f"the formula's response {formula.response!r} is a design column. The left-hand side names "
            "the response values (bound to each timepoint); choose a name that is not a column, e.g. 'data'."
        )
    unknown = [v for v in formula.variables if v not in columns]
    if unknown:
        raise DesignError(
            f"the formula uses {_preview(unknown)}, which {'is not a design column' if len(unknown) == 1 else 'are not design columns'}. "
            f"Available columns: {_preview(columns)}."
        )
    stray = [k for k in levels if k not in formula.fixed_variables and k not in formula.slope_variables]
    if stray:
        grouping = [k for k in stray if k in formula.grouping_variables]
        why = (f"{_preview(grouping)} only group(s) random effects, where level order does not matter"
               if grouping else "the formula's fixed or random-slope terms do not use them")
        raise DesignError(f"levels names {_preview(stray)}: {why}. Give levels for fixed-effect factors only.")
    stray = [k for k in named if k not in formula.fixed_variables and k not in formula.slope_variables]
    if stray:
        raise DesignError(f"coding names {_preview(map(repr, stray))}, which {'is' if len(stray) == 1 else 'are'} "
                          "not a fixed-effect or random-slope variable of the formula; name the factors to code (or "
                          "'*' for every factor not named).")

    try:
        computed = compute_columns(formula.transforms.values(), design, levels)
    except TransformError as exc:
        raise DesignError(str(exc)) from None

    frame, factors, numeric, converted = {}, {}, [], []
    expanded = formula.fixed_terms
    model_variables = formula.model_variables
    for name in formula.variables:
        if name not in model_variables and name not in formula.grouping_variables:
            continue  # used only inside transformations, which are computed below
        series = design[name]
        missing = series.isna().to_numpy()
        if missing.any():
            rows = np.flatnonzero(missing)
            raise DesignError(
                f"column {name!r} has {missing.sum()} missing value(s) (rows {_preview(rows, 6)}). "
                "Fill them or drop those rows before fitting."
            )
        if name not in model_variables:
            frame[name] = _label_text(series)
            continue
        if _is_factor(series, name, levels, named):
            texts, lev = _factor_levels(name, series, levels.get(name), level_order)
            if len(lev) < 2:
                raise DesignError(
                    f"factor {name!r} has a single level ({lev[0]!r}): a factor needs at least two levels. "
                    "Remove it from the formula or check that the data hold every condition."
                )
            frame[name] = texts
            factors[name] = lev
        else:
            values = series.to_numpy(dtype=float)
            if not np.isfinite(values).all():
                raise DesignError(f"numeric column {name!r} has non-finite values; fill or drop those rows.")
            if name in formula.fixed_variables and np.all(values == values[0]):
                raise DesignError(
                    f"column {name!r} has the same value ({values[0]:g}) in every row, so it cannot explain "
                    "anything (a condition with a single level). Check that the data hold every condition, "
                    "or remove it from the formula."
                )
            partners = expanded.interacting(name)
            distinct = np.unique(values)
            if partners and distinct.size == 2 and distinct[0] != -distinct[1]:
                lev = _label_text(distinct)
                _warn_two_valued(name, distinct, partners, named.get(name, default))
                frame[name] = _label_text(values)
                factors[name] = lev
                converted.append(name)
                continue
            if partners and not distinct[0] <= 0 <= distinct[-1]:
                _warn_extrapolated(name, distinct, partners)
            frame[name] = values
            numeric.append(name)
    for name, values in computed.items():
        # A transformation stays numeric, as in R: its user chose numbers on purpose.
        if values.ndim == 1 and name in expanded.variables and np.all(values == values[0]):
            raise DesignError(f"{name} has the same value ({values[0]:g}) in every row, so it cannot explain "
                              "anything. Remove it from the formula or check its column(s).")
        partners = expanded.interacting(name)
        if values.ndim == 1 and partners and not values.min() <= 0 <= values.max():
            _warn_extrapolated(name, np.unique(values), partners)
        for col, j in zip(formula.transforms[name].columns, range(values.shape[-1] if values.ndim == 2 else 1)):
            frame[col] = values[:, j] if values.ndim == 2 else values
        numeric.append(name)
    sources = {s: design[s].to_numpy(dtype=float) for t in formula.transforms.values() for s in t.sources}
    for name in formula.grouping_variables:
        if design[name].nunique() < 2:
            raise DesignError(
                f"grouping factor {name!r} has a single level: random effects need at least two groups."
            )
    return ModelDesign(pd.DataFrame(frame), factors, default, formula, tuple(numeric), tuple(converted),
                       factor_codings(default, named, factors), sources)


def _and(names) -> str:
    names = [repr(n) for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _warn_two_valued(name, values, partners, coding):
    """Say so when coding ``name`` as a factor gives other numbers than the numeric column would."""
    low, high = (f"{v:g}" for v in values)
    if coding == "reference" and values[0] == 0:
        return  # 0/1: the factor's reference is 0, the same design as the number
    mains = f"main effect{'s' if len(partners) > 1 else ''} of {_and(partners)}"
    as_number = (f"the {mains} would be the effect{'s' if len(partners) > 1 else ''} at {name} = 0"
                 + ("" if values[0] <= 0 <= values[1] else ", a value that is not in the data"))
    now = (f"averaged over {name}'s two levels" if zero_sum(coding)
           else f"the effect at {name} = {low} (the reference level)")
    warnings.warn(
        f"{name!r} is numeric with two values ({low}, {high}) and interacts with {_and(partners)}, so it is "
        f"coded as a factor with levels {low}, {high} (sorted). As a number, {as_number}; as a factor the "
        f"{mains} {'are' if len(partners) > 1 else 'is'} {now}. "
        + (f"Another reference level: levels={{{name!r}: [{high}, {low}]}}. " if coding == "reference" else "")
        + "To keep it numeric, recode it centred on 0 (e.g. -0.5/0.5).", UserWarning, stacklevel=4)


def _warn_extrapolated(name, values, partners):
    warnings.warn(
        f"{name!r} is numeric (range {values[0]:g} .. {values[-1]:g}) and interacts with {_and(partners)}: "
        f"the main effect{'s' if len(partners) > 1 else ''} of {_and(partners)} {'are' if len(partners) > 1 else 'is'} "
        f"the effect at {name} = 0, outside the data. Centre it (subtract its mean) to test "
        f"{'them' if len(partners) > 1 else 'it'} at the mean of {name!r}.", UserWarning, stacklevel=4)
