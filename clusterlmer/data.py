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


def check_frame(df, what):
    """Require a DataFrame with rows and unique column names; ``what`` names it in the messages."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}.")
    if len(df) == 0:
        raise ValueError(f"{what} has no rows: there is nothing to fit.")
    dup = df.columns[df.columns.duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"{what} has duplicated column names: {_preview(dup)}. Rename them so each column is "
                         "unique.")


def group_codes(frame, cols) -> np.ndarray:
    """Group code 0..G-1 (order of first appearance) of rows sharing ``cols``."""
    return frame.groupby(list(cols), sort=False).ngroup().to_numpy()


def group_label(frame, cols, row) -> str:
    """The group of row ``row`` as its values of ``cols`` joined by ``":"`` (e.g. ``"s01:ch3"``)."""
    return ":".join(str(frame[c].iloc[row]) for c in cols)


@dataclass(frozen=True, eq=False)
class TimeseriesData:
    """Observations with their design and one response value per sample (time, or channel x time, ...).

    Attributes
    ----------
    design : pandas.DataFrame
        One row per observation (e.g. ``sid``, ``ch``, ``hit_miss``, ``region``).
    values : numpy.ndarray
        Responses, shape ``(n_obs, n_times)`` or ``(n_obs, n_times, n_freqs)``;
        with ``channels``, ``(n_obs, n_channels, n_times[, n_freqs])``.
        Non-finite values mark observations left out at that sample.
    times : numpy.ndarray
        Sample times in the user's unit, length ``n_times``.
    freqs : numpy.ndarray or None
        Frequencies, when the values have a frequency axis.
    response : str or None
        Name of the variable or column the values came from
        (:func:`clusterlmer.load_mat`'s ``data_key``, or the single column of
        :func:`clusterlmer.from_dataframe`); the formula's left-hand side
        must then name it. ``None`` (wide tables, simulated data): the
        left-hand side is only a label.
    channels : tuple of str or None
        Channel names, when the values have a channel axis (first after the
        observations). Every channel is fitted with the same model, sample
        by sample; clusters then follow a channel adjacency.
    info : mne.Info or None
        The channels' MNE measurement info (names, types, positions) when the
        data came from MNE: it gives the adjacency and topographic maps.
    """

    design: pd.DataFrame
    values: np.ndarray
    times: np.ndarray
    freqs: np.ndarray | None = None
    response: str | None = None
    channels: tuple | None = None
    info: object = None

    def __post_init__(self):
        if not isinstance(self.design, pd.DataFrame):
            raise TypeError(f"design must be a pandas DataFrame, got {type(self.design).__name__}.")
        values = np.asarray(self.values)
        if self.channels is not None:
            channels = tuple(str(c) for c in self.channels)
            if values.ndim not in (3, 4):
                raise ValueError(f"with channels, values must have shape (n_obs, n_channels, n_times) or "
                                 f"(n_obs, n_channels, n_times, n_freqs), got shape {values.shape}.")
            if values.shape[1] != len(channels):
                raise ValueError(f"values has {values.shape[1]} channels (axis 1) but {len(channels)} channel names "
                                 "were given: give one name per channel, in the values' order.")
            dup = sorted({c for c in channels if channels.count(c) > 1})
            if dup:
                raise ValueError(f"channel names must be unique; repeated: {_preview(dup)}.")
            object.__setattr__(self, "channels", channels)
            lead = 1
        elif values.ndim not in (2, 3):
            raise ValueError(
                f"values must have shape (n_obs, n_times) or (n_obs, n_times, n_freqs), got shape {values.shape}; "
                "for channels x time give channels=[...] with values (n_obs, n_channels, n_times)."
            )
        else:
            lead = 0
        if values.shape[0] != len(self.design):
            raise ValueError(
                f"values has {values.shape[0]} rows but the design has {len(self.design)}: "
                "there must be one row of values per design row."
            )
        times = np.asarray(self.times)
        n_times = values.shape[1 + lead]
        if times.shape != (n_times,):
            raise ValueError(f"times must have length {n_times} (one per sample), got shape {times.shape}.")
        if values.ndim == 3 + lead:
            n_freqs = values.shape[2 + lead]
            freqs = np.arange(n_freqs) if self.freqs is None else np.asarray(self.freqs)
            if freqs.shape != (n_freqs,):
                raise ValueError(f"freqs must have length {n_freqs}, got shape {freqs.shape}.")
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
        return self.values.shape[2 if self.channels is not None else 1]

    @property
    def n_channels(self) -> int:
        """Number of channels (1 without a channel axis)."""
        return 1 if self.channels is None else len(self.channels)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one observation's values: ``([n_channels,] n_times[, n_freqs])``."""
        return self.values.shape[1:]

    @property
    def sample_axes(self) -> tuple[str, ...]:
        """Names of the sample axes: ``("time",)``, ``("time", "freq")``, ``("channel", "time"[, "freq"])``."""
        return sample_axes(self.channels is not None, self.freqs is not None)

    def __repr__(self) -> str:
        shape = " x ".join(str(s) for s in self.values.shape)
        return f"<TimeseriesData | {shape} values, design columns: {_preview(self.design.columns)}>"


def sample_axes(has_channels, has_freqs) -> tuple:
    """The sample axes' names for data with or without a channel and a frequency axis."""
    return (("channel",) if has_channels else ()) + ("time",) + (("freq",) if has_freqs else ())


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
    check_frame(df, "df")
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
