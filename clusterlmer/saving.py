"""Result files: MATLAB ``.mat``, full-fidelity HDF5 ``.h5``, and CSV.

* ``.mat`` (v7.3): the original's struct ``lme.<term>.{F, p, p_clust}``
  (1-way ``t`` analyses: ``lme.{t, p, p_clust}``), plus ``DF1``/``DF2``, the
  times, the cluster table and the settings, for MATLAB users' own scripts.
* ``.h5``: everything, including the null distributions (chunked and
  compressed), readable back with :func:`load_result` into an equal result.
* ``.csv``: the tidy table of :meth:`PermutationClusterResult.to_frame`.

Results are never pickled: loading a pickle runs code from the file, which
is unsafe for files received from others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re

import numpy as np
import pandas as pd

from .checkpoint import _FORMAT as _CHECKPOINT_FORMAT
from .cluster import Cluster, ClusterTestInfo
from .io import write_mat73
from .results import PermutationClusterResult, TimeseriesFit

__all__ = ["save_result", "load_result", "matlab_field_name", "ResultFileError"]

_FORMAT = "clusterlmer-result"
_VERSION = 1
_SUFFIXES = (".mat", ".h5", ".hdf5", ".csv")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_DAMAGED_FIX = ("Save the result again from the Python session that holds it (result.save), or rerun the "
                "analysis (with the same checkpoint= it resumes from the finished permutations).")


class ResultFileError(ValueError):
    """A file :func:`load_result` cannot read: not a clusterlmer result, damaged, or from a newer clusterlmer."""


class _Damaged(Exception):
    """What is missing or unreadable in a result file; :func:`load_result` names the file."""


def matlab_field_name(term: str) -> str:
    """A valid MATLAB identifier for a term: ``"hit_miss:region"`` -> ``"hit_miss_region"``."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", term).strip("_")
    name = re.sub(r"_+", "_", name)
    if not name or not name[0].isalpha():
        name = "x" + name
    return name[:63]


def _row(arr):
    """MATLAB keeps the seed's statistics as 1 x n_times rows; 2-D samples stay n_times x n_freqs."""
    arr = np.asarray(arr, dtype=float)
    return arr[None, :] if arr.ndim == 1 else arr


def _matlab_struct(result: PermutationClusterResult) -> dict:
    fit = result.fit
    stat_name = result.statistic
    per_term = {}
    for term in result.terms:
        i = fit.terms.index(term)
        per_term[term] = {
            "term": term,
            stat_name: _row(result.stat[term]),
            "p": _row(fit.p[i]),
            "p_clust": _row(result.p_clust[term]),
            "DF1": _row(fit.df1[i]),
            "DF2": _row(fit.df2[i]),
            "refit_failures": _row(result.refit_failures[term]),
        }
    if result.statistic == "t" and len(result.terms) == 1:
        lme = dict(per_term[result.terms[0]])  # the 1-way original: lme.t, lme.p, lme.p_clust
    else:
        # The fields added below must not overwrite a term's struct (e.g. a predictor named "times").
        lme, used = {}, {"times", "clusters", "settings", "freqs"}
        for term, fields in per_term.items():
            name = matlab_field_name(term)
            while name in used:
                name += "_"
            used.add(name)
            lme[name] = fields
    clusters = result.clusters.copy()
    clusters["term"] = clusters["term"].astype(str)
    lme.update(
        times=_row(fit.times),
        clusters=clusters if len(clusters) else None,
        settings={
            "formula": fit.formula,
            "statistic": result.statistic,
            "tail": float(result.tail),
            "alpha": result.alpha,
            "cluster_alpha": result.cluster_alpha,
            "cluster_stat": result.cluster_stat,
            "quantile_method": result.quantile_method,
            "n_permutations": float(result.n_permutations),
            "seed": str(result.seed),
            "fit_method": "REML" if fit.options["reml"] else "ML",
            "ddf": fit.options["ddf"],
            "coding": fit.options["coding"],
            "terms": list(result.terms),
        },
    )
    if fit.freqs is not None:
        lme["freqs"] = _row(fit.freqs)
    return {"lme": lme}


