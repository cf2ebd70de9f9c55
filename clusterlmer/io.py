"""Read the original analysis's MATLAB ``.mat`` layout into :class:`TimeseriesData`; write MAT files.

The layout: cellstr ``sid`` and ``ch``, double
``hit_miss`` (0/1), optional cellstr ``region`` and ``data`` (rows x time,
or rows x time x freq). Files come in two formats:

* MATLAB v7.3: an HDF5 file behind a 512-byte MATLAB header. Arrays are
  stored column-major, so h5py sees every axis reversed; a cell array is a
  dataset of object references into the ``#refs#`` group; text is ``uint16``
  UTF-16 code units with ``MATLAB_class = "char"``.
* MATLAB v4/v5/v7: the classic MAT format, read with :func:`scipy.io.loadmat`.

Both readers turn variables into the same plain form (numeric arrays in
MATLAB's dimension order, char as an array of row strings, cell as an object
array) so the checks and the design are built once.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from ._checks import in_cli, option_hint
from .data import TimeseriesData, _preview
from .design import _label_text
from .permute import check_one_row_per_level

# h5py and scipy.io are imported inside the functions that use them, so that
# ``import clusterlmer`` stays quick.

__all__ = ["load_mat", "MatFileError"]

#: Labels of the original layout: checked strictly (length, missing entries).
_LABELS = ("sid", "ch", "hit_miss", "region")
#: Rows must be unique on these (plus region when present).
_ROW_KEY = ("sid", "ch", "hit_miss")

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_NUMERIC_CLASSES = {
    "double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
}
# MCOS objects (string, categorical, datetime, table, ...) are opaque outside MATLAB.
_HINTS = {
    "string": "it is a MATLAB string array; convert it with cellstr(x) in MATLAB and save again",
    "categorical": "it is a MATLAB categorical array; convert it with cellstr(x) in MATLAB and save again",
    "struct": "it is a MATLAB struct",
    "sparse": "it is a sparse matrix; convert it with full(x) in MATLAB and save again",
}


class MatFileError(ValueError):
    """The file is not a readable MAT file, or its variables do not form a dataset."""


# --------------------------------------------------------------------------- reading


@dataclass
class _Var:
    """One MAT-file variable, decoded on demand.

    ``mclass`` is MATLAB's class name; ``dims`` MATLAB's dimensions (at least
    two); ``get()`` returns the value in the shared plain form.
    """

    name: str
    mclass: str
    dims: tuple
    get: Callable


class _NotColumn(Exception):
    """A variable cannot be a design column (the message says why)."""


def _describe(var) -> str:
    return f"{' x '.join(str(d) for d in var.dims)} {var.mclass}"


# ---- v7.3 (HDF5)


def _h5_attr_text(obj, name):
    value = obj.attrs.get(name)
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else b""
    return value.decode("ascii", "replace") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _h5_class(obj) -> str:
    import h5py

    mclass = _h5_attr_text(obj, "MATLAB_class")
    if isinstance(obj, h5py.Group):
        if "MATLAB_sparse" in obj.attrs:
            return "sparse"
        return mclass or "struct"
    if mclass:
        return mclass
    # Files without MATLAB attributes: infer the class from the storage type.
    if obj.dtype == h5py.ref_dtype:
        return "cell"
    if obj.dtype.kind in "fiu":
        return {"f4": "single", "f8": "double"}.get(obj.dtype.str[1:], obj.dtype.name)
    return obj.dtype.name


def _h5_is_empty(obj) -> bool:
    return bool(np.any(obj.attrs.get("MATLAB_empty", 0)))


def _h5_dims(obj) -> tuple:
    import h5py

    if isinstance(obj, h5py.Group):
        return (1, 1)
    if _h5_is_empty(obj):
        # MATLAB stores an empty array's dimensions as the dataset's data.
        dims = np.asarray(obj[()]).ravel()
        return tuple(int(d) for d in dims) if dims.size >= 2 else (0, 0)
    shape = tuple(reversed(obj.shape))
    return shape if len(shape) >= 2 else (shape + (1, 1))[:2]


def _decode_units(units, int_decode):
    """Text from MATLAB character codes (UTF-16 code units unless told otherwise)."""
    units = np.asarray(units)
    if int_decode == 4 or units.dtype.itemsize == 4:
        return units.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")
    if int_decode == 1 or units.dtype.itemsize == 1:
        return units.astype("u1").tobytes().decode("latin-1")
    # surrogatepass: an unpaired code unit still yields text instead of an error.
    return units.astype("<u2").tobytes().decode("utf-16-le", "surrogatepass")


def _h5_read(f, obj, depth=0):
    """Plain form of one HDF5 object of a v7.3 file."""
    import h5py

    if depth > 32:
        raise MatFileError("cell arrays are nested more than 32 levels deep.")
    mclass = _h5_class(obj)
    if isinstance(obj, h5py.Group) or "MATLAB_object_decode" in obj.attrs:
        return _Opaque(mclass)
    dims = _h5_dims(obj)
    if _h5_is_empty(obj) or mclass == "canonical empty":
        if mclass == "char":
            return np.array([], dtype=str)
        if mclass == "cell":
            return np.empty(dims, dtype=object)
        return np.zeros(dims, dtype=bool if mclass == "logical" else float)
    raw = obj[()]
    arr = np.asarray(raw)
    arr = arr.reshape(-1, 1) if arr.ndim == 1 else np.atleast_2d(arr).T
    if mclass == "char":
        if arr.ndim != 2:
            return _Opaque("char array with more than two dimensions")
        int_decode = obj.attrs.get("MATLAB_int_decode", 2)
        return np.array([_decode_units(row, int(np.ravel(int_decode)[0])) for row in arr], dtype=str)
    if mclass == "cell" or arr.dtype == h5py.ref_dtype:
        out = np.empty(arr.shape, dtype=object)
        for idx, ref in np.ndenumerate(arr):
            out[idx] = _h5_read(f, f[ref], depth + 1) if ref else np.zeros((0, 0))
        return out
    if arr.dtype.names:
        names = {n.lower(): n for n in arr.dtype.names}
        if "real" in names and "imag" in names:
            return arr[names["real"]] + 1j * arr[names["imag"]]
        return _Opaque(mclass)
    if mclass == "logical":
        return arr.astype(bool)
    return arr


class _Opaque:
    """A value clusterlmer does not decode (struct, object, sparse, ...)."""

    def __init__(self, mclass):
        self.mclass = mclass


def _h5_file_order(group):
    """Top-level names in the order they were written.

    MATLAB's groups do not track link creation order, and h5py lists names
    alphabetically; object header addresses grow as variables are written,
    so sorting by address recovers the save order of a freshly saved file.
    """
    import h5py

    names = [n for n in group if not n.startswith("#")]
    try:
        return sorted(names, key=lambda n: h5py.h5o.get_info(group[n].id).addr)
    except Exception:  # noqa: BLE001 - order is cosmetic; fall back to names
        return names


def _read_v73(path, use):
    """Open a v7.3 file and call ``use(variables)`` while it is open."""
    import h5py

    def damaged(err):
        return MatFileError(
            f"{path!r} has a MATLAB v7.3 header but its HDF5 content cannot be read "
            f"({_short(err)}); the file is probably truncated or corrupt. Copy or save it again "
            "(in MATLAB: save(filename, ..., '-v7.3'))."
        )

    def reader(obj):
        def get():
            try:
                return _h5_read(f, obj)
            except MatFileError:
                raise
            except (OSError, KeyError, RuntimeError, ValueError) as err:
                raise damaged(err) from None

        return get

    try:
        f = h5py.File(path, "r")
    except Exception as err:  # noqa: BLE001 - HDF5 raises several types for damage
        raise damaged(err) from None
    with f:
        try:
            variables = [
                _Var(name, _h5_class(f[name]), _h5_dims(f[name]), reader(f[name])) for name in _h5_file_order(f)
            ]
        except (OSError, KeyError, RuntimeError, ValueError) as err:
            raise damaged(err) from None
        return use(variables)


def _short(err) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


# ---- v4/v5/v7 (scipy)


def _sp_plain(value):
    """Plain form of a value from :func:`scipy.io.loadmat` (``squeeze_me=False``)."""
    from scipy import sparse
    from scipy.io import matlab

    if isinstance(value, (matlab.MatlabOpaque, matlab.MatlabObject, matlab.MatlabFunction)):
        return _Opaque(_sp_class(value))
    if sparse.issparse(value):
        return _Opaque("sparse")
    value = np.asarray(value)
    if value.dtype.names:
        return _Opaque("struct")
    if value.dtype.kind == "O":
        out = np.empty(value.shape, dtype=object)
        for idx, elem in np.ndenumerate(value):
            out[idx] = _sp_plain(elem)
        return out
    return value


def _sp_class(value) -> str:
    from scipy import sparse
    from scipy.io import matlab

    if isinstance(value, matlab.MatlabOpaque):
        try:  # MCOS objects carry their class name (e.g. b'string').
            return str(np.asarray(value)["s2"].ravel()[0].decode())
        except Exception:  # noqa: BLE001
            return "object"
    if isinstance(value, matlab.MatlabObject):
        return getattr(value, "classname", None) or "object"
    if isinstance(value, matlab.MatlabFunction):
        return "function_handle"
    if sparse.issparse(value):
        return "sparse"
    value = np.asarray(value)
    if value.dtype.names:
        return "struct"
    kind = value.dtype.kind
    if kind == "U":
        return "char"
    if kind == "O":
        return "cell"
    if kind == "b":
        return "logical"
    return {"float64": "double", "float32": "single", "complex128": "double", "complex64": "single"}.get(
        value.dtype.name, value.dtype.name
    )


def _sp_dims(value) -> tuple:
    if not isinstance(value, np.ndarray) or value.dtype.names:
        return (1, 1)
    if value.dtype.kind == "U":
        # chars_as_strings gives one string per row of the char matrix.
        return (len(value), max((len(s) for s in value.ravel()), default=0))
    shape = value.shape
    return shape if len(shape) >= 2 else (shape + (1, 1))[:2]


def _read_v5(path, headerless, use):
    from scipy.io import loadmat

    try:
        with warnings.catch_warnings():
            # scipy warns about MATLAB objects it cannot decode; such variables are
            # reported by name below if the dataset needs them.
            warnings.simplefilter("ignore")
            # squeeze_me=False keeps MATLAB's 2-D shapes, so N x 1 and 1 x N stay tellable.
            raw = loadmat(path, squeeze_me=False, chars_as_strings=True, struct_as_record=True)
    except Exception as err:  # noqa: BLE001 - scipy raises many types for damaged files
        if headerless:
            raise MatFileError(_not_mat_message(path)) from None
        raise MatFileError(
            f"could not read {path!r} as a MATLAB v5/v7 .mat file ({_short(err)}); the file is "
            "probably truncated or corrupt. Copy or save it again."
        ) from None
    variables = [
        _Var(name, _sp_class(value), _sp_dims(value), (lambda v=value: _sp_plain(v)))
        for name, value in raw.items()
        if not name.startswith("__")
    ]
    return use(variables)


# ---- format detection


def _not_mat_message(path, head=None):
    start = "" if head is None else f" (it starts with {head[:24]!r})" if head else " (the file is empty)"
    return (
        f"{path!r} is not a MATLAB .mat file{start}. Save the variables from MATLAB with "
        "save(filename, 'data', 'sid', 'ch', 'hit_miss', '-v7.3'), or read other formats yourself "
        "(e.g. with pandas) and use clusterlmer.from_dataframe."
    )


def _with_variables(path, use):
    """Detect the MAT format of ``path`` and call ``use(variables)``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file: {path!r}. Check the path (current directory: {os.getcwd()!r}).")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; pass the path of a .mat file inside it.")
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if head.startswith(b"MATLAB 7.3 MAT-file"):
        return _read_v73(path, use)
    if head.startswith(b"MATLAB"):
        return _read_v5(path, False, use)
    if _HDF5_SIGNATURE in (head[:8], head[512:520]) or _is_hdf5(path):
        if _looks_like_matlab_hdf5(path):
            return _read_v73(path, use)
        raise MatFileError(
            f"{path!r} is an HDF5 file but not a MATLAB v7.3 .mat file (no MATLAB header and no "
            "MATLAB_class attributes), so its axis order is unknown. Save it from MATLAB with "
            "'-v7.3', or read it with h5py and use clusterlmer.from_dataframe."
        )
    # Headerless files can only be MATLAB v4; scipy recognises them from their first bytes.
    from scipy.io.matlab import matfile_version

    try:
        major, _ = matfile_version(path)
    except Exception:  # noqa: BLE001
        major = None
    if major != 0:
        raise MatFileError(_not_mat_message(path, head))
    return _read_v5(path, True, use)


