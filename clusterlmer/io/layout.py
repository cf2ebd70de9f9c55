"""The original analysis's layout of a ``.mat`` file, checked and assembled into :class:`TimeseriesData`.

The layout: cellstr ``sid`` and ``ch``, double ``hit_miss`` (0/1), optional
cellstr ``region``, and ``data`` (rows x time, or rows x time x freq) with
optional ``times``/``freqs`` axes. This module owns what those names mean:
which variables are labels (checked strictly: one entry per row, no gaps),
which is the response, the messages for transposed or mismatched data, and
the row rules -- no copied rows, and, by default, one row per ``hit_miss``
level in every channel (the layout the within-channel permutations assume;
trial-level files are recognised and pointed to ``check_channels=False``).
Decoding the file itself is :mod:`clusterlmer.io.read`'s job.
"""

from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np
import pandas as pd

from .._checks import in_cli, option_hint
from ..data import TimeseriesData, _preview, check_columns, group_codes, group_label
from ..design import _label_text
from .read import CLASS_HINTS, NUMERIC_CLASSES, MatFileError, NotColumn, Opaque, as_column, read_variables

__all__ = ["load_mat", "check_one_row_per_level"]

#: Labels of the original layout: checked strictly (length, missing entries).
_LABELS = ("sid", "ch", "hit_miss", "region")
#: A file with all of these is in the original layout: its channels are checked (``check_channels``).
_ROW_KEY = ("sid", "ch", "hit_miss")


def load_mat(path, *, data_key="data", times=None, times_key="times", freqs=None, freqs_key="freqs",
             check_channels=True) -> TimeseriesData:
    """Load a MATLAB ``.mat`` file in the original analysis's layout as :class:`TimeseriesData`.

    Parameters
    ----------
    path : str or path-like
        A MATLAB v7.3 (HDF5) or v4/v5/v7 ``.mat`` file.
    data_key : str
        Variable holding the responses: rows x timepoints, or rows x
        timepoints x frequencies. NaN/Inf are kept (clusterlmer leaves such
        rows out of that sample's fit). It is recorded as ``data.response``,
        and a formula must name it on its left-hand side (``power ~ ...``
        needs ``data_key="power"``), so that a file holding several
        response variables is never analysed under another one's name.
    times : array-like, optional
        Sample times, used when the file has no ``times_key`` variable of the
        right length. Defaults to ``0 .. n_times - 1``.
    times_key : str or None
        Variable holding the sample times; ``None`` to ignore any.
    freqs : array-like, optional
        Frequencies of 3-D data, used when the file has no ``freqs_key``
        variable of the right length. Defaults to ``0 .. n_freqs - 1``.
    freqs_key : str or None
        Variable holding the frequencies; ``None`` to ignore any.
    check_channels : bool
        When the file has ``sid``, ``ch`` and ``hit_miss``, require the
        original's layout: every channel (``sid`` + ``ch``) has exactly one
        row per ``hit_miss`` level. Pass ``False`` for data with several rows
        per channel and condition (e.g. single trials; CLI:
        ``--no-check-channels``): within-channel permutations then shuffle
        ``hit_miss`` among each channel's rows.

    Returns
    -------
    TimeseriesData
        ``design`` holds every variable with exactly one value per row of
        ``data``, in file order with ``sid`` and ``ch`` first: cellstr and char
        matrices as text (rows kept in file order, so level order follows
        first appearance as in MATLAB), numeric and logical vectors as float.
        Variables of other shapes are ignored.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    MatFileError
        A subclass of ``ValueError``: not a MAT file, a damaged file, no
        ``data_key`` variable, labels whose length differs from the rows of
        ``data`` (including transposed data), labels with missing entries,
        copied rows (the same ``sid``, ``ch``, ``hit_miss``, ``region`` and
        the same data; refused whatever ``check_channels``), or, with
        ``check_channels``, channels without one row per ``hit_miss`` level.
    TypeError
        ``data`` is not a real numeric array.

    Notes
    -----
    ``sid``, ``ch``, ``hit_miss`` and ``region`` are the original's labels: when
    present they must have one entry per row and no missing entries (empty
    text or NaN). Other columns may have gaps; fitting rejects them only if
    the formula uses them.
    """
    path = os.fspath(path)
    notes = []
    data = read_variables(
        path, lambda variables: _assemble(path, variables, data_key, times, times_key, freqs, freqs_key, notes)
    )
    if check_channels and all(c in data.design for c in _ROW_KEY):
        _check_layout(path, data.design)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return data


