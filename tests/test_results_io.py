"""Saving and loading PermutationClusterResult: .h5 (everything), .mat (MATLAB struct lme), .csv.

Real fits on a small simulated dataset with the default engine (auto: native, whose fit options
also hold the R cross-check, which must survive the round trip); the big-null test builds its
arrays synthetically.
"""

from __future__ import annotations

import dataclasses
import numbers
import time

import h5py
import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from clusterlmer.cluster import Cluster, ClusterTestInfo
from clusterlmer.results import PermutationClusterResult, TimeseriesFit, cluster_table

FORMULA_2WAY = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"
FORMULA_1WAY = "data ~ hit_miss + (1|sid) + (1|sid:ch)"


@pytest.fixture(scope="module")
def res2():
    """2-way F result: three tested terms."""
    data = cl.simulate_ieeg("2way", n_subjects=6, n_channels=24, n_times=12, seed=3)
    return cl.permutation_cluster_lmer(data, FORMULA_2WAY, n_permutations=8, seed=1, progress=False)


@pytest.fixture(scope="module")
def res1():
    """1-way signed-t result (two-tailed: both thresholds, null_max and null_min)."""
    data = cl.simulate_ieeg("1way", n_subjects=6, n_channels=24, n_times=12, seed=3, hit_miss_effect=2.0)
    return cl.permutation_cluster_lmer(data, FORMULA_1WAY, n_permutations=8, seed=2, statistic="t",
                                       progress=False)


@pytest.fixture(params=["res2", "res1"])
def result(request):
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------------------
# Field-by-field equality
# ---------------------------------------------------------------------------


