"""Permutations fit for the statistic only (``need="statistic"``): the same F as the full fit.

Real fits with both engines on permuted designs, as ``PermutationTask.statistics``
fits them: one-coefficient terms (F = t^2, contest1D) and a three-level factor
(contestMD), with a few responses missing rows. The statistic-only fit must give
the full fit's F, DF1, estimates and standard errors; DF2 and p are NaN, except
with Kenward-Roger, whose F depends on its DF and so is always computed in full.
"""

from __future__ import annotations

import numpy as np
import pytest

import clusterlmer as cl
from clusterlmer.analysis import PermutationTask
from clusterlmer.design import build_design
from clusterlmer.engines.base import FitOptions
from clusterlmer.samples import fit_sample_sets, fit_samples
from clusterlmer.formula import parse_formula
from clusterlmer.permute import make_permutations
from clusterlmer.spec import build_spec

FORMULA = "data ~ hit_miss * area + (1|sid) + (1|sid:ch)"


@pytest.fixture(scope="module")
def data():
    d = cl.simulate_ieeg("2way", n_subjects=6, n_channels=24, n_times=6, seed=3)
    channel = (d.design["sid"].astype(str) + ":" + d.design["ch"].astype(str)).to_numpy()
    codes = np.unique(channel, return_inverse=True)[1].ravel()
    d.design["area"] = np.array(["a", "b", "c"])[codes % 3]  # a channel property with three levels
    d.values[:5, 1] = np.nan  # one response fitted without some rows
    return d


def _r_available():
    try:
        from clusterlmer.engines.r import r_session

        r_session()
    except ImportError as exc:  # pragma: no cover - machines without R
        pytest.skip(f"R engine unavailable: {exc}")


@pytest.mark.parametrize("engine, ddf, test", [
    ("native", "satterthwaite", "marginal"),
    ("native", "residual", "marginal"),
    ("native", "none", "marginal"),
    ("r", "satterthwaite", "marginal"),
    ("r", "residual", "marginal"),
    ("r", "satterthwaite", "type3"),
    ("r", "kenward-roger", "marginal"),
])
def test_statistic_only_equals_full_fit_on_permuted_designs(data, engine, ddf, test):
    if engine == "r":
        _r_available()
    model = parse_formula(FORMULA)
    design = build_design(data.design, model)
    perms = make_permutations(data.design, model, 3, seed=5)
    options = FitOptions(ddf=ddf, test=test)
    Y = data.values if engine == "native" else data.values[:, :3]  # R: fewer fits
    n_finite = 0
    for k in range(3):
        permuted = perms.apply(k, design)
        full, _ = fit_samples(permuted, Y, options, engine, need="all")
        stat, _ = fit_samples(permuted, Y, options, engine, need="statistic")
        assert stat.terms == full.terms and stat.coef_names == full.coef_names
        for name in ("F", "df1", "contrast_estimate", "estimate", "se", "sigma", "deviance"):
            np.testing.assert_allclose(getattr(stat, name), getattr(full, name), rtol=1e-12, atol=0, err_msg=name)
        assert stat.errors == full.errors
        if ddf == "kenward-roger":
            np.testing.assert_array_equal(stat.df2, full.df2)
            np.testing.assert_array_equal(stat.p, full.p)
        else:
            assert np.isnan(stat.df2).all() and np.isnan(stat.p).all()
            assert not np.isnan(full.df2[np.isfinite(full.F)]).any()  # the full fit has them (Inf for "none")
        n_finite += int(np.isfinite(full.F).sum())
    assert n_finite > 0, "no finite F to compare"


def test_permutation_task_asks_for_the_statistic_only(data, monkeypatch):
    # The null of a run is fitted with need="statistic"; its statistics are the full fit's.
    import clusterlmer.analysis as analysis

    model = parse_formula(FORMULA)
    design = build_design(data.design, model)
    perms = make_permutations(data.design, model, 2, seed=5)
    Y = data.values
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("need"))
        return fit_sample_sets(*args, **kwargs)

    monkeypatch.setattr(analysis, "fit_sample_sets", spy)
    for statistic, terms in (("F", ("hit_miss", "area", "hit_miss:area")), ("t", ("hit_miss",))):
        task = PermutationTask(build_spec(design), Y, FitOptions(), "native", perms, terms, statistic,
                               data.sample_shape)
        got = task.statistics(1)
        full, _ = fit_samples(perms.apply(1, design), Y, FitOptions(), "native")
        for i, term in enumerate(terms):
            j = full.terms.index(term)
            with np.errstate(invalid="ignore"):
                want = full.F[j] if statistic == "F" else np.sign(full.contrast_estimate[j]) * np.sqrt(full.F[j])
            # Permutations start at the observed optimum: the same optimum to rounding.
            np.testing.assert_allclose(got[i], want, rtol=1e-10, atol=1e-12)
    assert seen == ["statistic", "statistic"]
