"""Bad inputs give clear errors; awkward data (NaN, constant samples, 3-D
values, factor coding) behaves as documented.

The first half needs no R: every check runs before anything is fitted. The
second half fits the small simulated 2-way dataset (338 rows, 3 samples) with
the default engine (auto: native for this model, cross-checked against R):
what is tested here is fit_timeseries's handling of data, which does not
depend on the engine (test_native_engine.py compares NaN rows, constant and
empty samples between the engines; test_parity_lmertest.py checks R's).
"""

import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from clusterlmer import DesignError

FORMULA = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"
TERMS = ("(Intercept)", "hit_miss", "region", "hit_miss:region")


@pytest.fixture(scope="module")
def sim():
    return cl.simulate_ieeg("2way", n_times=3, seed=0)


def with_design(data, design=None, values=None):
    """The same dataset with another design table or other values."""
    return cl.TimeseriesData(
        data.design if design is None else design, data.values if values is None else values, data.times
    )


@pytest.fixture
def wide():
    return pd.DataFrame(
        {
            "sid": ["a", "a", "b", "b"],
            "cond": ["x", "y", "x", "y"],
            "t0": [1.0, 2.0, 3.0, 4.0],
            "t1": [1.0, 2.0, 3.0, 5.0],
        }
    )


# ---------------------------------------------------------------------------
# from_dataframe
# ---------------------------------------------------------------------------


def test_from_dataframe_builds_wide_and_single_column_data(wide):
    data = cl.from_dataframe(wide, ["t0", "t1"], times=[0.1, 0.2])
    assert list(data.design.columns) == ["sid", "cond"]
    assert data.values.shape == (4, 2)
    np.testing.assert_array_equal(data.times, [0.1, 0.2])
    assert data.response is None
    one = cl.from_dataframe(wide, "t0")
    assert one.values.shape == (4, 1)
    assert one.response == "t0"
    np.testing.assert_array_equal(one.times, [0.0])


@pytest.mark.parametrize("df", [{"t0": [1.0]}, np.zeros((3, 3)), None], ids=["dict", "ndarray", "None"])
def test_from_dataframe_refuses_non_dataframe(df):
    with pytest.raises(TypeError, match=r"df must be a pandas DataFrame, got (dict|ndarray|NoneType)\."):
        cl.from_dataframe(df, ["t0"])


@pytest.mark.parametrize("empty", ["no rows", "nothing"])
def test_from_dataframe_refuses_empty(wide, empty):
    df = wide.iloc[:0] if empty == "no rows" else pd.DataFrame()
    with pytest.raises(ValueError, match=r"df has no rows: there is nothing to fit\."):
        cl.from_dataframe(df, ["t0"])


@pytest.mark.parametrize("values", [["t0", "t9"], "t9"])
def test_from_dataframe_missing_value_columns_lists_available(wide, values):
    with pytest.raises(
        ValueError, match=r"values names columns that are not in df: t9\. Available columns: sid, cond, t0, t1\."
    ):
        cl.from_dataframe(wide, values)


@pytest.mark.parametrize(
    "column",
    [
        pd.Series(["1", "2", "3", "4"]),
        pd.Series([True, False, True, False]),
        pd.Series([1.0, 2.0, 3.0, 4.0], dtype=object),
    ],
    ids=["text", "bool", "object"],
)
def test_from_dataframe_refuses_non_numeric_values(wide, column):
    df = wide.assign(bad=column)
    with pytest.raises(TypeError, match=r"response columns must be numeric; not numeric: bad\. Convert them"):
        cl.from_dataframe(df, ["t0", "bad"])


def test_from_dataframe_refuses_duplicated_column_names(wide):
    df = wide.copy()
    df.columns = ["sid", "sid", "t0", "t1"]
    with pytest.raises(ValueError, match=r"df has duplicated column names: sid\. Rename them"):
        cl.from_dataframe(df, ["t0", "t1"])


def test_from_dataframe_refuses_no_design_columns(wide):
    with pytest.raises(ValueError, match=r"df has no design columns left once the response columns are removed"):
        cl.from_dataframe(wide[["t0", "t1"]], ["t0", "t1"])


@pytest.mark.parametrize("values", [[], None])
def test_from_dataframe_needs_value_columns(wide, values):
    with pytest.raises(ValueError, match=r"values must name at least one response column"):
        cl.from_dataframe(wide, values)