def _is_hdf5(path) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except Exception:  # noqa: BLE001
        return False


def _looks_like_matlab_hdf5(path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return any("MATLAB_class" in f[n].attrs for n in f)
    except Exception:  # noqa: BLE001
        return False


# ---- variables to columns


def _vector_length(dims):
    """Element count of a vector (or scalar), else None."""
    if sum(d != 1 for d in dims) > 1:
        return None
    return int(np.prod(dims))


def _rstrip_char(text):
    # MATLAB pads char-matrix rows with spaces; cellstr() strips them the same way.
    return text.rstrip(" \x00")


def _column(var, n):
    """Design column (list of str/None or float array) from a variable with ``n`` values."""
    mclass = var.mclass
    if mclass in _HINTS or mclass not in _NUMERIC_CLASSES | {"logical", "char", "cell"}:
        raise _NotColumn(_HINTS.get(mclass, f"it is a MATLAB {mclass}"))
    if 0 in var.dims:
        raise _NotColumn("it is empty")
    if mclass == "char":
        if var.dims[0] != n:
            raise _NotColumn(f"it is a char array with {var.dims[0]} row(s)")
        value = var.get()
        if isinstance(value, _Opaque):
            raise _NotColumn(f"it is a {value.mclass}")
        return [_rstrip_char(str(s)) or None for s in value]
    if _vector_length(var.dims) != n:
        raise _NotColumn(f"it is {_describe(var)}, not a vector of {n} values")
    value = var.get()
    if isinstance(value, _Opaque):
        raise _NotColumn(_HINTS.get(value.mclass, f"it is a MATLAB {value.mclass}"))
    if mclass != "cell":
        if np.iscomplexobj(value):
            raise _NotColumn("it is complex")
        return np.asarray(value, dtype=float).ravel()
    items = [_cell_item(elem) for elem in value.ravel(order="F")]
    kinds = {type(x) for x in items if x is not None}
    if kinds <= {str}:
        return items
    if kinds <= {float}:
        return np.array([np.nan if x is None else x for x in items], dtype=float)
    raise _NotColumn("it is a cell array that mixes text with other values (or holds arrays)")


def _cell_item(elem):
    """One cell element as str, float or None (empty), else a marker object."""
    if isinstance(elem, _Opaque) or not isinstance(elem, np.ndarray):
        return object()
    if elem.size == 0:
        return None
    if elem.dtype.kind == "U":
        return str(elem[0]) if elem.size == 1 else object()
    if elem.size == 1 and elem.dtype.kind in "biuf":
        return float(elem.ravel()[0])
    return object()


# ---- the loader


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
    data = _with_variables(
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
        found = _preview([f"{v.name} ({_describe(v)})" for v in variables]) if variables else "none"
        candidates = [v.name for v in variables if v.mclass in _NUMERIC_CLASSES and _vector_length(v.dims) is None]
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
            columns[var.name] = _column(var, n_rows)
        except _NotColumn as why:
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
    if var.mclass not in _NUMERIC_CLASSES:
        what = {"cell": "a cell array", "char": "text (char)"}.get(var.mclass, f"a MATLAB {var.mclass}")
        hint = f" ({_HINTS[var.mclass]})" if var.mclass in ("sparse",) else ""
        raise TypeError(
            f"{name!r} must be a numeric array (rows x timepoints), but it is {what}{hint}. "
            f"If it is a cell of equal-length rows, use cell2mat({name}) in MATLAB and save again."
        )
    value = var.get()
    if isinstance(value, _Opaque) or not isinstance(value, np.ndarray) or value.dtype.kind not in "biufc":
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
    if var.mclass in _HINTS:
        return _HINTS[var.mclass]
    if var.mclass not in _NUMERIC_CLASSES | {"logical", "char", "cell"}:
        return f"it is a MATLAB {var.mclass}"
    if 0 in var.dims:
        return "it is empty"
    return f"it is {_describe(var)}"


def _label_length(var):
    if var.mclass == "char":
        return var.dims[0] if len(var.dims) == 2 and 0 not in var.dims else None
    if var.mclass in _HINTS or var.mclass not in _NUMERIC_CLASSES | {"logical", "cell"} or 0 in var.dims:
        return None
    return _vector_length(var.dims)


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
    channels = design.groupby(["sid", "ch"], sort=False).ngroup().to_numpy()
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
        if var.mclass in _NUMERIC_CLASSES and _vector_length(var.dims) == n:
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
            f"the file's {var.name!r} variable ({_describe(var)}) is not a numeric vector of length {n}; "
            f"using {fallback} instead."
        )
    if given is not None:
        return np.asarray(given)
    return np.arange(n, dtype=float)


# --------------------------------------------------------------------------- writing

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}\Z")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_CLASS_OF = {
    "f8": "double", "f4": "single", "i1": "int8", "u1": "uint8", "i2": "int16", "u2": "uint16",
    "i4": "int32", "u4": "uint32", "i8": "int64", "u8": "uint64",
}


