"""Long tables (one row per series and sample) as :class:`TimeseriesData`.

EEG exports are often long: one row per series (a subject x condition
average, one trial) and time sample, either with one column per electrode
(``Subject, Deviant, Time, Fz, Cz, ...``) or fully long with a channel column
and one value column (``Subject, Deviant, Time, electrode, amp``).
:func:`from_long` pivots such a table into the design (one row per series)
and the values array with index arithmetic on whole columns, never a loop
over rows; :func:`read_table` reads CSV and Parquet files for the command line.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd

from ._checks import option_hint
from .data import TimeseriesData, _preview, check_frame

__all__ = ["from_long", "read_table", "TIME_DECIMALS"]

#: Float times are rounded to this many decimals before they are matched.
TIME_DECIMALS = 9
_SHOWN = 3  # examples named in an error message


def _as_names(names, what):
    """``None``, one name or a list of names, as a list of str-keyed column names."""
    if names is None:
        return []
    if isinstance(names, str):
        return [names]
    if not isinstance(names, (list, tuple, pd.Index, np.ndarray)):
        raise TypeError(f"{what} must be a column name or a list of column names, got {type(names).__name__}.")
    return list(names)


def _series_label(design, cols, row) -> str:
    """One series as ``"Subject=s01, Deviant=1"``."""
    return ", ".join(f"{c}={design[c].iloc[row]}" for c in cols)


def _roles(df, time, values, value, channel, series, design):
    """Check the column arguments.

    Returns
    -------
    names, single, channel, series, identity
        The response columns; whether they are one response without a
        channel axis; the channel column (or None); the series columns; the
        columns identifying a series (the design columns, series included).
    """
    if values is not None and value is not None:
        raise ValueError("give values=[...] (one column per channel) or value='col' (one value column, with "
                         "channel='col' for a channel column), not both.")
    if values is None and value is None:
        raise ValueError("name the response: values=['Fz', 'Cz', ...] (one column per channel), or value='amp' "
                         "(one value column) with channel='electrode' when a column names the channels.")
    if value is not None and not isinstance(value, str):
        raise TypeError(f"value must be one column name, got {type(value).__name__}; several response columns "
                        "(one per channel) go in values=[...].")
    if values is not None and channel is not None:
        raise ValueError(f"channel={channel!r} names a column of channel names, which goes with value='col' (the "
                         "amplitudes); with values=[...] each listed column is a channel already.")
    names = _as_names(values if values is not None else value, "values")
    if not names:
        raise ValueError("values must name at least one column, e.g. values=['Fz', 'Cz'] or value='amp'.")
    if len(set(names)) != len(names):
        raise ValueError(f"values names some columns more than once: "
                         f"{_preview(sorted({n for n in names if names.count(n) > 1}))}.")
    series = _as_names(series, "series")
    explicit = design is not None
    design = _as_names(design, "design")
    roles = [("time", [time]), ("values" if value is None else "value", names),
             ("channel", [channel] if channel is not None else []), ("series", series), ("design", design)]
    missing = [(what, c) for what, cols in roles for c in cols if c not in df.columns]
    if missing:
        shown = ", ".join(f"{c!r} ({what})" for what, c in missing)
        raise ValueError(f"column(s) not in the table: {shown}. Available columns: {_preview(df.columns, 40)}.")
    for i, (what, cols) in enumerate(roles[:4]):
        for other, other_cols in roles[i + 1:]:
            both = [c for c in cols if c in other_cols and not (what == "series" and other == "design")]
            if both:
                raise ValueError(f"column {both[0]!r} is given both as {what} and as {other}; each column has "
                                 "one role.")
    special = {time, channel, *names}
    if explicit:
        design = design + [c for c in series if c not in design]
    else:
        design = [c for c in df.columns if c not in special]
    if not design:
        raise ValueError(f"the table has no design columns: every column is the time ({time!r}), a channel or a "
                         "value. Add the columns that describe each series (subject, condition, ...).")
    single = channel is None and len(names) == 1
    return names, single, channel, series, design


def _check_columns(df, time, names, channel):
    """Numeric response and time columns, complete time and channel columns."""
    bad = [c for c in names if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])]
    if bad:
        c = bad[0]
        example = df[c][pd.to_numeric(df[c], errors="coerce").isna() & df[c].notna()]
        seen = f" (e.g. {example.iloc[0]!r} in row {example.index[0]})" if len(example) else ""
        raise TypeError(f"value column(s) must be numeric; not numeric: {_preview(bad)}{seen}. Convert them "
                        "(pd.to_numeric(col, errors='coerce') makes unreadable entries NaN, which are left out).")
    column = df[time]
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        raise TypeError(f"the time column {time!r} must be numeric (dtype {column.dtype}); convert it to numbers "
                        "in your unit (e.g. seconds or ms).")
    for col, what in ((time, "time"), (channel, "channel")):
        if col is None:
            continue
        bad_rows = df[col].isna().to_numpy()
        if what == "time":
            bad_rows = bad_rows | ~np.isfinite(df[col].to_numpy(dtype=float, na_value=np.nan))
        if bad_rows.any():
            kind = "missing or non-finite" if what == "time" else "missing"
            raise ValueError(f"the {what} column {col!r} has {bad_rows.sum()} {kind} value(s) (rows "
                             f"{_preview(df.index[bad_rows], 6)}); every row needs its {what}: fill them or drop "
                             "those rows.")


def _time_codes(column, decimals):
    """Sorted unique times and each row's index into them."""
    if pd.api.types.is_integer_dtype(column):
        raw = column.to_numpy(dtype=np.int64)
    else:
        raw = column.to_numpy(dtype=float)
        if decimals is not None:
            raw = np.round(raw, decimals) + 0.0  # + 0.0 makes -0.0 (e.g. rounded -1e-12) equal to 0.0
    codes, uniques = pd.factorize(raw, sort=False)  # hashing, then sorting only the distinct times
    order = np.argsort(uniques, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return np.asarray(uniques)[order], rank[codes]


def _series_codes(df, identity):
    """Series code 0..S-1 per row (order of first appearance) from the identity columns, NaN a value too."""
    code = np.zeros(len(df), dtype=np.int64)
    for col in identity:
        part, levels = pd.factorize(df[col], use_na_sentinel=False)
        # Re-factorizing after each column keeps codes below n_rows, so the product cannot overflow.
        code = pd.factorize(code * max(len(levels), 1) + part, sort=False)[0]
    return code


def _repeated_error(df, rows, cell, sample_time, identity, time, channel, series, special, decimals):
    """ValueError for rows that share their series, time (and channel): what repeats and how to fix it.

    ``cell`` numbers each row's (series, channel, time) and ``sample_time``
    gives its time as matched (rounded); ``rows`` are the repeated rows.
    """
    frame = df.iloc[rows]
    groups = frame.groupby(cell[rows], sort=False)  # one group per repeated (series, channel, time)
    combos = frame.groupby(identity, sort=False, dropna=False)
    examples = []
    for _, (_, combo) in zip(range(_SHOWN), combos):
        first = combo[cell[combo.index] == cell[combo.index[0]]]
        at = f"{time}={sample_time[first.index[0]]:g}" + (f", {channel}={first[channel].iloc[0]}" if channel else "")
        n_cells = np.unique(cell[combo.index]).size
        more = f" and at {n_cells - 1} more sample(s)" if n_cells > 1 else ""
        examples.append(f"{_series_label(combo, identity, 0)} has {len(first)} rows at {at}{more}")
    message = (f"{combos.ngroups} combination(s) of the design columns ({', '.join(map(str, identity))}) occur "
               f"more than once at one time, so their rows cannot be told apart as series: {'; '.join(examples)}"
               f"{'; ...' if combos.ngroups > _SHOWN else ''}. ")
    if series:
        message += f"The series column(s) {_preview(series)} do not tell them apart either. "
    fix = option_hint("series='COL'", "--series COL")
    message += (f"Pass {fix} naming a column that tells them apart (e.g. a trial or session number), or add such a "
                "column to the table.")
    # Columns a design=[...] list left out may be the one that tells them apart.
    left_out = [c for c in df.columns if c not in identity and c not in special]
    differing = [c for c in left_out if groups[c].nunique(dropna=False).gt(1).any()]
    if differing:
        message += f" Columns left out of the design that differ between them: {_preview(differing)}."
    spread = (groups[time].max() - groups[time].min()).max()
    if decimals is not None and spread > 0:
        message += (f" Their times differ by up to {spread:.3g} before rounding to {decimals} decimals; if samples "
                    "are that close, pass time_decimals=None (exact times) or more decimals.")
    return ValueError(message)


def _check_constant(design, identity, series, present, time, times):
    """Refuse a design column that changes along one series (e.g. a per-sample index next to the time).

    Such a column splits every series into pieces at disjoint times. It is
    recognised when the other identity columns already tell the series
    apart at every time: all series sharing them, where there are several,
    never share a time.
    """
    for col in identity:
        if col in series:
            continue
        others = [c for c in identity if c != col]
        key = (design.groupby(others, sort=False, dropna=False).ngroup().to_numpy() if others
               else np.zeros(len(design), dtype=np.int64))
        sizes = np.bincount(key)
        several = sizes[key] > 1
        if not several.any():
            continue
        counts = np.zeros((sizes.size, present.shape[1]), dtype=np.int64)
        np.add.at(counts, key[several], present[several])
        if counts[sizes > 1].max(axis=1).max() > 1:
            continue  # some series differing only in this column share a time: it tells series apart
        first = int(np.flatnonzero(several)[0])
        members = np.flatnonzero(key == key[first])[:_SHOWN]
        seen = ", ".join(f"{design[col].iloc[m]} at {time}={times[present[m]][0]:g}" for m in members)
        where = _series_label(design, others, first) if others else "the only series"
        fix = option_hint(f"series={col!r}", f"--series {col}")
        leave_out = option_hint("design=[...] without it", "--design COL1,COL2,... without it")
        raise ValueError(f"design column {col!r} varies within a series: {where} has {seen}, ... Design columns "
                         f"must be constant within a series. If {col!r} changes with time (e.g. a sample index), "
                         f"leave it out of the design ({leave_out}, or drop the column); if it does tell series "
                         f"apart, pass {fix}.")


def from_long(df, *, time, values=None, value=None, channel=None, series=None, design=None,
              time_decimals=TIME_DECIMALS) -> TimeseriesData:
    """Build :class:`TimeseriesData` from a long table: one row per series and time sample.

    Parameters
    ----------
    df : pandas.DataFrame
        The table, e.g. ``Subject, Deviant, Time, Fz, Cz, ...`` or
        ``Subject, Deviant, Time, electrode, amp``.
    time : str
        The numeric column holding each row's sample time. ``data.times``
        are its sorted distinct values.
    values : str or list of str, optional
        Response columns, one per channel: ``values=["Fz", "Cz", "Pz"]``
        gives channels named like the columns, in the listed order. A
        single name (``values="amp"`` or ``["amp"]``) gives one response
        without a channel axis, named like :func:`clusterlmer.from_dataframe`
        names it (the formula's left-hand side must name it).
    value : str, optional
        The one column holding the responses (instead of ``values``). With
        ``channel``, channels x time data; without, one response named
        ``value``.
    channel : str, optional
        With ``value``: the column naming each row's channel. The channels
        are its distinct values as text, in order of first appearance in
        the table.
    series : str or list of str, optional
        Column(s) telling apart series that share all other design values
        (e.g. two trials of one subject and condition: ``series="trial"``).
        Added to the columns identifying a series, and kept in the design.
    design : list of str, optional
        The design columns. Default: every column that is not ``time``,
        ``values``/``value`` or ``channel``. Columns not listed (and not
        ``series``) are dropped and do not identify series.
    time_decimals : int or None
        Float times are rounded to this many decimals (default 9) before
        they are matched, so that rounding noise (``0.1 + 0.2`` and ``0.3``)
        does not make two samples; ``data.times`` holds the rounded values.
        ``None`` matches exact values. Integer times are always exact.

    Returns
    -------
    TimeseriesData
        One design row per series, in order of first appearance; values
        ``(n_series, n_channels, n_times)`` with channels (``response`` is
        None: the formula's left-hand side is a label, as for
        :func:`clusterlmer.from_mne`), else ``(n_series, n_times)`` with
        ``response`` the value column. A series (and channel) with no row at a
        time is NaN there, which leaves it out of that sample's fit; a
        ``UserWarning`` gives the number of such samples and names an
        incomplete series. NaN values in the table stay NaN, without warning.

    Raises
    ------
    ValueError
        An empty table; columns that are not in it (all named, with the
        available ones); a column given two roles; missing or non-finite
        times, missing channel names; one combination of the design (and
        series) columns with several rows at one time (and channel) -- the
        first few are named, with the fix ``series="col"``; a design column
        that varies within a series.
    TypeError
        Response or time columns that are not numeric.

    Examples
    --------
    >>> data = cl.from_long(df, time="Time", values=["Fz", "Cz", "Pz"])           # doctest: +SKIP
    >>> data = cl.from_long(df, time="Time", value="amp", channel="electrode")   # doctest: +SKIP
    >>> data = cl.from_long(trials, time="Time", value="amp", channel="electrode",
    ...                     series="trial")                                      # doctest: +SKIP
    """
    check_frame(df, "the table")
    names, single, channel, series, identity = _roles(df, time, values, value, channel, series, design)
    _check_columns(df, time, names, channel)
    df = df.reset_index(drop=True)

    times, t_code = _time_codes(df[time], time_decimals)
    s_code = _series_codes(df, identity)
    first_rows = pd.Series(s_code).drop_duplicates().index.to_numpy()  # codes run in order of first appearance
    n_series, n_times = first_rows.size, times.size
    if channel is not None:
        c_code, levels = pd.factorize(df[channel], sort=False)
        channels = tuple(str(level) for level in levels)
    else:
        c_code, channels = np.zeros(len(df), dtype=np.int64), None if single else tuple(map(str, names))
    # Fully long: one cell per (series, channel, time); channel columns: one row fills all channels of a time.
    per_row = 1 if channel is not None else len(names)
    n_cells = len(channels) if channel is not None else 1
    cell = (s_code * n_cells + c_code) * n_times + t_code
    repeated = pd.Series(cell).duplicated(keep=False).to_numpy()
    if repeated.any():
        raise _repeated_error(df, np.flatnonzero(repeated), cell, times[t_code], identity, time, channel, series,
                              {time, channel, *names}, time_decimals)

    design_table = df[identity].iloc[first_rows].reset_index(drop=True)
    present = np.zeros((n_series, n_times), dtype=bool)
    present[s_code, t_code] = True
    _check_constant(design_table, identity, series, present, time, times)

    grid = np.full((n_series * n_cells * n_times, per_row), np.nan)
    grid[cell] = df[names].to_numpy(dtype=float, na_value=np.nan)
    if channel is not None:
        values_array = grid.reshape(n_series, n_cells, n_times)
    elif single:
        values_array = grid.reshape(n_series, n_times)
    else:  # (series, time, channel) -> (series, channel, time)
        values_array = np.ascontiguousarray(grid.reshape(n_series, n_times, per_row).transpose(0, 2, 1))

    n_expected = n_series * n_cells * n_times
    if len(df) < n_expected:
        rows_per_series = np.bincount(s_code, minlength=n_series)
        short = np.flatnonzero(rows_per_series < n_cells * n_times)
        samples = "(series, channel, time)" if channel is not None else "(series, time)"
        warnings.warn(
            f"{n_expected - len(df)} of {n_expected} {samples} samples have no row in the table: they are NaN and "
            f"left out of those samples' fits. {short.size} of {n_series} series are incomplete, e.g. "
            f"{_series_label(design_table, identity, short[0])} ({rows_per_series[short[0]]} of "
            f"{n_cells * n_times} rows).", UserWarning, stacklevel=2)
    response = names[0] if single else None  # with channels the formula's left-hand side is a label
    return TimeseriesData(design=design_table, values=values_array, times=times, response=response,
                          channels=channels)


_PARQUET = (".parquet", ".pq")


def read_table(path) -> pd.DataFrame:
    """Read a CSV (``.csv``, ``.csv.gz``, ``.tsv``) or Parquet (``.parquet``, ``.pq``) table with pandas.

    Raises
    ------
    FileNotFoundError
        No such file.
    ImportError
        A Parquet file without pyarrow (or fastparquet) installed.
    ValueError
        Another file type, or a file pandas cannot parse.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such data file: {path!r}")
    lower = path.lower()
    if lower.endswith(_PARQUET):
        import importlib.util

        if not any(importlib.util.find_spec(m) for m in ("pyarrow", "fastparquet")):
            raise ImportError(f"reading the Parquet file {path!r} needs pyarrow, which is not installed: "
                              "pip install pyarrow (or save the table as CSV).")
        return pd.read_parquet(path)
    if lower.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt")):
        try:
            return pd.read_csv(path, sep="\t" if ".tsv" in lower else ",")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ValueError(f"could not read {path!r} as a table: {err}") from None
    raise ValueError(f"{path!r}: a long table must be a .csv, .csv.gz, .tsv or .parquet file.")
