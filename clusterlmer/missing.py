"""Rows with a missing value in a model variable: left out before the model is built, or refused.

lme4 fits with ``na.action = na.omit``: a row with ``NA`` in any variable of
the formula (fixed effects, random slopes, groupings) is dropped before the
model frame is built. clusterlmer does the same with ``na_action="omit"``
(the default), on a copy: the design rows and the matching rows of the
responses leave together, so levels, permutations and fits all see the
complete rows only, and the user's data are never changed. How many rows
left, and for which variables, is a warning and part of the fit's options
and summary. ``na_action="fail"`` refuses such data instead, naming the
columns and rows.

Missing means ``None``, ``NaN``, ``NaT`` or ``pd.NA`` (pandas' ``isna``).
Missing responses are another matter: a NaN response leaves that
observation out at that sample only (see :func:`clusterlmer.fit_timeseries`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ._checks import check_option, option_hint
from .data import _preview

__all__ = ["NA_ACTIONS", "MissingRows", "missing_rows"]

NA_ACTIONS = ("omit", "fail")


@dataclass(frozen=True)
class MissingRows:
    """The rows of a dataset that a fit leaves out for missing design values.

    Attributes
    ----------
    n_total : int
        Rows of the data as given.
    dropped : ndarray of int
        Indices of the rows left out (empty when every row is complete).
    by_column : dict of str to int
        Per model variable with missing values, how many rows miss it.
    action : str
        ``"omit"`` or ``"fail"``.
    """

    n_total: int
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    by_column: dict = field(default_factory=dict)
    action: str = "omit"

    @property
    def kept(self) -> np.ndarray:
        """Indices of the complete rows."""
        return np.setdiff1d(np.arange(self.n_total), self.dropped)

    def restrict(self, data):
        """``data`` without the dropped rows (a new :class:`TimeseriesData`; ``data`` itself unchanged).

        Data already restricted (``n_kept`` rows) are returned as they are.
        """
        if not len(self.dropped) or data.n_obs != self.n_total:
            return data
        keep = self.kept
        return replace(data, design=data.design.iloc[keep].reset_index(drop=True), values=data.values[keep])

    def note(self) -> str:
        """The warning (empty when no row is left out)."""
        if not len(self.dropped):
            return ""
        n = len(self.dropped)
        per = ", ".join(f"{c!r} {k}" for c, k in self.by_column.items())
        fail = option_hint("na_action='fail'", "--na-action fail")
        return (f"{n} of {self.n_total} rows have missing values in model variables (missing per variable: "
                f"{per}; rows {_preview(self.dropped, 6)}) and are left out, as lme4's na.omit leaves them out. "
                f"Pass {fail} to refuse such data instead.")

    def record(self) -> dict:
        """What the fit's options keep: the action, rows left out, and per variable."""
        return {"na_action": self.action, "rows_omitted": int(len(self.dropped)),
                "rows_omitted_by_variable": {k: int(v) for k, v in self.by_column.items()}}


def missing_rows(data, formula, na_action="omit") -> MissingRows:
    """Find the rows with a missing value in a variable of ``formula``.

    Parameters
    ----------
    data : TimeseriesData
    formula : clusterlmer.formula.ModelFormula
    na_action : {"omit", "fail"}

    Returns
    -------
    MissingRows

    Raises
    ------
    ValueError
        ``na_action="fail"`` and some rows miss values (naming the columns,
        counts and rows), or every row misses one.
    """
    check_option("na_action", na_action, NA_ACTIONS)
    design = data.design
    columns = [v for v in formula.variables if v in design.columns]  # absent ones are reported later
    by_column, missing = {}, np.zeros(len(design), dtype=bool)
    for name in columns:
        na = design[name].isna().to_numpy()
        if na.any():
            by_column[name] = int(na.sum())
            missing |= na
    dropped = np.flatnonzero(missing)
    if not len(dropped):
        return MissingRows(len(design), action=na_action)
    where = "; ".join(f"column {c!r}: {k} row(s) ({_preview(np.flatnonzero(design[c].isna().to_numpy()), 6)})"
                      for c, k in by_column.items())
    if na_action == "fail":
        omit = option_hint("na_action='omit'", "--na-action omit")
        raise ValueError(f"{len(dropped)} of {len(design)} rows have missing values in model variables ({where}). "
                         f"Fill them, drop those rows, or pass {omit} to leave them out as lme4 does.")
    if len(dropped) == len(design):
        raise ValueError(f"every row has a missing value in a model variable ({where}): nothing is left to fit.")
    return MissingRows(len(design), dropped, by_column, na_action)
