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
import json
import os
import re

import numpy as np
import pandas as pd

from .cluster import Cluster, ClusterTestInfo
from .io import write_mat73
from .results import PermutationClusterResult, TimeseriesFit

__all__ = ["save_result", "load_result", "matlab_field_name"]

_FORMAT = "clusterlmer-result"
_VERSION = 1
_SUFFIXES = (".mat", ".h5", ".hdf5", ".csv")


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


def _put(group, name, value):
    """Store one value: arrays as (compressed) datasets, everything else as JSON attributes."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        big = value.size > 4096
        group.create_dataset(name, data=value, chunks=True if big else None,
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


def _get(group, name):
    if name in group:
        return group[name][()]
    return _unplain(json.loads(group.attrs[name]))


def _put_frame(group, frame: pd.DataFrame):
    group.attrs["columns"] = json.dumps([str(c) for c in frame.columns])
    for col in frame.columns:
        values = frame[col].to_numpy()
        if values.dtype.kind in "fiub":
            group.create_dataset(str(col), data=values)
        else:
            group.attrs[f"text:{col}"] = json.dumps([None if v is None else str(v) for v in values])


def _get_frame(group) -> pd.DataFrame:
    columns = json.loads(group.attrs["columns"])
    data = {}
    for col in columns:
        data[col] = group[col][()] if col in group else np.array(json.loads(group.attrs[f"text:{col}"]), dtype=object)
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
                g.create_dataset("stat", data=result.stat[term])
                null = result.null[term]
                # One chunk per sample's whole permutation distribution: the access pattern of thresholds.
                g.create_dataset("null", data=null, compression="gzip", compression_opts=4, shuffle=True,
                                 chunks=(1,) * (null.ndim - 1) + (null.shape[-1],) if null.size else None)
                g.create_dataset("p_clust", data=result.p_clust[term])
                g.create_dataset("refit_failures", data=result.refit_failures[term])
                info = result.cluster_info[term]
                ig = g.create_group("cluster_info")
                _put_dataclass(ig, info, skip=("clusters",))
                ig.attrs["n_clusters"] = len(info.clusters)
                for j, c in enumerate(info.clusters):
                    _put_dataclass(ig.create_group(f"cluster{j}"), c)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_result(path) -> PermutationClusterResult:
    """Read a result saved as ``.h5`` by :meth:`PermutationClusterResult.save`.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    PermutationClusterResult
        Equal to the saved one (arrays, tables, settings and nulls).
    """
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such result file: {path!r}")
    if os.path.splitext(path)[1].lower() not in (".h5", ".hdf5"):
        raise ValueError(f"load_result reads the .h5 files written by result.save('x.h5'); {path!r} is not one "
                         "(a .mat result opens in MATLAB or with scipy/h5py; a .csv with pandas).")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path!r} is not a readable HDF5 file ({exc}).") from None
    with f:
        if f.attrs.get("format") != _FORMAT:
            raise ValueError(f"{path!r} is not a clusterlmer result file (written by result.save('x.h5')).")
        fit_fields = _get_fields(f["fit"], TimeseriesFit, skip=("diagnostics", "source"))
        fit = TimeseriesFit(diagnostics=_get_frame(f["fit"]["diagnostics"]), **fit_fields)
        top = _get_fields(f, PermutationClusterResult, skip=("fit", "stat", "null", "p_clust", "cluster_info",
                                                             "clusters", "refit_failures"))
        per_term = {name: {} for name in ("stat", "null", "p_clust", "refit_failures", "cluster_info")}
        for i in range(len(top["terms"])):
            g = f[f"term{i}"]
            term = g.attrs["term"]
            for name in ("stat", "null", "p_clust", "refit_failures"):
                per_term[name][term] = g[name][()]
            ig = g["cluster_info"]
            clusters = [Cluster(**_get_fields(ig[f"cluster{j}"], Cluster)) for j in range(int(ig.attrs["n_clusters"]))]
            per_term["cluster_info"][term] = ClusterTestInfo(clusters=clusters,
                                                             **_get_fields(ig, ClusterTestInfo, skip=("clusters",)))
        clusters = _get_frame(f["clusters"])
    return PermutationClusterResult(fit=fit, clusters=clusters, **per_term, **top)
