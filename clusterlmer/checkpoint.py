"""Checkpoints: finished permutations kept on disk so a long run can resume.

A checkpoint is a small HDF5 file holding the permutation statistics finished
so far and fingerprints of everything that decides them (data, design,
formula, fit options, seed, permutation schemes, tested statistic). A rerun
with the same arguments loads the finished permutations and fits only the
rest; because every permutation is drawn up front from one seeded generator
and each fit is deterministic, the resumed result equals an uninterrupted one.

The file is always replaced atomically (written next to the target, then
renamed), so a process killed while saving leaves the previous checkpoint
intact. Saving is throttled for large nulls so that writing never costs more
than a few percent of the run. A null too large for the memory is kept in the
checkpoint file itself and written in place (see :mod:`clusterlmer._mapped_null`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np

from ._mapped_null import create_mapped, is_mapped, open_mapped
from ._memory import check_memory

__all__ = ["Checkpoint", "CheckpointError", "check_checkpoint_path", "fingerprint"]

FORMAT = "clusterlmer-checkpoint"  # the file's format mark (attribute "format"), also recognised by load_result
_VERSION = 1
# Keys recorded apart only to name them in a refusal, whose value another key's
# fingerprint also covers: a file written before they existed is compared without them.
_COVERED_BY = {"engine": "fit options"}


class CheckpointError(ValueError):
    """A checkpoint file that does not belong to this analysis, or is unreadable."""


# Only a file clusterlmer wrote may be suggested for deletion, and only after another path.
_OLD = " (the old checkpoint may be deleted once it is no longer needed)"


def check_checkpoint_path(path):
    """Check a checkpoint path before any fit; return it as a string (or None).

    The folder must exist and be writable, and an existing file must be a
    clusterlmer checkpoint: any other file (the input ``.mat``, a results
    file) is refused before it could be overwritten.

    Parameters
    ----------
    path : str or path-like or None

    Returns
    -------
    str or None

    Raises
    ------
    CheckpointError
        The file exists but is not a readable clusterlmer checkpoint.
    OSError, TypeError
        From :func:`clusterlmer._checks.check_writable`.
    """
    if path is None:
        return None
    from ._checks import check_writable

    path = check_writable(path, "checkpoint")
    if os.path.exists(path):
        _require_checkpoint(path)
    return path


def _require_checkpoint(path):
    """Refuse a file that is not a clusterlmer checkpoint of a version this code reads."""
    import h5py

    try:
        is_hdf5 = h5py.is_hdf5(path)
    except Exception:  # noqa: BLE001 - unreadable: treated as not a checkpoint
        is_hdf5 = False
    other = (f"{path!r} is not a clusterlmer checkpoint ({{}}), so it is left untouched. Pass another checkpoint "
             "path: a new file, or a checkpoint an earlier run of this analysis wrote.")
    if not is_hdf5:
        raise CheckpointError(other.format("it is not an HDF5 file"))
    try:
        with h5py.File(path, "r") as f:
            mark, version = f.attrs.get("format"), f.attrs.get("version")
    except Exception:  # noqa: BLE001 - an HDF5 signature but no readable header
        raise CheckpointError(other.format("an HDF5 file whose header cannot be read")) from None
    if isinstance(mark, bytes):
        mark = mark.decode("utf-8", "replace")
    if mark != FORMAT:
        raise CheckpointError(other.format("an HDF5 file without the checkpoint mark, e.g. a MATLAB v7.3 file "
                                           "or a results file"))
    if version is not None and int(version) > _VERSION:
        raise CheckpointError(f"the checkpoint {path!r} was written by a newer clusterlmer (format version "
                              f"{int(version)}; this one reads up to {_VERSION}). Update clusterlmer, or pass "
                              "another checkpoint path to start afresh.")


def _damaged(path, exc):
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"the checkpoint {path!r} cannot be read ({reason}); it is probably damaged (e.g. the disk filled "
            f"up while it was saved). Pass another checkpoint path to start afresh{_OLD}.")


def fingerprint(obj) -> str:
    """A stable SHA-256 hex digest of arrays, frames, strings and plain containers."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj):
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        h.update(b"frame")
        for name in obj.columns:
            _feed(h, str(name))
            col = obj[name]
            _feed(h, col.to_numpy(dtype=float) if col.dtype.kind in "fiub" else [str(v) for v in col])
    elif isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        h.update(f"array{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    elif isinstance(obj, dict):
        h.update(b"dict")
        for key in sorted(obj, key=str):
            _feed(h, str(key))
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"seq{len(obj)}".encode())
        for item in obj:
            _feed(h, item)
    else:
        h.update(json.dumps(obj, default=str).encode())


def _difference(key, stored, current):
    """``key``, with both values when they are readable (not fingerprints)."""
    def readable(v):
        return isinstance(v, str) and len(v) <= 80 and not (len(v) == 64 and all(c in "0123456789abcdef" for c in v))

    if readable(stored) and readable(current):
        return f"{key} ({stored!r} in the checkpoint, {current!r} in this run)"
    return key


