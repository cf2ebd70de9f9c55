"""Channels x time data: the channel axis through fitting, clustering over an adjacency, results and files.

A small simulated EEG-like data set (16 subjects x 2 conditions, 6 channels
in a chain, 40 samples) with an effect on channels E1-E4 at 0.15-0.25 s.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import clusterlmer as cl
from clusterlmer.cluster import cluster_test

N_SUB, N_CH, N_T = 16, 6, 40
CHANNELS = [f"E{i}" for i in range(N_CH)]
FORMULA = "y ~ cond + (1|subject)"


def _data():
    rng = np.random.default_rng(0)
    design = pd.DataFrame([dict(subject=f"s{i}", cond=c) for i in range(N_SUB) for c in ("a", "b")])
    subject = np.repeat(rng.normal(size=N_SUB), 2)[:, None, None]
    values = rng.normal(size=(len(design), N_CH, N_T)) + subject
    values[:, 1:5, 15:26] += 1.2 * (design["cond"] == "b").to_numpy()[:, None, None]
    return cl.TimeseriesData(design, values, np.arange(N_T) / 100, channels=CHANNELS)


def _chain():
    """E0 - E1 - ... - E5."""
    return sparse.diags([np.ones(N_CH - 1), np.ones(N_CH - 1)], [-1, 1], format="csr").astype(bool)


@pytest.fixture(scope="module")
def result():
    return cl.permutation_cluster_lmer(_data(), FORMULA, n_permutations=99, seed=3, adjacency=_chain(),
                                       progress=False, cross_check=0)


def test_channel_data_are_validated():
    d = _data()
    with pytest.raises(ValueError, match="6 channels .axis 1. but 5 channel names"):
        cl.TimeseriesData(d.design, d.values, d.times, channels=CHANNELS[:5])
    with pytest.raises(ValueError, match="unique; repeated: E1"):
        cl.TimeseriesData(d.design, d.values, d.times, channels=["E1"] * N_CH)
    with pytest.raises(ValueError, match="channels=\\[...\\]"):
        cl.TimeseriesData(d.design, d.values[..., None], d.times)
    assert d.sample_axes == ("channel", "time") and d.n_times == N_T and d.n_channels == N_CH


def test_analysis_needs_an_adjacency_for_channels_and_refuses_one_without():
    d = _data()
    with pytest.raises(ValueError, match="say which are neighbours with adjacency="):
        cl.permutation_cluster_lmer(d, FORMULA, n_permutations=99, progress=False)
    flat = cl.TimeseriesData(d.design, d.values[:, 0], d.times)
    with pytest.raises(ValueError, match="no channel axis"):
        cl.permutation_cluster_lmer(flat, FORMULA, n_permutations=99, adjacency=_chain(), progress=False)
    with pytest.raises(ValueError, match="6 channels"):
        cl.permutation_cluster_lmer(d, FORMULA, n_permutations=99, adjacency=np.eye(5, dtype=bool), progress=False)


def test_every_channel_is_fitted_as_on_its_own(result):
    """The channel axis only stacks samples: each channel's F equals a fit of that channel's data alone."""
    d = _data()
    for ch in (0, 3):
        alone = cl.fit_timeseries(cl.TimeseriesData(d.design, d.values[:, ch], d.times), FORMULA, cross_check=0)
        np.testing.assert_array_equal(result.fit.F[:, ch], alone.F)
        np.testing.assert_array_equal(result.fit.df2[:, ch], alone.df2)


def test_the_effect_is_one_cluster_over_neighbouring_channels(result):
    table = result.clusters
    best = table.sort_values("p").iloc[0]
    assert best["p"] < 0.05
    members = best["channels"].split(", ")
    assert {"E1", "E2", "E3", "E4"} <= set(members) and best["n_channels"] == len(members)
    assert members == [c for c in CHANNELS if c in members]  # in the data's order
    assert 0.12 <= best["t_start"] <= 0.16 and 0.24 <= best["t_stop"] <= 0.28
    assert (result.clusters["p"] < 0.05).sum() == 1  # one cluster, not one per channel
    assert best["peak_channel"] in CHANNELS[1:5]
    stat = result.stat["cond"]
    inside = [c for c in result.cluster_info["cond"].clusters if c.p == best["p"]][0].mask
    ci, ti = np.unravel_index(np.argmax(np.where(inside, stat, -np.inf)), stat.shape)
    assert (CHANNELS[ci], result.times[ti]) == (best["peak_channel"], best["peak_time"])


def test_clusters_are_those_of_cluster_test_on_the_same_maps(result):
    """The analysis hands its statistic and null to cluster_test with the adjacency; nothing else decides."""
    _, p, info = cluster_test(result.stat["cond"], result.null["cond"], tail=1, adjacency=_chain())
    np.testing.assert_array_equal(p, result.p_clust["cond"])
    assert [c.stat for c in info.clusters] == [c.stat for c in result.cluster_info["cond"].clusters]


def test_without_channel_neighbours_the_effect_splits_by_channel(result):
    d = _data()
    apart = cl.permutation_cluster_lmer(d, FORMULA, n_permutations=99, seed=3, adjacency="none", progress=False,
                                        cross_check=0)
    np.testing.assert_array_equal(apart.stat["cond"], result.stat["cond"])  # same fits
    assert set(apart.clusters["n_channels"]) == {1}
    assert len(apart.clusters) > len(result.clusters)


def test_results_by_channel_name(result):
    fit = result.fit
    ci, ti = CHANNELS.index("E2"), 20
    np.testing.assert_array_equal(fit.anova(channel="E2", time=fit.times[ti]).to_numpy(),
                                  fit.anova((ci, ti)).to_numpy())
    with pytest.raises(ValueError, match="give the channel too"):
        fit.anova(time=0.2)
    with pytest.raises(ValueError, match="'Oz' is not one of the data's channels"):
        fit.anova(channel="Oz", time=0.2)
    frame = result.to_frame()
    row = frame[(frame["channel"] == "E2") & (frame["time"] == fit.times[ti])]
    assert float(row["FStat"].iloc[0]) == fit.F[fit.terms.index("cond"), ci, ti]
    assert set(fit.diagnostics["channel"]) == set(CHANNELS)


def test_plot_and_files_keep_the_channels(result, tmp_path):
    fig = result.plot()
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == CHANNELS
    result.save(tmp_path / "res.h5")
    loaded = cl.load_result(tmp_path / "res.h5")
    assert loaded.fit.channels == tuple(CHANNELS)
    pd.testing.assert_frame_equal(loaded.clusters, result.clusters)


def test_schemes_are_named_by_grouping_when_channels_are_a_sample_axis(result):
    """'within-channel' would read as the EEG channels: derived schemes are spelled by grouping, with the
    same draws as the alias (an alias and its spelling draw the same row maps)."""
    assert result.schemes == {"cond": "within:subject"}
    d = _data()
    flat = cl.make_permutations(d.design, FORMULA, 99, seed=3)
    assert flat.schemes == {"cond": "within-channel"}
    np.testing.assert_array_equal(flat.row_maps["cond"],
                                  cl.make_permutations(d, FORMULA, 99, seed=3).row_maps["cond"])
