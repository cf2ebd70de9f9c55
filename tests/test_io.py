"""Reading and writing MATLAB .mat files: the original layout in v7.3 (HDF5) and
v5, what becomes a design column, and the messages for bad input. No R."""

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io

import clusterlmer as cl
from clusterlmer.io import MatFileError, load_mat, write_mat5, write_mat73

WRITERS = {"v73": write_mat73, "v5": write_mat5}


def seed_vars(n_sub=3, n_ch=4, n_times=7, seed=0):
    """Seed-shaped variables: two rows (hit, miss) per channel, region per channel."""
    rng = np.random.default_rng(seed)
    sid, ch, hm, region = [], [], [], []
    names = ["Hippocampus-ä", "海马", "A1", "PHC-2"]
    for s in range(n_sub):
        for c in range(n_ch):
            for h in (1.0, 0.0):
                sid.append(f"S{s + 1:02d}")
                ch.append(names[c % len(names)] + ("" if c < len(names) else str(c)))
                hm.append(h)
                region.append("phrc" if c % 2 == 0 else "hc")  # phrc first: level order matters
    n = len(sid)
    return {
        "sid": sid,
        "ch": ch,
        "hit_miss": np.array(hm),
        "region": region,
        "data": rng.normal(size=(n, n_times)),
    }


def path_for(tmp_path, fmt, name="x"):
    return tmp_path / f"{name}_{fmt}.mat"


def write_with(fmt, tmp_path, variables):
    """Write ``variables`` with the ``fmt`` writer; return the file's path."""
    p = path_for(tmp_path, fmt)
    WRITERS[fmt](p, variables)
    return p


def check_seed(d, v):
    assert list(d.design.columns[:4]) == ["sid", "ch", "hit_miss", "region"]
    assert d.design["sid"].tolist() == v["sid"]
    assert d.design["ch"].tolist() == v["ch"]
    assert d.design["region"].tolist() == v["region"]
    assert d.design["hit_miss"].dtype == float
    np.testing.assert_array_equal(d.design["hit_miss"].to_numpy(), v["hit_miss"])
    np.testing.assert_array_equal(d.values, v["data"])  # exact: no float round-off allowed


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", WRITERS)
def test_round_trip_seed_layout(tmp_path, fmt):
    v = seed_vars()
    p = write_with(fmt, tmp_path, v)
    d = load_mat(p)
    check_seed(d, v)
    assert list(d.design.columns) == ["sid", "ch", "hit_miss", "region"]
    np.testing.assert_array_equal(d.times, np.arange(7.0))
    assert d.freqs is None
    # text stays text, and MATLAB's level order (first appearance) is kept
    assert list(pd.unique(d.design["region"])) == ["phrc", "hc"]
    assert pd.api.types.is_string_dtype(d.design["sid"])


def test_level_order_reaches_the_design(tmp_path):
    from clusterlmer.design import build_design
    from clusterlmer.formula import parse_formula

    v = seed_vars()
    write_mat73(tmp_path / "x.mat", v)
    d = load_mat(tmp_path / "x.mat")
    md = build_design(d.design, parse_formula("data ~ hit_miss * region + (1|sid) + (1|sid:ch)"))
    assert md.factors["region"] == ["phrc", "hc"]
    # numeric 0/1 interacting with region: a factor, values sorted
    assert md.converted == ("hit_miss",) and md.factors["hit_miss"] == ["0", "1"]


def test_scipy_savemat_in_matlab_layout(tmp_path):
    """A v5 file shaped as MATLAB saves it: cellstr as N x 1 cell, hit_miss N x 1."""
    v = seed_vars()
    n = len(v["sid"])
    cell = lambda xs: np.array(xs, dtype=object).reshape(n, 1)  # noqa: E731
    scipy.io.savemat(
        tmp_path / "m.mat",
        {"sid": cell(v["sid"]), "ch": cell(v["ch"]), "hit_miss": v["hit_miss"].reshape(n, 1),
         "region": cell(v["region"]), "data": v["data"]},
    )
    d = load_mat(tmp_path / "m.mat")
    check_seed(d, v)