def _assemble(path, variables, data_key, times, times_key, freqs, freqs_key, notes):
    by_name = {v.name: v for v in variables}
    if data_key not in by_name:
        found = _preview([f"{v.name} ({v.describe()})" for v in variables]) if variables else "none"
        candidates = [v.name for v in variables if v.mclass in NUMERIC_CLASSES and v.length is None]
        name = candidates[0] if candidates else "<name>"
        fix = (f"Name the variable holding the responses on the formula's left-hand side, e.g. '{name} ~ ...'"
               if in_cli() else f"Pass data_key={name!r} to load another variable as the responses")
        raise MatFileError(f"{path!r} has no variable {data_key!r}. Variables in the file: {found}. {fix}.")
    values = _data_values(by_name[data_key])
    n_rows = values.shape[0]

    labels = {}
    for name in _LABELS:
        if name in by_name and name != data_key:
            var = by_name[name]
            length = _label_length(var)
            if length is None:
                raise MatFileError(
                    f"label {name!r} must be a cellstr or numeric vector with one entry per row of "
                    f"{data_key!r}, but {_label_reason(var)}."
                )
            labels[name] = length
    if len(set(labels.values())) > 1:
        sizes = ", ".join(f"{k} has {v}" for k, v in labels.items())
        raise MatFileError(f"the labels disagree in length ({sizes}); each needs one entry per row of {data_key!r}.")
    if labels:
        n_labels = next(iter(labels.values()))
        if n_labels != n_rows:
            raise MatFileError(_mismatch_message(data_key, values.shape, labels, n_labels))

    skip = {data_key, times_key, freqs_key}
    columns = {}
    for var in variables:
        if var.name in skip:
            continue
        try:
            columns[var.name] = as_column(var, n_rows)
        except NotColumn as why:
            if var.name in labels:
                raise MatFileError(
                    f"label {var.name!r} must be a cellstr or numeric vector with one entry per row "
                    f"of {data_key!r}, but {why}."
                ) from None
    if not columns:
        raise MatFileError(
            f"no variable in {path!r} has one value per row of {data_key!r} ({n_rows} rows), so there "
            "are no labels to fit. Save sid, ch and hit_miss (one entry per row) with the data."
        )
    order = [c for c in ("sid", "ch") if c in columns] + [c for c in columns if c not in ("sid", "ch")]
    design = pd.DataFrame({c: _series(columns[c]) for c in order})
    for name in labels:
        _check_missing(design, name)
    _check_duplicates(design, values)

    times = _axis(by_name.get(times_key) if times_key else None, times, values.shape[1], "times", notes)
    freq_axis = None
    if values.ndim == 3:
        freq_axis = _axis(by_name.get(freqs_key) if freqs_key else None, freqs, values.shape[2], "freqs", notes)
    return TimeseriesData(design=design, values=values, times=times, freqs=freq_axis, response=data_key)


def _data_values(var):
    name = var.name
    if var.mclass == "logical":
        raise TypeError(f"{name!r} is logical; responses must be numeric. Convert it with double({name}) in MATLAB.")
    if var.mclass not in NUMERIC_CLASSES:
        what = {"cell": "a cell array", "char": "text (char)"}.get(var.mclass, f"a MATLAB {var.mclass}")
        hint = f" ({CLASS_HINTS[var.mclass]})" if var.mclass in ("sparse",) else ""
        raise TypeError(
            f"{name!r} must be a numeric array (rows x timepoints), but it is {what}{hint}. "
            f"If it is a cell of equal-length rows, use cell2mat({name}) in MATLAB and save again."
        )
    value = var.get()
    if isinstance(value, Opaque) or not isinstance(value, np.ndarray) or value.dtype.kind not in "biufc":
        raise TypeError(f"{name!r} must be a numeric array (rows x timepoints), but it could not be read as one.")
    if np.iscomplexobj(value):
        raise TypeError(f"{name!r} is complex; take abs(), real() or angle() first, then save again.")
    if value.size == 0:
        raise MatFileError(f"{name!r} is empty ({' x '.join(map(str, value.shape))}): there is nothing to fit.")
    if value.ndim > 3:
        raise MatFileError(
            f"{name!r} has {value.ndim} dimensions ({' x '.join(map(str, value.shape))}); expected rows x "
            "timepoints or rows x timepoints x frequencies."
        )
    # Axes came back reversed from HDF5; a C-ordered copy keeps per-sample slicing fast.
    return np.ascontiguousarray(value, dtype=float)


