"""The whole method on the native engine's general path: crossed groupings and random slopes.

The observed fits' parity with lmerTest is test_native_general_parity.py;
here the permutation path itself is checked against the R engine, which
refits every permutation with lme4/lmerTest: the same permutations (same
seed) must give the same null distributions and cluster table. The slope
model permutes its slope variable (``hit_miss`` within channels), so every
permutation has its own ``Z``; the crossed model shuffles conditions within
subjects. Also: two workers give the single process's numbers bit for bit,
and ``engine="auto"`` runs these models natively.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl

END_RTOL = 1e-5  # each engine optimises theta itself; bobyqa's optimum is ~1e-7 loose
SLOPE = "data ~ hit_miss * region + (1 + hit_miss|sid) + (1|sid:ch)"
CROSSED = "y ~ cond_a * cond_b + (1|Subject) + (1|Item)"


@pytest.fixture(scope="module")
def r_engine():
    try:
        from clusterlmer.engines.r import r_session

        r_session()
    except Exception as exc:  # R or rpy2 missing
        pytest.skip(f"the R engine is not available: {exc}")


def _slope_data():
    return cl.simulate_ieeg("2way", n_subjects=6, n_channels=30, n_times=10, seed=5, hit_miss_effect=1.0)


def _crossed_data():
    return cl.simulate_subject_item(n_subjects=12, n_items=8, n_trials=72, n_times=10, seed=2, cond_a_effect=1.0,
                                    cond_a_window=(3, 7))


@pytest.mark.parametrize("which", ["slope", "crossed"])
def test_permutations_match_the_r_engine(r_engine, which):
    data, formula = (_slope_data(), SLOPE) if which == "slope" else (_crossed_data(), CROSSED)
    kw = {"n_permutations": 20, "seed": 11, "progress": False, "coding": "effects", "cross_check": 0}
    rn = cl.permutation_cluster_lmer(data, formula, engine="native", **kw)
    rr = cl.permutation_cluster_lmer(data, formula, engine="r", **kw)
    assert rn.fit.options["engine"] == "native"
    for term in rr.terms:
        a, b = rn.null[term], rr.null[term]
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a, b, rtol=END_RTOL, atol=1e-8, err_msg=term)
        np.testing.assert_allclose(rn.stat[term], rr.stat[term], rtol=END_RTOL, err_msg=term)
    pd.testing.assert_frame_equal(rn.clusters, rr.clusters, rtol=END_RTOL)


def test_two_workers_give_one_process_s_numbers():
    data = _slope_data()
    kw = {"n_permutations": 24, "seed": 3, "progress": False, "engine": "native", "cross_check": 0}
    one = cl.permutation_cluster_lmer(data, SLOPE, n_jobs=1, **kw)
    two = cl.permutation_cluster_lmer(data, SLOPE, n_jobs=2, **kw)
    for term in one.terms:
        np.testing.assert_array_equal(one.null[term], two.null[term])


def test_auto_runs_slopes_and_crossed_natively():
    for data, formula in ((_slope_data(), SLOPE), (_crossed_data(), CROSSED)):
        fit = cl.fit_timeseries(data, formula, cross_check=0)
        assert fit.options["engine"] == "native"
        assert np.all(np.isfinite(fit.anova(t=0)["FStat"]))


def test_a_failing_fit_is_recorded_and_the_others_are_untouched():
    """A constant response and one the fixed effects fit exactly fail alone, without numpy warnings;
    the other responses of the block get the numbers they get when fitted alone."""
    import warnings

    from clusterlmer.design import build_design
    from clusterlmer.engines import native
    from clusterlmer.engines.base import FitOptions
    from clusterlmer.formula import parse_formula
    from clusterlmer.spec import build_spec

    data = cl.datasets.sample_2way()
    model = parse_formula(SLOPE)
    spec = build_spec(build_design(data.design, model))
    Y = data.values[:, :4].copy()
    Y[:, 1] = 3.0
    Y[:, 2] = 2.0 * data.design["hit_miss"].to_numpy() + (data.design["region"] == "hc").to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = native.fit_block(spec, Y, FitOptions())
    assert fit.errors[1] and fit.errors[2] and not fit.errors[0] and not fit.errors[3]
    assert np.isnan(fit.F[:, 1:3]).all() and not fit.converged[1:3].any()
    alone = native.fit_block(spec, Y[:, [0, 3]], FitOptions())
    np.testing.assert_allclose(fit.F[:, [0, 3]], alone.F, rtol=1e-10)
    np.testing.assert_allclose(fit.df2[:, [0, 3]], alone.df2, rtol=1e-7)
