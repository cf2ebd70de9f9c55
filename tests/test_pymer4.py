"""TimeseriesFit.model_at cross-validated against pymer4's own lmerTest fit and ANOVA.

Runs in the pymer4 extra's own environment: ``make test-pymer4`` (pymer4 0.8
needs pandas < 3; tests/conftest.py leaves this file out elsewhere). Real R,
lme4, lmerTest and emmeans throughout.

Which of our tests equals pymer4's ANOVA: ``Lmer.anova()`` runs lmerTest's
``anova(model)``, the type III table with Satterthwaite DF2, on the model's
own contrasts (ours, as ``model_at`` passes them). lmerTest builds its type
III contrasts so that they do not depend on the factor coding, hence

* ``test="type3"`` equals it under either coding;
* ``test="marginal"`` (each term's coefficients = 0, MATLAB's anova) equals it
  with ``coding="effects"``: with sum-to-zero contrasts a main effect's
  coefficients are its average effect over the other factor's levels, which is
  the type III hypothesis;
* with ``coding="reference"`` only the interaction (the highest-order term,
  whose coefficients are the same contrasts under any coding) and terms not
  crossed with a factor agree; a main effect crossed with a factor is then the
  simple effect at the other factor's reference level, a different hypothesis.

The fits are computed by clusterlmer's R engine and by pymer4 (lmerTest::lmer)
with the same optimizer and controls, so they agree to rounding.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rpy2.robjects as ro

import clusterlmer as cl
from clusterlmer import datasets

# Bundled 2-way sample: hit_miss is numeric 0/1 unless levels= makes it a factor; region has 2 levels.
FORMULA = datasets.FORMULA_2WAY
SAMPLES = [20, 60, 100]  # before, during and after the simulated effects
RTOL = 1e-6
# pymer4 0.8's own use of a pandas API that pandas 2 deprecates; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:DataFrame.applymap has been deprecated:FutureWarning")


@pytest.fixture(scope="module")
def data():
    full = datasets.sample_2way()
    return cl.TimeseriesData(full.design, full.values[:, SAMPLES], full.times[SAMPLES])


def fit(data, **kw):
    return cl.fit_timeseries(data, FORMULA, engine="r", **kw)


def pymer4_anova(model) -> pd.DataFrame:
    """pymer4's ANOVA (lmerTest type III, Satterthwaite) in our anova() layout."""
    a = model.anova()
    return pd.DataFrame({"Term": list(a.index), "FStat": a["F-stat"].to_numpy(float), "DF1": a["NumDF"].to_numpy(float),
                         "DF2": a["DenomDF"].to_numpy(float), "pValue": a["P-val"].to_numpy(float)})