def _check_name(name, where):
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{where}{name!r} is not a valid MATLAB name: use a letter followed by letters, digits or "
            "underscores (at most 63 characters)."
        )


def _mat73_header(now=None) -> bytes:
    """The 128 bytes MATLAB expects at the start of a v7.3 file's 512-byte userblock."""
    now = now or datetime.datetime.now()
    # Fixed English names: strftime's %a/%b follow the locale.
    stamp = f"{_DAYS[now.weekday()]} {_MONTHS[now.month - 1]} {now:%d %H:%M:%S %Y}"
    python = ".".join(str(i) for i in sys.version_info[:3])
    text = f"MATLAB 7.3 MAT-file, Platform: CPython {python}, Created on: {stamp} HDF5 schema 1.00 ."
    head = text.encode("ascii")[:116].ljust(116, b" ")
    # 8 bytes subsystem offset (none), version 0x0200 little-endian, endian indicator "IM".
    return head + b"\x00" * 8 + b"\x00\x02" + b"IM"


class _Mat73Writer:
    """Writes Python values as MATLAB v7.3 objects into an open h5py file."""

    def __init__(self, f):
        self.f = f
        self._refs = None
        self._count = 0

    def _ref_target(self):
        """A fresh name in ``#refs#`` for a cell element (MATLAB uses a, b, c, ...)."""
        if self._refs is None:
            self._refs = self.f.create_group("#refs#")
            # MATLAB's own files keep a "canonical empty" here as #refs#/a.
            self._empty(self._refs, "a", "canonical empty", (0, 0))
        letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
        while True:
            self._count += 1  # start at "b": MATLAB keeps "a" for its canonical empty
            i, name = self._count, ""
            while True:
                name = letters[i % 52] + name
                i = i // 52 - 1
                if i < 0:
                    break
            if name not in self._refs:
                return self._refs, name

    def write(self, parent, name, value, where):
        """Write ``value`` as ``parent[name]``; ``where`` names it in error messages."""
        obj = self._write(parent, name, value, where)
        if parent.name != "/":
            # MATLAB records the parent path on every object below the root.
            obj.attrs.create("H5PATH", np.bytes_(parent.name))
        return obj

    def _write(self, parent, name, value, where):
        if value is None:
            return self._empty(parent, name, "double", (0, 0))
        if isinstance(value, pd.DataFrame):
            return self._struct(parent, name, {str(c): value[c] for c in value.columns}, where)
        if isinstance(value, pd.Series):
            value = value.to_numpy()
        if isinstance(value, dict):
            return self._struct(parent, name, value, where)
        if isinstance(value, (str, bytes, np.str_, np.bytes_)):
            return self._char(parent, name, value.decode() if isinstance(value, (bytes, np.bytes_)) else str(value))
        if isinstance(value, (list, tuple)):
            if not value:
                return self._empty(parent, name, "cell", (0, 0))
            cells = np.empty((len(value), 1), dtype=object)
            for i, item in enumerate(value):
                cells[i, 0] = item
            return self._cell(parent, name, cells, where)
        if isinstance(value, (bool, np.bool_)):
            value = np.array(value, dtype=bool)
        elif isinstance(value, (int, float)) and not isinstance(value, (np.integer, np.floating)):
            value = np.array(value, dtype=float)  # MATLAB's default numeric class is double
        elif isinstance(value, complex):
            value = np.array(value, dtype=complex)
        arr = np.asarray(value) if isinstance(value, (np.ndarray, np.generic)) else None
        if arr is None:
            raise TypeError(
                f"cannot write {where} ({type(value).__name__}) to a MAT file; use numbers, numpy "
                "arrays, str, lists (cell arrays), dicts (structs) or DataFrames."
            )
        if arr.ndim == 1:
            arr = arr.reshape(-1, 1)  # a 1-D sequence becomes a column, like the cellstr labels
        elif arr.ndim == 0:
            arr = arr.reshape(1, 1)
        kind = arr.dtype.kind
        if kind in "US":
            cells = np.empty(arr.shape, dtype=object)
            for idx, item in np.ndenumerate(arr):
                cells[idx] = item
            return self._cell(parent, name, cells, where)
        if kind == "O":
            return self._cell(parent, name, arr, where) if arr.size else self._empty(parent, name, "cell", arr.shape)
        if arr.dtype.names or kind not in "biufc":
            raise TypeError(f"cannot write {where} (numpy dtype {arr.dtype}) to a MAT file.")
        if kind == "b":
            mclass, arr = "logical", arr.astype(np.uint8)
        elif kind == "c":
            arr = arr.astype(np.complex64 if arr.dtype.itemsize <= 8 else np.complex128)
            mclass = "single" if arr.dtype == np.complex64 else "double"
        else:
            if arr.dtype == np.float16 or (kind == "f" and arr.dtype.itemsize > 8):
                arr = arr.astype(np.float32 if arr.dtype == np.float16 else np.float64)
            arr = arr.astype(arr.dtype.newbyteorder("<"))
            mclass = _CLASS_OF[arr.dtype.str[1:]]
        if arr.size == 0:
            return self._empty(parent, name, mclass, arr.shape)
        if kind == "c":
            part = np.float32 if mclass == "single" else np.float64
            stored = np.empty(arr.shape, dtype=[("real", part), ("imag", part)])
            stored["real"], stored["imag"] = arr.real, arr.imag
            arr = stored
        # MATLAB is column-major: reversing all axes gives MATLAB the same shape back.
        ds = parent.create_dataset(name, data=np.ascontiguousarray(arr.T))
        ds.attrs.create("MATLAB_class", np.bytes_(mclass))
        if mclass == "logical":
            ds.attrs.create("MATLAB_int_decode", np.int32(1))
        return ds

    def _empty(self, parent, name, mclass, dims):
        # MATLAB stores an empty array as its dimensions plus MATLAB_empty = 1.
        dims = tuple(dims) if len(dims) >= 2 else (tuple(dims) + (1, 1))[:2]
        ds = parent.create_dataset(name, data=np.array(dims, dtype=np.uint64))
        ds.attrs.create("MATLAB_class", np.bytes_(mclass))
        ds.attrs.create("MATLAB_empty", np.uint8(1))
        if mclass == "char":
            ds.attrs.create("MATLAB_int_decode", np.int32(2))
        return ds

    def _char(self, parent, name, text):
        units = np.frombuffer(text.encode("utf-16-le", "surrogatepass"), dtype="<u2")
        if units.size == 0:
            return self._empty(parent, name, "char", (0, 0))
        # A 1 x len char row vector is (len, 1) in HDF5's reversed axis order.
        ds = parent.create_dataset(name, data=units.reshape(-1, 1))
        ds.attrs.create("MATLAB_class", np.bytes_("char"))
        ds.attrs.create("MATLAB_int_decode", np.int32(2))
        return ds

    def _cell(self, parent, name, cells, where):
        import h5py

        refs = np.empty(cells.shape, dtype=h5py.ref_dtype)
        for idx, item in np.ndenumerate(cells):
            group, target = self._ref_target()
            label = f"{where}{{{', '.join(str(i + 1) for i in idx)}}}"
            refs[idx] = self.write(group, target, item, label).ref
        ds = parent.create_dataset(name, data=np.ascontiguousarray(refs.T), dtype=h5py.ref_dtype)
        ds.attrs.create("MATLAB_class", np.bytes_("cell"))
        return ds

    def _struct(self, parent, name, fields, where):
        import h5py

        group = parent.create_group(name)
        group.attrs.create("MATLAB_class", np.bytes_("struct"))
        names = list(fields)
        for key in names:
            _check_name(key, f"field of {where}: ")
        # MATLAB lists a struct's field names (in order) as vlen arrays of single characters.
        vlen = h5py.vlen_dtype(np.dtype("S1"))
        listed = np.empty((len(names),), dtype=vlen)
        for i, key in enumerate(names):
            listed[i] = np.array(list(key.encode("ascii")), dtype=np.uint8).view("S1")
        group.attrs.create("MATLAB_fields", listed, dtype=vlen)
        for key in names:
            self.write(group, key, fields[key], f"{where}.{key}")
        return group


