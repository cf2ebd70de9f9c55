"""The simulated 30-channel ERP study and the method on it: the effect comes back as one cluster.

``cl.simulate_erp`` puts a deviant effect on eight fronto-central channels at
0.15-0.28 s; the analysis over channels x time with the 10-20 neighbours MNE
computes from the data's own Info must find it as one significant cluster
over (at least most of) those channels and inside that window, and the same
data without the effect must give no significant cluster.
"""

from __future__ import annotations

import numpy as np
import pytest

import clusterlmer as cl

pytest.importorskip("mne")  # the data's Info (positions) comes from MNE, a test dependency

FORMULA = "amp ~ Deviant + (1|Subject)"


def test_the_simulated_data_are_shaped_as_documented():
    data, truth = cl.simulate_erp(seed=2, return_truth=True)
    assert data.values.shape == (97, 30, 231) and data.channels == cl.simulate.EEG30
    assert data.times[0] == pytest.approx(-0.1) and data.times[-1] == pytest.approx(0.36)
    assert data.design.groupby("Subject").size().min() == 1  # the missing deviant average
    assert data.info is not None and data.info.ch_names == list(data.channels)
    assert truth.channels == ("F3", "Fz", "F4", "FC1", "FC2", "C3", "Cz", "C4") and truth.window == (0.15, 0.28)
    assert np.abs(data.values).max() < 1e-4  # volts, microvolt-sized as MNE stores EEG


def test_the_effect_is_recovered_as_one_cluster():
    data, truth = cl.simulate_erp(seed=2, return_truth=True)
    res = cl.permutation_cluster_lmer(data, FORMULA, n_permutations=99, seed=5, progress=False, cross_check=0)
    significant = res.clusters[res.clusters["p"] < 0.05]
    assert len(significant) == 1
    found = set(significant["channels"].iloc[0].split(", "))
    assert len(found & set(truth.channels)) >= 6
    assert significant["t_start"].iloc[0] >= truth.window[0] - 0.02
    assert significant["t_stop"].iloc[0] <= truth.window[1] + 0.02
    assert significant["peak_channel"].iloc[0] in truth.channels


def test_no_cluster_without_the_effect():
    data = cl.simulate_erp(seed=2, effect=0.0)
    res = cl.permutation_cluster_lmer(data, FORMULA, n_permutations=99, seed=5, progress=False, cross_check=0)
    assert not (res.clusters["p"] < 0.05).any()