def test_from_dataframe_refuses_repeated_value_columns(wide):
    with pytest.raises(ValueError, match=r"values names some columns more than once"):
        cl.from_dataframe(wide, ["t0", "t0"])


def test_from_dataframe_times_length(wide):
    with pytest.raises(ValueError, match=r"times must have length 2 \(one per sample\), got shape \(1,\)"):
        cl.from_dataframe(wide, ["t0", "t1"], times=[0.0])


def test_timeseries_data_shape_checks(wide):
    design = wide[["sid", "cond"]]
    with pytest.raises(TypeError, match=r"design must be a pandas DataFrame, got ndarray"):
        cl.TimeseriesData(np.zeros((4, 2)), np.zeros((4, 2)), [0, 1])
    with pytest.raises(ValueError, match=r"values must have shape \(n_obs, n_times\) or .*got shape \(4,\)"):
        cl.TimeseriesData(design, np.zeros(4), [0])
    with pytest.raises(ValueError, match=r"values has 3 rows but the design has 4"):
        cl.TimeseriesData(design, np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match=r"freqs must have length 3, got shape \(2,\)"):
        cl.TimeseriesData(design, np.zeros((4, 2, 3)), [0, 1], [1.0, 2.0])


# ---------------------------------------------------------------------------
# fit_timeseries: checks that run before any fit (no R needed)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["frame", "array"])
def test_fit_refuses_non_timeseries_data(sim, data):
    obj = sim.design if data == "frame" else sim.values
    with pytest.raises(
        TypeError,
        match=r"data must be a TimeseriesData \(from cl\.from_dataframe or cl\.load_mat\), got (DataFrame|ndarray)\.",
    ):
        cl.fit_timeseries(obj, FORMULA)


def test_fit_unknown_columns_lists_available(sim):
    with pytest.raises(
        DesignError,
        match=r"the formula uses cond, subj, which are not design columns\. "
        r"Available columns: sid, ch, hit_miss, region\.",
    ):
        cl.fit_timeseries(sim, "data ~ cond * region + (1|subj)")


def test_fit_response_named_like_a_design_column(sim):
    with pytest.raises(DesignError, match=r"the formula's response 'region' is a design column\..*e\.g\. 'data'"):
        cl.fit_timeseries(sim, "region ~ hit_miss + (1|sid)")


def test_fit_refuses_single_level_factor(sim):
    data = with_design(sim, sim.design.assign(site="A"))
    with pytest.raises(DesignError, match=r"factor 'site' has a single level \('A'\): a factor needs at least two"):
        cl.fit_timeseries(data, "data ~ hit_miss + site + (1|sid)")


def test_fit_refuses_numeric_condition_with_one_value(sim):
    data = with_design(sim, sim.design.assign(hit_miss=1.0))
    with pytest.raises(DesignError, match=r"column 'hit_miss' has the same value \(1\) in every row"):
        cl.fit_timeseries(data, "data ~ hit_miss + (1|sid)")


def test_fit_refuses_single_group(sim):
    data = with_design(sim, sim.design.assign(sid="S"))
    with pytest.raises(DesignError, match=r"grouping factor 'sid' has a single level: random effects need"):
        cl.fit_timeseries(data, "data ~ hit_miss + (1|sid)")


@pytest.mark.parametrize("column", ["region", "sid", "hit_miss"])
def test_fit_refuses_missing_labels(sim, column):
    design = sim.design.copy()
    design.loc[[3, 10], column] = np.nan
    with pytest.raises(
        ValueError,
        match=rf"2 of {len(design)} rows have missing values in model variables \(column '{column}': 2 row\(s\) "
              r"\(3, 10\)\)\. Fill them, drop those rows, or pass na_action='omit'",
    ):
        cl.fit_timeseries(with_design(sim, design), FORMULA, na_action="fail")


def test_fit_refuses_infinite_numeric_predictor(sim):
    design = sim.design.copy()
    design.loc[3, "hit_miss"] = np.inf
    with pytest.raises(DesignError, match=r"numeric column 'hit_miss' has non-finite values"):
        cl.fit_timeseries(with_design(sim, design), FORMULA)


