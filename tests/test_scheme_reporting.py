"""Permutation schemes that cannot silently go wrong, and say what they permute.

* a channel-level variable with a mislabelled row is refused, naming the
  channel and its rows (shuffled within channels it would get a null almost
  equal to the observed);
* a within-channel condition that some channels hold one level of is
  shuffled, with a warning and a summary note naming those channels;
* scheme descriptions and errors name the grouping columns ("sid:ch",
  "Subject"), and variables permuted jointly are reported;
* too few permutations to ever reach alpha are warned about up front.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import clusterlmer as cl
from clusterlmer._checks import called_from_cli

FORMULA = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"


@pytest.fixture(scope="module")
def small():
    return cl.simulate_ieeg("2way", n_subjects=4, n_channels=16, n_times=8, seed=2)


def _flip(design, row, column):
    design = design.copy()
    values = list(dict.fromkeys(design[column]))
    design.loc[row, column] = values[1] if design.loc[row, column] == values[0] else values[0]
    return design


def test_mislabelled_channel_level_row_is_refused_naming_channel_and_rows(small):
    design = _flip(small.design, 5, "region")
    channel = f"{design.loc[5, 'sid']}:{design.loc[5, 'ch']}"
    with pytest.raises(ValueError) as err:
        cl.make_permutations(design, FORMULA, 10, seed=0)
    msg = str(err.value)
    assert "'region' is constant within 15 of the 16 sid:ch groups with several rows but varies within 1" in msg
    assert f"{channel} (rows 4, 5:" in msg
    assert "mislabelled rows" in msg and "schemes={'region': 'within-channel'} (CLI: --scheme region=within-channel)" in msg
    with called_from_cli(), pytest.raises(ValueError, match=r"pass --scheme region=within-channel\.$"):
        cl.make_permutations(design, FORMULA, 10, seed=0)
    # The analysis refuses before any fit, with the same message.
    data = cl.TimeseriesData(design=design, values=small.values, times=small.times)
    with pytest.raises(ValueError, match="mislabelled rows"):
        cl.permutation_cluster_lmer(data, FORMULA, n_permutations=20, seed=0, engine="r", progress=False)
    # Asked for explicitly, the within-channel scheme is the user's decision.
    perms = cl.make_permutations(design, FORMULA, 10, seed=0, schemes={"region": "within-channel"})
    assert perms.schemes["region"] == "within-channel"


def test_condition_missing_from_a_channel_is_shuffled_with_a_note(small):
    design = _flip(small.design, 6, "hit_miss")  # rows 6 and 7 now hold one hit_miss level
    channel = f"{design.loc[6, 'sid']}:{design.loc[6, 'ch']}"
    with pytest.warns(UserWarning, match=rf"'hit_miss' varies within 15 sid:ch groups but takes a single value "
                      rf"within 1: {channel} \(rows 6, 7: "):
        perms = cl.make_permutations(design, FORMULA, 10, seed=0)
    assert perms.schemes["hit_miss"] == "within-channel"
    assert any("that group keeps its labels in every permutation" in n for n in perms.notes)
    # The channel's rows never change their hit_miss label.
    maps = perms.maps["within-channel"]
    assert set(np.unique(maps[:, [6, 7]])) <= {6, 7}
    data = cl.TimeseriesData(design=design, values=small.values, times=small.times)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cl.permutation_cluster_lmer(data, FORMULA, n_permutations=20, seed=0, cross_check=0, progress=False)
    assert "that group keeps its labels in every permutation" in res.summary()


def test_schemes_are_described_by_their_grouping_columns(small):
    perms = cl.make_permutations(small.design, FORMULA, 5, seed=0)
    assert perms.summary_lines() == [
        "hit_miss: within-channel (among rows within each of 16 sid:ch groups)",
        "region: between-channel (among 16 sid:ch groups)",
    ]
    # One grouping factor, as in ERP data: the units are subjects and are called so.
    design = small.design.rename(columns={"sid": "Subject"}).drop(columns="ch")
    design["Subject"] = design["Subject"] + ":" + small.design["ch"]
    erp = "data ~ hit_miss + (1|Subject)"
    perms = cl.make_permutations(design, erp, 5, seed=0)
    assert perms.summary_lines() == ["hit_miss: within-channel (among rows within each of 16 Subject groups)"]
    with pytest.raises(ValueError, match=r"'hit_miss' varies within Subject groups \(e\.g\. Subject = S"):
        cl.make_permutations(design, erp, 5, seed=0, schemes={"hit_miss": "between-channel"})


def test_jointly_permuted_variables_are_reported(small):
    design = small.design.copy()
    design["load"] = np.where(np.arange(len(design)) % 2 == 0, "low", "high")  # varies within every channel
    formula = "data ~ hit_miss + load + (1|sid) + (1|sid:ch)"
    perms = cl.make_permutations(design, formula, 5, seed=0)
    assert perms.schemes == {"hit_miss": "within-channel", "load": "within-channel"}
    joint = [n for n in perms.notes if "permuted jointly" in n]
    assert joint == ["'hit_miss', 'load' share the scheme 'within-channel' and are permuted jointly (one shuffle "
                     "moves them together, keeping each row's combination); to permute 'hit_miss' alone, pass "
                     "schemes={'load': 'none'} (CLI: --scheme load=none)."]
    # Separated by the user: no note.
    perms = cl.make_permutations(design, formula, 5, seed=0, schemes={"load": "none"})
    assert not perms.notes


@pytest.mark.parametrize("n, statistic, warned", [(19, "F", True), (20, "F", False), (39, "t", True),
                                                  (40, "t", False)])
def test_too_few_permutations_to_reach_alpha_warn_at_the_start(small, n, statistic, warned):
    formula = "data ~ hit_miss + (1|sid) + (1|sid:ch)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = cl.permutation_cluster_lmer(small, formula, n_permutations=n, seed=0, statistic=statistic,
                                          cross_check=0, progress=False)
    messages = [str(w.message) for w in caught if "no cluster can be significant" in str(w.message)]
    if warned:
        smallest = (2 if statistic == "t" else 1) / (n + 1)
        assert messages == [f"with {n} permutations the smallest possible cluster p is {smallest:.3g}, not below "
                            f"alpha = 0.05: no cluster can be significant. Use at least {n + 1} permutations "
                            "(1000 or more for a publication)."]
        assert "no cluster can be significant" in res.summary()
    else:
        assert not messages and "no cluster can be significant" not in res.summary()


def test_alpha_warning_comes_before_any_fit(small):
    # A bad option after the warning proves the warning is raised during validation, before fitting.
    with pytest.warns(UserWarning, match="no cluster can be significant"), pytest.raises(ValueError):
        cl.permutation_cluster_lmer(small, FORMULA, n_permutations=5, seed=0, quantile_method="nope",
                                    progress=False)
