"""Write Python values as MATLAB ``.mat`` files: v7.3 (HDF5) and v5 (scipy).

Result files are saved with :func:`write_mat73`, so MATLAB's ``load`` opens
them; tests and the bundled samples use both writers to build input files in
the original layout. Both map values the same way (lists to cell columns,
1-D arrays to columns, dicts and DataFrames to structs), so a file written
either way loads back the same.
"""

from __future__ import annotations

import datetime
import os
import re
import sys

import numpy as np
import pandas as pd

# h5py and scipy.io are imported inside the writers, so that ``import clusterlmer`` stays quick.

__all__ = ["write_mat73", "write_mat5"]

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
