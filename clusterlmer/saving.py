"""Writing result files: MATLAB ``.mat``, full-fidelity HDF5 ``.h5``, and CSV.

* ``.mat`` (v7.3): the original analyses' struct ``lme.<term>.{F, p, p_clust}``
  (1-way ``t`` analyses: ``lme.{t, p, p_clust}``), plus ``DF1``/``DF2``, the
  times, the cluster table and the settings, for MATLAB users' own scripts.
* ``.h5``: everything, including the null distributions (chunked and
  compressed), readable back with :func:`clusterlmer.load_result`
  (:mod:`clusterlmer.loading`) into an equal result.
* ``.csv``: the tidy table of :meth:`PermutationClusterResult.to_frame`.

This module defines the ``.h5`` layout (format mark, version, checksums) and
writes it from any result object's fields; it does not import the result
classes (``result.save`` imports it), so the reader lives apart. Results are
never pickled: loading a pickle runs code from the file, which is unsafe for
files received from others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re

import numpy as np
import pandas as pd

from .io import write_mat73

__all__ = ["save_result", "matlab_field_name", "FORMAT", "VERSION", "DIGEST", "ATTRS_DIGEST", "FIT_APART",
           "RESULT_APART", "array_digest", "attrs_digest"]

FORMAT = "clusterlmer-result"  # the .h5 file's format mark (top-level attribute "format")
VERSION = 1  # the .h5 layout's version (attribute "version"): readers refuse newer ones
# Fields not stored as plain values: the fit's diagnostics table (a group of its own), its data and
# its mne.Info (never saved); the result's per-term arrays and clusters (groups "term<i>", "clusters")
# and its fit.
FIT_APART = ("diagnostics", "source", "info")
RESULT_APART = ("fit", "stat", "null", "p_clust", "cluster_info", "clusters", "refit_failures", "threshold_sweep")


_SUFFIXES = (".mat", ".h5", ".hdf5", ".csv")


def matlab_field_name(term: str) -> str:
    """A valid MATLAB identifier for a term: ``"hit_miss:region"`` -> ``"hit_miss_region"``."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", term).strip("_")
    name = re.sub(r"_+", "_", name)
    if not name or not name[0].isalpha():
        name = "x" + name
    return name[:63]


def _row(arr):
    """1-D statistics as 1 x n_times rows (as the original MATLAB analyses hold them); 2-D ones as they are."""
    arr = np.asarray(arr, dtype=float)
    return arr[None, :] if arr.ndim == 1 else arr


def _matlab_struct(result) -> dict:
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
        lme, used = {}, {"times", "clusters", "settings", "freqs", "threshold_sweep"}
        for term, fields in per_term.items():
            name = matlab_field_name(term)
            while name in used:
                name += "_"
            used.add(name)
            lme[name] = fields
    clusters = result.clusters.copy()
    clusters["term"] = clusters["term"].astype(str)
    sweep = result.threshold_sweep
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
            "correction": result.correction,
            "thresholds": np.asarray(result.thresholds, dtype=float),
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
    if sweep is not None and len(sweep):
        lme["threshold_sweep"] = sweep.assign(term=sweep["term"].astype(str))
    return {"lme": lme}


def save_result(result, path):
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
DIGEST = "sha256"
_BLOCK_BYTES = 256 * 2 ** 20  # large arrays are written and hashed in blocks of rows of about this size
ATTRS_DIGEST = "attrs_sha256"


def _row_blocks(arr, block_bytes=_BLOCK_BYTES):
    """Consecutive slices along the first axis of about ``block_bytes`` each (the whole array when 0-D)."""
    if arr.ndim == 0 or arr.nbytes <= block_bytes:
        yield slice(None)
        return
    step = max(1, block_bytes // max(1, arr.nbytes // arr.shape[0]))
    for start in range(0, arr.shape[0], step):
        yield slice(start, start + step)


def array_digest(arr) -> str:
    """The SHA-256 of an array's dtype, shape and bytes (stored in each dataset's ``DIGEST`` attribute).

    Hashed a block of rows at a time, so a null held in a memory-mapped file is never copied whole.
    """
    arr = np.asarray(arr)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    for rows in _row_blocks(arr):
        part = np.ascontiguousarray(arr[rows])  # no copy when it already is (as every array read back from a file)
        h.update(memoryview(part.reshape(-1)).cast("B"))
    return h.hexdigest()


def attrs_digest(node) -> str:
    """The SHA-256 of a group's attributes but this one (stored as its ``ATTRS_DIGEST`` attribute)."""
    items = sorted((k, json.dumps(_plain(v))) for k, v in node.attrs.items() if k != ATTRS_DIGEST)
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def _create(group, name, value, **kwargs):
    """A dataset that carries the SHA-256 of its array."""
    value = np.asarray(value)
    if value.ndim == 0 or value.nbytes <= _BLOCK_BYTES:
        ds = group.create_dataset(name, data=value, **kwargs)
    else:  # a large (possibly memory-mapped) null: written a block of rows at a time
        ds = group.create_dataset(name, shape=value.shape, dtype=value.dtype, **kwargs)
        for rows in _row_blocks(value):
            ds[rows] = value[rows]
    ds.attrs[DIGEST] = array_digest(value)
    return ds


def _seal(f):
    """Record each group's attribute checksum, once everything is written."""
    import h5py

    groups = [f]
    f.visititems(lambda _, obj: groups.append(obj) if isinstance(obj, h5py.Group) else None)
    for g in groups:
        g.attrs[ATTRS_DIGEST] = attrs_digest(g)


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


def _put_frame(group, frame: pd.DataFrame):
    group.attrs["columns"] = json.dumps([str(c) for c in frame.columns])
    for col in frame.columns:
        values = frame[col].to_numpy()
        if values.dtype.kind in "fiub":
            _create(group, str(col), values)
        else:
            group.attrs[f"text:{col}"] = json.dumps([None if v is None else str(v) for v in values])


def _put_dataclass(group, obj, skip=()):
    for f in dataclasses.fields(obj):
        if f.name not in skip:
            _put(group, f.name, getattr(obj, f.name))


def _write_h5(result, path):
    import h5py

    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            fit_group = f.create_group("fit")
            _put_dataclass(fit_group, result.fit, skip=FIT_APART)  # no data in files
            _put_frame(fit_group.create_group("diagnostics"), result.fit.diagnostics)
            _put_dataclass(f, result, skip=RESULT_APART)
            _put_frame(f.create_group("clusters"), result.clusters)
            if result.threshold_sweep is not None:
                _put_frame(f.create_group("threshold_sweep"), result.threshold_sweep)
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
                    cg = ig.create_group(f"cluster{j}")
                    _put_dataclass(cg, c, skip=("shape", "indices"))  # shape: the stat's
                    # one row per axis, as a dataset: a large cluster's indices outgrow an HDF5 attribute
                    _create(cg, "indices", np.asarray(c.indices, dtype=np.int64).reshape(len(c.indices), -1))
            _seal(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