def test_scipy_savemat_row_vectors_and_char_matrix(tmp_path):
    """1 x N label vectors and a space-padded char matrix (MATLAB's char(...)) also work."""
    v = seed_vars()
    n = len(v["sid"])
    scipy.io.savemat(
        tmp_path / "m.mat",
        {"sid": np.array(v["sid"], dtype=object).reshape(1, n), "ch": np.array(v["ch"], dtype=object),
         "hit_miss": v["hit_miss"].reshape(1, n), "region": np.array(v["region"]),  # char matrix, padded
         "data": v["data"]},
    )
    d = load_mat(tmp_path / "m.mat")
    check_seed(d, v)


@pytest.mark.parametrize("fmt", WRITERS)
def test_non_ascii_labels(tmp_path, fmt):
    v = seed_vars(n_sub=1, n_ch=3)
    v["ch"] = ["Hippocampus-ä"] * 2 + ["海马"] * 2 + ["𝔥-cortex ✓"] * 2  # 𝔥 needs a UTF-16 surrogate pair
    p = write_with(fmt, tmp_path, v)
    assert load_mat(p).design["ch"].tolist() == v["ch"]


@pytest.mark.parametrize("fmt", WRITERS)
def test_logical_hit_miss(tmp_path, fmt):
    v = seed_vars()
    v["hit_miss"] = v["hit_miss"].astype(bool)
    p = write_with(fmt, tmp_path, v)
    d = load_mat(p)
    assert d.design["hit_miss"].dtype == float
    np.testing.assert_array_equal(d.design["hit_miss"], v["hit_miss"].astype(float))
    if fmt == "v73":
        with h5py.File(p, "r") as f:
            assert f["hit_miss"].attrs["MATLAB_class"] == b"logical"
            assert f["hit_miss"].dtype == np.uint8


@pytest.mark.parametrize("fmt", WRITERS)
def test_extra_factor_and_covariate_become_columns(tmp_path, fmt):
    v = seed_vars()
    n = len(v["sid"])
    rng = np.random.default_rng(1)
    extra = {
        "task": ["recall" if i % 3 else "recog" for i in range(n)],  # third factor
        "srate": 512.0,  # scalar: not one value per row -> ignored
        "age": rng.uniform(20, 60, n).round(1),  # numeric covariate
        "coords": rng.normal(size=(n, 3)),  # matrix -> ignored
        "info": {"site": "X", "n": 3.0},  # struct -> ignored
    }
    # file order: sid/ch come last in the file but first in the design
    variables = {"data": v["data"], "hit_miss": v["hit_miss"], "region": v["region"], **extra,
                 "ch": v["ch"], "sid": v["sid"]}
    p = path_for(tmp_path, fmt)
    WRITERS[fmt](p, variables)
    d = load_mat(p)
    assert list(d.design.columns) == ["sid", "ch", "hit_miss", "region", "task", "age"]
    assert d.design["task"].tolist() == extra["task"]
    np.testing.assert_array_equal(d.design["age"], extra["age"])
    assert d.design["age"].dtype == float


@pytest.mark.parametrize("fmt", WRITERS)
def test_times_vector(tmp_path, fmt):
    v = seed_vars(n_times=5)
    v["times"] = np.array([-0.2, -0.1, 0.0, 0.1, 0.2])
    p = write_with(fmt, tmp_path, v)
    d = load_mat(p)
    np.testing.assert_array_equal(d.times, v["times"])
    assert "times" not in d.design
    # a 1 x T row vector works as well
    v["times"] = v["times"].reshape(1, 5)
    WRITERS[fmt](p, v)
    np.testing.assert_array_equal(load_mat(p).times, v["times"].ravel())


def test_times_argument_and_fallbacks(tmp_path):
    v = seed_vars(n_times=5)
    write_mat73(tmp_path / "a.mat", v)
    t = np.linspace(0, 0.4, 5)
    np.testing.assert_array_equal(load_mat(tmp_path / "a.mat", times=t).times, t)
    # a times variable of the wrong length: warn and fall back
    v["times"] = np.arange(4.0)
    write_mat73(tmp_path / "b.mat", v)
    with pytest.warns(UserWarning, match="not a numeric vector of length 5"):
        d = load_mat(tmp_path / "b.mat", times=t)
    np.testing.assert_array_equal(d.times, t)
    # the file's times win over a different argument, with a warning
    v["times"] = np.arange(5.0) * 2
    write_mat73(tmp_path / "c.mat", v)
    with pytest.warns(UserWarning, match="differs from the times= argument"):
        d = load_mat(tmp_path / "c.mat", times=t)
    np.testing.assert_array_equal(d.times, v["times"])
    # times_key=None ignores the variable
    np.testing.assert_array_equal(load_mat(tmp_path / "c.mat", times_key=None).times, np.arange(5.0))


