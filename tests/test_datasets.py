"""The bundled sample datasets (clusterlmer.datasets): layout, shapes, MATLAB v7.3
format, checksums, reproducibility of the generator, and the ground truth. No R."""

import dataclasses
import doctest
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from clusterlmer import datasets
from clusterlmer.io import load_mat
from clusterlmer.simulate import simulate_ieeg

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_sample_data.py"
KINDS = ("2way", "1way")
SHAPES = {"2way": (338, 139), "1way": (186, 139)}
LOADERS = {"2way": datasets.sample_2way, "1way": datasets.sample_1way}
# What the docstrings promise: (first, last) samples, 0-based inclusive, and their times in s.
WINDOWS = {
    "2way": {"hit_miss": (41, 68, 0.21, 0.48), "interaction": (90, 117, 0.70, 0.97)},
    "1way": {"hit_miss": (41, 68, 0.21, 0.48)},
}
# Environment keys that can change the bytes of the .mat file.
MAT_ENV = ("numpy", "h5py", "hdf5", "system", "machine")


@pytest.fixture(scope="module", params=KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def loaded():
    return {k: LOADERS[k]() for k in KINDS}


@pytest.fixture(scope="module")
def records():
    return {k: json.loads(datasets.sample_path(k).with_suffix(".json").read_text()) for k in KINDS}


def _pairs(data):
    """Hit and miss rows of each channel, aligned: (hit values, miss values, channel design)."""
    design = data.design
    hit = design[design["hit_miss"] == 1].sort_values(["sid", "ch"], kind="stable")
    miss = design[design["hit_miss"] == 0].sort_values(["sid", "ch"], kind="stable")
    assert (hit[["sid", "ch"]].to_numpy() == miss[["sid", "ch"]].to_numpy()).all()
    return data.values[hit.index], data.values[miss.index], hit.reset_index(drop=True)


# --------------------------------------------------------------------------- layout


def test_shapes_columns_and_times(kind, loaded):
    data = loaded[kind]
    assert data.values.shape == SHAPES[kind]
    assert data.values.dtype == np.float64 and np.isfinite(data.values).all()
    columns = ["sid", "ch", "hit_miss"] + (["region"] if kind == "2way" else [])
    assert list(data.design.columns) == columns
    assert set(data.design["hit_miss"]) == {0.0, 1.0}
    np.testing.assert_allclose(data.times, np.arange(139) * 0.01 - 0.2, atol=1e-12)
    assert data.times[0] == pytest.approx(-0.2) and data.times[-1] == pytest.approx(1.18)


def test_subjects_channels_and_regions(kind, loaded, records):
    design = loaded[kind].design
    channels = design.drop_duplicates(["sid", "ch"])
    per_subject = channels.groupby("sid", sort=False).size()
    assert len(per_subject) == 15
    assert per_subject.nunique() > 1  # unequal channel counts
    assert len(channels) == SHAPES[kind][0] // 2
    assert per_subject.to_dict() == records[kind]["channels_per_subject"]
    # Exactly two rows per channel, one hit and one miss.
    per_channel = design.groupby(["sid", "ch"])["hit_miss"].agg(["size", "sum"])
    assert (per_channel["size"] == 2).all() and (per_channel["sum"] == 1).all()
    if kind == "2way":
        assert (design.groupby(["sid", "ch"])["region"].nunique() == 1).all()  # region is per channel
        per_region = channels.groupby("region", sort=False).size().to_dict()
        assert set(per_region) == {"hc", "phrc"}
        assert per_region["hc"] != per_region["phrc"]
        assert per_region == records[kind]["channels_per_region"]
        assert list(per_region) == records[kind]["region_order"]


def test_matches_json_and_simulate_ieeg(kind, loaded, records):
    """The JSON's parameters regenerate the data with clusterlmer.simulate_ieeg."""
    rec = records[kind]
    assert (rec["shape"]["rows"], rec["shape"]["times"]) == SHAPES[kind]
    assert rec["simulate_ieeg"]["seed"] == rec["seed"]
    again = simulate_ieeg(**rec["simulate_ieeg"])
    data = loaded[kind]
    np.testing.assert_allclose(data.values, again.values, rtol=0, atol=1e-12)
    for col in data.design.columns:
        assert list(data.design[col]) == list(again.design[col])


# --------------------------------------------------------------------------- file format


def test_mat_file_is_matlab_v73(kind):
    path = datasets.sample_path(kind)
    raw = path.read_bytes()
    assert raw[:19] == b"MATLAB 7.3 MAT-file"
    assert raw[124:128] == b"\x00\x02IM"  # version 0x0200, little-endian indicator
    assert raw[512:520] == b"\x89HDF\r\n\x1a\n"  # HDF5 behind the 512-byte userblock
    with h5py.File(path, "r") as f:
        assert f.userblock_size == 512
        classes = {name: f[name].attrs["MATLAB_class"].decode() for name in f if name != "#refs#"}
        expected = {"sid": "cell", "ch": "cell", "hit_miss": "double", "data": "double", "times": "double"}
        if kind == "2way":
            expected["region"] = "cell"
        assert classes == expected
        rows, n_times = SHAPES[kind]
        assert f["data"].shape == (n_times, rows)  # column-major: axes reversed
        assert f["data"].dtype == np.float64
        assert f["hit_miss"].shape == (1, rows)
        assert f["times"].shape == (n_times, 1)  # a 1 x 139 row vector in MATLAB
        assert f["sid"].shape == (1, rows) and f["sid"].dtype == h5py.ref_dtype
        first = f[f["sid"][0, 0]]
        assert first.attrs["MATLAB_class"].decode() == "char" and first.dtype == np.uint16
        assert first[()].ravel().tobytes().decode("utf-16-le") == "S01"


def test_sha256_in_json(kind, records):
    raw = datasets.sample_path(kind).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == records[kind]["sha256"] == datasets.ground_truth(kind).sha256
    assert len(raw) == records[kind]["size_bytes"]


# --------------------------------------------------------------------------- generator


def _run_generator(out):
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    if not SCRIPT.exists():
        pytest.skip("scripts/make_sample_data.py is not available (installed package)")
    out = tmp_path_factory.mktemp("regenerated")
    _run_generator(out)
    return out


def test_generator_reproduces_files(kind, regenerated, records, tmp_path):
    shipped_mat = datasets.sample_path(kind)
    shipped_json = shipped_mat.with_suffix(".json")
    new_mat = regenerated / shipped_mat.name
    new_json = regenerated / shipped_json.name
    new_rec = json.loads(new_json.read_text())
    old_env, new_env = records[kind]["environment"], new_rec["environment"]
    if all(old_env[k] == new_env[k] for k in MAT_ENV):
        assert new_mat.read_bytes() == shipped_mat.read_bytes()
        if old_env == new_env:
            assert new_json.read_bytes() == shipped_json.read_bytes()
    else:
        # Other numpy/HDF5 builds may lay the file out differently: the content must
        # still agree, and the generator must be deterministic here.
        old, new = load_mat(shipped_mat), load_mat(new_mat)
        np.testing.assert_allclose(new.values, old.values, rtol=0, atol=1e-12)
        assert new.design.equals(old.design)
        _run_generator(tmp_path)
        assert (tmp_path / new_mat.name).read_bytes() == new_mat.read_bytes()
    skip = {"environment", "sha256", "size_bytes"}
    assert {k: v for k, v in new_rec.items() if k not in skip} == {
        k: v for k, v in records[kind].items() if k not in skip
    }


# --------------------------------------------------------------------------- ground truth


def test_ground_truth_api(kind, records):
    truth = datasets.ground_truth(kind)
    assert truth.kind == kind and truth.seed == records[kind]["seed"]
    assert truth.shape == SHAPES[kind]
    assert truth.formula == (datasets.FORMULA_2WAY if kind == "2way" else datasets.FORMULA_1WAY)
    assert truth.statistic == ("F" if kind == "2way" else "t")
    assert set(truth.windows) == ({"hit_miss", "interaction"} if kind == "2way" else {"hit_miss"})
    assert (truth.interaction_effect is not None) == (kind == "2way")
    assert truth.path == datasets.sample_path(kind) and truth.path.exists()
    assert truth.as_dict() == records[kind]
    with pytest.raises(dataclasses.FrozenInstanceError):
        truth.seed = 0
    with pytest.raises(TypeError):
        truth.windows["x"] = None


def test_window_definitions(kind, loaded, records):
    times = loaded[kind].times
    for name, w in datasets.ground_truth(kind).windows.items():
        raw = records[kind]["windows"][name]
        assert (w.first, w.last) == (raw["first"], raw["last"]) == (w.start, w.stop - 1)
        assert (raw["first_matlab"], raw["last_matlab"]) == (w.start + 1, w.stop)
        assert w.first_time == pytest.approx(times[w.first]) and w.last_time == pytest.approx(times[w.last])
        assert len(w.profile) == w.stop - w.start == raw["n_samples"]
        assert 0 < min(w.profile) and max(w.profile) == pytest.approx(1, abs=0.01)
        assert w.slice == slice(w.start, w.stop)
        assert (w.first, w.last, w.first_time, w.last_time) == pytest.approx(WINDOWS[kind][name])


def test_windows_are_where_the_signal_is(kind, loaded):
    """Hit - miss differences are large inside the windows and near zero outside."""
    hit, miss, channels = _pairs(loaded[kind])
    diff = hit - miss
    truth = datasets.ground_truth(kind)
    w = truth.windows["hit_miss"]
    if kind == "2way":
        hc = (channels["region"] == "hc").to_numpy()
        # Outside the interaction window the hit/miss effect is the same in both regions.
        hm = diff.mean(axis=0)
        contrast = diff[hc].mean(axis=0) - diff[~hc].mean(axis=0)
        wi = truth.windows["interaction"]
        inside = np.zeros(len(contrast), bool)
        inside[wi.slice] = True
        core = slice(wi.start + 7, wi.stop - 7)  # the taper's upper half
        assert contrast[core].min() > np.abs(contrast[~inside]).max()
        # +effect in hc and -effect in phrc: the simulated contrast is 2 * effect * profile.
        expected = 2 * wi.effect * np.mean(wi.profile)
        assert contrast[wi.slice].mean() == pytest.approx(expected, rel=0.5)
    else:
        hm = diff.mean(axis=0)
    inside = np.zeros(len(hm), bool)
    inside[w.slice] = True
    if kind == "2way":
        inside[truth.windows["interaction"].slice] = True  # the overall mean moves there too
    core = slice(w.start + 7, w.stop - 7)
    assert hm[core].min() > np.abs(hm[~inside]).max()
    assert hm[w.slice].mean() == pytest.approx(w.effect * np.mean(w.profile), rel=0.5)
    assert hm[w.slice].mean() > hm[~inside].mean() + 0.25


# --------------------------------------------------------------------------- API


def test_constants_and_bad_kind():
    assert datasets.FORMULA_2WAY == "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"
    assert datasets.FORMULA_1WAY == "data ~ hit_miss + (1|sid) + (1|sid:ch)"
    assert datasets.sample_path("2way").name == "lme_data_2way.mat"
    assert datasets.sample_path("1way").name == "lme_data_1way.mat"
    for bad in ("3way", "2-way", None):
        with pytest.raises(ValueError, match="kind must be one of"):
            datasets.sample_path(bad)
        with pytest.raises(ValueError, match="kind must be one of"):
            datasets.ground_truth(bad)


def test_docstring_examples():
    result = doctest.testmod(datasets, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0
