"""The data container (one design row per observation, one response per timepoint) and its design table.

Besides :class:`TimeseriesData`, this module owns the small questions asked
of a design table by several stages: are these columns there and complete,
which rows share a group of columns, and how a group is named in messages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["TimeseriesData", "from_dataframe"]


def _preview(names, limit=12):
    names = [str(n) for n in names]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_columns(frame, names, what):
    """Require columns to exist in ``frame`` and to have no missing values.

    Parameters
    ----------
    frame : pandas.DataFrame
    names : list of str
    what : str
        What the columns are, to start the message (e.g. ``"grouping column(s)"``).

    Raises
    ------
    ValueError
        Naming the absent columns and the available ones, or the first
        column with missing values and their rows.
    """
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} {_preview(map(repr, missing))} {'is' if len(missing) == 1 else 'are'} not in the "
                         f"design. Available columns: {_preview(frame.columns)}.")
    for c in names:
        na = frame[c].isna().to_numpy()
        if na.any():
            raise ValueError(f"column {c!r} has {na.sum()} missing value(s) (rows "
                             f"{_preview(np.flatnonzero(na), 6)}); fill them or drop those rows.")


def group_codes(frame, cols) -> np.ndarray:
    """Group code 0..G-1 (order of first appearance) of rows sharing ``cols``."""
    return frame.groupby(list(cols), sort=False).ngroup().to_numpy()


def group_label(frame, cols, row) -> str:
    """The group of row ``row`` as its values of ``cols`` joined by ``":"`` (e.g. ``"s01:ch3"``)."""
    return ":".join(str(frame[c].iloc[row]) for c in cols)


@dataclass(frozen=True, eq=False)
class TimeseriesData:
    """Observations with their design and one response value per timepoint.

    Attributes
    ----------
    design : pandas.DataFrame
        One row per observation (e.g. ``sid``, ``ch``, ``hit_miss``, ``region``).
    values : numpy.ndarray
        Responses, shape ``(n_obs, n_times)`` or ``(n_obs, n_times, n_freqs)``.
        Non-finite values mark observations left out at that sample.
    times : numpy.ndarray
        Sample times in the user's unit, length ``n_times``.
    freqs : numpy.ndarray or None
        Frequencies for 3-D values.
    response : str or None
        Name of the variable or column the values came from
        (:func:`clusterlmer.load_mat`'s ``data_key``, or the single column of
        :func:`clusterlmer.from_dataframe`); the formula's left-hand side
        must then name it. ``None`` (wide tables, simulated data): the
        left-hand side is only a label.
    """

    design: pd.DataFrame
    values: np.ndarray
    times: np.ndarray
    freqs: np.ndarray | None = None
    response: str | None = None

    def __post_init__(self):
        if not isinstance(self.design, pd.DataFrame):
            raise TypeError(f"design must be a pandas DataFrame, got {type(self.design).__name__}.")
        values = np.asarray(self.values)
        if values.ndim not in (2, 3):
            raise ValueError(
                f"values must have shape (n_obs, n_times) or (n_obs, n_times, n_freqs), got shape {values.shape}."
            )
        if values.shape[0] != len(self.design):
            raise ValueError(
                f"values has {values.shape[0]} rows but the design has {len(self.design)}: "
                "there must be one row of values per design row."
            )
        times = np.asarray(self.times)
        if times.shape != (values.shape[1],):
            raise ValueError(f"times must have length {values.shape[1]} (one per sample), got shape {times.shape}.")
        if values.ndim == 3:
            freqs = np.arange(values.shape[2]) if self.freqs is None else np.asarray(self.freqs)
            if freqs.shape != (values.shape[2],):
                raise ValueError(f"freqs must have length {values.shape[2]}, got shape {freqs.shape}.")
            object.__setattr__(self, "freqs", freqs)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "times", times)

    @property
    def n_obs(self) -> int:
        """Number of observations (rows)."""
        return self.values.shape[0]

    @property
    def n_times(self) -> int:
        """Number of timepoints."""
        return self.values.shape[1]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one observation's values: ``(n_times,)`` or ``(n_times, n_freqs)``."""
        return self.values.shape[1:]

    def __repr__(self) -> str:
        shape = " x ".join(str(s) for s in self.values.shape)
        return f"<TimeseriesData | {shape} values, design columns: {_preview(self.design.columns)}>"


def check_response(data, response):
    """Refuse a formula whose response is not the variable the data were loaded from.

    Without this, ``power ~ ...`` on values loaded from ``data`` would fit
    ``data`` and report it as ``power``.

    Parameters
    ----------
    data : TimeseriesData
    response : str
        The formula's left-hand side.

    Raises
    ------
    ValueError
        ``data.response`` is known and differs from ``response``.
    """
    if data.response is None or response == data.response:
        return
    raise ValueError(
        f"the formula's response {response!r} is not the data's: the values were loaded from {data.response!r}. "
        f"Write the formula as '{data.response} ~ ...', or load {response!r} as the responses "
        f"(cl.load_mat(path, data_key={response!r}), or cl.from_dataframe(df, values={response!r}) for a column)."
    )


def from_dataframe(df, values, *, times=None) -> TimeseriesData:
    """Build :class:`TimeseriesData` from a pandas DataFrame.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per observation. Columns not named in ``values`` form the design.
    values : str or list of str
        A list names one column per timepoint (wide layout); a single name
        makes a one-timepoint dataset whose response is that column.
    times : array-like, optional
        Sample times in your unit; defaults to ``0 .. n_times - 1``.

    Returns
    -------
    TimeseriesData
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}.")
    if len(df) == 0:
        raise ValueError("df has no rows: there is nothing to fit.")
    dup = df.columns[df.columns.duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"df has duplicated column names: {_preview(dup)}. Rename them so each column is unique.")
    single = isinstance(values, str)
    if not single and values is not None and not isinstance(values, (list, tuple, pd.Index, np.ndarray)):
        raise TypeError(
            f"values must be a column name or a list of column names, got {type(values).__name__}."
        )
    names = [values] if single else list(values) if values is not None else []
    if not names:
        raise ValueError("values must name at least one response column, e.g. values='y' or values=['t0', 't1', ...].")
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise ValueError(
            f"values names columns that are not in df: {_preview(missing)}. Available columns: {_preview(df.columns)}."
        )
    if len(set(names)) != len(names):
        raise ValueError("values names some columns more than once.")
    non_numeric = [c for c in names if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])]
    if non_numeric:
        raise TypeError(
            f"response columns must be numeric; not numeric: {_preview(non_numeric)}. "
            "Convert them (e.g. pd.to_numeric) or leave them out of values."
        )
    design = df.drop(columns=names).reset_index(drop=True)
    if design.shape[1] == 0:
        raise ValueError("df has no design columns left once the response columns are removed.")
    arr = df[names].to_numpy(dtype=float)
    if times is None:
        times = np.arange(arr.shape[1], dtype=float)
    return TimeseriesData(design=design, values=arr, times=np.asarray(times), response=values if single else None)