def write_mat73(path, variables: dict):
    """Write variables to a MATLAB v7.3 ``.mat`` file that MATLAB's ``load`` opens.

    Parameters
    ----------
    path : str or path-like
        Output file (overwritten).
    variables : dict
        Variable name to value. Names (and struct field names) must be valid
        MATLAB identifiers. Values map as follows:

        * numpy arrays and numbers: the matching MATLAB class (``double``,
          ``single``, ``int8`` .. ``uint64``; bool -> ``logical``; complex
          kept); Python ``int``/``float`` -> ``double``. A 1-D array becomes
          a column (N x 1); pass a 2-D ``(1, N)`` array for a row vector.
        * ``str`` -> char row vector (UTF-16, so any text survives).
        * ``list``/``tuple`` -> cell column (a list of str is a cellstr);
          numpy arrays of str or objects -> cell arrays of the same shape.
        * ``dict`` -> scalar struct; ``pandas.DataFrame`` -> struct with one
          column vector (or cellstr) per column; ``None`` -> ``[]``.

    Notes
    -----
    The file is HDF5 behind a 512-byte MATLAB userblock; arrays are stored
    with their axes reversed (MATLAB is column-major), cell elements live in
    the ``#refs#`` group and every object carries ``MATLAB_class``.
    """
    import h5py

    path = os.fspath(path)
    if not isinstance(variables, dict):
        raise TypeError(f"variables must be a dict of name -> value, got {type(variables).__name__}.")
    for name in variables:
        _check_name(name, "variable name ")
    # libver="earliest": plain HDF5 1.8 structures, which every MATLAB since R2006b reads.
    with h5py.File(path, "w", userblock_size=512, libver="earliest") as f:
        writer = _Mat73Writer(f)
        for name, value in variables.items():
            writer.write(f, name, value, name)
    with open(path, "r+b") as fh:
        fh.write(_mat73_header())