@pytest.mark.parametrize("fmt", WRITERS)
def test_3d_data_with_freqs(tmp_path, fmt):
    v = seed_vars(n_times=6)
    n = len(v["sid"])
    v["data"] = np.random.default_rng(2).normal(size=(n, 6, 4))
    v["times"] = np.arange(6) / 100.0
    v["freqs"] = np.array([4.0, 8.0, 16.0, 32.0])
    p = write_with(fmt, tmp_path, v)
    d = load_mat(p)
    np.testing.assert_array_equal(d.values, v["data"])
    np.testing.assert_array_equal(d.freqs, v["freqs"])
    np.testing.assert_array_equal(d.times, v["times"])
    assert "freqs" not in d.design
    if fmt == "v73":
        with h5py.File(p, "r") as f:
            assert f["data"].shape == (4, 6, n)  # MATLAB's column-major order, axes reversed


def test_3d_without_freqs_variable_uses_argument(tmp_path):
    v = seed_vars(n_times=3)
    v["data"] = np.zeros((len(v["sid"]), 3, 2))
    write_mat73(tmp_path / "x.mat", v)
    np.testing.assert_array_equal(load_mat(tmp_path / "x.mat").freqs, [0, 1])
    np.testing.assert_array_equal(load_mat(tmp_path / "x.mat", freqs=[10, 20]).freqs, [10, 20])


@pytest.mark.parametrize("fmt", WRITERS)
def test_nan_and_inf_in_data_are_kept(tmp_path, fmt):
    v = seed_vars()
    v["data"][3, 2] = np.nan
    v["data"][5, :] = np.nan
    v["data"][0, 0] = np.inf
    p = write_with(fmt, tmp_path, v)
    d = load_mat(p)
    np.testing.assert_array_equal(d.values, v["data"])  # NaN == NaN for assert_array_equal


@pytest.mark.parametrize("fmt", WRITERS)
def test_other_data_key(tmp_path, fmt):
    v = seed_vars()
    v["hga"] = v.pop("data")
    p = write_with(fmt, tmp_path, v)
    np.testing.assert_array_equal(load_mat(p, data_key="hga").values, v["hga"])


def test_integer_data_and_single_are_converted(tmp_path):
    v = seed_vars()
    v["data"] = (v["data"] * 100).astype(np.int16)
    write_mat73(tmp_path / "x.mat", v)
    d = load_mat(tmp_path / "x.mat")
    assert d.values.dtype == float
    np.testing.assert_array_equal(d.values, v["data"])


# ---------------------------------------------------------------------------
# The v7.3 file itself
# ---------------------------------------------------------------------------


def test_v73_header_and_attributes(tmp_path):
    p = tmp_path / "x.mat"
    write_mat73(p, seed_vars())
    head = p.read_bytes()[:512]
    assert head.startswith(b"MATLAB 7.3 MAT-file")
    assert b"HDF5 schema 1.00 ." in head[:116]
    assert head[116:124] == b"\x00" * 8
    assert head[124:128] == b"\x00\x02IM"
    assert head[128:] == b"\x00" * 384
    assert p.read_bytes()[512:520] == b"\x89HDF\r\n\x1a\n"
    with h5py.File(p, "r") as f:
        assert f.userblock_size == 512
        assert f["data"].attrs["MATLAB_class"] == b"double"
        assert f["hit_miss"].attrs["MATLAB_class"] == b"double"
        assert isinstance(f["data"].attrs["MATLAB_class"], np.bytes_)
        sid = f["sid"]
        assert sid.attrs["MATLAB_class"] == b"cell"
        assert sid.shape == (1, 24)  # N x 1 cell in MATLAB
        first = f[sid[0, 0]]
        assert first.name.startswith("/#refs#/")
        assert first.attrs["MATLAB_class"] == b"char"
        assert first.attrs["MATLAB_int_decode"] == 2
        assert first.dtype == np.uint16 and first.shape == (3, 1)  # "S01" as 1 x 3 char
        assert first.attrs["H5PATH"] == b"/#refs#"
        assert f["#refs#/a"].attrs["MATLAB_class"] == b"canonical empty"
        assert first[:, 0].tobytes().decode("utf-16-le") == "S01"
        assert f["data"].shape == (7, 24)


