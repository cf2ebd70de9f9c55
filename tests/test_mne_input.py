"""MNE objects as data (cl.from_mne) and the EEG figures (scalp maps, condition waveforms).

Simulated EEG built with MNE's own containers (no downloads): 30 channels of the
10-20 system plus an EOG channel, 12 subjects x 2 conditions x 2 epochs, 40
samples at 100 Hz from -0.1 s, in volts (noise of 1 µV, a subject offset), and
an effect of +1.5 µV in condition b on Fz, FC1, FC2 and Cz from 0.05 to 0.15 s.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import clusterlmer as cl
from clusterlmer.cluster import cluster_test

mne = pytest.importorskip("mne")
from mne.time_frequency import AverageTFRArray, EpochsTFRArray  # noqa: E402  (after the importorskip)

EEG30 = ["Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "FC5", "FC1", "FC2", "FC6", "T7", "C3", "Cz", "C4", "T8",
         "CP5", "CP1", "CP2", "CP6", "P7", "P3", "Pz", "P4", "P8", "PO9", "O1", "Oz", "O2", "PO10"]
EFFECT_CHANNELS = ["Fz", "FC1", "FC2", "Cz"]
N_SUB, N_T, SFREQ, TMIN = 12, 40, 100.0, -0.1
EFFECT_SAMPLES = slice(15, 26)  # 0.05 .. 0.15 s
FORMULA = "y ~ cond + (1|subject)"


def _info():
    # The montage is called colin27_1020 from MNE 1.13 on (standard_1020 is its deprecated name).
    name = "colin27_1020" if "colin27_1020" in mne.channels.get_builtin_montages() else "standard_1020"
    info = mne.create_info(EEG30 + ["EOG"], SFREQ, ["eeg"] * 30 + ["eog"])
    info.set_montage(mne.channels.make_standard_montage(name), on_missing="ignore")  # EOG has no position
    return info


def _design():
    return pd.DataFrame([dict(subject=f"s{i:02d}", cond=c) for i in range(N_SUB) for c in "ab" for _ in range(2)])


def _values(rng):
    design = _design()
    subject = np.repeat(rng.normal(size=N_SUB), 4)[:, None, None]
    values = (rng.normal(size=(len(design), 31, N_T)) + subject) * 1e-6
    b = np.flatnonzero(design["cond"] == "b")
    values[np.ix_(b, [EEG30.index(c) for c in EFFECT_CHANNELS], np.arange(N_T)[EFFECT_SAMPLES])] += 1.5e-6
    return values


def _epochs(metadata=True):
    return mne.EpochsArray(_values(np.random.default_rng(0)), _info(), tmin=TMIN, verbose=False,
                           metadata=_design() if metadata else None)


@pytest.fixture(scope="module")
def epochs():
    return _epochs()


@pytest.fixture(scope="module")
def data(epochs):
    return cl.from_mne(epochs)


@pytest.fixture(scope="module")
def result(data):
    with mne.utils.use_log_level("error"), warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about in this analysis
        return cl.permutation_cluster_lmer(data, FORMULA, n_permutations=99, seed=1, adjacency=None,
                                           progress=False, cross_check=0)


def _evokeds(epochs):
    """One average per subject and condition, and their design."""
    design = _design().drop_duplicates().reset_index(drop=True)
    evokeds = [epochs[f"subject == '{s}' and cond == '{c}'"].average() for s, c in design.itertuples(index=False)]
    return evokeds, design


# ------------------------------------------------------------------ from_mne
def test_epochs_give_channels_x_time_data_without_eog_or_bads(epochs, data):
    assert data.channels == tuple(EEG30)  # the data channels: EOG left out
    assert data.values.shape == (4 * N_SUB, 30, N_T) and data.sample_axes == ("channel", "time")
    np.testing.assert_array_equal(data.values, epochs.get_data()[:, :30])  # volts, as MNE stores them
    np.testing.assert_array_equal(data.times, epochs.times)
    assert data.times[0] == pytest.approx(TMIN) and data.freqs is None and data.response is None
    pd.testing.assert_frame_equal(data.design, _design())
    assert data.info.ch_names == EEG30

    bad = epochs.copy()
    bad.info["bads"] = ["Cz", "EOG"]
    picked = cl.from_mne(bad)
    assert "Cz" not in picked.channels and len(picked.channels) == 29 and picked.info.ch_names == list(picked.channels)
    np.testing.assert_array_equal(picked.values, epochs.get_data()[:, [i for i in range(30) if EEG30[i] != "Cz"]])
    named = cl.from_mne(bad, picks=["Cz", "Fz"])  # a bad channel named explicitly is kept, in the order given
    assert named.channels == ("Cz", "Fz") and named.info["bads"] == []
    np.testing.assert_array_equal(named.values, epochs.get_data()[:, [EEG30.index("Cz"), EEG30.index("Fz")]])


def test_epochs_need_a_design():
    bare = _epochs(metadata=False)
    with pytest.raises(ValueError, match=r"no metadata.*epochs\.metadata = pd\.DataFrame"):
        cl.from_mne(bare)
    given = cl.from_mne(bare, design=_design().set_index(np.arange(48) + 100))
    pd.testing.assert_frame_equal(given.design, _design())  # the index is reset
    with pytest.raises(ValueError, match="47 rows but there are 48 epochs"):
        cl.from_mne(bare, design=_design().iloc[1:])
    with pytest.raises(TypeError, match="DataFrame"):
        cl.from_mne(bare, design=_design().to_dict())


def test_list_of_evoked(epochs):
    evokeds, design = _evokeds(epochs)
    data = cl.from_mne(evokeds, design)
    assert data.values.shape == (2 * N_SUB, 30, N_T) and data.channels == tuple(EEG30)
    np.testing.assert_array_equal(data.times, epochs.times)
    pd.testing.assert_frame_equal(data.design, design)
    first = epochs.get_data()[:2, :30].mean(axis=0)  # subject s00, condition a
    np.testing.assert_allclose(data.values[0], first, rtol=1e-12, atol=0)

    # The same channels in another order are put in the first average's order.
    shuffled = list(evokeds)
    shuffled[3] = evokeds[3].copy().reorder_channels(EEG30[::-1])
    np.testing.assert_array_equal(cl.from_mne(shuffled, design).values, data.values)

    with pytest.raises(ValueError, match="a list of 24 averages needs design="):
        cl.from_mne(evokeds)
    with pytest.raises(TypeError, match="single observation"):
        cl.from_mne(evokeds[0])
    missing = list(evokeds)
    missing[5] = evokeds[5].copy().drop_channels(["Oz"])
    with pytest.raises(ValueError, match=r"item 5 .*differs from item 0.*: it lacks Oz.*equalize_channels"):
        cl.from_mne(missing, design)
    bad = list(evokeds)
    bad[2] = evokeds[2].copy()
    bad[2].info["bads"] = ["Pz"]
    with pytest.raises(ValueError, match="item 2 .*it lacks Pz .bad channels are left out"):
        cl.from_mne(bad, design)
    cropped = list(evokeds)
    cropped[1] = evokeds[1].copy().crop(0.0, None)
    with pytest.raises(ValueError, match=r"same times: item 1 .*has 30 from 0 to 0\.29 s, item 0 .*40 from -0\.1"):
        cl.from_mne(cropped, design)
    with pytest.raises(TypeError, match="only mne.Evoked or only AverageTFR"):
        cl.from_mne([evokeds[0], epochs], design.iloc[:2])


def test_time_frequency_epochs_and_averages(epochs):
    rng = np.random.default_rng(5)
    freqs = np.array([6.0, 10.0, 20.0])
    power = rng.random((48, 31, freqs.size, N_T))  # MNE's layout: (epochs, channels, freqs, times)
    tfr = EpochsTFRArray(epochs.info, power, epochs.times, freqs, metadata=_design())
    data = cl.from_mne(tfr)
    assert data.values.shape == (48, 30, N_T, freqs.size) and data.sample_axes == ("channel", "time", "freq")
    np.testing.assert_array_equal(data.values, np.swapaxes(power[:, :30], 2, 3))
    np.testing.assert_array_equal(data.freqs, freqs)
    pd.testing.assert_frame_equal(data.design, _design())

    averages = [AverageTFRArray(epochs.info, power[k], epochs.times, freqs, nave=1) for k in range(4)]
    two = cl.from_mne(averages, _design().iloc[:4])
    np.testing.assert_array_equal(two.values, np.swapaxes(power[:4, :30], 2, 3))
    averages[2] = AverageTFRArray(epochs.info, power[2][:, :2], epochs.times, freqs[:2], nave=1)
    with pytest.raises(ValueError, match="same freqs: item 2 .*has 2 from 6 to 10 Hz"):
        cl.from_mne(averages, _design().iloc[:4])
    complex_tfr = EpochsTFRArray(epochs.info, power + 1j, epochs.times, freqs, metadata=_design())
    with pytest.raises(ValueError, match="complex values"):
        cl.from_mne(complex_tfr)


def test_other_inputs_are_refused(epochs, monkeypatch):
    with pytest.raises(TypeError, match="not continuous data"):
        cl.from_mne(mne.io.RawArray(epochs.get_data()[0], epochs.info, verbose=False))
    with pytest.raises(TypeError, match="got DataFrame"):
        cl.from_mne(_design())
    monkeypatch.setitem(sys.modules, "mne", None)  # "import mne" now raises ImportError
    with pytest.raises(ImportError, match=r"cl.from_mne.*pip install 'clusterlmer\[mne\]'"):
        cl.from_mne(epochs)


# ------------------------------------------------------------------ the analysis
def test_the_info_gives_the_adjacency_and_one_cluster_holds_the_effect(data, result):
    with mne.utils.use_log_level("error"):
        matrix, names = mne.channels.find_ch_adjacency(data.info, "eeg")
    assert names == EEG30
    _, p, info = cluster_test(result.stat["cond"], result.null["cond"], tail=1, adjacency=matrix)
    np.testing.assert_array_equal(p, result.p_clust["cond"])
    assert [c.stat for c in info.clusters] == [c.stat for c in result.cluster_info["cond"].clusters]

    significant = result.clusters[result.clusters["p"] < 0.05]
    assert len(significant) == 1
    best = significant.iloc[0]
    assert set(EFFECT_CHANNELS) <= set(best["channels"].split(", "))  # neighbours may join
    assert best["peak_channel"] in EFFECT_CHANNELS
    assert 0.02 <= best["t_start"] <= 0.06 and 0.14 <= best["t_stop"] <= 0.18


def test_a_channel_analysed_alone_gives_the_same_statistic_and_null(data, result):
    ch = EEG30.index("FC1")
    alone = cl.TimeseriesData(data.design, data.values[:, ch], data.times)
    single = cl.permutation_cluster_lmer(alone, FORMULA, n_permutations=99, seed=1, progress=False, cross_check=0)
    np.testing.assert_array_equal(single.fit.F, result.fit.F[:, ch])
    np.testing.assert_array_equal(single.stat["cond"], result.stat["cond"][ch])
    np.testing.assert_array_equal(single.null["cond"], result.null["cond"][ch])


def test_result_files_leave_the_info_out(result, tmp_path):
    assert result.fit.info is not None and "info" not in repr(result.fit)
    result.save(tmp_path / "res.h5")
    loaded = cl.load_result(tmp_path / "res.h5")
    assert loaded.fit.info is None and loaded.fit.channels == tuple(EEG30)
    np.testing.assert_array_equal(loaded.stat["cond"], result.stat["cond"])


# ------------------------------------------------------------------ figures
def _significant(result):
    best = result.clusters[result.clusters["p"] < 0.05].iloc[0]
    index = [i for i, c in enumerate(result.cluster_info["cond"].clusters) if c.p == best["p"]]
    assert len(index) == 1
    return best, index[0]


def _marked_points(ax):
    """The white dots a topomap draws on the cluster's channels."""
    lines = [line for line in ax.lines if line.get_marker() == "o" and line.get_markerfacecolor() == "white"]
    assert len(lines) == 1
    return np.column_stack([lines[0].get_xdata(), lines[0].get_ydata()])


