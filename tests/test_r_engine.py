"""The R bridge: install hints, R's own warnings kept per sample, block fits
equal to fitting each sample on its own. Every fit passes ``engine="r"`` (the
default, "auto", would use the native engine for these models)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import clusterlmer as cl
from clusterlmer.engines import get_engine
from clusterlmer.engines.r import r_session

FORMULA = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"


def test_import_without_r_names_the_install_command():
    # A process whose R cannot be found: importing clusterlmer works, fitting
    # with R raises ImportError that says what to install; the default engine
    # fits this model natively and notes that its R cross-check could not run.
    code = (
        "import clusterlmer as cl\n"
        "d = cl.simulate_ieeg('1way', n_times=1)\n"
        "try:\n"
        "    cl.fit_timeseries(d, 'data ~ hit_miss + (1|sid)', engine='r')\n"
        "except ImportError as e:\n"
        "    print('IMPORTERROR:', e)\n"
        "fit = cl.fit_timeseries(d, 'data ~ hit_miss + (1|sid)')\n"
        "print('AUTO:', fit.options['engine'], fit.options['cross_check']['note'][:22])\n"
    )
    for env in ({**os.environ, "R_HOME": "/nonexistent/R"},
                {**{k: v for k, v in os.environ.items() if k != "R_HOME"}, "PATH": os.path.dirname(sys.executable)}):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert "IMPORTERROR:" in out.stdout, out.stderr
        assert "r-cran-lme4" in out.stdout and "rpy2" in out.stdout
        assert "AUTO: native R engine not available" in out.stdout, out.stderr


def test_missing_r_package_names_the_package():
    with pytest.raises(ImportError, match=r"'notARealPackage'.*install.packages\('notARealPackage'\)"):
        r_session().require("notARealPackage")


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match=r"'engine' parameter.*'r'.*'matlab'"):
        get_engine("matlab")


def test_block_fit_equals_one_fit_per_sample():
    # The block reuses the design across samples; each sample must come out
    # exactly as if it had been fitted alone.
    data = cl.simulate_ieeg("2way", n_times=5, seed=11)
    block = cl.fit_timeseries(data, FORMULA, engine="r")
    for t in (0, 3):
        alone = cl.TimeseriesData(data.design, data.values[:, [t]], data.times[[t]])
        single = cl.fit_timeseries(alone, FORMULA, engine="r")
        np.testing.assert_array_equal(block.F[:, t], single.F[:, 0])
        np.testing.assert_array_equal(block.df2[:, t], single.df2[:, 0])


def test_singular_fit_is_recorded_with_lme4_message():
    # No subject or channel variance at all: lme4 reports a singular fit.
    rng = np.random.default_rng(0)
    data = cl.simulate_ieeg("1way", n_times=2, seed=2)
    values = rng.normal(size=data.values.shape)
    flat = cl.TimeseriesData(data.design, values, data.times)
    fit = cl.fit_timeseries(flat, "data ~ hit_miss + (1|sid) + (1|sid:ch)", engine="r")
    diag = fit.diagnostics
    assert (diag["singular"] == 1).any()
    msgs = " ".join(diag.loc[diag["singular"] == 1, "messages"])
    assert "singular" in msgs
    assert np.isfinite(fit.F).all()


def test_ml_and_reml_differ_and_ml_is_labelled():
    data = cl.simulate_ieeg("1way", n_times=2, seed=4)
    reml = cl.fit_timeseries(data, "data ~ hit_miss + (1|sid) + (1|sid:ch)", engine="r")
    ml = cl.fit_timeseries(data, "data ~ hit_miss + (1|sid) + (1|sid:ch)", reml=False, ddf="residual", engine="r")
    assert not np.allclose(reml.F, ml.F)
    assert (ml.df2 == data.n_obs - 2).all()
    assert "ML" in ml.summary() and "residual" in ml.summary()