def assert_same(a, b, where="result"):
    """Recursive equality of everything a result holds: arrays (values, dtype, NaN), frames, dataclasses."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        # compare=False marks what is not part of the result (TimeseriesFit.source: the data, never saved).
        for f in (f for f in dataclasses.fields(a) if f.compare):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, pd.DataFrame):
        assert isinstance(b, pd.DataFrame), where
        pd.testing.assert_frame_equal(a, b, obj=where)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), f"{where}: {type(b).__name__} is not an ndarray"
        assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} != {b.dtype}"
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert isinstance(b, dict), where
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, numbers.Number) and not isinstance(a, bool):
        # np.float64 is a float: a numpy scalar read back as the Python number is the same value.
        assert isinstance(b, numbers.Number) and not isinstance(b, bool), f"{where}: {b!r} is not a number"
        assert isinstance(a, numbers.Integral) == isinstance(b, numbers.Integral), f"{where}: {a!r} vs {b!r}"
        assert a == b or (np.isnan(a) and np.isnan(b)), f"{where}: {a!r} != {b!r}"
    else:
        assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_h5_round_trip_equal_field_by_field(result, tmp_path):
    path = result.save(tmp_path / "r.h5")
    assert str(path).endswith("r.h5")
    back = cl.load_result(tmp_path / "r.h5")
    assert isinstance(back, PermutationClusterResult) and isinstance(back.fit, TimeseriesFit)

    # Everything, generically ...
    assert_same(result, back)

    # ... and the fields the MATLAB/plotting users rely on, spelled out.
    fit, fit2 = result.fit, back.fit
    for name in ("F", "df1", "df2", "p", "t", "estimates", "se", "times"):
        np.testing.assert_array_equal(getattr(fit, name), getattr(fit2, name), err_msg=name)
    assert fit2.freqs is None and fit2.terms == fit.terms and fit2.coef_names == fit.coef_names
    pd.testing.assert_frame_equal(fit.diagnostics, fit2.diagnostics)
    assert fit2.options == fit.options and fit2.levels == fit.levels and fit2.formula == fit.formula
    for term in result.terms:
        for name in ("stat", "null", "p_clust", "refit_failures"):
            np.testing.assert_array_equal(getattr(result, name)[term], getattr(back, name)[term],
                                          err_msg=f"{name}[{term}]")
        assert back.null[term].shape == result.fit.sample_shape + (result.n_permutations,)
        info, info2 = result.cluster_info[term], back.cluster_info[term]
        assert isinstance(info2, ClusterTestInfo)
        for name in ("threshold_upper", "threshold_lower", "null_max", "null_min"):
            x, y = getattr(info, name), getattr(info2, name)
            assert (x is None) == (y is None), name
            if x is not None:
                np.testing.assert_array_equal(x, y, err_msg=name)
        assert len(info2.clusters) == len(info.clusters)
        for c, c2 in zip(info.clusters, info2.clusters):
            assert isinstance(c2, Cluster)
            assert (c2.sign, c2.stat, c2.p, c2.start, c2.stop, c2.size) == (c.sign, c.stat, c.p, c.start, c.stop,
                                                                             c.size)
            np.testing.assert_array_equal(c.mask, c2.mask)
            assert c2.mask.dtype == bool
            assert len(c2.indices) == len(c.indices)
            for i, i2 in zip(c.indices, c2.indices):
                np.testing.assert_array_equal(i, i2)
    assert back.clusters.equals(result.clusters)
    for name in ("statistic", "terms", "n_permutations", "seed", "schemes", "tail", "alpha", "cluster_alpha",
                 "cluster_stat", "quantile_method", "run"):
        assert getattr(back, name) == getattr(result, name), name
    for term in result.terms:
        np.testing.assert_array_equal(back.h[term], result.h[term])
    assert back.summary() == result.summary()
    assert repr(back) == repr(result)
    pd.testing.assert_frame_equal(back.to_frame(), result.to_frame())


def test_t_result_is_two_tailed_with_both_nulls(res1):
    """The 1-way fixture exercises the lower threshold and null_min paths of the round trip."""
    info = res1.cluster_info["hit_miss"]
    assert res1.tail == 0 and info.threshold_lower is not None and info.null_min is not None
    assert len(res1.clusters) >= 1


def test_h5_round_trip_without_clusters(res2, tmp_path):
    """An empty cluster table (no sample crosses its threshold) survives too."""
    infos, p_clust = {}, {}
    stat = {t: np.zeros_like(res2.stat[t]) for t in res2.terms}
    for term in res2.terms:
        _, p_clust[term], infos[term] = cl.cluster_test(stat[term], res2.null[term] + 1.0, tail=1)
        assert not infos[term].clusters
    empty = dataclasses.replace(res2, stat=stat, p_clust=p_clust, cluster_info=infos,
                                clusters=cluster_table(infos, res2.times, statistic="F"))
    assert len(empty.clusters) == 0
    empty.save(tmp_path / "e.h5")
    back = cl.load_result(tmp_path / "e.h5")
    assert len(back.clusters) == 0
    assert list(back.clusters.columns) == list(empty.clusters.columns)
    assert back.summary() == empty.summary()
    for term in res2.terms:
        assert back.cluster_info[term].clusters == []


def test_h5_overwrites_and_leaves_no_temporary_file(res2, tmp_path):
    path = tmp_path / "r.h5"
    path.write_bytes(b"old")
    res2.save(path)
    assert cl.load_result(path).seed == res2.seed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]


# ---------------------------------------------------------------------------
# Null storage
# ---------------------------------------------------------------------------


def test_null_datasets_are_chunked_and_compressed(res2, tmp_path):
    res2.save(tmp_path / "r.h5")
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f.attrs["format"] == "clusterlmer-result"
        for i, term in enumerate(res2.terms):
            ds = f[f"term{i}/null"]
            assert f[f"term{i}"].attrs["term"] == term
            assert ds.shape == res2.null[term].shape == (12, 8)
            assert ds.chunks == (1, 8)  # one chunk per sample's permutation distribution
            assert ds.compression == "gzip"
            assert ds.shuffle


def _big_result(small, n_perm=1000, n_times=139, n_freqs=50, seed=0):
    """A result shaped like a real time x frequency run, 1000 permutations; synthetic arrays, no fits."""
    rng = np.random.default_rng(seed)
    shape = (n_times, n_freqs)
    times = np.round(np.arange(n_times) * 0.01 - 0.2, 10)
    freqs = np.geomspace(2.0, 150.0, n_freqs)
    fit = small.fit
    n_terms, n_coef, n = len(fit.terms), len(fit.coef_names), n_times * n_freqs
    diag = fit.diagnostics.iloc[np.zeros(n, dtype=int)].reset_index(drop=True)
    diag["sample"] = np.arange(n)
    diag["time"] = np.repeat(times, n_freqs)
    # Long per-sample text: far beyond HDF5's 64 kB compact attribute limit.
    diag["messages"] = "boundary (singular) fit: see help('isSingular')"
    big_fit = dataclasses.replace(
        fit, F=rng.chisquare(1, (n_terms,) + shape), df1=np.ones((n_terms,) + shape),
        df2=rng.uniform(20, 40, (n_terms,) + shape), p=rng.uniform(size=(n_terms,) + shape),
        t=rng.normal(size=(n_terms,) + shape), estimates=rng.normal(size=(n_coef,) + shape),
        se=rng.uniform(0.1, 1, (n_coef,) + shape), times=times, freqs=freqs, diagnostics=diag)
    stat, null, p_clust, info, failures = {}, {}, {}, {}, {}
    for k, term in enumerate(small.terms):
        obs = rng.chisquare(1, shape)
        obs[40 + 10 * k:80 + 10 * k, 10:35] += 25.0  # one big cluster (1000 samples) per term
        nul = rng.chisquare(1, shape + (n_perm,))
        nul[5, 7, :3] = np.nan  # a few failed refits
        stat[term], null[term] = obs, nul
        _, p_clust[term], info[term] = cl.cluster_test(obs, nul, tail=1)
        failures[term] = np.isnan(nul).sum(axis=-1)
    return dataclasses.replace(small, fit=big_fit, stat=stat, null=null, p_clust=p_clust, cluster_info=info,
                               clusters=cluster_table(info, times, freqs, statistic="F"), refit_failures=failures,
                               n_permutations=n_perm)


def test_null_of_1000_permutations_x_139_times_x_50_freqs_x_3_terms(res2, tmp_path):
    big = _big_result(res2)
    assert big.null["hit_miss"].shape == (139, 50, 1000) and len(big.terms) == 3
    assert big.clusters["size"].max() >= 1000 and {"f_start", "f_stop"} <= set(big.clusters.columns)
    path = tmp_path / "big.h5"
    start = time.perf_counter()
    big.save(path)
    written = time.perf_counter() - start
    start = time.perf_counter()
    back = cl.load_result(path)
    read = time.perf_counter() - start
    raw = sum(a.nbytes for a in big.null.values())
    size = path.stat().st_size
    print(f"\nbig null: {raw / 1e6:.0f} MB in memory -> {size / 1e6:.0f} MB on disk; "
          f"write {written:.1f} s, read {read:.1f} s")
    assert written < 30 and read < 30
    assert size < 1.05 * raw  # compressed (random chi-square values shrink little, but never grow)
    assert_same(big, back)
    assert back.summary() == big.summary()
    with h5py.File(path, "r") as f:
        ds = f["term0/null"]
        assert ds.chunks == (1, 1, 1000) and ds.compression == "gzip"


# ---------------------------------------------------------------------------
# .mat
# ---------------------------------------------------------------------------


def _mclass(obj):
    return obj.attrs["MATLAB_class"].decode()


def _char(ds):
    return np.asarray(ds[()]).ravel().astype("<u2").tobytes().decode("utf-16-le")


def _row(ds):
    """A MATLAB 1 x n double row (stored transposed as (n, 1)) as a 1-D array."""
    arr = ds[()]
    assert arr.ndim == 2 and arr.shape[1] == 1, ds.name
    return arr[:, 0]


def test_mat_2way_layout(res2, tmp_path):
    path = tmp_path / "r.mat"
    res2.save(path)
    assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    n = len(res2.times)
    with h5py.File(path, "r") as f:
        assert f.userblock_size == 512
        lme = f["lme"]
        assert _mclass(lme) == "struct"
        assert set(lme) >= {"hit_miss", "region", "hit_miss_region", "settings", "times", "clusters"}
        for term, name in (("hit_miss", "hit_miss"), ("region", "region"), ("hit_miss:region", "hit_miss_region")):
            g = lme[name]
            assert _mclass(g) == "struct"
            i = res2.fit.terms.index(term)
            for field, expected in (("F", res2.stat[term]), ("p", res2.fit.p[i]), ("p_clust", res2.p_clust[term]),
                                    ("DF1", res2.fit.df1[i]), ("DF2", res2.fit.df2[i]),
                                    ("refit_failures", res2.refit_failures[term])):
                ds = g[field]
                assert _mclass(ds) == "double", f"{name}.{field}"
                assert ds.shape == (n, 1)
                np.testing.assert_array_equal(_row(ds), expected, err_msg=f"{name}.{field}")
            np.testing.assert_array_equal(_row(g["F"]), res2.fit.F[i])
            assert _char(g["term"]) == term
        assert _mclass(lme["times"]) == "double"
        np.testing.assert_array_equal(_row(lme["times"]), res2.times)
        settings = lme["settings"]
        assert _mclass(settings) == "struct"
        assert _char(settings["formula"]) == res2.fit.formula
        assert _char(settings["statistic"]) == "F"
        assert settings["n_permutations"][()].item() == 8.0
        assert _char(settings["seed"]) == str(res2.seed)
        clusters = lme["clusters"]
        assert _mclass(clusters) == "struct"
        assert set(clusters) >= {"term", "start", "stop", "t_start", "t_stop", "size", "stat", "p"}
        p = clusters["p"][()]  # a DataFrame column is an n_clusters x 1 column: (1, n) in h5py
        assert p.shape == (1, len(res2.clusters))
        np.testing.assert_array_equal(p[0], res2.clusters["p"].to_numpy())
        terms = [_char(f[ref]) for ref in clusters["term"][()].ravel()]
        assert terms == res2.clusters["term"].tolist()
        assert "freqs" not in lme


def test_mat_1way_t_is_flat(res1, tmp_path):
    path = tmp_path / "t.mat"
    res1.save(path)
    with h5py.File(path, "r") as f:
        lme = f["lme"]
        assert _mclass(lme) == "struct"
        assert "hit_miss" not in lme  # lme.t, lme.p, lme.p_clust as the 1-way original
        i = res1.fit.terms.index("hit_miss")
        for field, expected in (("t", res1.stat["hit_miss"]), ("p", res1.fit.p[i]),
                                ("p_clust", res1.p_clust["hit_miss"]), ("DF1", res1.fit.df1[i]),
                                ("DF2", res1.fit.df2[i])):
            assert _mclass(lme[field]) == "double"
            np.testing.assert_array_equal(_row(lme[field]), expected, err_msg=field)
        np.testing.assert_array_equal(_row(lme["t"]), res1.fit.t[i])
        assert _char(lme["settings"]["statistic"]) == "t"
        assert {"times", "settings", "clusters"} <= set(lme)


def test_mat_term_named_like_a_struct_field_is_not_overwritten(res2, tmp_path):
    """A predictor named "settings" (or times, clusters, freqs) keeps its own struct."""
    new = {"hit_miss": "hit_miss", "region": "settings", "hit_miss:region": "hit_miss:settings"}
    renamed = dataclasses.replace(
        res2, fit=dataclasses.replace(res2.fit, terms=tuple(new.get(t, t) for t in res2.fit.terms)),
        terms=tuple(new[t] for t in res2.terms),
        **{name: {new[t]: v for t, v in getattr(res2, name).items()}
           for name in ("stat", "null", "p_clust", "cluster_info", "refit_failures")},
        clusters=res2.clusters.assign(term=res2.clusters["term"].map(new)))
    renamed.save(tmp_path / "s.mat")
    with h5py.File(tmp_path / "s.mat", "r") as f:
        lme = f["lme"]
        assert _char(lme["settings"]["formula"]) == res2.fit.formula  # the settings struct ...
        assert _char(lme["settings_"]["term"]) == "settings"  # ... and the term's, under another name
        np.testing.assert_array_equal(_row(lme["settings_"]["F"]), res2.stat["region"])
        np.testing.assert_array_equal(_row(lme["hit_miss_settings"]["F"]), res2.stat["hit_miss:region"])


# ---------------------------------------------------------------------------
# .csv
# ---------------------------------------------------------------------------


def test_csv_is_the_tidy_table(result, tmp_path):
    path = tmp_path / "r.csv"
    result.save(path)
    table = pd.read_csv(path)
    expected = result.to_frame()
    assert list(table.columns) == list(expected.columns)
    assert {"Term", "FStat", "DF1", "DF2", "pValue", "stat", "p_clust", "time"} <= set(table.columns)
    assert len(table) == len(result.terms) * len(result.times)
    assert table["Term"].tolist() == expected["Term"].tolist()
    for col in expected.columns:
        if col != "Term":
            np.testing.assert_allclose(table[col].to_numpy(float), expected[col].to_numpy(float), rtol=1e-15,
                                       atol=0, err_msg=col)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_unknown_suffix_names_the_formats(res2, tmp_path):
    with pytest.raises(ValueError, match=r"\.mat.*\.h5.*\.csv"):
        res2.save(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="cannot tell the format"):
        res2.save(tmp_path / "noext")
    assert not list(tmp_path.iterdir())


def test_load_result_errors(res2, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such result file"):
        cl.load_result(tmp_path / "missing.h5")

    res2.save(tmp_path / "r.mat")
    with pytest.raises(ValueError, match=r"reads the \.h5 files.*is not one"):
        cl.load_result(tmp_path / "r.mat")

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(cl.ResultFileError, match="is an HDF5 file but not a clusterlmer result"):
        cl.load_result(tmp_path / "other.h5")

    (tmp_path / "garbage.h5").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(cl.ResultFileError, match="is not an HDF5 file"):
        cl.load_result(tmp_path / "garbage.h5")


def test_h5_holds_no_data_and_a_loaded_fit_cannot_open_a_model(res2, tmp_path):
    """fit.source (the data, for model_at) stays in memory: not in the file, so a loaded fit says to refit."""
    assert res2.fit.source is not None and res2.fit.source.values.shape == (res2.fit.diagnostics["n_obs"].max(), 12)
    assert "source" not in repr(res2.fit)
    res2.save(tmp_path / "r.h5")
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert "source" not in f["fit"] and "source" not in f["fit"].attrs
    back = cl.load_result(tmp_path / "r.h5")
    assert back.fit.source is None
    with pytest.raises(ValueError, match=r"holds no data .*refit with cl\.fit_timeseries"):
        back.fit.model_at(0)