def save_result(result: PermutationClusterResult, path):
    """Write a result as ``.mat``, ``.h5``/``.hdf5`` or ``.csv`` (chosen by the suffix).

    Parameters
    ----------
    result : PermutationClusterResult
    path : str or path-like

    Returns
    -------
    str
        The path written.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"cannot tell the format of {path!r}: use a name ending in .mat (MATLAB), "
                         ".h5 (everything, readable with cl.load_result) or .csv (table).")
    if suffix == ".mat":
        tmp = f"{path}.tmp-{os.getpid()}"  # written next to the target, then renamed: never half a file
        try:
            write_mat73(tmp, _matlab_struct(result))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    elif suffix == ".csv":
        result.to_frame().to_csv(path, index=False)
    else:
        _write_h5(result, path)
    return path


# ---- HDF5: everything, generic over the dataclass fields


# Checksums: every dataset holds the SHA-256 of its array, every group (and the top level) that of its
# attributes, so that a file damaged after writing is refused by load_result instead of read as other
# numbers. Files without them (written before) are read unchecked.
_DIGEST = "sha256"
_ATTRS_DIGEST = "attrs_sha256"


def _array_digest(arr) -> str:
    arr = np.ascontiguousarray(arr)  # no copy when it already is (as every array read back from a file)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr.reshape(-1)).cast("B"))
    return h.hexdigest()


def _attrs_digest(node) -> str:
    items = sorted((k, json.dumps(_plain(v))) for k, v in node.attrs.items() if k != _ATTRS_DIGEST)
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def _create(group, name, value, **kwargs):
    """A dataset that carries the SHA-256 of its array."""
    value = np.asarray(value)
    ds = group.create_dataset(name, data=value, **kwargs)
    ds.attrs[_DIGEST] = _array_digest(value)
    return ds


def _seal(f):
    """Record each group's attribute checksum, once everything is written."""
    import h5py

    groups = [f]
    f.visititems(lambda _, obj: groups.append(obj) if isinstance(obj, h5py.Group) else None)
    for g in groups:
        g.attrs[_ATTRS_DIGEST] = _attrs_digest(g)


def _check_digests(f):
    """After a successful read: attributes changed after writing, or a dataset replaced without its checksum."""
    import h5py

    if _ATTRS_DIGEST not in f.attrs:
        return  # written before files carried checksums
    nodes = [("/", f)]
    f.visititems(lambda name, obj: nodes.append((name, obj)))
    for name, obj in nodes:
        if isinstance(obj, h5py.Dataset):
            if _DIGEST not in obj.attrs:
                raise _Damaged(f"the dataset {obj.name!r} has no checksum (it was replaced after writing)")
        elif obj.attrs.get(_ATTRS_DIGEST) != _attrs_digest(obj):
            raise _Damaged(f"the attributes (settings) of {_where(obj)} do not match their checksum (they were "
                           "changed after writing)")