def _label_reason(var):
    if var.mclass in CLASS_HINTS:
        return CLASS_HINTS[var.mclass]
    if var.mclass not in NUMERIC_CLASSES | {"logical", "char", "cell"}:
        return f"it is a MATLAB {var.mclass}"
    if 0 in var.dims:
        return "it is empty"
    return f"it is {var.describe()}"


def _label_length(var):
    if var.mclass == "char":
        return var.dims[0] if len(var.dims) == 2 and 0 not in var.dims else None
    if var.mclass in CLASS_HINTS or var.mclass not in NUMERIC_CLASSES | {"logical", "cell"} or 0 in var.dims:
        return None
    return var.length


def _mismatch_message(data_key, shape, labels, n):
    dims = " x ".join(map(str, shape))
    names = ", ".join(labels)
    if len(shape) >= 2 and shape[1] == n:
        fix = (
            f"{data_key}.' in MATLAB, or {data_key}.T in Python"
            if len(shape) == 2
            else f"permute({data_key}, [2 1 3]) in MATLAB"
        )
        return (
            f"{data_key!r} is {dims} but the labels ({names}) have {n} entries: its columns, not its rows, "
            f"match the labels, so it looks transposed. Rows must be observations; transpose it ({fix}) "
            "and save again."
        )
    return (
        f"{data_key!r} has {shape[0]} rows ({dims}) but the labels ({names}) have {n} entries; "
        "there must be one label entry per row of data."
    )


def _series(column):
    if isinstance(column, np.ndarray):
        return pd.Series(column, dtype=float)
    # Let pandas pick its text dtype (object, or "str" in pandas 3), as from_dataframe does.
    return pd.Series(column)


def _rows_text(rows):
    rows = list(rows)
    return f"{_preview(rows, 6)} (0-based; {_preview([r + 1 for r in rows], 6)} in MATLAB)"


def _check_missing(design, name):
    missing = design[name].isna().to_numpy()
    if missing.any():
        rows = np.flatnonzero(missing)
        raise MatFileError(
            f"label {name!r} has {missing.sum()} missing entr{'y' if missing.sum() == 1 else 'ies'} "
            f"(empty text or NaN) at rows {_rows_text(rows)}. Every row needs a {name}; fill them or "
            "drop those rows (and the matching rows of data) before saving."
        )


def _check_duplicates(design, values):
    """Refuse rows that repeat another row's labels and its data: a row saved twice counts twice.

    Rows sharing labels but not data are single trials; whether those are
    allowed is ``check_channels``'s business. Rows without a finite value
    carry no data and are not compared.
    """
    key = [c for c in _LABELS if c in design] or list(design.columns)
    flat = np.ascontiguousarray(values.reshape(len(values), -1))
    usable = np.isfinite(flat).any(axis=1)
    digests = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]
    frame = design[key].assign(_data=digests)[usable]
    dup = frame.duplicated(keep=False).to_numpy()
    if not dup.any():
        return
    first = frame.index[frame.duplicated(keep="first").to_numpy()][0]
    same = frame.eq(frame.loc[first]).all(axis=1)
    rows = frame.index[same.to_numpy()].to_numpy()
    shown = ", ".join(f"{k}={t}" for k, t in zip(key, _label_text(design.loc[first, key])))
    raise MatFileError(
        f"rows {_rows_text(rows)} repeat the same labels ({shown}) and the same data; {int(dup.sum())} rows in all "
        "are copies of another row. A copied row would count twice in every fit: remove the repeated rows."
    )


def _check_layout(path, design):
    """One row per channel and hit_miss level, or a message on how to load other layouts."""
    flag = option_hint("check_channels=False", "--no-check-channels")
    channels = group_codes(design, ("sid", "ch"))
    counts = pd.crosstab(channels, np.array(_label_text(design["hit_miss"])))
    several = (counts.to_numpy() > 1).any(axis=1)
    if (counts.to_numpy() >= 1).all() and several.any():
        first = int(np.flatnonzero(channels == counts.index[np.flatnonzero(several)[0]])[0])
        held = ", ".join(f"{n} with hit_miss = {level}" for level, n in counts.iloc[np.flatnonzero(several)[0]].items())
        raise MatFileError(
            f"{path!r}: {int(several.sum())} of {len(counts)} channels have several rows per hit_miss level "
            f"(e.g. {design['sid'].iloc[first]}:{design['ch'].iloc[first]}: {held}): single trials? By default "
            f"each channel (sid, ch) must have one row per level, as in the original's layout. Load trial-level "
            f"data with {flag}; the permutations then shuffle hit_miss among each channel's rows."
        )
    try:
        check_one_row_per_level(design, "hit_miss", ("sid", "ch"))
    except ValueError as exc:
        raise MatFileError(f"{path!r}: {exc} (To load data with several rows per channel and condition, e.g. "
                           f"single trials, pass {flag}.)") from None


