"""What a result reports about itself: disjoint fit-health counts, refusal of damaged result files,
no sign on F clusters.

Real fits throughout (the native engine, and lme4/lmerTest where its own categories matter); damaged
files are real result files damaged afterwards with h5py or by truncation.
"""

from __future__ import annotations

import os
import re
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from clusterlmer.summaries import fit_health, fit_health_counts

# The small permutation counts here test files and tables, not significance.
pytestmark = pytest.mark.filterwarnings("ignore:with .* permutations the smallest possible cluster p:UserWarning")

FORMULA_1WAY = "data ~ hit_miss + (1|sid) + (1|sid:ch)"
FORMULA_2WAY = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"


# ---------------------------------------------------------------------------
# Fit health: disjoint categories that sum to the number of fits
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy():
    """Pure noise (no subject or channel variance: many singular fits), a constant sample (5), a sample
    with 3 rows missing (6) and one with no finite value (7)."""
    data = cl.simulate_ieeg("1way", n_times=24, seed=2)
    values = np.random.default_rng(0).normal(size=data.values.shape)
    values[:, 5] = 1.0
    values[:3, 6] = np.nan
    values[:, 7] = np.nan
    return cl.TimeseriesData(data.design, values, data.times)


def _categories(d):
    """The categories computed independently, one boolean mask each, from the diagnostics' own columns."""
    failed = d["failed"].to_numpy(bool)
    conv = d["converged"].to_numpy(bool)
    sing = d["singular"].to_numpy(float) == 1
    return {"failed": failed, "not_converged": ~failed & ~conv, "singular": ~failed & conv & sing,
            "regular": ~failed & conv & ~sing}


def _check_health(d):
    masks = _categories(d)
    stacked = np.vstack(list(masks.values()))
    assert (stacked.sum(axis=0) == 1).all()  # every sample in exactly one category
    counts = fit_health_counts(d)
    assert {k: counts[k] for k in masks} == {k: int(m.sum()) for k, m in masks.items()}
    assert sum(counts[k] for k in masks) == counts["n_fits"] == len(d)
    assert counts["rows_excluded"] == int((d["n_excluded"] > 0).sum())
    return counts


@pytest.mark.parametrize("engine", ["native", "r"])
def test_fit_health_counts_are_disjoint_and_sum_to_the_samples(noisy, engine):
    fit = cl.fit_timeseries(noisy, FORMULA_1WAY, engine=engine, cross_check=0)
    d = fit.diagnostics
    counts = _check_health(d)
    # The data produce every category that matters here: singular fits are also "converged" in the
    # diagnostics, which the old line counted twice (24 samples as "22 converged, 2 failed, 19 singular").
    assert counts["singular"] >= 5 and counts["regular"] >= 1 and counts["failed"] == 2
    assert int(d["converged"].sum()) + int(d["failed"].sum()) + int((d["singular"] == 1).sum()) > len(d)
    assert counts["rows_excluded"] == 2  # samples 6 (3 rows) and 7 (all rows; also failed)
    line = (f"24 fits = {counts['regular']} converged and regular + {counts['singular']} singular (converged at "
            f"a boundary) + {counts['not_converged']} not converged")
    assert f"Fits:        {line}" in fit.summary()
    assert "+ 2 failed (no statistics); separately, 2 sample(s) had rows excluded (non-finite responses)" \
        in fit.summary()


def test_permutation_summary_reports_the_same_disjoint_counts(noisy):
    res = cl.permutation_cluster_lmer(noisy, FORMULA_1WAY, n_permutations=4, seed=0, progress=False,
                                      engine="native", cross_check=0)
    counts = _check_health(res.fit.diagnostics)
    assert f"Observed fits: {fit_health(res.fit.diagnostics)}" in res.summary()
    assert f"24 fits = {counts['regular']} converged and regular + {counts['singular']} singular" in res.summary()


def test_fit_health_places_every_combination_once():
    """Every combination the engines can record (lme4's non-convergence at a singular optimum, a native fit
    whose criterion failed after its singular check, a sample not fitted at all) lands in one category."""
    d = pd.DataFrame({
        "converged": [True, True, False, False, False, False],
        "singular": [0.0, 1.0, 1.0, 0.0, np.nan, 1.0],
        "failed": [False, False, False, False, True, True],
        "n_excluded": [0, 0, 2, 0, 10, 0],
    })
    counts = _check_health(d)
    assert (counts["regular"], counts["singular"], counts["not_converged"], counts["failed"]) == (1, 1, 2, 2)
    assert fit_health(d) == ("6 fits = 1 converged and regular + 1 singular (converged at a boundary) + 2 not "
                             "converged (1 of them also singular) + 2 failed (no statistics); separately, "
                             "2 sample(s) had rows excluded (non-finite responses)")


# ---------------------------------------------------------------------------
# Damaged, foreign and future result files
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    data = cl.simulate_ieeg("2way", n_subjects=6, n_channels=24, n_times=12, seed=3)
    res = cl.permutation_cluster_lmer(data, FORMULA_2WAY, n_permutations=8, seed=1, progress=False,
                                      cross_check=0)
    path = tmp_path_factory.mktemp("saved") / "result.h5"
    res.save(path)
    return res, path