def _put(group, name, value):
    """Store one value: arrays as (compressed) datasets, everything else as JSON attributes."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        big = value.size > 4096
        _create(group, name, value, chunks=True if big else None,
                compression="gzip" if big else None, shuffle=big)
    else:
        group.attrs[name] = json.dumps(_plain(value))


def _plain(value):
    if isinstance(value, np.ndarray):
        return {"__array__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return {"__tuple__": [_plain(v) for v in value]} if isinstance(value, tuple) else [_plain(v) for v in value]
    return value


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
    if _DIGEST in ds.attrs and ds.attrs[_DIGEST] != _array_digest(arr):
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


def _put_frame(group, frame: pd.DataFrame):
    group.attrs["columns"] = json.dumps([str(c) for c in frame.columns])
    for col in frame.columns:
        values = frame[col].to_numpy()
        if values.dtype.kind in "fiub":
            _create(group, str(col), values)
        else:
            group.attrs[f"text:{col}"] = json.dumps([None if v is None else str(v) for v in values])


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


def _put_dataclass(group, obj, skip=()):
    for f in dataclasses.fields(obj):
        if f.name not in skip:
            _put(group, f.name, getattr(obj, f.name))


def _get_fields(group, cls, skip=()):
    return {f.name: _get(group, f.name) for f in dataclasses.fields(cls) if f.name not in skip}


def _write_h5(result: PermutationClusterResult, path):
    import h5py

    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = _FORMAT
            f.attrs["version"] = _VERSION
            fit_group = f.create_group("fit")
            _put_dataclass(fit_group, result.fit, skip=("diagnostics", "source"))  # no data in files
            _put_frame(fit_group.create_group("diagnostics"), result.fit.diagnostics)
            _put_dataclass(f, result, skip=("fit", "stat", "null", "p_clust", "cluster_info", "clusters",
                                            "refit_failures"))
            _put_frame(f.create_group("clusters"), result.clusters)
            for i, term in enumerate(result.terms):
                g = f.create_group(f"term{i}")
                g.attrs["term"] = term
                _create(g, "stat", result.stat[term])
                null = result.null[term]
                # One chunk per sample's whole permutation distribution: the access pattern of thresholds.
                _create(g, "null", null, compression="gzip", compression_opts=4, shuffle=True,
                        chunks=(1,) * (null.ndim - 1) + (null.shape[-1],) if null.size else None)
                _create(g, "p_clust", result.p_clust[term])
                _create(g, "refit_failures", result.refit_failures[term])
                info = result.cluster_info[term]
                ig = g.create_group("cluster_info")
                _put_dataclass(ig, info, skip=("clusters",))
                ig.attrs["n_clusters"] = len(info.clusters)
                for j, c in enumerate(info.clusters):
                    _put_dataclass(ig.create_group(f"cluster{j}"), c)
            _seal(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _not_a_result(path, f) -> str:
    """Why an HDF5 file without the result format mark is not a result, and what it may be instead."""
    kind = f.attrs.get("format")
    if kind == _CHECKPOINT_FORMAT:
        return (f"{path!r} is a clusterlmer checkpoint (the finished permutations of a run), not a result. Rerun "
                "permutation_cluster_lmer (or 'clusterlmer run') with checkpoint= this file to finish the run "
                "and get the result, then result.save('x.h5').")
    with open(path, "rb") as fh:
        head = fh.read(128)
    if head.startswith(b"MATLAB 7.3 MAT-file"):
        return (f"{path!r} is a MATLAB v7.3 MAT-file, not a clusterlmer result: load data with "
                "cl.load_mat; load_result reads the .h5 files written by result.save('x.h5').")
    return (f"{path!r} is an HDF5 file but not a clusterlmer result (it lacks the format mark "
            f"{_FORMAT!r} that result.save('x.h5') writes).")


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
    if number > _VERSION:
        from . import __version__

        raise ResultFileError(
            f"{path!r} was written by a newer clusterlmer (result format version {number}); this clusterlmer "
            f"({__version__}) reads format version {_VERSION}. Upgrade clusterlmer (pip install --upgrade "
            "clusterlmer, or update your clone) to read it."
        )
    if number < 1:
        raise _Damaged(f"the format version {number} is not one clusterlmer ever wrote")


def _read_result(f) -> PermutationClusterResult:
    import h5py

    fit_group = _group(f, "fit")
    fit_fields = _get_fields(fit_group, TimeseriesFit, skip=("diagnostics", "source"))
    fit = TimeseriesFit(diagnostics=_get_frame(_group(fit_group, "diagnostics")), **fit_fields)
    top = _get_fields(f, PermutationClusterResult, skip=("fit", "stat", "null", "p_clust", "cluster_info",
                                                         "clusters", "refit_failures"))
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
        clusters = [Cluster(**_get_fields(_group(ig, f"cluster{j}"), Cluster)) for j in range(n_clusters)]
        per_term["cluster_info"][term] = ClusterTestInfo(clusters=clusters,
                                                         **_get_fields(ig, ClusterTestInfo, skip=("clusters",)))
    clusters = _get_frame(_group(f, "clusters"))
    return PermutationClusterResult(fit=fit, clusters=clusters, **per_term, **top)


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
            if f.attrs.get("format") != _FORMAT:
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
