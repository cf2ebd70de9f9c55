"""Designs and data at the edges of what the engines fit, which must never give silent wrong results.

* A rank-deficient fixed design (lme4's ``cake`` on 3 temperatures with the
  diagonal cells removed: a 3 x 3 interaction with empty cells). lme4 drops
  the aliased columns and fits; both engines must do the same (``engine="auto"``
  fits it natively), with F equal to a standalone ``Rscript`` lmerTest run
  (``r_scripts/lmer_reference.R``, as in ``test_parity_lmertest.py``).
* A term without a finite statistic at any sample is a warning, whatever the engine.
* Responses scaled by 1e-300 .. 1e300: fitted at a power-of-two rescaled
  scale, so F, DF2 and p equal the unscaled ones and estimates, SEs, sigma and
  deviance scale as they must.

Run with ``pytest -s`` to see the measured differences.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from clusterlmer import datasets
from clusterlmer.design import build_design
from clusterlmer.engines import get_engine, native
from clusterlmer.engines.base import FitOptions
from clusterlmer.samples import RESCALE_EXPONENTS, response_exponents
from clusterlmer.formula import parse_formula

pytest.importorskip("rpy2")
pytestmark = pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript is not on PATH")

# Helpers of the lmerTest parity tests (same reference script and CSV handling).
from test_parity_lmertest import (  # noqa: E402
    GRID, VALUES, _write_csv, assert_same_parse, compare_with_reference, run_reference,
)
from test_parity_lmertest import r_datasets  # noqa: E402, F401  (a fixture)

CAKE_FORMULA = "data ~ recipe * temperature + (1|recipe:replicate)"
CAKE_VALUES = VALUES  # t0 .. t3
# lme4's qr(X, tol = 1e-7) ranks these columns last and drops them (checked below against the R fit).
CAKE_DROPPED = ["recipeC:temperatureT195", "recipeB:temperatureT175", "recipeC:temperatureT175"]


@pytest.fixture(scope="module")
def cake_csv(r_datasets, tmp_path_factory):
    """cake at temperatures 175/185/195 without the cells (A,175), (B,185), (C,195); four responses
    angle + N(0, 2) noise on a 2**-16 grid, which R and pandas both read exactly."""
    df = pd.read_csv(r_datasets["cake"])
    df = df[df["temperature"].isin(["T175", "T185", "T195"])]
    diagonal = {("A", "T175"), ("B", "T185"), ("C", "T195")}
    df = df[[(r, t) not in diagonal for r, t in zip(df["recipe"], df["temperature"])]].reset_index(drop=True)
    rng = np.random.default_rng(12)
    for name in CAKE_VALUES:
        df[name] = np.round((df["angle"] + rng.normal(0.0, 2.0, len(df))) * GRID) / GRID
    return _write_csv(df.drop(columns="angle"), tmp_path_factory.mktemp("cake") / "cake_no_diagonal.csv")


def _cake_data(csv):
    return cl.from_dataframe(pd.read_csv(csv), CAKE_VALUES)


@pytest.mark.parametrize("engine", ["auto", "r"])
def test_a_rank_deficient_design_is_fitted_as_lme4_fits_it(cake_csv, tmp_path, engine):
    """Both engines drop the columns lme4 drops, say so with lme4's message, and test the terms on the
    remaining coefficients, equal to the standalone lmerTest run; "auto" picks the native engine."""
    df = pd.read_csv(cake_csv)
    assert_same_parse(cake_csv, df)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no engine warning: auto fits natively
        fit = cl.fit_timeseries(_cake_data(cake_csv), CAKE_FORMULA, engine=engine)
    assert fit.options["engine"] == ("native" if engine == "auto" else "r")
    assert np.isfinite(fit.F).all() and not fit.diagnostics["failed"].any()
    dropped = [c for c, est in zip(fit.coef_names, fit.estimates[:, 0]) if np.isnan(est)]
    assert sorted(dropped) == sorted(CAKE_DROPPED)
    assert all("fixed-effect model matrix is rank deficient so dropping 3 columns / coefficients" in m
               for m in fit.diagnostics["messages"])
    # The interaction keeps 1 of its 4 coefficients: DF1 1.
    assert fit.df1[fit.terms.index("recipe:temperature"), 0] == 1
    ref = run_reference(cake_csv, CAKE_FORMULA, tmp_path / "reference.csv", values=CAKE_VALUES)
    rtol = 1e-6 if engine == "r" else 1e-5  # the native optimum vs bobyqa's, see compare_with_reference
    diffs = compare_with_reference(fit, ref, f"cake without the diagonal ({engine})", rtol=rtol)
    assert max(diffs.values()) < rtol


def test_a_permutation_that_loses_rank_is_fitted_with_the_columns_dropped(r_datasets):
    """The full cake design has full rank, its rows without the diagonal do not: the native engine
    fits the second as lme4 does (as it would a permutation that loses rank), equal to the R engine."""
    df = pd.read_csv(r_datasets["cake"])
    df = df[df["temperature"].isin(["T175", "T185", "T195"])].reset_index(drop=True)
    design = build_design(df.drop(columns="angle"), parse_formula(CAKE_FORMULA.replace("data", "angle")))
    assert native.supports(design, FitOptions()) == (True, "")
    keep = np.array([(r, t) not in {("A", "T175"), ("B", "T185"), ("C", "T195")}
                     for r, t in zip(df["recipe"], df["temperature"])])
    y = df["angle"].to_numpy()[keep, None]
    blk = native.fit_block(design.subset(keep), y, FitOptions())
    ref = get_engine("r").fit_block(design.subset(keep), y, FitOptions())
    assert blk.errors == [""] and "rank deficient so dropping 3 columns" in blk.messages[0]
    assert blk.terms == ref.terms and blk.coef_names == ref.coef_names
    np.testing.assert_array_equal(np.isnan(blk.estimate), np.isnan(ref.estimate))
    np.testing.assert_array_equal(blk.df1, ref.df1)
    np.testing.assert_allclose(blk.F, ref.F, rtol=1e-5)
    np.testing.assert_allclose(blk.df2, ref.df2, rtol=1e-5)


# --------------------------------------------------------------------------
# all-NaN results warn
# --------------------------------------------------------------------------

def _slice(data, samples, scale=1.0):
    return cl.TimeseriesData(design=data.design, values=data.values[:, samples] * scale,
                             times=np.asarray(data.times)[samples])


@pytest.mark.parametrize("engine", ["native", "r"])
def test_all_nan_result_warns_with_the_first_error(engine):
    data = _slice(datasets.sample_2way(), [40, 41])
    data.values[:] = 3.0  # constant: nothing to fit anywhere
    with pytest.warns(UserWarning, match=r"no finite statistic at any sample for every term \(F is NaN "
                      r"everywhere\); the first error: the response is constant at this sample"):
        fit = cl.fit_timeseries(data, datasets.FORMULA_2WAY, engine=engine, cross_check=0)
    assert np.isnan(fit.F).all()


@pytest.mark.parametrize("engine", ["native", "r"])
def test_a_term_lme4_drops_entirely_warns_naming_it(engine):
    """x2 = 2 x: lme4 drops x2's only column, so its F is NaN at every sample while the other terms
    are fine; the warning names the term and lme4's message."""
    data = _slice(datasets.sample_2way(), [40, 41])
    data.design["x"] = np.arange(data.n_obs) % 7 * 1.0
    data.design["x2"] = data.design["x"] * 2.0
    with pytest.warns(UserWarning) as record:
        fit = cl.fit_timeseries(data, "data ~ x + x2 + (1|sid)", engine=engine, cross_check=0)
    msgs = [str(w.message) for w in record]
    assert any("no finite statistic at any sample for the term x2 (F is NaN everywhere)" in m and "the first message: fixed-effect "
               "model matrix is rank deficient so dropping 1 column / coefficient" in m for m in msgs), msgs
    assert np.isfinite(fit.F[fit.terms.index("x")]).all()


