"""Reading ``.h5`` result files back: :func:`load_result`.

Every part of the file is checked as it is read (format mark, version, groups, datasets,
attributes, shapes, checksums; see :mod:`clusterlmer.saving` for the layout), so that a file
that is not a result, is damaged or comes from a newer clusterlmer is refused with a
:class:`ResultFileError` naming what is wrong, never read as other numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pandas as pd

from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .cluster import Cluster, ClusterTestInfo
from .results import PermutationClusterResult, TimeseriesFit
from .saving import ATTRS_DIGEST, DIGEST, FIT_APART, FORMAT, RESULT_APART, VERSION, array_digest, attrs_digest

__all__ = ["load_result", "ResultFileError"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Result settings added after files were first written: a file without them is read with the meaning it had.
_ADDED_LATER = ("correction", "thresholds")
_DAMAGED_FIX = ("Save the result again from the Python session that holds it (result.save), or rerun the "
                "analysis (with the same checkpoint= it resumes from the finished permutations).")


class ResultFileError(ValueError):
    """A file :func:`load_result` cannot read: not a clusterlmer result, damaged, or from a newer clusterlmer."""


class _Damaged(Exception):
    """What is missing or unreadable in a result file; :func:`load_result` names the file."""


def _check_digests(f):
    """After a successful read: attributes changed after writing, or a dataset replaced without its checksum."""
    import h5py

    if ATTRS_DIGEST not in f.attrs:
        return  # written before files carried checksums
    nodes = [("/", f)]
    f.visititems(lambda name, obj: nodes.append((name, obj)))
    for name, obj in nodes:
        if isinstance(obj, h5py.Dataset):
            if DIGEST not in obj.attrs:
                raise _Damaged(f"the dataset {obj.name!r} has no checksum (it was replaced after writing)")
        elif obj.attrs.get(ATTRS_DIGEST) != attrs_digest(obj):
            raise _Damaged(f"the attributes (settings) of {_where(obj)} do not match their checksum (they were "
                           "changed after writing)")


def _unplain(value):
    if isinstance(value, dict):
        if "__array__" in value:
            return np.array(value["__array__"], dtype=np.dtype(value["dtype"]))
        if "__tuple__" in value:
            return tuple(_unplain(v) for v in value["__tuple__"])
        return {k: _unplain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    return value


def _where(node) -> str:
    return "the file's top level" if node.name == "/" else f"{node.name!r}"


def _group(parent, name):
    import h5py

    if not isinstance(parent.get(name), h5py.Group):
        raise _Damaged(f"the group {(parent.name.rstrip('/') + '/' + name)!r} is missing")
    return parent[name]


def _dataset(group, name):
    ds = group[name]
    try:
        arr = ds[()]
    except OSError as exc:  # e.g. a chunk cut off by truncation
        raise _Damaged(f"the dataset {name!r} in {_where(group)} cannot be read ({exc})") from None
    if DIGEST in ds.attrs and ds.attrs[DIGEST] != array_digest(arr):
        raise _Damaged(f"the dataset {name!r} in {_where(group)} does not match its checksum (its bytes "
                       "changed after writing)")
    return arr


def _attr(group, name, parse=True):
    if name not in group.attrs:
        raise _Damaged(f"the attribute {name!r} of {_where(group)} is missing")
    value = group.attrs[name]
    if not parse:
        return value
    try:
        return _unplain(json.loads(value))
    except (ValueError, TypeError, KeyError) as exc:  # json.JSONDecodeError is a ValueError
        raise _Damaged(f"the attribute {name!r} of {_where(group)} is not valid JSON ({exc})") from None


def _get(group, name):
    import h5py

    if isinstance(group.get(name), h5py.Dataset):
        return _dataset(group, name)
    if name not in group.attrs:
        raise _Damaged(f"{name!r} (dataset or attribute) is missing from {_where(group)}")
    return _attr(group, name)


def _get_frame(group) -> pd.DataFrame:
    columns = _attr(group, "columns")
    data = {}
    for col in columns:
        if col in group:
            data[col] = _dataset(group, col)
        elif f"text:{col}" in group.attrs:
            data[col] = np.array(_attr(group, f"text:{col}"), dtype=object)
        else:
            raise _Damaged(f"the column {col!r} of the table {group.name!r} is missing")
    if len({len(v) for v in data.values()}) > 1:
        raise _Damaged(f"the columns of the table {group.name!r} differ in length")
    return pd.DataFrame(data, columns=columns)


def _get_fields(group, cls, skip=()):
    # A field added with a default (e.g. the fit's coefficient DF) may be absent from older files.
    return {f.name: _get(group, f.name) for f in dataclasses.fields(cls)
            if f.name not in skip and (f.default is dataclasses.MISSING or f.name in group or f.name in group.attrs)}


def _not_a_result(path, f) -> str:
    """Why an HDF5 file without the result format mark is not a result, and what it may be instead."""
    kind = f.attrs.get("format")
    if kind == CHECKPOINT_FORMAT:
        return (f"{path!r} is a clusterlmer checkpoint (the finished permutations of a run), not a result. Rerun "
                "permutation_cluster_lmer (or 'clusterlmer run') with checkpoint= this file to finish the run "
                "and get the result, then result.save('x.h5').")
    with open(path, "rb") as fh:
        head = fh.read(128)
    if head.startswith(b"MATLAB 7.3 MAT-file"):
        return (f"{path!r} is a MATLAB v7.3 MAT-file, not a clusterlmer result: load data with "
                "cl.load_mat; load_result reads the .h5 files written by result.save('x.h5').")
    return (f"{path!r} is an HDF5 file but not a clusterlmer result (it lacks the format mark "
            f"{FORMAT!r} that result.save('x.h5') writes).")


def _check_version(path, f):
    version = f.attrs.get("version")
    if version is None:
        raise _Damaged("the format version (attribute 'version' of the file's top level) is missing")
    try:
        number = int(version)
        if number != version:
            raise ValueError
    except (TypeError, ValueError):
        raise _Damaged(f"the format version {version!r} is not a whole number") from None
    if number > VERSION:
        from . import __version__

        raise ResultFileError(
            f"{path!r} was written by a newer clusterlmer (result format version {number}); this clusterlmer "
            f"({__version__}) reads format version {VERSION}. Upgrade clusterlmer (pip install --upgrade "
            "clusterlmer, or update your clone) to read it."
        )
    if number < 1:
        raise _Damaged(f"the format version {number} is not one clusterlmer ever wrote")


def _read_result(f) -> PermutationClusterResult:
    import h5py

    fit_group = _group(f, "fit")
    fit_fields = _get_fields(fit_group, TimeseriesFit, skip=FIT_APART)
    fit = TimeseriesFit(diagnostics=_get_frame(_group(fit_group, "diagnostics")), **fit_fields)
    missing = tuple(name for name in _ADDED_LATER if name not in f.attrs)
    top = _get_fields(f, PermutationClusterResult, skip=RESULT_APART + missing)
    top.setdefault("correction", "tfce" if top["cluster_stat"] == "tfce" else "cluster")
    shape = np.shape(fit.F)[1:]
    if len(fit.diagnostics) != int(np.prod(shape)):
        raise _Damaged(f"the fit's diagnostics have {len(fit.diagnostics)} rows for {int(np.prod(shape))} samples")
    per_term = {name: {} for name in ("stat", "null", "p_clust", "refit_failures", "cluster_info")}
    for i, expected in enumerate(top["terms"]):
        g = _group(f, f"term{i}")
        term = _attr(g, "term", parse=False)
        if term != expected:
            raise _Damaged(f"the group {g.name!r} holds the term {term!r}, the file's term list says {expected!r}")
        for name in ("stat", "null", "p_clust", "refit_failures"):
            if not isinstance(g.get(name), h5py.Dataset):
                raise _Damaged(f"the dataset {name!r} of the term {term!r} ({g.name!r}) is missing")
            per_term[name][term] = arr = _dataset(g, name)
            want = shape + (top["n_permutations"],) if name == "null" else shape
            if arr.shape != want:
                raise _Damaged(f"the dataset {name!r} of the term {term!r} has shape {arr.shape}, not {want}")
        ig = _group(g, "cluster_info")
        n_clusters = int(_attr(ig, "n_clusters", parse=False))
        # A cluster's shape is its statistic map's; files written before it was a field hold a mask instead.
        clusters = []
        for j in range(n_clusters):
            fields = _get_fields(_group(ig, f"cluster{j}"), Cluster, skip=("shape",))
            fields["indices"] = tuple(np.asarray(i, dtype=np.intp) for i in fields["indices"])
            clusters.append(Cluster(**fields, shape=per_term["stat"][term].shape))
        per_term["cluster_info"][term] = ClusterTestInfo(clusters=clusters,
                                                         **_get_fields(ig, ClusterTestInfo, skip=("clusters",)))
    clusters = _get_frame(_group(f, "clusters"))
    sweep = _get_frame(_group(f, "threshold_sweep")) if "threshold_sweep" in f else None
    return PermutationClusterResult(fit=fit, clusters=clusters, threshold_sweep=sweep, **per_term, **top)


def load_result(path) -> PermutationClusterResult:
    """Read a result saved as ``.h5`` by :meth:`PermutationClusterResult.save`.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    PermutationClusterResult
        Equal to the saved one (arrays, tables, settings and nulls).

    Raises
    ------
    FileNotFoundError
        When there is no such file.
    ResultFileError
        A subclass of ``ValueError``: the file is not a clusterlmer result
        (another HDF5 file, a checkpoint, a MAT-file), is damaged (truncated,
        a group, dataset or attribute missing or unreadable; the message
        names it), or was written by a newer clusterlmer (format version).
    """
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such result file: {path!r}")
    if os.path.splitext(path)[1].lower() not in (".h5", ".hdf5"):
        raise ResultFileError(
            f"load_result reads the .h5 files written by result.save('x.h5'); {path!r} is not one (a .mat "
            "result opens in MATLAB or with scipy/h5py, a .mat data file with cl.load_mat; a .csv with pandas).")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        with open(path, "rb") as fh:
            head = fh.read(4096)
        if not any(head[i:i + 8] == _HDF5_SIGNATURE for i in (0, 512, 1024, 2048)):
            raise ResultFileError(f"{path!r} is not an HDF5 file, so not a result written by "
                                  "result.save('x.h5').") from None
        reason = "it is truncated (an incomplete copy or download?)" if "truncated" in str(exc) else str(exc)
        raise ResultFileError(f"{path!r} is a damaged HDF5 file and cannot be opened: {reason}. "
                              f"{_DAMAGED_FIX}") from None
    with f:
        try:
            if f.attrs.get("format") != FORMAT:
                raise ResultFileError(_not_a_result(path, f))
            _check_version(path, f)
            result = _read_result(f)
            _check_digests(f)
            return result
        except ResultFileError:
            raise
        except _Damaged as exc:
            raise ResultFileError(f"{path!r} is a damaged clusterlmer result: {exc}. {_DAMAGED_FIX}") from None
        except (KeyError, ValueError, TypeError, OSError, RuntimeError) as exc:  # damage not named above
            raise ResultFileError(f"{path!r} is a damaged clusterlmer result ({type(exc).__name__}: {exc}). "
                                  f"{_DAMAGED_FIX}") from None