FIX = r"Save the result again from the Python session that holds it \(result\.save\), or rerun the analysis"


def _delete(*where):
    def damage(f):
        del f["/".join(where)]
    return damage


def _set_attr(where, name, value):
    def damage(f):
        f[where].attrs[name] = value
    return damage


def _replace_null(f):
    del f["term0/null"]
    f["term0/null"] = np.zeros((12, 3))


def _replace_f(f):
    values = f["fit/F"][()]
    del f["fit/F"]
    f["fit/F"] = values * 2


DAMAGE = {
    "fit group deleted": (_delete("fit"), r"the group '/fit' is missing"),
    "term group deleted": (_delete("term1"), r"the group '/term1' is missing"),
    "diagnostics deleted": (_delete("fit", "diagnostics"), r"the group '/fit/diagnostics' is missing"),
    "null deleted": (_delete("term0", "null"), r"the dataset 'null' of the term 'hit_miss' \('/term0'\) is missing"),
    "F deleted": (_delete("fit", "F"), r"'F' \(dataset or attribute\) is missing from '/fit'"),
    "cluster deleted": (_delete("term0", "cluster_info", "cluster0"),
                        r"the group '/term0/cluster_info/cluster0' is missing"),
    "bad JSON in the fit options": (_set_attr("fit", "options", "{not json"),
                                    r"the attribute 'options' of '/fit' is not valid JSON"),
    "bad JSON at the top": (_set_attr("/", "schemes", '{"hit_miss": '),
                            r"the attribute 'schemes' of the file's top level is not valid JSON"),
    "bad JSON in a table": (_set_attr("clusters", "columns", "[1,"),
                            r"the attribute 'columns' of '/clusters' is not valid JSON"),
    "null of another length": (_replace_null, r"the dataset 'null' of the term 'hit_miss' has shape \(12, 3\), "
                                              r"not \(12, 8\)"),
    "term renamed": (_set_attr("term1", "term", "foo"),
                     r"the group '/term1' holds the term 'foo', the file's term list says 'region'"),
    "version missing": (lambda f: f.attrs.__delitem__("version"), r"the format version .* is missing"),
    # Changes that leave a well-formed file: only the checksums written with it can tell.
    "alpha changed": (_set_attr("/", "alpha", "0.5"), r"the attributes \(settings\) of the file's top level do "
                                                      r"not match their checksum \(they were changed after writing\)"),
    "formula changed": (_set_attr("fit", "formula", '"data ~ region + (1|sid)"'),
                        r"the attributes \(settings\) of '/fit' do not match their checksum"),
    "F replaced": (_replace_f, r"the dataset '/fit/F' has no checksum \(it was replaced after writing\)"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_result_names_the_file_and_the_damage(saved, tmp_path, case):
    damage, what = DAMAGE[case]
    path = tmp_path / "damaged.h5"
    shutil.copy(saved[1], path)
    with h5py.File(path, "r+") as f:
        damage(f)
    with pytest.raises(cl.ResultFileError,
                       match=rf"^{re.escape(repr(str(path)))} is a damaged clusterlmer result: {what}.*{FIX}"):
        cl.load_result(path)


def _flip_byte(src, dst, offset):
    raw = bytearray(src.read_bytes())
    raw[offset] ^= 0x01
    dst.write_bytes(bytes(raw))


def test_result_damaged_on_disk_is_refused_not_read_as_other_numbers(saved, tmp_path):
    """Every dataset carries the SHA-256 of its array: one changed bit in the stored statistics or in the
    (compressed) null is an error naming the dataset, not a different number."""
    res, src = saved
    with h5py.File(src, "r") as f:
        assert all(len(f[name].attrs["sha256"]) == 64 for name in ("fit/F", "term0/null", "clusters/p"))
        f_offset = f["fit/F"].id.get_offset() + 8 * 5  # the 6th F value's bytes (an uncompressed dataset)
        null_offset = f["term0/null"].id.get_chunk_info(5).byte_offset  # sample 5's permutation distribution
    _flip_byte(src, tmp_path / "f.h5", f_offset + 3)
    with pytest.raises(cl.ResultFileError, match=r"damaged clusterlmer result: the dataset 'F' in '/fit' does not "
                                                 r"match its checksum \(its bytes changed after writing\)"):
        cl.load_result(tmp_path / "f.h5")
    _flip_byte(src, tmp_path / "null.h5", null_offset + 3)
    with pytest.raises(cl.ResultFileError, match=r"damaged clusterlmer result: the dataset 'null' in '/term0' "
                                                 r"(does not match its checksum|cannot be read)"):
        cl.load_result(tmp_path / "null.h5")


def test_result_without_checksums_is_still_read(saved, tmp_path):
    """Files written before results carried checksums load as they did."""
    res, src = saved
    path = tmp_path / "old.h5"
    shutil.copy(src, path)
    with h5py.File(path, "r+") as f:
        nodes = [f]
        f.visititems(lambda _, obj: nodes.append(obj))
        for obj in nodes:
            for key in ("sha256", "attrs_sha256"):
                if key in obj.attrs:
                    del obj.attrs[key]
    back = cl.load_result(path)
    assert back.summary() == res.summary()
    np.testing.assert_array_equal(back.null["hit_miss"], res.null["hit_miss"])


@pytest.mark.parametrize("fraction", [0.9, 0.3, 0.01])
def test_truncated_result_says_so(saved, tmp_path, fraction):
    path = tmp_path / "cut.h5"
    shutil.copy(saved[1], path)
    with open(path, "r+b") as fh:
        fh.truncate(int(os.path.getsize(path) * fraction))
    with pytest.raises(cl.ResultFileError, match=r"is a damaged HDF5 file and cannot be opened: it is truncated "
                                                 rf"\(an incomplete copy or download\?\)\. {FIX}"):
        cl.load_result(path)


def test_newer_format_version_is_refused_with_the_upgrade(saved, tmp_path):
    path = tmp_path / "future.h5"
    shutil.copy(saved[1], path)
    with h5py.File(path, "r+") as f:
        f.attrs["version"] = 99
    with pytest.raises(cl.ResultFileError, match=r"was written by a newer clusterlmer \(result format version "
                                                 r"99\); this clusterlmer \(.+\) reads format version 1\. "
                                                 r"Upgrade clusterlmer"):
        cl.load_result(path)
    with h5py.File(path, "r+") as f:
        f.attrs["version"] = 1
    assert cl.load_result(path).n_permutations == saved[0].n_permutations  # the copy itself is intact


def test_files_that_are_not_results_say_what_they_are(saved, tmp_path):
    res, _ = saved
    data = cl.simulate_ieeg("2way", n_subjects=6, n_channels=24, n_times=12, seed=3)
    checkpoint = tmp_path / "run.h5"
    cl.permutation_cluster_lmer(data, FORMULA_2WAY, n_permutations=2, seed=1, progress=False, cross_check=0,
                                checkpoint=checkpoint)
    with pytest.raises(cl.ResultFileError, match=r"is a clusterlmer checkpoint .*not a result\. Rerun "
                                                 r"permutation_cluster_lmer .*with checkpoint= this file"):
        cl.load_result(checkpoint)

    # The bundled data file is a MATLAB v7.3 MAT-file (HDF5 inside): under a .h5 name, and as it is.
    data_as_h5 = tmp_path / "data.h5"
    shutil.copy(cl.datasets.sample_path("2way"), data_as_h5)
    with pytest.raises(cl.ResultFileError, match=r"is a MATLAB v7\.3 MAT-file, not a clusterlmer result: load "
                                                 r"data with cl\.load_mat"):
        cl.load_result(data_as_h5)
    with pytest.raises(cl.ResultFileError, match=r"is not one .*a \.mat data file with cl\.load_mat"):
        cl.load_result(cl.datasets.sample_path("2way"))


# ---------------------------------------------------------------------------
# F clusters have no sign
# ---------------------------------------------------------------------------


def _mat_texts(f, refs):
    out = []
    for ref in refs.ravel():
        ds = f[ref]
        empty = bool(np.any(ds.attrs.get("MATLAB_empty", 0)))
        out.append("" if empty else np.asarray(ds[()]).ravel().astype("<u2").tobytes().decode("utf-16-le"))
    return out


def test_f_clusters_have_an_empty_sign_in_the_table_and_files(saved, tmp_path):
    res, path = saved
    assert res.statistic == "F" and len(res.clusters) >= 2
    assert res.clusters["sign"].tolist() == [""] * len(res.clusters)
    assert cl.load_result(path).clusters["sign"].tolist() == [""] * len(res.clusters)
    res.save(tmp_path / "r.mat")
    with h5py.File(tmp_path / "r.mat", "r") as f:
        assert _mat_texts(f, f["lme/clusters/sign"][()]) == [""] * len(res.clusters)
        assert _mat_texts(f, f["lme/clusters/term"][()]) == res.clusters["term"].tolist()


def test_t_clusters_keep_their_sign():
    data = cl.simulate_ieeg("1way", n_subjects=6, n_channels=24, n_times=12, seed=3, hit_miss_effect=2.0)
    res = cl.permutation_cluster_lmer(data, FORMULA_1WAY, n_permutations=8, seed=2, statistic="t",
                                      progress=False, cross_check=0)
    info = res.cluster_info["hit_miss"]
    assert len(res.clusters) == len(info.clusters) >= 1
    expected = sorted("+" if c.sign > 0 else "-" for c in info.clusters)
    assert sorted(res.clusters["sign"]) == expected


def test_cluster_table_needs_the_statistic(saved):
    res, _ = saved
    with pytest.raises(TypeError, match="statistic"):
        cl.results.cluster_table(res.cluster_info, res.times)
    with pytest.raises(ValueError, match="statistic"):
        cl.results.cluster_table(res.cluster_info, res.times, statistic="z")
