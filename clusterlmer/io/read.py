"""Read MATLAB ``.mat`` files into variables of one plain form, whatever the format.

Files come in two formats:

* MATLAB v7.3: an HDF5 file behind a 512-byte MATLAB header. Arrays are
  stored column-major, so h5py sees every axis reversed; a cell array is a
  dataset of object references into the ``#refs#`` group; text is ``uint16``
  UTF-16 code units with ``MATLAB_class = "char"``.
* MATLAB v4/v5/v7: the classic MAT format, read with :func:`scipy.io.loadmat`.

Both readers turn variables into the same plain form (numeric arrays in
MATLAB's dimension order, char as an array of row strings, cell as an object
array), so which variables mean what, and the checks on them, are written
once (:mod:`clusterlmer.io.layout`). Nothing here knows the original layout's
variable names.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

# h5py and scipy.io are imported inside the functions that use them, so that
# ``import clusterlmer`` stays quick.

__all__ = ["MatFileError", "MatVariable", "NotColumn", "Opaque", "read_variables", "as_column",
           "NUMERIC_CLASSES", "CLASS_HINTS"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: MATLAB classes read as numbers.
NUMERIC_CLASSES = {
    "double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
}
#: How to convert what is not decoded. MCOS objects (string, categorical,
#: datetime, table, ...) are opaque outside MATLAB.
CLASS_HINTS = {
    "string": "it is a MATLAB string array; convert it with cellstr(x) in MATLAB and save again",
    "categorical": "it is a MATLAB categorical array; convert it with cellstr(x) in MATLAB and save again",
    "struct": "it is a MATLAB struct",
    "sparse": "it is a sparse matrix; convert it with full(x) in MATLAB and save again",
}


class MatFileError(ValueError):
    """The file is not a readable MAT file, or its variables do not form a dataset."""


@dataclass
class MatVariable:
    """One MAT-file variable, decoded on demand.

    Attributes
    ----------
    name : str
    mclass : str
        MATLAB's class name (``"double"``, ``"cell"``, ``"char"``, ...).
    dims : tuple of int
        MATLAB's dimensions (at least two).
    get : callable
        Returns the value in the plain form shared by both formats.
    """

    name: str
    mclass: str
    dims: tuple
    get: Callable

    @property
    def length(self):
        """Element count of a vector (or scalar), else None."""
        if sum(d != 1 for d in self.dims) > 1:
            return None
        return int(np.prod(self.dims))

    def describe(self) -> str:
        """MATLAB's size and class, e.g. ``"139 x 1 cell"``."""
        return f"{' x '.join(str(d) for d in self.dims)} {self.mclass}"


class NotColumn(Exception):
    """A variable cannot be a design column (the message says why)."""


class Opaque:
    """A value clusterlmer does not decode (struct, object, sparse, ...)."""

    def __init__(self, mclass):
        self.mclass = mclass


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
        return Opaque(mclass)
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
            return Opaque("char array with more than two dimensions")
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
        return Opaque(mclass)
    if mclass == "logical":
        return arr.astype(bool)
    return arr


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
                MatVariable(name, _h5_class(f[name]), _h5_dims(f[name]), reader(f[name])) for name in _h5_file_order(f)
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
        return Opaque(_sp_class(value))
    if sparse.issparse(value):
        return Opaque("sparse")
    value = np.asarray(value)
    if value.dtype.names:
        return Opaque("struct")
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
        MatVariable(name, _sp_class(value), _sp_dims(value), (lambda v=value: _sp_plain(v)))
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


def read_variables(path, use):
    """Detect the MAT format of ``path`` and call ``use(variables)`` while the file is open.

    Parameters
    ----------
    path : str
    use : callable
        Called with the file's variables (a list of :class:`MatVariable`, in
        the order they were saved); ``get()`` works only during this call.

    Returns
    -------
    object
        What ``use`` returns.

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        ``path`` is not a file.
    MatFileError
        Not a MAT file (including HDF5 files MATLAB did not write), or a
        damaged one.
    """
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


def _rstrip_char(text):
    # MATLAB pads char-matrix rows with spaces; cellstr() strips them the same way.
    return text.rstrip(" \x00")


def as_column(var, n):
    """Design column from a variable with ``n`` values.

    Parameters
    ----------
    var : MatVariable
    n : int
        Number of rows the column must have.

    Returns
    -------
    list of str or None, or numpy.ndarray of float
        Text (cellstr, or char matrix rows stripped of MATLAB's padding;
        empty entries are None) or numbers (numeric, logical, or a cell of
        scalars; empty entries are NaN).

    Raises
    ------
    NotColumn
        Saying why the variable cannot be a column (wrong shape, complex,
        mixed cell, a MATLAB class that is not decoded).
    """
    mclass = var.mclass
    if mclass in CLASS_HINTS or mclass not in NUMERIC_CLASSES | {"logical", "char", "cell"}:
        raise NotColumn(CLASS_HINTS.get(mclass, f"it is a MATLAB {mclass}"))
    if 0 in var.dims:
        raise NotColumn("it is empty")
    if mclass == "char":
        if var.dims[0] != n:
            raise NotColumn(f"it is a char array with {var.dims[0]} row(s)")
        value = var.get()
        if isinstance(value, Opaque):
            raise NotColumn(f"it is a {value.mclass}")
        return [_rstrip_char(str(s)) or None for s in value]
    if var.length != n:
        raise NotColumn(f"it is {var.describe()}, not a vector of {n} values")
    value = var.get()
    if isinstance(value, Opaque):
        raise NotColumn(CLASS_HINTS.get(value.mclass, f"it is a MATLAB {value.mclass}"))
    if mclass != "cell":
        if np.iscomplexobj(value):
            raise NotColumn("it is complex")
        return np.asarray(value, dtype=float).ravel()
    items = [_cell_item(elem) for elem in value.ravel(order="F")]
    kinds = {type(x) for x in items if x is not None}
    if kinds <= {str}:
        return items
    if kinds <= {float}:
        return np.array([np.nan if x is None else x for x in items], dtype=float)
    raise NotColumn("it is a cell array that mixes text with other values (or holds arrays)")


def _cell_item(elem):
    """One cell element as str, float or None (empty), else a marker object."""
    if isinstance(elem, Opaque) or not isinstance(elem, np.ndarray):
        return object()
    if elem.size == 0:
        return None
    if elem.dtype.kind == "U":
        return str(elem[0]) if elem.size == 1 else object()
    if elem.size == 1 and elem.dtype.kind in "biuf":
        return float(elem.ravel()[0])
    return object()