def test_topomap_of_the_cluster(result, data, tmp_path):
    best, index = _significant(result)
    fig = result.plot_topomap("cond", path=tmp_path / "topo.png")
    assert isinstance(fig, Figure) and (tmp_path / "topo.png").stat().st_size > 0
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == 1  # one significant cluster, one map
    ax = maps[0]
    title = ax.get_title()
    assert f"cluster {index}" in title and f"p = {best['p']:.3g}" in title
    assert f"{best['t_start']:.3g}–{best['t_stop']:.3g} s" in title

    # The same map drawn by MNE directly with the table's channels marked: the same dots, the same image.
    members = best["channels"].split(", ")
    window = slice(int(best["start"]), int(best["stop"]) + 1)
    reference = Figure().add_subplot()
    mne.viz.plot_topomap(result.stat["cond"][:, window].mean(axis=1), data.info,
                         mask=np.isin(EEG30, members), mask_params=dict(marker="o", markerfacecolor="white"),
                         axes=reference, show=False)
    np.testing.assert_array_equal(_marked_points(ax), _marked_points(reference))
    assert len(_marked_points(ax)) == best["n_channels"]
    np.testing.assert_allclose(ax.images[0].get_array(), reference.images[0].get_array())

    # A loaded result has no positions: the info is passed.
    result.save(tmp_path / "res.h5")
    loaded = cl.load_result(tmp_path / "res.h5")
    with pytest.raises(ValueError, match="pass info="):
        loaded.plot_topomap("cond")
    again = loaded.plot_topomap("cond", cluster=index, info=_info())  # with the EOG channel: picked by name
    np.testing.assert_array_equal(_marked_points([a for a in again.axes if a.images][0]), _marked_points(ax))