def test_writer_general_values(tmp_path):
    p = tmp_path / "g.mat"
    write_mat73(p, {
        "scalar": 3.5,
        "count": 7,
        "flag": True,
        "i32": np.arange(6, dtype=np.int32).reshape(2, 3),
        "u8": np.array([1, 2], dtype=np.uint8),
        "f32": np.ones((2, 2), dtype=np.float32),
        "z": np.array([1 + 2j, 3 - 1j]),
        "row": np.arange(4.0).reshape(1, 4),
        "empty": np.zeros((0, 3)),
        "none": None,
        "blank": "",
        "text": "héllo",
        "mixed": [1.0, "two", [3.0, "four"], None],
        "strs": np.array([["a", "bb"], ["ccc", "d"]]),
        "lme": {"hit_miss": {"F": np.arange(3.0), "p": np.ones(3)}, "label": "2-way"},
        "table": pd.DataFrame({"effect": ["hit_miss", "region"], "p": [0.01, 0.2]}),
    })
    with h5py.File(p, "r") as f:
        cls = {k: f[k].attrs["MATLAB_class"].decode() for k in f if not k.startswith("#")}
        assert cls == {
            "scalar": "double", "count": "double", "flag": "logical", "i32": "int32", "u8": "uint8",
            "f32": "single", "z": "double", "row": "double", "empty": "double", "none": "double",
            "blank": "char", "text": "char", "mixed": "cell", "strs": "cell", "lme": "struct", "table": "struct",
        }
        assert f["scalar"].shape == (1, 1) and f["scalar"][0, 0] == 3.5
        assert f["i32"].shape == (3, 2) and f["i32"].dtype == np.int32
        np.testing.assert_array_equal(f["i32"][()].T, np.arange(6).reshape(2, 3))
        assert f["u8"].shape == (1, 2)  # 1-D -> 2 x 1 column
        assert f["row"].shape == (4, 1)  # 1 x 4 row
        assert f["z"].dtype.names == ("real", "imag")
        for k, dims in (("empty", [0, 3]), ("none", [0, 0]), ("blank", [0, 0])):
            assert f[k].attrs["MATLAB_empty"] == 1
            assert f[k][()].tolist() == dims
        assert f["text"][:, 0].tobytes().decode("utf-16-le") == "héllo"
        nested = f[f["mixed"][0, 2]]
        assert nested.attrs["MATLAB_class"] == b"cell" and nested.shape == (1, 2)
        assert f["strs"].shape == (2, 2)
        lme = f["lme"]
        assert [bytes(x).decode() for x in lme.attrs["MATLAB_fields"]] == ["hit_miss", "label"]
        assert lme["hit_miss"].attrs["MATLAB_class"] == b"struct"
        np.testing.assert_array_equal(lme["hit_miss"]["F"][()], [[0.0, 1.0, 2.0]])
        assert f["table"]["effect"].attrs["MATLAB_class"] == b"cell"


def test_writer_rejects_bad_names_and_types(tmp_path):
    with pytest.raises(ValueError, match="not a valid MATLAB name"):
        write_mat73(tmp_path / "x.mat", {"1data": 1.0})
    with pytest.raises(ValueError, match="not a valid MATLAB name"):
        write_mat73(tmp_path / "x.mat", {"s": {"bad field": 1.0}})
    with pytest.raises(ValueError, match="not a valid MATLAB name"):
        write_mat5(tmp_path / "x.mat", {"_x": 1.0})
    with pytest.raises(TypeError, match=r"cannot write s\.x \(set\)"):
        write_mat73(tmp_path / "x.mat", {"s": {"x": {1, 2}}})


# ---------------------------------------------------------------------------
# A v7.3 file laid out the way MATLAB writes it (built with h5py directly)
# ---------------------------------------------------------------------------