@pytest.mark.parametrize(
    "option, value, allowed",
    [
        ("ddf", "KR", "'satterthwaite', 'residual', 'kenward-roger', 'none'"),
        ("coding", "sum", "'reference', 'effects', 'helmert', 'poly'"),
        ("test", "type4", "'marginal', 'type3', 'type2', 'type1'"),
        ("optimizer", "nlminb", "'bobyqa', 'nloptwrap', 'Nelder_Mead'"),
        ("engine", "python", "'auto', 'r', 'native'"),
    ],
)
def test_fit_bad_option_names_parameter_and_allowed_values(sim, option, value, allowed):
    message = (
        f"Invalid value for the '{option}' parameter. Allowed values are {allowed}, but got '{value}' instead."
    )
    with pytest.raises(ValueError) as info:
        cl.fit_timeseries(sim, FORMULA, **{option: value})
    assert str(info.value) == message


def test_kenward_roger_needs_reml(sim):
    with pytest.raises(ValueError, match=r"ddf='kenward-roger' needs a REML fit: use reml=True"):
        cl.fit_timeseries(sim, FORMULA, ddf="kenward-roger", reml=False)


@pytest.mark.parametrize("reml", ["yes", 1, 0.0, None])
def test_reml_must_be_bool(sim, reml):
    with pytest.raises(TypeError, match=r"reml must be True \(REML\) or False \(ML, MATLAB's default\), got "):
        cl.fit_timeseries(sim, FORMULA, reml=reml)


def test_optimizer_options_must_be_numbers(sim):
    with pytest.raises(TypeError, match=r"optimizer_options values must be numbers, got \{'rhoend': 'x'\}"):
        cl.fit_timeseries(sim, FORMULA, optimizer_options={"rhoend": "x"})


def test_levels_must_list_every_observed_level(sim):
    with pytest.raises(
        DesignError,
        match=r"column 'region' has values missing from levels\['region'\]: phrc\. "
        r"List every level, reference first; observed levels: phrc, hc\.",
    ):
        cl.fit_timeseries(sim, FORMULA, levels={"region": ["hc"]})


def test_levels_naming_an_unseen_level(sim):
    with pytest.raises(DesignError, match=r"levels\['region'\] lists levels that never occur in column 'region': amy"):
        cl.fit_timeseries(sim, FORMULA, levels={"region": ["hc", "phrc", "amy"]})


def test_levels_repeating_a_level(sim):
    with pytest.raises(DesignError, match=r"levels\['region'\] repeats a level"):
        cl.fit_timeseries(sim, FORMULA, levels={"region": ["hc", "hc", "phrc"]})


@pytest.mark.parametrize(
    "column, why",
    [("foo", "the formula's fixed or random-slope terms do not use them"),
     ("sid", r"sid only group\(s\) random effects, where level order does not matter")],
)
def test_levels_for_a_column_outside_the_fixed_part(sim, column, why):
    with pytest.raises(DesignError, match=rf"levels names {column}: {why}\. Give levels for fixed-effect factors only"):
        cl.fit_timeseries(sim, FORMULA, levels={column: ["S01", "S02"]})


# ---------------------------------------------------------------------------
# Fits (default engine)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_fit(sim):
    return cl.fit_timeseries(sim, FORMULA)


def test_terms_naming_an_unknown_term(sim):
    with pytest.raises(
        ValueError,
        match=r"term cond is not in the model; its terms are \(Intercept\), hit_miss, region, hit_miss:region\.",
    ):
        cl.fit_timeseries(sim, FORMULA, terms=["hit_miss", "cond"])


def test_terms_restricts_the_reported_terms(sim, base_fit):
    assert base_fit.terms == TERMS
    one = cl.fit_timeseries(sim, FORMULA, terms=["hit_miss"])
    assert one.terms == ("hit_miss",)
    assert one.F.shape == one.p.shape == one.t.shape == (1, 3)
    np.testing.assert_array_equal(one.F[0], base_fit.F[1])
    np.testing.assert_array_equal(one.p[0], base_fit.p[1])
    # coefficients are not restricted
    assert one.coef_names == base_fit.coef_names
    assert list(one.anova(0)["Term"]) == ["hit_miss"]