def test_topomap_choices_are_checked(result):
    with pytest.raises(ValueError, match="'subject' was not tested"):
        result.plot_topomap("subject")
    strict = dataclasses.replace(result, alpha=0.001)
    with pytest.raises(ValueError, match=r"no cluster with p < 0.001 \(its smallest cluster p is 0.01\)"):
        strict.plot_topomap("cond")
    n = len(result.cluster_info["cond"].clusters)
    with pytest.raises(IndexError, match=f"has {n} cluster"):
        result.plot_topomap("cond", cluster=n)
    weakest = int(np.argmax([c.p for c in result.cluster_info["cond"].clusters]))
    fig = result.plot_topomap("cond", cluster=weakest)  # a non-significant cluster when asked for
    assert f"cluster {weakest}" in [ax for ax in fig.axes if ax.images][0].get_title()


def test_waveforms_at_the_peak_channel(result, data, tmp_path):
    best, index = _significant(result)
    fig = result.plot_waveforms(data, "cond", path=tmp_path / "waves.pdf")
    assert isinstance(fig, Figure) and (tmp_path / "waves.pdf").stat().st_size > 0
    waves, difference = [ax for ax in fig.axes if ax.lines]
    peak = EEG30.index(best["peak_channel"])
    assert waves.get_title(loc="left").startswith(f"{best['peak_channel']}: cond, cluster {index}")
    assert waves.get_ylabel() == "amplitude (µV)" and waves.get_xlabel() == "time (s)"
    lines = {line.get_label(): line for line in waves.lines}
    cond = data.design["cond"].to_numpy()
    for level in "ab":
        expected = data.values[cond == level, peak].mean(axis=0) * 1e6
        np.testing.assert_allclose(lines[f"cond={level}"].get_ydata(), expected, rtol=1e-12)
        np.testing.assert_array_equal(lines[f"cond={level}"].get_xdata(), data.times)
    drawn = [line for line in difference.lines if len(line.get_xdata()) == N_T]
    np.testing.assert_allclose(drawn[0].get_ydata(),
                               lines["cond=b"].get_ydata() - lines["cond=a"].get_ydata(), rtol=1e-12)
    assert "cond=b − cond=a" in difference.get_title(loc="left")
    shaded = [p for p in waves.patches if p.get_label() == "cluster"][0].get_x()
    step = 1 / SFREQ
    assert shaded == pytest.approx(best["t_start"] - step / 2)

    other = cl.TimeseriesData(data.design, data.values[:, :29], data.times, channels=EEG30[:29])
    with pytest.raises(ValueError, match="not those of the result"):
        result.plot_waveforms(other, "cond")