def _mat5_value(value, where):
    """Python value -> what scipy.io.savemat writes as the matching MATLAB type."""
    if value is None:
        return np.zeros((0, 0))
    if isinstance(value, pd.DataFrame):
        value = {str(c): value[c] for c in value.columns}
    if isinstance(value, pd.Series):
        value = value.to_numpy()
    if isinstance(value, dict):
        for key in value:
            _check_name(key, f"field of {where}: ")
        return {k: _mat5_value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (str, np.str_)):
        return str(value)
    if isinstance(value, (list, tuple)):
        cells = np.empty((len(value), 1) if value else (0, 0), dtype=object)
        for i, item in enumerate(value):
            cells[i, 0] = _mat5_value(item, f"{where}{{{i + 1}}}")
        return cells
    if isinstance(value, (int, float)) and not isinstance(value, (bool, np.generic)):
        return float(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        cells = np.empty(value.shape if value.ndim != 1 else (value.size, 1), dtype=object)
        for idx, item in np.ndenumerate(value.reshape(cells.shape)):
            cells[idx] = _mat5_value(item.decode() if isinstance(item, bytes) else item, where)
        return cells
    return value


def write_mat5(path, variables: dict):
    """Write variables to a MATLAB v5 ``.mat`` file with :func:`scipy.io.savemat`.

    Same value mapping as :func:`write_mat73` (lists -> cell columns, 1-D
    arrays -> columns, dicts -> structs); v5 files cannot hold arrays over
    2 GB.

    Parameters
    ----------
    path : str or path-like
        Output file (overwritten).
    variables : dict
        Variable name to value.
    """
    from scipy.io import savemat

    if not isinstance(variables, dict):
        raise TypeError(f"variables must be a dict of name -> value, got {type(variables).__name__}.")
    for name in variables:
        _check_name(name, "variable name ")
    converted = {k: _mat5_value(v, k) for k, v in variables.items()}
    savemat(os.fspath(path), converted, format="5", oned_as="column")