class Checkpoint:
    """Finished permutations of one analysis, mirrored to an HDF5 file.

    Parameters
    ----------
    path : str or path-like or None
        The file; ``None`` keeps everything in memory only.
    keys : dict of str to str
        Fingerprints of what decides the permutation statistics (``"data"``,
        ``"formula"``, ``"seed"``, ...). A file with other fingerprints is
        refused, naming what differs.
    shape : tuple
        Shape of one permutation's statistics, e.g. ``(n_terms, n_times)``.
    n_permutations : int
        Permutations wanted in this run. A file with more finished
        permutations contributes its first ``n_permutations`` (permutations
        are drawn prefix-stably); a file with fewer is extended.
    mapped : bool
        Keep the null in the file itself, mapped into memory
        (:mod:`clusterlmer._mapped_null`), for nulls larger than the memory;
        ``values`` is then a :class:`numpy.memmap`. Needs ``path``. Either
        layout resumes from a file of the other.
    """

    def __init__(self, path, keys: dict, shape: tuple, n_permutations: int, *, mapped=False):
        self.path = None if path is None else os.fspath(path)
        self.keys = dict(keys)
        self.shape = tuple(shape)
        self.n_permutations = int(n_permutations)
        self.mapped = bool(mapped)
        self.resumed = 0
        self._last_save = 0.0
        self._save_cost = 0.0
        self._dirty = False
        if self.mapped:
            if self.path is None:
                raise ValueError("a null kept in a mapped file needs a checkpoint path.")
            self._open_mapped()
            return
        check_memory({"null statistics": self.n_permutations * int(np.prod(self.shape)) * 8})
        self.values = np.full((self.n_permutations,) + self.shape, np.nan)
        self.done = np.zeros(self.n_permutations, dtype=bool)
        if self.path is not None and os.path.exists(self.path):
            self._load()

    def _check_stored(self, f):
        """Refuse a stored checkpoint of another analysis or another statistics shape."""
        stored = json.loads(f.attrs["keys"])
        differs = [k for k in sorted(set(stored) | set(self.keys)) if stored.get(k) != self.keys.get(k)
                   and not (k not in stored and _COVERED_BY.get(k) in stored)]
        if differs:
            raise CheckpointError(
                f"the checkpoint {self.path!r} was written for a different analysis (it differs in: "
                f"{', '.join(_difference(k, stored.get(k), self.keys.get(k)) for k in differs)}). Rerun with "
                f"the arguments that wrote it, or pass another checkpoint path to start afresh{_OLD}."
            )
        if f["values"].shape[1:] != self.shape:
            raise CheckpointError(
                f"the checkpoint {self.path!r} holds statistics of shape {f['values'].shape[1:]}, "
                f"this analysis has {self.shape}. Pass another checkpoint path to start afresh{_OLD}."
            )

    def _load(self):
        import h5py

        _require_checkpoint(self.path)
        try:
            with h5py.File(self.path, "r") as f:
                self._check_stored(f)
                values, done = f["values"][()], f["done"][()].astype(bool)
        except CheckpointError:
            raise
        except Exception as exc:  # h5py's errors on a damaged file are unhelpful as they stand
            raise CheckpointError(_damaged(self.path, exc)) from None
        n = min(len(done), self.n_permutations)
        self.values[:n] = values[:n]
        self.done[:n] = done[:n]
        self.resumed = int(self.done.sum())

    def _open_mapped(self):
        """Map the null from the checkpoint file, first (re)writing the file in the mapped layout if needed."""
        import h5py

        attrs = {"format": FORMAT, "version": _VERSION, "keys": json.dumps(self.keys, sort_keys=True)}
        if os.path.exists(self.path):
            _require_checkpoint(self.path)
            try:
                with h5py.File(self.path, "r") as f:
                    self._check_stored(f)
                    if not (is_mapped(f) and len(f["done"]) == self.n_permutations):
                        create_mapped(self.path, attrs, self.shape, self.n_permutations,
                                      previous=(f["values"], f["done"]))
            except CheckpointError:
                raise
            except Exception as exc:  # noqa: BLE001 - as in _load
                raise CheckpointError(_damaged(self.path, exc)) from None
        else:
            create_mapped(self.path, attrs, self.shape, self.n_permutations)
        self.values, self._done_flags = open_mapped(self.path)
        self.done = np.asarray(self._done_flags, dtype=bool)
        self.resumed = int(self.done.sum())

    @property
    def todo(self) -> np.ndarray:
        """Indices of the permutations still to fit."""
        return np.flatnonzero(~self.done)

    def unfinished_note(self) -> str:
        """For a run that stops now: how many permutations are not done, and what becomes of the finished ones."""
        kept = "kept in the checkpoint: rerun to resume" if self.path else "lost: use checkpoint= to keep them"
        return f"{int((~self.done).sum())} permutations are not done. Finished permutations are {kept}."

    def add(self, indices, values):
        """Record finished permutations and save when due."""
        self.values[indices] = values
        self.done[indices] = True
        self._dirty = True
        # Saving costs time proportional to the file: keep it under ~5% of the run. A mapped null's
        # flush costs little but waits for the disk: at most once a second.
        if time.perf_counter() - self._last_save >= max(20 * self._save_cost, 1.0 if self.mapped else 0.0):
            self.save()

    def save(self):
        """Write the checkpoint now (atomically) if anything changed."""
        if self.path is None or not self._dirty:
            return
        start = time.perf_counter()
        if self.mapped:
            # Statistics reach the disk before the flags that say they are finished.
            self.values.flush()
            self._done_flags[:] = self.done
            self._done_flags.flush()
            self._dirty = False
            self._last_save = time.perf_counter()
            self._save_cost = self._last_save - start
            return
        import h5py

        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = FORMAT
                f.attrs["version"] = _VERSION
                f.attrs["keys"] = json.dumps(self.keys, sort_keys=True)
                f.create_dataset("values", data=self.values, chunks=True, compression="gzip",
                                 compression_opts=1, shuffle=True)
                f.create_dataset("done", data=self.done)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        self._dirty = False
        self._last_save = time.perf_counter()
        self._save_cost = self._last_save - start