def _axis(var, given, n, name, notes):
    """Sample axis from the file's variable, else the argument, else 0..n-1."""
    if var is not None:
        value = None
        if var.mclass in NUMERIC_CLASSES and var.length == n:
            value = var.get()
        if isinstance(value, np.ndarray) and not np.iscomplexobj(value):
            value = np.asarray(value, dtype=float).ravel()
            if given is not None and not (
                np.shape(given) == value.shape and np.allclose(np.asarray(given, dtype=float), value)
            ):
                notes.append(f"the file's {var.name!r} variable differs from the {name}= argument; the file's values are used.")
            return value
        fallback = "the " + name + "= argument" if given is not None else f"0 .. {n - 1}"
        notes.append(
            f"the file's {var.name!r} variable ({var.describe()}) is not a numeric vector of length {n}; "
            f"using {fallback} instead."
        )
    if given is not None:
        return np.asarray(given)
    return np.arange(n, dtype=float)


def check_one_row_per_level(design, variable, channel_columns=("sid", "ch")):
    """Require exactly one row per level of ``variable`` in every channel.

    The original layout has one hit and one miss row per channel; a channel
    with a missing or repeated condition would make within-channel swaps
    unequal. A level that only a minority of channels hold (e.g. one row of
    ``hit_miss = 2``) is reported with those channels and rows.

    Parameters
    ----------
    design : pandas.DataFrame or TimeseriesData
    variable : str
        A within-channel condition, e.g. ``"hit_miss"``.
    channel_columns : tuple of str
        Columns that together identify a channel.

    Raises
    ------
    ValueError
        Naming the first offending channels and what they hold.
    """
    if isinstance(design, TimeseriesData):
        design = design.design
    channel_columns = (channel_columns,) if isinstance(channel_columns, str) else tuple(channel_columns)
    check_columns(design, [*channel_columns, variable], "column(s)")
    texts = pd.Series(_label_text(design[variable]), index=design.index)
    levels = list(dict.fromkeys(texts))
    if len(levels) < 2:
        raise ValueError(f"{variable!r} has a single level ({levels[0]!r}); each channel needs one row per "
                         f"level of {variable!r}, so the data must hold at least two levels.")
    codes = group_codes(design, channel_columns)
    counts = pd.crosstab(codes, texts.to_numpy())[levels]  # channels x levels, in first-appearance order
    n_channels = len(counts)
    # A level found in a minority of channels is the odd one out (e.g. one row of hit_miss = 2), not a
    # level all the other channels lack: the channels holding it are the ones to name.
    common = [lev for lev in levels if 2 * int((counts[lev] > 0).sum()) >= n_channels]
    expected = common if len(common) >= 2 else levels
    stray = [lev for lev in levels if lev not in expected]
    bad = (counts[expected] != 1).any(axis=1) | (counts[stray] > 0).any(axis=1)
    if not bad.any():
        return
    first = np.unique(codes, return_index=True)[1]

    def rows_of(mask):
        rows = np.flatnonzero(mask)
        return f"0-based row{'s' if len(rows) > 1 else ''} {_preview(rows, 6)}"

    shown = []
    for lev in stray:
        holders = counts.index[(counts[lev] > 0).to_numpy()]
        names = _preview([group_label(design, channel_columns, first[c]) for c in holders], 5)
        shown.append(f"{variable} = {lev} occurs only in channel{'s' if len(holders) > 1 else ''} {names} "
                     f"({rows_of(texts.to_numpy() == lev)})")
    uneven = counts.index[(counts[expected] != 1).any(axis=1).to_numpy()]
    for code in uneven[:5]:
        held = texts.iloc[np.flatnonzero(codes == code)].tolist()
        shown.append(f"{group_label(design, channel_columns, first[code])} has {len(held)} row(s) "
                     f"({', '.join(held)})")
    more = f", ... ({len(uneven)} channels in all)" if len(uneven) > 5 else ""
    raise ValueError(
        f"each channel needs one row per level of {variable!r} (one row each for {', '.join(expected)}"
        f"{', i.e. one hit and one miss row' if variable == 'hit_miss' else ''}); {int(bad.sum())} of {n_channels} "
        f"channels do not: {'; '.join(shown)}{more}. Drop or fix those rows."
    )