def test_finite_results_do_not_warn():
    data = _slice(datasets.sample_2way(), [40, 41])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cl.fit_timeseries(data, datasets.FORMULA_2WAY, engine="native", cross_check=0)
    _no_trouble(record)


# --------------------------------------------------------------------------
# response scale
# --------------------------------------------------------------------------

SAMPLES = [40, 60, 100]
EXTREME = [1e-300, 1e-200, 1e-100, 1e100, 1e200, 1e300]
REALISTIC = [1e-30, 1e-12, 1e-6, 1e6, 1e12, 1e30]


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(b)
    return float((np.abs(a - b)[ok] / np.abs(b)[ok]).max(initial=0.0))


@pytest.fixture(scope="module")
def unscaled():
    data = _slice(datasets.sample_2way(), SAMPLES)
    return data, {(eng, reml): cl.fit_timeseries(data, datasets.FORMULA_2WAY, engine=eng, reml=reml,
                                                  cross_check=0)
                  for eng in ("native", "r") for reml in (True, False)}


def _no_trouble(record):
    """No numpy overflow/invalid RuntimeWarning and no NaN-result warning among ``record``."""
    bad = [str(w.message) for w in record
           if issubclass(w.category, RuntimeWarning) or "no finite statistic" in str(w.message)]
    assert not bad, bad


def _scaled_fit(data, scale, engine, reml=True):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit = cl.fit_timeseries(_slice(data, slice(None), scale), datasets.FORMULA_2WAY, engine=engine,
                                reml=reml, cross_check=0)
    _no_trouble(record)
    return fit