def test_all_nan_sample_is_skipped_with_reason(sim, base_fit):
    values = sim.values.copy()
    values[:, 1] = np.nan
    fit = cl.fit_timeseries(with_design(sim, values=values), FORMULA)
    d = fit.diagnostics
    assert fit.terms == TERMS
    for arr in (fit.F, fit.df1, fit.df2, fit.p, fit.t, fit.estimates, fit.se):
        assert np.isnan(arr[:, 1]).all()
    assert d.loc[1, "error"] == "no finite response values at this sample"
    assert bool(d.loc[1, "failed"]) and not bool(d.loc[1, "converged"])
    assert (d.loc[1, "n_obs"], d.loc[1, "n_excluded"]) == (0, sim.n_obs)
    # the other samples are fitted as usual, with every row
    for t in (0, 2):
        assert d.loc[t, "error"] == "" and not d.loc[t, "failed"] and d.loc[t, "converged"]
        assert (d.loc[t, "n_obs"], d.loc[t, "n_excluded"]) == (sim.n_obs, 0)
        np.testing.assert_allclose(fit.F[:, t], base_fit.F[:, t], rtol=1e-10)


def test_no_finite_values_anywhere_still_names_terms(sim):
    values = np.full_like(sim.values, np.nan)
    fit = cl.fit_timeseries(with_design(sim, values=values), FORMULA)
    assert fit.terms == TERMS
    # hit_miss (0/1) interacts with region, so it is a factor with reference 0
    assert fit.coef_names == ("(Intercept)", "hit_miss1", "regionhc", "hit_miss1:regionhc")
    assert np.isnan(fit.F).all()
    assert (fit.diagnostics["error"] == "no finite response values at this sample").all()


def test_rows_with_nan_are_left_out_at_that_sample_only(sim, base_fit):
    values = sim.values.copy()
    dropped = [0, 5, 17, 200]
    values[dropped, 1] = np.nan
    values[7, 2] = np.inf
    fit = cl.fit_timeseries(with_design(sim, values=values), FORMULA)
    d = fit.diagnostics
    assert list(d["n_excluded"]) == [0, 4, 1]
    assert list(d["n_obs"]) == [sim.n_obs, sim.n_obs - 4, sim.n_obs - 1]
    assert not d["failed"].any()
    # sample 0 uses every row: identical to the full fit
    np.testing.assert_allclose(fit.F[:, 0], base_fit.F[:, 0], rtol=1e-10)
    # sample 1 equals a fit on the data without those rows
    keep = np.setdiff1d(np.arange(sim.n_obs), dropped)
    alone = cl.TimeseriesData(sim.design.iloc[keep].reset_index(drop=True), sim.values[keep][:, [1]], sim.times[[1]])
    ref = cl.fit_timeseries(alone, FORMULA)
    np.testing.assert_allclose(fit.F[:, 1], ref.F[:, 0], rtol=1e-10)
    np.testing.assert_allclose(fit.df2[:, 1], ref.df2[:, 0], rtol=1e-10)
    assert not np.allclose(fit.F[:, 1], base_fit.F[:, 1])


@pytest.mark.parametrize("level", [0.0, 3.0])
def test_constant_sample_is_recorded_without_stopping_the_run(sim, base_fit, level):
    # A response without variance cannot be modelled (lme4 would fail at 0
    # and return F ~ 1e30 at 3.0): that sample is NaN with its reason, the
    # others are fitted as usual.
    values = sim.values.copy()
    values[:, 1] = level
    fit = cl.fit_timeseries(with_design(sim, values=values), FORMULA)
    d = fit.diagnostics
    assert list(d["failed"]) == [False, True, False]
    assert list(d["converged"]) == [True, False, True]
    assert "the response is constant at this sample" in d.loc[1, "error"]
    assert np.isnan(d.loc[1, "singular"]) and np.isnan(d.loc[1, "sigma"])
    for arr in (fit.F, fit.p, fit.t, fit.estimates, fit.se):
        assert np.isnan(arr[:, 1]).all()
    for t in (0, 2):
        np.testing.assert_allclose(fit.F[:, t], base_fit.F[:, t], rtol=1e-10)
    assert "3 fits = 2 converged and regular + 0 singular (converged at a boundary) + 0 not converged + 1 failed" \
        in fit.summary()