def matlab_like_file(path, *, region_rows, sid=None):
    """Mimic MATLAB's save -v7.3: no creation-order tracking, canonical empty,
    #subsystem#, char matrix, logical and int32 label columns, empty variable."""
    n = len(region_rows)
    sid = sid or [f"S{i // 4}" for i in range(n)]
    ch = [f"c{(i // 2) % 2}" for i in range(n)]
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        a = refs.create_dataset("a", data=np.array([0, 0], dtype=np.uint64))
        a.attrs["MATLAB_class"] = np.bytes_("canonical empty")
        a.attrs["MATLAB_empty"] = np.uint8(1)
        f.create_group("#subsystem#").create_dataset("MCOS", data=np.zeros(3, dtype=np.uint32))

        def cellstr(name, texts):
            refs_out = np.empty((1, n), dtype=h5py.ref_dtype)
            for i, t in enumerate(texts):
                ds = refs.create_dataset(f"{name}{i}", data=np.frombuffer(t.encode("utf-16-le"), "<u2").reshape(-1, 1))
                ds.attrs["MATLAB_class"] = np.bytes_("char")
                ds.attrs["MATLAB_int_decode"] = np.int32(2)
                refs_out[0, i] = ds.ref
            ds = f.create_dataset(name, data=refs_out)
            ds.attrs["MATLAB_class"] = np.bytes_("cell")

        data = np.arange(n * 3, dtype=float).reshape(n, 3)
        ds = f.create_dataset("data", data=data.T)
        ds.attrs["MATLAB_class"] = np.bytes_("double")
        cellstr("sid", sid)
        cellstr("ch", ch)
        hm = f.create_dataset("hit_miss", data=np.array([[i % 2 == 0 for i in range(n)]], dtype=np.uint8))
        hm.attrs["MATLAB_class"] = np.bytes_("logical")
        width = max(len(r) for r in region_rows)
        padded = np.array([[ord(c) for c in r.ljust(width)] for r in region_rows], dtype=np.uint16)
        reg = f.create_dataset("region", data=padded.T)  # N x width char matrix
        reg.attrs["MATLAB_class"] = np.bytes_("char")
        reg.attrs["MATLAB_int_decode"] = np.int32(2)
        trial = f.create_dataset("trial", data=np.arange(1, n + 1, dtype=np.int32).reshape(1, n))
        trial.attrs["MATLAB_class"] = np.bytes_("int32")
        empty = f.create_dataset("notes", data=np.array([0, 0], dtype=np.uint64))
        empty.attrs["MATLAB_class"] = np.bytes_("double")
        empty.attrs["MATLAB_empty"] = np.uint8(1)
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan 01 00:00:00 2024 HDF5 schema 1.00 .".ljust(116)
                 + b"\x00" * 8 + b"\x00\x02IM")
    return data, sid, ch


def test_matlab_like_v73_file(tmp_path):
    rows = ["phrc", "phrc", "hc", "hc"] * 2
    data, sid, ch = matlab_like_file(tmp_path / "m.mat", region_rows=rows)
    d = load_mat(tmp_path / "m.mat")
    np.testing.assert_array_equal(d.values, data)
    assert list(d.design.columns) == ["sid", "ch", "hit_miss", "region", "trial"]
    assert d.design["sid"].tolist() == sid
    assert d.design["ch"].tolist() == ch
    assert d.design["region"].tolist() == rows  # char-matrix padding stripped
    assert d.design["hit_miss"].tolist() == [1.0, 0.0] * 4
    assert d.design["trial"].tolist() == list(range(1, 9))


# ---------------------------------------------------------------------------
# Bad input: each with its own message
# ---------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such file.*nope.mat"):
        load_mat(tmp_path / "nope.mat")


@pytest.mark.parametrize(
    "content",
    [b"sid,ch,hit_miss,t0\nS01,A1,1,0.5\n", np.random.default_rng(0).bytes(3000), b""],
    ids=["csv", "random-bytes", "empty"],
)
def test_not_a_mat_file(tmp_path, content):
    p = tmp_path / "x.mat"
    p.write_bytes(content)
    with pytest.raises(ValueError, match="is not a MATLAB .mat file.*from_dataframe"):
        load_mat(p)