def test_time_frequency_figures_use_the_cluster_band():
    """Power rises 2.5-fold in condition b at 10-14 Hz on the effect channels: map and waveforms of that band."""
    rng = np.random.default_rng(2)
    freqs = np.array([6.0, 10.0, 14.0])
    power = rng.gamma(4.0, size=(48, 31, freqs.size, N_T)) * 1e-12
    b = np.flatnonzero(_design()["cond"] == "b")
    power[np.ix_(b, [EEG30.index(c) for c in EFFECT_CHANNELS], [1, 2], np.arange(N_T)[EFFECT_SAMPLES])] *= 2.5
    data = cl.from_mne(EpochsTFRArray(_info(), power, _epochs().times, freqs, metadata=_design()))
    with mne.utils.use_log_level("error"):
        result = cl.permutation_cluster_lmer(data, FORMULA, n_permutations=99, seed=1, progress=False,
                                             cross_check=0)
    best, index = _significant(result)
    assert set(EFFECT_CHANNELS) <= set(best["channels"].split(", "))
    band = f"{best['f_start']:.3g}–{best['f_stop']:.3g} Hz"
    fig = result.plot_topomap("cond")
    assert band in [ax for ax in fig.axes if ax.images][0].get_title()
    waves = result.plot_waveforms(data, "cond").axes[0]
    assert waves.get_ylabel() == f"mean over {band}"  # power as stored, no unit scaling
    mask = result.cluster_info["cond"].clusters[index].mask
    in_band = np.flatnonzero(mask.any(axis=(0, 1)))
    peak = EEG30.index(best["peak_channel"])
    expected = data.values[data.design["cond"] == "a", peak][:, :, in_band[0]:in_band[-1] + 1].mean(axis=(0, 2))
    line = [line for line in waves.lines if line.get_label() == "cond=a"][0]
    np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)


def test_topomap_from_a_montage_name_for_data_without_an_info():
    """Long-format data carry no positions: a montage MNE ships, named, gives them."""
    data = cl.simulate_erp(seed=2)
    bare = cl.TimeseriesData(data.design, data.values, data.times, channels=data.channels)
    res = cl.permutation_cluster_lmer(bare, "amp ~ Deviant + (1|Subject)", n_permutations=39, seed=5,
                                      adjacency="none", progress=False, cross_check=0)
    best = int(np.argmin([c.p for c in res.cluster_info["Deviant"].clusters]))
    fig = res.plot_topomap("Deviant", cluster=best, info="standard_1005")
    assert len(fig.axes) >= 1
    with pytest.raises(ValueError, match="montage 'biosemi64' lacks"):
        res.plot_topomap("Deviant", cluster=best, info="biosemi64")
    with pytest.raises(ValueError, match="info='standard_1005'"):
        res.plot_topomap("Deviant", cluster=best)