def test_anova_table(sim, base_fit):
    table = base_fit.anova(0)
    assert list(table.columns) == ["Term", "FStat", "DF1", "DF2", "pValue"]
    assert list(table["Term"]) == list(TERMS)
    assert table["Term"].iloc[0] == "(Intercept)"
    np.testing.assert_array_equal(table["FStat"], base_fit.F[:, 0])
    np.testing.assert_array_equal(table["DF1"], 1.0)
    np.testing.assert_array_equal(table["pValue"], base_fit.p[:, 0])
    # times are -0.20, -0.19, -0.18: the nearest sample to -0.186 is index 1
    pd.testing.assert_frame_equal(base_fit.anova(time=-0.186), base_fit.anova(1))
    pd.testing.assert_frame_equal(base_fit.anova(time=5.0), base_fit.anova(2))
    pd.testing.assert_frame_equal(base_fit.anova(-1), base_fit.anova(2))
    with pytest.raises(IndexError, match=r"sample index 3 is out of range for 3 samples"):
        base_fit.anova(3)
    with pytest.raises(IndexError, match=r"sample index -4 is out of range for 3 samples"):
        base_fit.anova(-4)
    with pytest.raises(ValueError, match=r"give exactly one of t \(sample index\) or time"):
        base_fit.anova()
    with pytest.raises(ValueError, match=r"give exactly one of t"):
        base_fit.anova(0, time=-0.2)


def test_t_is_signed_sqrt_f_for_one_coefficient_terms(base_fit):
    assert (base_fit.df1 == 1).all()  # every term of this model has one coefficient
    expected = np.sign(base_fit.t) * np.sqrt(base_fit.F)
    np.testing.assert_allclose(base_fit.t, expected, rtol=1e-12)
    np.testing.assert_allclose(base_fit.t**2, base_fit.F, rtol=1e-10)
    # with reference coding the hit_miss term is the hit_miss coefficient
    est = base_fit.estimates[base_fit.coef_names.index("hit_miss1")]
    np.testing.assert_array_equal(np.sign(base_fit.t[TERMS.index("hit_miss")]), np.sign(est))
    est_int = base_fit.estimates[base_fit.coef_names.index("hit_miss1:regionhc")]
    np.testing.assert_array_equal(np.sign(base_fit.t[TERMS.index("hit_miss:region")]), np.sign(est_int))
    # t = estimate / se for a single coefficient
    i = base_fit.coef_names.index("hit_miss1")
    np.testing.assert_allclose(base_fit.t[1], base_fit.estimates[i] / base_fit.se[i], rtol=1e-6)


def test_t_is_nan_for_multi_coefficient_terms(sim):
    design = sim.design.assign(region3=np.where(np.arange(sim.n_obs) % 3 == 0, "a", sim.design["region"]))
    fit = cl.fit_timeseries(with_design(sim, design), "data ~ hit_miss + region3 + (1|sid)")
    k = fit.terms.index("region3")
    np.testing.assert_array_equal(fit.df1[k], 2.0)
    assert np.isnan(fit.t[k]).all()
    assert np.isfinite(fit.t[fit.terms.index("hit_miss")]).all()


def test_summary_mentions_methods_and_coding(sim, base_fit):
    text = base_fit.summary()
    assert "Fit method:  REML;" in text
    assert "Satterthwaite" in text
    assert "reference (treatment)" in text
    assert "reference levels: hit_miss = '0', region = 'phrc'" in text
    ml = cl.fit_timeseries(sim, FORMULA, reml=False, ddf="residual", coding="effects", terms="hit_miss")
    text = ml.summary()
    assert "Fit method:  ML;" in text
    assert "REML" not in text
    assert "residual (n - rank X)" in text
    assert "effects (sum to zero, last level -1); levels: hit_miss = ['0', '1'], region = ['phrc', 'hc']" in text