def test_plain_hdf5_is_refused(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["data"] = np.zeros((4, 3))
    with pytest.raises(MatFileError, match="HDF5 file but not a MATLAB v7.3"):
        load_mat(tmp_path / "x.h5")


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_v73(tmp_path, keep):
    p = tmp_path / "x.mat"
    write_mat73(p, seed_vars())
    raw = p.read_bytes()
    p.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(MatFileError, match="v7.3 header.*truncated or corrupt"):
        load_mat(p)


def test_corrupt_v73(tmp_path):
    p = tmp_path / "x.mat"
    write_mat73(p, seed_vars())
    raw = p.read_bytes()
    p.write_bytes(raw[:512] + np.random.default_rng(3).bytes(len(raw) - 512))
    with pytest.raises(MatFileError, match="truncated or corrupt"):
        load_mat(p)


def test_truncated_v5(tmp_path):
    p = tmp_path / "x.mat"
    write_mat5(p, seed_vars())
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(MatFileError, match="v5/v7 .mat file.*truncated or corrupt"):
        load_mat(p)


@pytest.mark.parametrize("fmt", WRITERS)
def test_missing_data_variable(tmp_path, fmt):
    v = seed_vars()
    v["hga"] = v.pop("data")
    p = write_with(fmt, tmp_path, v)
    with pytest.raises(MatFileError, match=r"no variable 'data'.*hga \(24 x 7 double\).*data_key="):
        load_mat(p)


@pytest.mark.parametrize("fmt", WRITERS)
def test_label_length_differs_from_rows(tmp_path, fmt):
    v = seed_vars()
    v["data"] = v["data"][:-2]
    p = write_with(fmt, tmp_path, v)
    with pytest.raises(MatFileError, match=r"'data' has 22 rows .* have 24 entries"):
        load_mat(p)


def test_labels_disagree(tmp_path):
    v = seed_vars()
    v["ch"] = v["ch"][:-1]
    write_mat73(tmp_path / "x.mat", v)
    with pytest.raises(MatFileError, match="labels disagree in length.*ch has 23"):
        load_mat(tmp_path / "x.mat")


@pytest.mark.parametrize("fmt", WRITERS)
def test_transposed_data(tmp_path, fmt):
    v = seed_vars()
    v["data"] = v["data"].T
    p = write_with(fmt, tmp_path, v)
    with pytest.raises(MatFileError, match=r"7 x 24.*looks transposed.*data\.T"):
        load_mat(p)


@pytest.mark.parametrize(
    "fmt, bad",
    # v5 is not asked about logical: scipy reads v5 logical arrays back as uint8.
    [(f, b) for f in WRITERS for b in ("cellstr", "char", "logical", "complex") if (f, b) != ("v5", "logical")],
)
def test_non_numeric_data(tmp_path, fmt, bad):
    v = seed_vars()
    n = len(v["sid"])
    v["data"] = {
        "cellstr": [f"row{i}" for i in range(n)],
        "char": "not numbers",
        "logical": v["data"] > 0,
        "complex": v["data"] + 1j,
    }[bad]
    p = write_with(fmt, tmp_path, v)
    with pytest.raises(TypeError, match="'data' (must be a numeric array|is logical|is complex)"):
        load_mat(p)


@pytest.mark.parametrize("fmt", WRITERS)
def test_missing_label_text(tmp_path, fmt):
    v = seed_vars()
    v["sid"][5] = ""
    p = write_with(fmt, tmp_path, v)
    with pytest.raises(MatFileError, match=r"'sid' has 1 missing entry .*rows 5 \(0-based; 6 in MATLAB\)"):
        load_mat(p)


@pytest.mark.parametrize("fmt", WRITERS)
def test_missing_label_number(tmp_path, fmt):
    v = seed_vars()
    v["hit_miss"][[2, 7]] = np.nan
    p = write_with(fmt, tmp_path, v)
    with pytest.raises(MatFileError, match=r"'hit_miss' has 2 missing entries .*rows 2, 7"):
        load_mat(p)


def test_gaps_in_other_columns_are_left_to_the_fit(tmp_path):
    v = seed_vars()
    v["age"] = np.where(np.arange(24) == 3, np.nan, 30.0)
    v["note"] = ["x"] * 23 + [""]
    write_mat73(tmp_path / "x.mat", v)
    d = load_mat(tmp_path / "x.mat")
    assert np.isnan(d.design["age"][3]) and pd.isna(d.design["note"][23])


@pytest.mark.parametrize("fmt", WRITERS)
def test_duplicate_rows(tmp_path, fmt):
    """A row repeating another's labels and data is a copy, refused even with check_channels=False."""
    v = seed_vars()
    v["hit_miss"][3] = 1.0  # row 3 now repeats row 2 (same sid, ch, hit_miss, region) ...
    v["data"][3] = v["data"][2]  # ... and its data
    p = write_with(fmt, tmp_path, v)
    for check in (True, False):
        with pytest.raises(MatFileError, match=r"rows 2, 3 \(0-based; 3, 4 in MATLAB\) repeat the same labels "
                                               r"\(sid=S01, ch=海马, hit_miss=1, region=hc\) and the same data"):
            load_mat(p, check_channels=check)


def test_rows_without_data_are_not_copies(tmp_path):
    v = seed_vars()
    v["hit_miss"][3] = 1.0
    v["data"][2:4] = np.nan  # two empty trials of one condition: nothing was copied
    write_mat73(tmp_path / "x.mat", v)
    assert load_mat(tmp_path / "x.mat", check_channels=False).n_obs == 24


def trial_vars(n_trials=3, n_times=5, seed=0):
    """Trial-level variables: ``n_trials`` rows per channel and hit_miss level, with a trial column."""
    v = seed_vars(n_times=n_times, seed=seed)
    rows = np.repeat(np.arange(len(v["sid"])), n_trials)
    out = {k: [v[k][i] for i in rows] for k in ("sid", "ch")}
    out["hit_miss"] = v["hit_miss"][rows]
    out["region"] = [v["region"][i] for i in rows]
    out["trial"] = np.tile(np.arange(1.0, n_trials + 1), len(v["sid"]))
    out["data"] = np.random.default_rng(seed).normal(size=(len(rows), n_times))
    return out


@pytest.mark.parametrize("fmt", WRITERS)
def test_trial_level_file_loads_with_check_channels_false(tmp_path, fmt):
    v = trial_vars()
    p = write_with(fmt, tmp_path, v)
    with pytest.raises(MatFileError, match=r"12 of 12 channels have several rows per hit_miss level \(e.g. "
                                           r"S01:Hippocampus-ä: 3 with hit_miss = 0, 3 with hit_miss = 1\): "
                                           r"single trials\?.*Load trial-level data with check_channels=False "
                                           r"\(CLI: --no-check-channels\)"):
        load_mat(p)
    d = load_mat(p, check_channels=False)
    assert d.n_obs == 72 and list(d.design.columns) == ["sid", "ch", "hit_miss", "region", "trial"]
    np.testing.assert_array_equal(d.values, v["data"])


def test_layout_hint_names_the_cli_flag_under_the_cli(tmp_path):
    from clusterlmer._checks import called_from_cli

    write_mat73(tmp_path / "x.mat", trial_vars())
    with called_from_cli(), pytest.raises(MatFileError) as info:
        load_mat(tmp_path / "x.mat")
    assert "Load trial-level data with --no-check-channels;" in str(info.value)
    assert "check_channels=False" not in str(info.value)


def test_label_of_wrong_kind(tmp_path):
    v = seed_vars()
    v["region"] = {"a": 1.0}
    write_mat73(tmp_path / "x.mat", v)
    with pytest.raises(MatFileError, match="label 'region' must be a cellstr .* it is a MATLAB struct"):
        load_mat(tmp_path / "x.mat")


def test_no_labels_at_all(tmp_path):
    write_mat73(tmp_path / "x.mat", {"data": np.zeros((4, 3)), "srate": 100.0})
    with pytest.raises(MatFileError, match="no variable .* has one value per row"):
        load_mat(tmp_path / "x.mat")


def test_matlab_string_array_label(tmp_path):
    """MATLAB string arrays are opaque objects in the file: say how to convert them."""
    p = tmp_path / "m.mat"
    matlab_like_file(p, region_rows=["hc"] * 8)
    with h5py.File(p, "r+") as f:
        del f["region"]
        obj = f.create_dataset("region", data=np.zeros((6, 1), dtype=np.uint32))
        obj.attrs["MATLAB_class"] = np.bytes_("string")
        obj.attrs["MATLAB_object_decode"] = np.int32(3)
    with pytest.raises(MatFileError, match=r"label 'region' .*string array; convert it with cellstr"):
        load_mat(p)


def test_channel_without_one_row_per_condition_is_named(tmp_path):
    """The original's layout has one hit and one miss row per channel (sid + ch)."""
    path = tmp_path / "unbalanced.mat"
    cl.io.write_mat73(path, {
        "sid": ["S1", "S1", "S1", "S2", "S2"],
        "ch": ["a", "a", "b", "a", "a"],
        "hit_miss": np.array([1.0, 0.0, 1.0, 1.0, 0.0]),
        "data": np.arange(15.0).reshape(5, 3),
    })
    with pytest.raises(cl.MatFileError, match=r"one row per level of 'hit_miss'.*S1:b has 1 row\(s\) \(1\)"
                                              r".*check_channels=False"):
        cl.load_mat(path)
    data = cl.load_mat(path, check_channels=False)
    assert data.values.shape == (5, 3)