def assert_same_coefficients(model, fit, t):
    assert list(model.coefs.index) == list(fit.coef_names)
    np.testing.assert_allclose(model.coefs["Estimate"].to_numpy(float), fit.estimates[:, t], rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(model.coefs["SE"].to_numpy(float), fit.se[:, t], rtol=RTOL, atol=1e-9)


def assert_same_tests(ours: pd.DataFrame, theirs: pd.DataFrame, terms, rtol=RTOL):
    ours, theirs = ours.set_index("Term").loc[terms], theirs.set_index("Term").loc[terms]
    for col in ("FStat", "DF1", "DF2", "pValue"):
        np.testing.assert_allclose(ours[col].to_numpy(), theirs[col].to_numpy(), rtol=rtol, err_msg=col)


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
def test_effects_coded_marginal_tests_equal_pymer4_type3_anova(data, reml):
    f = fit(data, coding="effects", reml=reml)
    for t in range(len(SAMPLES)):
        model = f.model_at(t)
        assert bool(ro.r("lme4::isREML")(model.model_obj)[0]) == reml  # pymer4 fitted by the same criterion
        assert_same_coefficients(model, f, t)
        theirs = pymer4_anova(model)
        assert list(theirs["Term"]) == ["hit_miss", "region", "hit_miss:region"]
        assert_same_tests(f.anova(t), theirs, list(theirs["Term"]))
        # The criterion at the optimum too: lme4's deviance is -2 log-likelihood (ML) or the REML criterion.
        np.testing.assert_allclose(-2 * model.logLike, f.diagnostics["deviance"][t], rtol=1e-10)


def test_type3_equals_pymer4_anova_under_reference_coding(data):
    f = fit(data, coding="reference", test="type3")
    for t in range(len(SAMPLES)):
        model = f.model_at(t)
        assert_same_coefficients(model, f, t)
        assert_same_tests(f.anova(t), pymer4_anova(model), list(f.terms))


def test_reference_coded_marginal_tests_agree_on_the_interaction_only(data):
    """The coding-invariant interaction equals type III; hit_miss (crossed with the factor region) does not."""
    f = fit(data, coding="reference")
    model = f.model_at(1)
    ours, theirs = f.anova(1), pymer4_anova(model)
    assert_same_tests(ours, theirs, ["hit_miss:region"])
    simple = ours.set_index("Term").loc["hit_miss", "FStat"]
    averaged = theirs.set_index("Term").loc["hit_miss", "FStat"]
    assert abs(simple - averaged) > 1e-3 * averaged


def test_levels_order_reference_level_and_contrasts_are_the_fits(data):
    """A non-default level order (reference '1') reaches R, with our coefficient names and contrasts."""
    levels_of = ro.r("function(m) lapply(model.frame(m)[c('hit_miss', 'region')], levels)")
    contrasts_of = ro.r("function(m) attr(model.matrix(m), 'contrasts')")
    for coding, codes in (("reference", [[0], [1]]), ("effects", [[1], [-1]])):
        f = fit(data, coding=coding, levels={"hit_miss": [1, 0]})
        assert f.levels == {"hit_miss": ["1", "0"], "region": ["hc", "phrc"]}
        model = f.model_at(1)
        got = levels_of(model.model_obj)
        assert {name: list(got.rx2(name)) for name in got.names} == f.levels
        assert model.factors == f.levels
        contrasts = contrasts_of(model.model_obj)
        for name in ("hit_miss", "region"):
            np.testing.assert_array_equal(np.asarray(contrasts.rx2(name)), codes, err_msg=f"{coding} {name}")
        assert_same_coefficients(model, f, 1)
        assert f.coef_names[1] == ("hit_miss0" if coding == "reference" else "hit_miss1")
        # Native and lme4 agree within the precision of lme4's optimizer (a few 1e-6 relative).
    assert_same_tests(f.anova(1), pymer4_anova(model), ["hit_miss", "region", "hit_miss:region"], rtol=1e-4)


def test_time_selects_the_nearest_sample(data):
    f = fit(data, coding="effects")
    by_time = f.model_at(time=float(data.times[2]) + 0.4 * float(data.times[2] - data.times[1]))
    by_index = f.model_at(2)
    np.testing.assert_array_equal(by_time.coefs["Estimate"].to_numpy(), by_index.coefs["Estimate"].to_numpy())
    assert_same_coefficients(by_time, f, 2)


def test_rows_with_nan_responses_are_left_out_as_in_the_fit(data):
    values = data.values.copy()
    values[[3, 10, 50, 200], 1] = np.nan
    values[7, 2] = np.inf
    holed = cl.TimeseriesData(data.design, values, data.times)
    f = fit(holed, coding="effects")
    for t, n_missing in ((1, 4), (2, 1)):
        model = f.model_at(t)
        assert len(model.data) == f.diagnostics["n_obs"][t] == len(values) - n_missing
        assert np.isfinite(model.data["data"]).all()
        assert_same_coefficients(model, f, t)
        assert_same_tests(f.anova(t), pymer4_anova(model), ["hit_miss", "region", "hit_miss:region"])


def test_post_hoc_trends_and_cell_means_follow_from_the_coefficients(data):
    """emmeans through pymer4: the hit_miss slope per region, and with hit_miss a factor, its contrast per region."""
    # A centred two-valued code stays numeric in an interaction (0/1 would be a factor): slopes.
    centred = cl.TimeseriesData(data.design.assign(hit_miss=data.design["hit_miss"] - 0.5), data.values, data.times)
    f = fit(centred, coding="effects")
    assert "hit_miss" in f.coef_names
    b = dict(zip(f.coef_names, f.estimates[:, 1]))
    model = f.model_at(1)
    model.post_hoc(marginal_vars="hit_miss", grouping_vars="region")
    trends = model.marginal_estimates.set_index("region")["Estimate"]
    # Sum-to-zero region codes: hc +1, phrc -1.
    np.testing.assert_allclose(trends["hc"], b["hit_miss"] + b["hit_miss:regionhc"], rtol=RTOL)
    np.testing.assert_allclose(trends["phrc"], b["hit_miss"] - b["hit_miss:regionhc"], rtol=RTOL)
    np.testing.assert_allclose(model.marginal_contrasts["Estimate"].to_numpy(float),
                               [2 * b["hit_miss:regionhc"]], rtol=RTOL)

    f = fit(data, coding="reference", levels={"hit_miss": [0, 1]})
    b = dict(zip(f.coef_names, f.estimates[:, 1]))
    model = f.model_at(1)
    model.post_hoc(marginal_vars="hit_miss", grouping_vars="region")
    diffs = model.marginal_contrasts.set_index("region")
    assert set(diffs["Contrast"]) == {"hit_miss0 - hit_miss1"}
    # Reference coding: hit at the reference region is b[hit_miss1]; at phrc add the interaction.
    np.testing.assert_allclose(diffs.loc["hc", "Estimate"], -b["hit_miss1"], rtol=RTOL)
    np.testing.assert_allclose(diffs.loc["phrc", "Estimate"], -(b["hit_miss1"] + b["hit_miss1:regionphrc"]), rtol=RTOL)
    assert (diffs["P-val"] < 0.05).all()  # the simulated hit/miss effect at this sample


def test_a_native_fit_opens_the_same_model(data):
    f = cl.fit_timeseries(data, FORMULA, engine="native", coding="effects", cross_check=0)
    model = f.model_at(1)
    np.testing.assert_allclose(model.coefs["Estimate"].to_numpy(float), f.estimates[:, 1], rtol=1e-5, atol=1e-8)
    # Native and lme4 agree within the precision of lme4's optimizer (a few 1e-6 relative).
    assert_same_tests(f.anova(1), pymer4_anova(model), ["hit_miss", "region", "hit_miss:region"], rtol=1e-4)