def test_time_frequency_values_equal_per_frequency_fits(sim):
    rng = np.random.default_rng(1)
    values3d = sim.values[:, :, None] + rng.normal(0, 0.5, (sim.n_obs, sim.n_times, 2))
    freqs = np.array([4.0, 8.0])
    fit = cl.fit_timeseries(cl.TimeseriesData(sim.design, values3d, sim.times, freqs), FORMULA)
    assert fit.F.shape == fit.p.shape == fit.t.shape == (len(TERMS), sim.n_times, 2)
    assert fit.estimates.shape == (4, sim.n_times, 2)
    assert fit.sample_shape == (sim.n_times, 2)
    np.testing.assert_array_equal(fit.freqs, freqs)
    d = fit.diagnostics
    assert len(d) == sim.n_times * 2
    np.testing.assert_array_equal(d["freq"], np.tile(freqs, sim.n_times))
    np.testing.assert_array_equal(d["time"], np.repeat(sim.times, 2))
    for k in range(2):
        alone = cl.fit_timeseries(cl.TimeseriesData(sim.design, values3d[:, :, k], sim.times), FORMULA)
        np.testing.assert_allclose(fit.F[:, :, k], alone.F, rtol=1e-10)
        np.testing.assert_allclose(fit.df2[:, :, k], alone.df2, rtol=1e-10)
    np.testing.assert_array_equal(fit.anova((2, 1))["FStat"], fit.F[:, 2, 1])
    with pytest.raises(ValueError, match=r"time= selects a sample of time or channel x time data"):
        fit.anova(time=-0.2)
    with pytest.raises(ValueError, match=r"t must have 2 index\(es\)"):
        fit.anova(0)


def test_level_order_of_text_categorical_and_numeric_columns(sim):
    # text: order of first appearance (here not alphabetical)
    first = list(dict.fromkeys(sim.design["region"]))
    assert first == ["phrc", "hc"] and first != sorted(first)
    fit = cl.fit_timeseries(sim, FORMULA, terms="hit_miss")
    assert fit.levels == {"hit_miss": ["0", "1"], "region": ["phrc", "hc"]}
    assert fit.reference_levels == {"hit_miss": "0", "region": "phrc"}
    # a numeric 0/1 column in an interaction is a factor, values sorted (reference 0)
    assert fit.coef_names == ("(Intercept)", "hit_miss1", "regionhc", "hit_miss1:regionhc")
    # without an interaction it stays numeric: one coefficient named after the column
    fit = cl.fit_timeseries(sim, "data ~ hit_miss + region + (1|sid) + (1|sid:ch)", terms="hit_miss")
    assert fit.coef_names == ("(Intercept)", "hit_miss", "regionhc")
    assert "hit_miss" not in fit.levels

    # categorical: category order, unused categories dropped
    cat = sim.design.assign(region=pd.Categorical(sim.design["region"], categories=["amy", "hc", "phrc"]))
    fit = cl.fit_timeseries(with_design(sim, cat), FORMULA, terms="hit_miss")
    assert fit.levels == {"hit_miss": ["0", "1"], "region": ["hc", "phrc"]}
    assert fit.coef_names == ("(Intercept)", "hit_miss1", "regionphrc", "hit_miss1:regionphrc")

    # integer and boolean columns stay numeric too
    nums = sim.design.assign(hm=sim.design["hit_miss"].astype(int), hb=sim.design["region"] == "hc")
    fit = cl.fit_timeseries(with_design(sim, nums), "data ~ hm + hb + (1|sid)")
    assert fit.levels == {}
    assert fit.coef_names == ("(Intercept)", "hm", "hb")

    # levels= overrides the order and makes a numeric column a factor
    fit = cl.fit_timeseries(sim, FORMULA, levels={"hit_miss": [1, 0], "region": ["hc", "phrc"]})
    assert fit.levels == {"hit_miss": ["1", "0"], "region": ["hc", "phrc"]}
    assert fit.reference_levels == {"hit_miss": "1", "region": "hc"}
    assert fit.coef_names == ("(Intercept)", "hit_miss0", "regionphrc", "hit_miss0:regionphrc")
    assert fit.terms == TERMS
    assert "reference levels: hit_miss = '1', region = 'hc'" in fit.summary()


def test_empty_terms_list_is_refused(sim):
    with pytest.raises(ValueError, match=r"terms must name at least one term"):
        cl.fit_timeseries(sim, FORMULA, terms=[])


def test_type3_on_an_intercept_only_model_is_refused(sim):
    with pytest.raises(ValueError, match=r"no term besides the intercept.*test='marginal'"):
        cl.fit_timeseries(sim, "data ~ 1 + (1|sid)", test="type3", engine="r")  # type III: lmerTest only
