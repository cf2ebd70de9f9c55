"""``simulate_subject_item``: shape, Latin-square balance, seeding, and its random effects as lme4 sees them.

The last test fits a large draw with a standalone ``Rscript`` (``lme4::lmer``)
and compares the standard deviations lme4 estimates with those the data were
drawn with; responses cross to R as C99 hex floats (``%a``).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from conftest import run_rscript

RSCRIPT = shutil.which("Rscript")


def _cells(design):
    return design["cond_a"].astype(str) + design["cond_b"].astype(str)


def test_shape_columns_and_levels():
    data, truth = cl.simulate_subject_item(seed=3, return_truth=True)
    assert data.values.shape == (360, 40)
    assert np.array_equal(data.times, np.arange(40))
    assert list(data.design.columns) == ["Subject", "Item", "cond_a", "cond_b"]
    assert data.design["Subject"].nunique() == 48 and data.design["Item"].nunique() == 16
    assert list(data.design["cond_a"].cat.categories) == ["a1", "a2"]
    assert list(data.design["cond_b"].cat.categories) == ["b1", "b2"]
    assert np.isfinite(data.values).all()
    # Default effects: cond_a and the interaction have windows inside the bins, cond_b none.
    assert set(truth.windows) == {"cond_a", "cond_a:cond_b"}
    for start, end in truth.windows.values():
        assert 0 <= start < end <= 40


def test_latin_square_balance():
    design = cl.simulate_subject_item(seed=5).design
    per_subject = design.groupby("Subject").size()
    assert set(per_subject) == {7, 8} and per_subject.sum() == 360
    per_item = design.groupby("Item").size()
    assert set(per_item) <= {22, 23}
    assert not design.duplicated(["Subject", "Item"]).any()  # no subject sees an item twice
    cells = _cells(design)
    assert cells.value_counts().to_dict() == {"a1b1": 90, "a1b2": 90, "a2b1": 90, "a2b2": 90}
    # Within subjects and within items: every subject and every item meets all four cells,
    # items about equally often (the Latin square's rotation).
    assert (pd.crosstab(design["Subject"], cells) > 0).all().all()
    by_item = pd.crosstab(design["Item"], cells)
    assert by_item.min().min() >= 5 and by_item.max().max() <= 6


@pytest.mark.parametrize("shape", [dict(n_subjects=24, n_items=16, n_trials=180),
                                   dict(n_subjects=20, n_items=9, n_trials=100),
                                   dict(n_subjects=12, n_items=12, n_trials=144)])
def test_balance_of_other_shapes(shape):
    design = cl.simulate_subject_item(n_times=4, seed=1, **shape).design
    cells = _cells(design)
    assert (pd.crosstab(design["Subject"], cells) > 0).all().all()
    by_item = pd.crosstab(design["Item"], cells)
    assert by_item.max().max() - by_item.min().min() <= 2
    counts = design.groupby("Item").size()
    assert counts.max() - counts.min() <= 1


def test_too_few_or_too_many_trials_refused():
    with pytest.raises(ValueError, match="n_trials must be between"):
        cl.simulate_subject_item(n_subjects=10, n_items=8, n_trials=30)
    with pytest.raises(ValueError, match="n_trials must be between"):
        cl.simulate_subject_item(n_subjects=10, n_items=8, n_trials=81)


def test_same_seed_same_data_other_seed_other_data():
    a, b = cl.simulate_subject_item(seed=11), cl.simulate_subject_item(seed=11)
    pd.testing.assert_frame_equal(a.design, b.design)
    np.testing.assert_array_equal(a.values, b.values)
    c = cl.simulate_subject_item(seed=12)
    assert not np.allclose(a.values, c.values)
    assert not a.design.equals(c.design)


def test_effects_sit_in_their_windows():
    # Many trials and little noise: cell means show the effects the truth names, and nothing outside.
    data, truth = cl.simulate_subject_item(n_subjects=200, n_items=40, n_trials=8000, n_times=30, seed=2,
                                           cond_a_effect=1.0, cond_b_effect=0.0, interaction_effect=-0.8,
                                           subject_sd=0.0, item_sd=0.0, noise_sd=0.2, return_truth=True)
    cells = _cells(data.design).to_numpy()
    mean = {c: data.values[cells == c].mean(axis=0) for c in ("a1b1", "a1b2", "a2b1", "a2b2")}
    a_diff = (mean["a2b1"] + mean["a2b2"] - mean["a1b1"] - mean["a1b2"]) / 2
    interaction = (mean["a2b2"] - mean["a1b2"]) - (mean["a2b1"] - mean["a1b1"])
    for term, diff in (("cond_a", a_diff), ("cond_a:cond_b", interaction)):
        start, end = truth.windows[term]
        peak = (start + end - 1) // 2
        assert diff[peak] == pytest.approx(truth.effects[term], abs=0.05)
        outside = np.r_[0:start, end:30]
        assert np.abs(diff[outside]).max() < 0.05


@pytest.mark.skipif(RSCRIPT is None, reason="Rscript is not on PATH")
def test_lme4_recovers_the_simulated_standard_deviations(tmp_path):
    # 240 subjects (15 items each) and 60 items: the standard errors of lme4's SD estimates are
    # about 5% (subjects), 9% (items) and 7% (the slope) of the SDs, so 25% is 3 or more of them.
    subject_sd, item_sd, slope_sd, correlation, noise_sd = 0.9, 0.6, 1.0, 0.5, 1.0
    data = cl.simulate_subject_item(n_subjects=240, n_items=60, n_trials=3600, n_times=2, seed=21,
                                    cond_a_effect=0.0, interaction_effect=0.0, subject_sd=subject_sd,
                                    item_sd=item_sd, slope_sd=slope_sd, slope_correlation=correlation,
                                    noise_sd=noise_sd)
    frame = data.design.astype(str)
    frame["y"] = [float(v).hex() for v in data.values[:, 0]]
    frame.to_csv(tmp_path / "data.csv", index=False)
    script = r"""
    suppressPackageStartupMessages(library(lme4))
    args <- commandArgs(trailingOnly = TRUE)
    d <- utils::read.csv(args[1], colClasses = "character")
    d$y <- as.numeric(d$y)
    for (col in c("Subject", "Item", "cond_a", "cond_b")) d[[col]] <- factor(d[[col]])
    options(contrasts = c("contr.sum", "contr.poly"))
    fit <- lmer(y ~ cond_a * cond_b + (1 + cond_a | Subject) + (1 | Item), d, REML = TRUE)
    vc <- as.data.frame(VarCorr(fit))
    out <- data.frame(name = paste(vc$grp, vc$var1, vc$var2, sep = "/"), value = sprintf("%a", vc$sdcor))
    utils::write.csv(out, args[2], row.names = FALSE)
    """
    proc = run_rscript(script, str(tmp_path / "data.csv"), str(tmp_path / "vc.csv"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    vc = pd.read_csv(tmp_path / "vc.csv", keep_default_na=False)
    sd = dict(zip(vc["name"], vc["value"].map(float.fromhex)))
    assert sd["Subject/(Intercept)/NA"] == pytest.approx(subject_sd, rel=0.25)
    assert sd["Item/(Intercept)/NA"] == pytest.approx(item_sd, rel=0.25)
    # contr.sum codes a1 as 1 and a2 as -1: the slope is minus half the a2 - a1 deviation.
    assert sd["Subject/cond_a1/NA"] == pytest.approx(slope_sd / 2, rel=0.25)
    assert sd["Subject/(Intercept)/cond_a1"] == pytest.approx(-correlation, abs=0.25)
    assert sd["Residual/NA/NA"] == pytest.approx(noise_sd, rel=0.1)
