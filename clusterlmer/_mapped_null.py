"""A checkpoint whose null lives in the file, mapped into memory, for nulls larger than the memory.

The file is an ordinary HDF5 checkpoint (format mark, keys, ``values`` and
``done`` datasets, readable with h5py), but its two datasets are stored
*contiguous and uncompressed*, with their space allocated when the file is
created. numpy then maps their bytes straight from the file
(:class:`numpy.memmap` at the offset HDF5 reports), so finished permutations
are written in place and the operating system pages the null in and out: the
run's memory no longer grows with the null. HDF5's own metadata is written
once, when the file is created, and never touched again, so a process killed
while writing leaves a readable file. A permutation counts as finished only
once its statistics are flushed to disk and then its ``done`` flag, so a
permutation interrupted halfway is simply fitted again.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["LAYOUT", "create_mapped", "is_mapped", "open_mapped"]

LAYOUT = "mapped"  # the file's "layout" attribute; compressed in-memory checkpoints have none
_COPY_BYTES = 256 * 2 ** 20


def _contiguous(f, name, shape, h5type):
    """A contiguous dataset whose space is allocated now, left unfilled (``done`` says what is valid)."""
    import h5py

    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # a sparse file: no 16 GiB of NaN written up front
    space = h5py.h5s.create_simple(tuple(int(n) for n in shape))
    h5py.h5d.create(f.id, name.encode(), h5type, space, dcpl=dcpl)


def create_mapped(path, attrs: dict, shape: tuple, n_permutations: int, previous=None):
    """Write a new mapped checkpoint atomically, with the finished permutations of ``previous``.

    Parameters
    ----------
    path : str
        Where the file goes (replaced atomically: written next to it, then renamed).
    attrs : dict
        File attributes (format mark, version, keys).
    shape : tuple
        One permutation's statistics.
    n_permutations : int
    previous : tuple of (array_like, array_like) or None
        ``(values, done)`` of an earlier checkpoint of the same analysis (an
        h5py dataset is read a block at a time); its first ``n_permutations``
        rows are copied.
    """
    import h5py

    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in attrs.items():
                f.attrs[key] = value
            f.attrs["layout"] = LAYOUT
            _contiguous(f, "values", (n_permutations,) + tuple(shape), h5py.h5t.IEEE_F64LE)
            _contiguous(f, "done", (n_permutations,), h5py.h5t.STD_U8LE)
        values, done = open_mapped(tmp)
        done[:] = 0
        if previous is not None:
            old_values, old_done = previous
            n = min(len(old_done), n_permutations)
            step = max(1, _COPY_BYTES // max(1, 8 * int(np.prod(shape, dtype=np.int64))))
            for start in range(0, n, step):
                stop = min(n, start + step)
                values[start:stop] = old_values[start:stop]
            done[:n] = np.asarray(old_done[:n], dtype=bool)
        values.flush()
        done.flush()
        del values, done
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def is_mapped(f) -> bool:
    """Whether an open checkpoint file has the mapped layout."""
    layout = f.attrs.get("layout")
    return (layout.decode() if isinstance(layout, bytes) else layout) == LAYOUT


def open_mapped(path):
    """Map a mapped checkpoint's ``values`` and ``done`` datasets for reading and writing.

    Returns
    -------
    values : numpy.memmap, shape (n_permutations, *shape), float64
    done : numpy.memmap, shape (n_permutations,), uint8
    """
    import h5py

    with h5py.File(path, "r") as f:
        where = {}
        for name in ("values", "done"):
            ds = f[name]
            offset = ds.id.get_offset()
            if offset is None or ds.chunks is not None or ds.compression is not None:
                raise OSError(f"dataset {name!r} is not stored contiguously")
            where[name] = (int(offset), ds.shape, ds.dtype.newbyteorder("<"))
    return tuple(np.memmap(path, dtype=dtype, mode="r+", offset=offset, shape=shape)
                 for offset, shape, dtype in (where["values"], where["done"]))