def _check_scaled(fit, ref, scale, reml, n_obs, rtol_stats, rtol_est):
    """F/DF/p as unscaled; estimates, SEs, sigma times ``scale``; deviance + 2 dof log(scale)."""
    assert fit.diagnostics["converged"].all() and not fit.diagnostics["failed"].any()
    d = {name: _rel(getattr(fit, name), getattr(ref, name)) for name in ("F", "df2", "p")}
    assert np.array_equal(fit.df1, ref.df1)
    d["estimates"] = _rel(fit.estimates / scale, ref.estimates)
    d["se"] = _rel(fit.se / scale, ref.se)
    d["sigma"] = _rel(fit.diagnostics["sigma"] / scale, ref.diagnostics["sigma"])
    dof = n_obs - len(fit.coef_names) if reml else n_obs
    dev = ref.diagnostics["deviance"] + 2 * dof * np.log(scale)
    d["deviance"] = float((np.abs(fit.diagnostics["deviance"] - dev) / np.abs(dev)).max())
    assert max(d[k] for k in ("F", "df2", "p")) <= rtol_stats, d
    assert max(d[k] for k in ("estimates", "se", "sigma", "deviance")) <= rtol_est, d
    return d


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("scale", EXTREME + REALISTIC)
def test_native_results_do_not_depend_on_the_response_scale(unscaled, scale, reml):
    """The native optimum is exact, so only rounding separates scaled from unscaled fits."""
    data, refs = unscaled
    fit = _scaled_fit(data, scale, "native", reml)
    d = _check_scaled(fit, refs["native", reml], scale, reml, data.n_obs, 1e-9, 1e-9)
    assert d["F"] < 1e-12, d
    print(f"[scale] native {scale:g} reml={reml}: " + ", ".join(f"{k}={v:.1e}" for k, v in d.items()))


@pytest.mark.parametrize("scale", EXTREME + REALISTIC)
def test_r_results_do_not_depend_on_the_response_scale(unscaled, scale):
    """lme4's bobyqa stops where the rounding of its criterion lets it, which differs between data that
    differ by a factor that is not a power of two: F/DF2/p agree to its precision (the 1e-6 of the
    parity tests), not to 1e-9 (see the power-of-two test for the exact mapping)."""
    data, refs = unscaled
    fit = _scaled_fit(data, scale, "r")
    d = _check_scaled(fit, refs["r", True], scale, True, data.n_obs, 2e-6, 2e-6)
    print(f"[scale] R {scale:g}: " + ", ".join(f"{k}={v:.1e}" for k, v in d.items()))


@pytest.mark.parametrize("engine", ["native", "r"])
@pytest.mark.parametrize("exponent", [-1000, -40, 40, 1000])
def test_power_of_two_scales_are_exact(unscaled, engine, exponent):
    """Responses times 2**k (k = +-1000: about 1e+-301, squares overflow) are fitted as the unscaled
    ones exactly: F, DF2 and p bit-identical, estimates and SEs exactly 2**k times theirs."""
    data, refs = unscaled
    ref = refs[engine, True]
    fit = _scaled_fit(data, 2.0**exponent, engine)
    for name in ("F", "df2", "p"):
        np.testing.assert_array_equal(getattr(fit, name), getattr(ref, name))
    np.testing.assert_array_equal(fit.estimates, np.ldexp(ref.estimates, exponent))
    np.testing.assert_array_equal(fit.se, np.ldexp(ref.se, exponent))
    np.testing.assert_array_equal(fit.diagnostics["sigma"], np.ldexp(ref.diagnostics["sigma"], exponent))


def test_deviance_shift_matches_lme4(unscaled):
    """lme4 itself (no rescaling inside the window) gives deviance(c y) = deviance(y) + 2 dof log c,
    dof = n - p for the REML criterion and n for ML: the rule used to map rescaled fits back."""
    data, refs = unscaled
    for reml in (True, False):
        fit = cl.fit_timeseries(_slice(data, slice(None), 32.0), datasets.FORMULA_2WAY, engine="r", reml=reml,
                                cross_check=0)
        dof = data.n_obs - 4 if reml else data.n_obs
        np.testing.assert_allclose(fit.diagnostics["deviance"],
                                   refs["r", reml].diagnostics["deviance"] + 2 * dof * np.log(32.0), rtol=1e-9)


def test_rescaling_window():
    """Columns whose SD is inside [2**-4, 2**8) are fitted as given (bit-identical to before);
    outside, the exponent brings the SD into [1, 2), also next to the overflow limit."""
    y = datasets.sample_2way().values[:, SAMPLES]
    assert RESCALE_EXPONENTS == (-4, 8)
    for k in range(-5, 10):
        Y = np.ldexp(y, k)
        sd = Y.std(axis=0)
        shift = response_exponents(Y, np.isfinite(Y))
        inside = (sd >= 2.0**-4) & (sd < 2.0**8)
        assert np.array_equal(shift == 0, inside), (k, sd, shift)
        scaled = np.ldexp(sd, shift)
        assert np.all(inside | ((scaled >= 1) & (scaled < 2)))
    Y = y / np.abs(y).max() * np.finfo(float).max  # |Y| up to the largest double: Y**2 overflows
    Y[5, 0] = np.nan
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        shift = response_exponents(Y, np.isfinite(Y))
    _no_trouble(record)  # no overflow on the way
    sd = np.array([np.nanstd(np.ldexp(Y[:, j], shift[j])) for j in range(Y.shape[1])])
    assert np.all((sd >= 1) & (sd < 2)), sd
