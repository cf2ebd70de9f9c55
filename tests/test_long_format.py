"""Long tables (one row per series and sample): cl.from_long, the CLI's --long, and --adjacency.

The EEG-like data use 30 electrodes of a 10-20 montage (the EEG channels of
MNE's easycap32ch-avg FieldTrip template, positions from MNE's 10-20
montage; both ship with MNE, nothing is downloaded).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from clusterlmer.adjacency import channel_adjacency, read_adjacency

TEMPLATE = "easycap32ch-avg"
FORMULA = "amp ~ Deviant + (1|Subject)"


def _electrodes():
    mne = pytest.importorskip("mne")
    names = [str(n) for n in mne.channels.read_ch_adjacency(TEMPLATE)[1]]
    return [n for n in names if n not in ("Gnd", "Nasion", "LPA", "RPA")]


def _simulate(n_subjects=12, n_times=20, effect=0.0, seed=0, channels=None):
    """TimeseriesData of Subject x Deviant averages: subject offsets, a Deviant effect at Cz/C3 (samples 8-13)."""
    rng = np.random.default_rng(seed)
    channels = channels or _electrodes()
    design = pd.DataFrame([dict(Subject=f"s{s:02d}", Deviant=d) for s in range(n_subjects) for d in (0, 1)])
    values = rng.normal(size=(len(design), len(channels), n_times))
    values += np.repeat(rng.normal(size=n_subjects), 2)[:, None, None]
    for name in ("Cz", "C3"):
        if name in channels:
            values[:, channels.index(name), 8:14] += effect * design["Deviant"].to_numpy()[:, None]
    times = np.round(np.arange(n_times) / 250 - 0.02, 6)
    return cl.TimeseriesData(design, values, times, channels=channels)


def _channel_columns(data):
    """The 'Subject, Deviant, Time, Fz, Cz, ...' layout: one row per series and time."""
    n, n_ch, n_t = data.values.shape
    table = data.design.loc[np.repeat(np.arange(n), n_t)].reset_index(drop=True)
    table["Time"] = np.tile(data.times, n)
    table[list(data.channels)] = data.values.transpose(0, 2, 1).reshape(-1, n_ch)
    return table


def _fully_long(data):
    """The 'Subject, Deviant, Time, electrode, amp' layout: one row per series, channel and time."""
    return _channel_columns(data).melt(id_vars=[*data.design.columns, "Time"], var_name="electrode",
                                       value_name="amp")


def assert_same_data(a, b):
    assert a.design.equals(b.design)
    np.testing.assert_array_equal(a.values, b.values)  # exact, NaN where NaN
    np.testing.assert_array_equal(a.times, b.times)
    assert a.channels == b.channels


@pytest.fixture(scope="module")
def eeg():
    return _simulate()


# ---------------------------------------------------------------- round trips and the two layouts

def test_both_long_layouts_give_the_data_back_exactly(eeg):
    columns = cl.from_long(_channel_columns(eeg), time="Time", values=list(eeg.channels))
    long = cl.from_long(_fully_long(eeg), time="Time", value="amp", channel="electrode")
    assert_same_data(columns, eeg)
    assert_same_data(long, eeg)
    assert columns.response is None and long.response is None  # with channels the response is a label
    assert long.values.shape == (24, 30, 20) and long.channels[:3] == ("Fp1", "Fp2", "F7")


def test_wide_time_columns_and_their_melted_table_agree():
    """from_dataframe of a wide table (one column per time) equals from_long of its melt."""
    rng = np.random.default_rng(1)
    times = np.array([-0.1, 0.0, 0.1, 0.2, 0.3])
    wide = pd.DataFrame({"sid": np.repeat(["a", "b", "c"], 2), "cond": ["x", "y"] * 3})
    columns = [f"t{i}" for i in range(times.size)]
    wide[columns] = rng.normal(size=(6, times.size))
    wide.iloc[2, 3] = np.nan  # a value left out stays NaN
    expected = cl.from_dataframe(wide, values=columns, times=times)
    long = wide.melt(id_vars=["sid", "cond"], var_name="tcol", value_name="y")
    long["Time"] = times[long["tcol"].str[1:].astype(int)]
    got = cl.from_long(long.drop(columns="tcol"), time="Time", value="y")
    assert_same_data(got, expected)
    assert got.response == "y" and np.isnan(got.values[2, 1])


def test_row_order_does_not_matter_beyond_the_order_of_series(eeg):
    """Shuffled rows: series in order of first appearance, times sorted, every value in its cell."""
    table = _fully_long(eeg).sample(frac=1.0, random_state=3).reset_index(drop=True)
    data = cl.from_long(table, time="Time", value="amp", channel="electrode")
    np.testing.assert_array_equal(data.times, eeg.times)
    first_seen = table.drop_duplicates(["Subject", "Deviant"])[["Subject", "Deviant"]].reset_index(drop=True)
    assert data.design.equals(first_seen)
    first_channels = tuple(table["electrode"].drop_duplicates())
    assert data.channels == first_channels and data.channels != eeg.channels  # first appearance, not template order
    order = [eeg.design.index[(eeg.design["Subject"] == s) & (eeg.design["Deviant"] == d)][0]
             for s, d in first_seen.itertuples(index=False)]
    ch_order = [eeg.channels.index(c) for c in data.channels]
    np.testing.assert_array_equal(data.values, eeg.values[order][:, ch_order])


def test_one_column_of_values_is_one_response_without_channels(eeg):
    table = _channel_columns(eeg)
    for kwargs in (dict(values="Cz"), dict(values=["Cz"]), dict(value="Cz")):
        data = cl.from_long(table, time="Time", design=["Subject", "Deviant"], **kwargs)
        assert data.channels is None and data.response == "Cz"
        np.testing.assert_array_equal(data.values, eeg.values[:, eeg.channels.index("Cz")])


def test_float_times_with_rounding_noise_are_one_sample():
    table = pd.DataFrame({"sid": ["a"] * 3 + ["b"] * 3, "Time": [0.1, 0.2, 0.3] * 2, "y": np.arange(6.0)})
    table.loc[4, "Time"] = 0.1 + 0.1  # 0.2 exactly
    table.loc[5, "Time"] = 0.1 + 0.2  # 0.30000000000000004, not 0.3
    assert table.loc[5, "Time"] != table.loc[2, "Time"]
    data = cl.from_long(table, time="Time", value="y")
    np.testing.assert_array_equal(data.times, [0.1, 0.2, 0.3])
    np.testing.assert_array_equal(data.values, [[0, 1, 2], [3, 4, 5]])
    with pytest.warns(UserWarning, match="2 of 8 .series, time. samples have no row"):
        exact = cl.from_long(table, time="Time", value="y", time_decimals=None)
    assert exact.times.size == 4 and np.isnan(exact.values).sum() == 2


def test_nullable_columns_read_like_numpy_ones():
    table = pd.DataFrame({"sid": ["a", "a", "b", "b"], "Time": pd.array([0, 5, 0, 5], dtype="Int64"),
                          "y": pd.array([1.0, None, 3.0, 4.0], dtype="Float64")})
    data = cl.from_long(table, time="Time", value="y")
    np.testing.assert_array_equal(data.times, [0, 5])
    np.testing.assert_array_equal(data.values, [[1.0, np.nan], [3.0, 4.0]])


# ---------------------------------------------------------------- series identity, missing samples

def _sessions(eeg):
    """Two sessions of every Subject x Deviant: the same design values twice at each time."""
    one, two = _fully_long(eeg), _fully_long(eeg)
    one["Session"], two["Session"] = 1, 2
    two["amp"] += 10.0
    return pd.concat([one, two], ignore_index=True)[["Subject", "Session", "Deviant", "Time", "electrode", "amp"]]


def test_repeated_series_are_refused_naming_them_and_the_fix(eeg):
    table = _sessions(eeg)
    with pytest.raises(ValueError) as info:
        cl.from_long(table, time="Time", value="amp", channel="electrode", design=["Subject", "Deviant"])
    message = str(info.value)
    assert "24 combination(s) of the design columns (Subject, Deviant) occur more than once" in message
    assert "Subject=s00, Deviant=0 has 2 rows at Time=-0.02, electrode=Fp1 and at 599 more sample(s)" in message
    assert "series='COL'" in message and "left out of the design that differ between them: Session" in message
    fixed = cl.from_long(table, time="Time", value="amp", channel="electrode", design=["Subject", "Deviant"],
                         series="Session")
    assert list(fixed.design.columns) == ["Subject", "Deviant", "Session"] and fixed.n_obs == 48
    np.testing.assert_array_equal(fixed.values[:24], eeg.values)
    np.testing.assert_array_equal(fixed.values[24:], eeg.values + 10.0)
    # Left in the design by default, Session tells the series apart on its own.
    assert_same_data(cl.from_long(table, time="Time", value="amp", channel="electrode"),
                     cl.from_long(table, time="Time", value="amp", channel="electrode", series="Session"))


def test_series_column_numbered_within_subject_is_part_of_the_identity():
    """Trials numbered 1, 2 within each subject: series='trial' together with Subject tells them apart."""
    table = pd.DataFrame({"Subject": np.repeat(["a", "b"], 4), "trial": [1, 1, 2, 2] * 2, "Time": [0, 1] * 4,
                          "y": np.arange(8.0)})
    with pytest.raises(ValueError, match="2 combination.s. of the design columns .Subject. occur more than once"):
        cl.from_long(table, time="Time", value="y", design=["Subject"])
    data = cl.from_long(table, time="Time", value="y", design=["Subject"], series="trial")
    assert data.design.to_dict("list") == {"Subject": ["a", "a", "b", "b"], "trial": [1, 2, 1, 2]}
    np.testing.assert_array_equal(data.values, np.arange(8.0).reshape(4, 2))


def test_missing_samples_are_nan_and_counted(eeg):
    table = _fully_long(eeg)
    gone = (table["Subject"] == "s03") & (table["Deviant"] == 1) & (table["electrode"] == "Pz") & (table["Time"] > 0)
    gone |= (table["Subject"] == "s05") & (table["Time"] == eeg.times[0])
    with pytest.warns(UserWarning) as record:
        data = cl.from_long(table[~gone], time="Time", value="amp", channel="electrode")
    message = str(record[0].message)
    n_gone = int(gone.sum())
    assert n_gone == 14 + 60  # 14 samples after time 0; s05 (2 series x 30 channels) at the first time
    assert f"{n_gone} of {24 * 30 * 20} (series, channel, time) samples have no row" in message
    assert "3 of 24 series are incomplete, e.g. Subject=s03, Deviant=1 (586 of 600 rows)" in message
    expected = eeg.values.copy()
    expected[7, eeg.channels.index("Pz"), eeg.times > 0] = np.nan
    expected[10:12, :, 0] = np.nan
    np.testing.assert_array_equal(data.values, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # complete tables do not warn
        cl.from_long(table, time="Time", value="amp", channel="electrode")


def test_a_design_column_varying_within_a_series_is_refused(eeg):
    table = _channel_columns(eeg)
    table["Sample"] = np.tile(np.arange(eeg.n_times), eeg.n_obs)  # an index next to the time
    with pytest.raises(ValueError) as info:
        cl.from_long(table, time="Time", values=list(eeg.channels))
    message = str(info.value)
    assert message.startswith("design column 'Sample' varies within a series: Subject=s00, Deviant=0 has 0 at "
                              "Time=-0.02, 1 at Time=-0.016")
    assert "design=[...] without it" in message
    assert_same_data(cl.from_long(table, time="Time", values=list(eeg.channels), design=["Subject", "Deviant"]),
                     eeg)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("change, kwargs, error, words", [
    (None, dict(time="Tme", value="amp", channel="electrod"), ValueError,
     ["'Tme' (time), 'electrod' (channel)", "Available columns: Subject, Deviant, Time, electrode, amp"]),
    (None, dict(time="Time", values=["Cz", "amp"]), ValueError, ["'Cz' (values)"]),
    ("text", dict(time="Time", value="amp", channel="electrode"), TypeError,
     ["must be numeric; not numeric: amp", "'n/a'"]),
    ("bool", dict(time="Time", value="amp", channel="electrode"), TypeError, ["not numeric: amp"]),
    ("time_nan", dict(time="Time", value="amp", channel="electrode"), ValueError,
     ["time column 'Time' has 2 missing or non-finite value(s) (rows 3, 8)"]),
    ("time_text", dict(time="Time", value="amp", channel="electrode"), TypeError, ["time column 'Time' must be numeric"]),
    ("channel_nan", dict(time="Time", value="amp", channel="electrode"), ValueError,
     ["channel column 'electrode' has 1 missing value(s) (rows 5)"]),
    ("empty", dict(time="Time", value="amp", channel="electrode"), ValueError, ["no rows"]),
    (None, dict(time="Time", value="amp", values=["amp"]), ValueError, ["not both"]),
    (None, dict(time="Time"), ValueError, ["name the response"]),
    (None, dict(time="Time", values=["amp"], channel="electrode"), ValueError, ["goes with value="]),
    (None, dict(time="Time", value="amp", channel="electrode", series="Time"), ValueError,
     ["'Time' is given both as time and as series"]),
    (None, dict(time="Time", value="amp", channel="electrode", design=["Subject", "amp"]), ValueError,
     ["'amp' is given both as value and as design"]),
])
def test_bad_tables_and_arguments_are_refused(eeg, change, kwargs, error, words):
    table = _fully_long(eeg)
    if change == "text":
        table["amp"] = table["amp"].astype(object)
        table.loc[4, "amp"] = "n/a"
    elif change == "bool":
        table["amp"] = table["amp"] > 0
    elif change == "time_nan":
        table.loc[[3, 8], "Time"] = np.nan
    elif change == "time_text":
        table["Time"] = table["Time"].astype(str)
    elif change == "channel_nan":
        table["electrode"] = table["electrode"].astype(object)
        table.loc[5, "electrode"] = None
    elif change == "empty":
        table = table.iloc[:0]
    with pytest.raises(error) as info:
        cl.from_long(table, **kwargs)
    for word in words:
        assert word in str(info.value)


# ---------------------------------------------------------------- speed and an EEG-like analysis

def test_seven_hundred_thousand_rows_pivot_well_under_two_seconds():
    data = _simulate(n_subjects=50, n_times=231, seed=5)  # 100 series x 30 channels x 231 samples
    table = _fully_long(data)
    assert len(table) == 693_000
    elapsed = []
    for _ in range(3):
        start = time.perf_counter()
        got = cl.from_long(table, time="Time", value="amp", channel="electrode")
        elapsed.append(time.perf_counter() - start)
    assert_same_data(got, data)
    print(f"from_long, 693000 rows: best {min(elapsed):.3f} s")
    assert min(elapsed) < 2.0


def test_eeg_like_analysis_finds_the_effect_over_central_electrodes():
    mne = pytest.importorskip("mne")
    channels = _electrodes()
    # MNE 1.13 renamed standard_1020 to colin27_1020 (same positions).
    montage = "colin27_1020" if "colin27_1020" in mne.channels.get_builtin_montages() else "standard_1020"
    positions = mne.channels.make_standard_montage(montage).get_positions()["ch_pos"]
    xyz = np.array([positions[c] for c in channels])
    rng = np.random.default_rng(11)
    n_sub, n_times = 16, 30
    design = pd.DataFrame([dict(Subject=f"s{s:02d}", Deviant=d) for s in range(n_sub) for d in (0, 1)])
    # An effect with a spatial Gaussian around Cz (4 cm), at samples 10-17: a central MMN-like component.
    spread = np.exp(-((xyz - positions["Cz"]) ** 2).sum(1) / (2 * 0.04 ** 2))
    values = rng.normal(size=(len(design), len(channels), n_times)) + np.repeat(rng.normal(size=n_sub), 2)[:, None,
                                                                                                           None]
    window = np.zeros(n_times)
    window[10:18] = 1.5
    values += design["Deviant"].to_numpy()[:, None, None] * spread[None, :, None] * window[None, None, :]
    truth = cl.TimeseriesData(design, values, np.arange(n_times) * 0.004, channels=channels)
    table = _fully_long(truth).sample(frac=1.0, random_state=0)  # export order need not be tidy
    data = cl.from_long(table, time="Time", value="amp", channel="electrode")
    assert set(data.channels) == set(channels) and data.n_obs == 2 * n_sub
    res = cl.permutation_cluster_lmer(data, FORMULA, n_permutations=49, seed=1, adjacency=TEMPLATE,
                                      progress=False, cross_check=0)
    best = res.clusters.sort_values("p").iloc[0]
    assert best["p"] <= 0.05 and best["peak_channel"] in ("Cz", "C3", "C4", "FCz", "CP1", "CP2", "FC1", "FC2")
    members = set(best["channels"].split(", "))
    assert "Cz" in members and not members & {"Fp1", "Fp2", "O1", "O2"}
    assert 10 <= best["start"] and best["stop"] <= 17


# ---------------------------------------------------------------- the command line

def cli(capsys, *argv):
    from conftest import run_cli

    return run_cli(capsys, argv)


@pytest.fixture(scope="module")
def effect():
    return _simulate(effect=1.5, seed=2)


@pytest.fixture
def long_csv(effect, tmp_path):
    path = tmp_path / "erp_long.csv"
    _fully_long(effect).to_csv(path, index=False)
    return path


@pytest.fixture
def no_fit(monkeypatch):
    import clusterlmer.analysis
    import clusterlmer.fit

    def refuse(*args, **kwargs):
        raise AssertionError("a fit started before the bad input was refused")

    monkeypatch.setattr(clusterlmer.analysis, "fit_plan", refuse)
    monkeypatch.setattr(clusterlmer.fit, "fit_plan", refuse, raising=False)


LONG = ("--long", "--time", "Time", "--value", "amp", "--channel", "electrode")
QUICK = ("--nperm", "39", "--seed", "4", "--engine", "native", "--cross-check", "0", "--no-progress")


def test_cli_runs_a_long_csv_and_lists_the_channels_of_each_cluster(capsys, long_csv, tmp_path):
    h5 = tmp_path / "res.h5"
    code, out, err = cli(capsys, "run", long_csv, *LONG, "--formula", FORMULA, "--adjacency", TEMPLATE, *QUICK,
                         "--out", h5)
    assert code == 0, err
    assert "responses from the column 'amp' (24 series x 30 x 20 samples; channels Fp1, Fp2, F7," in out
    assert "peak_channel" in out and "Cz" in out.split("Significant clusters")[1]
    from_cli = cl.load_result(h5)
    expected = cl.permutation_cluster_lmer(
        cl.from_long(pd.read_csv(long_csv), time="Time", value="amp", channel="electrode"), FORMULA,
        n_permutations=39, seed=4, engine="native", cross_check=0, progress=False, adjacency=TEMPLATE)
    np.testing.assert_array_equal(from_cli.null["Deviant"], expected.null["Deviant"])
    assert from_cli.clusters.equals(expected.clusters)
    assert "Cz" in expected.clusters.sort_values("p").iloc[0]["channels"].split(", ")


def test_cli_channel_columns_and_an_adjacency_file_give_the_same_result(capsys, effect, long_csv, tmp_path):
    columns = tmp_path / "erp_columns.csv"
    _channel_columns(effect).to_csv(columns, index=False)
    # The template's matrix as a CSV under a header of names, in another order than the data's.
    names = list(effect.channels)[::-1]
    matrix = channel_adjacency(TEMPLATE, names).toarray().astype(int)
    adjacency = tmp_path / "neighbours.csv"
    pd.DataFrame(matrix, columns=names).to_csv(adjacency, index=False)
    assert (read_adjacency(adjacency, effect.channels) != channel_adjacency(TEMPLATE, effect.channels)).nnz == 0
    outs = []
    for argv in ([long_csv, *LONG, "--adjacency", TEMPLATE],
                 [columns, "--long", "--time", "Time", "--channels", ",".join(effect.channels),
                  "--adjacency", adjacency]):
        out_csv = tmp_path / f"res{len(outs)}.csv"
        code, out, err = cli(capsys, "run", *argv, "--formula", FORMULA, *QUICK, "--out", out_csv)
        assert code == 0, err
        outs.append(pd.read_csv(out_csv))
    assert outs[0].equals(outs[1])


def test_adjacency_files_npy_and_npz(tmp_path, effect):
    from scipy import sparse

    expected = channel_adjacency(TEMPLATE, effect.channels)
    np.save(tmp_path / "a.npy", expected.toarray())
    sparse.save_npz(tmp_path / "b.npz", sparse.csr_matrix(expected.astype(np.int8)))
    np.savez(tmp_path / "c.npz", adjacency=expected.toarray().astype(int))
    for name in ("a.npy", "b.npz", "c.npz"):
        assert (read_adjacency(tmp_path / name, effect.channels) != expected).nnz == 0
    np.savez(tmp_path / "d.npz", a=np.eye(2), b=np.eye(2))
    with pytest.raises(ValueError, match="holds 2 arrays .a, b."):
        read_adjacency(tmp_path / "d.npz", effect.channels)
    np.save(tmp_path / "e.npy", np.eye(4))
    with pytest.raises(ValueError, match="is 4 x 4 but the data have 30 channels"):
        read_adjacency(tmp_path / "e.npy", effect.channels)


@pytest.mark.parametrize("argv, words", [
    (["--long", "--time", "Time", "--value", "amp", "--channel", "electrod", "--adjacency", TEMPLATE],
     ["clusterlmer: error: column(s) not in the table: 'electrod' (channel). Available columns: Subject, Deviant, "
      "Time, electrode, amp."]),
    (["--long", "--time", "Time", "--value", "amp", "--channel", "electrode", "--design", "Subject",
      "--adjacency", TEMPLATE],
     ["12 combination(s) of the design columns (Subject) occur more than once", "Pass --series COL naming",
      "differ between them: Deviant"]),
    (["--long", "--time", "Time", "--value", "amp", "--channel", "electrode"],
     ["30 channels: say which are neighbours with --adjacency"]),
    # Without --channel the electrode column is a design column: one response per (series, electrode).
    (["--long", "--time", "Time", "--value", "amp", "--adjacency", "none"],
     ["--adjacency describes channel neighbours, but these data have no channel axis"]),
])
def test_cli_refuses_bad_tables_before_any_fit(capsys, long_csv, no_fit, argv, words):
    code, out, err = cli(capsys, "run", long_csv, *argv, "--formula", FORMULA, *QUICK)
    assert code == 1 and out == ""
    for word in words:
        assert word in err
    assert "series='COL'" not in err  # the CLI's words, not Python's


@pytest.mark.parametrize("argv, words", [
    (["--time", "Time", "--value", "amp"], "--time, --value describe a long table: add --long"),
    (["--long", "--value", "amp"], "--long needs --time COL"),
    (["--long", "--time", "Time"], "--long needs one of --channels COL1,COL2,..."),
    (["--long", "--time", "Time", "--channels", "Fz,Cz", "--value", "amp"], "--long needs one of --channels"),
    (["--long", "--time", "Time", "--channels", "Fz,Cz", "--channel", "electrode"], "--channel names the column"),
    (["--long", "--time", "Time", "--value", "amp", "--data-key", "amp"], "--data-key applies to .mat files"),
    (["--long", "--time", "Time", "--channels", "Fz,,Cz"], "expected column names separated by commas"),
    ([], "is a table: read it with --long --time COL"),
    (["--long", "--time", "Time", "--value", "amp", "--channel", "electrode", "--adjacency", "missing.npy"],
     "--adjacency 'missing.npy': no such file"),
])
def test_cli_long_flags_are_checked_by_the_parser(capsys, long_csv, monkeypatch, argv, words):
    import clusterlmer.long_format

    def refuse(*args, **kwargs):
        raise AssertionError("the table was read before the flags were checked")

    monkeypatch.setattr(clusterlmer.long_format, "read_table", refuse)
    code, out, err = cli(capsys, "run", long_csv, *argv, "--formula", FORMULA, *QUICK)
    assert code == 2 and words in err, err


def test_cli_fit_reads_one_response_and_checks_the_formula_names_it(capsys, effect, tmp_path):
    path = tmp_path / "cz.csv"
    table = _channel_columns(effect)[["Subject", "Deviant", "Time", "Cz"]]
    table.to_csv(path, index=False)
    code, out, err = cli(capsys, "fit", path, "--long", "--time", "Time", "--value", "Cz", "--formula",
                         FORMULA, "--engine", "native", "--cross-check", "0")
    assert code == 1 and "the formula's response 'amp' is not the response column 'Cz'" in err
    out_csv = tmp_path / "fit.csv"
    code, out, err = cli(capsys, "fit", path, "--long", "--time", "Time", "--channels", "Cz", "--formula",
                         "Cz ~ Deviant + (1|Subject)", "--engine", "native", "--cross-check", "0", "--out", out_csv)
    assert code == 0, err
    expected = cl.fit_timeseries(cl.TimeseriesData(effect.design, effect.values[:, effect.channels.index("Cz")],
                                                   effect.times), "y ~ Deviant + (1|Subject)", engine="native",
                                 cross_check=0)
    np.testing.assert_array_equal(pd.read_csv(out_csv).query("Term == 'Deviant'")["FStat"].to_numpy(),
                                  expected.F[expected.terms.index("Deviant")])


def test_parquet_needs_pyarrow_or_reads_like_csv(capsys, effect, tmp_path):
    import importlib.util

    from clusterlmer.long_format import read_table

    path = tmp_path / "erp.parquet"
    if importlib.util.find_spec("pyarrow") is None and importlib.util.find_spec("fastparquet") is None:
        path.write_bytes(b"PAR1")
        with pytest.raises(ImportError, match="pip install pyarrow"):
            read_table(path)
        code, out, err = cli(capsys, "fit", path, *LONG, "--formula", FORMULA)
        assert code == 1 and "pip install pyarrow" in err
    else:
        _fully_long(effect).to_parquet(path)
        assert_same_data(cl.from_long(read_table(path), time="Time", value="amp", channel="electrode"), effect)
        code, out, err = cli(capsys, "fit", path, *LONG, "--formula", FORMULA)  # the CLI reads it too
        assert code == 0, err
