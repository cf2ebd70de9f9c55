"""The native engine (closed-form nested random intercepts) against the R engine.

The reference is clusterlmer's R engine (lme4, bobyqa with rhoend = 1e-9,
lmerTest's Satterthwaite). Two comparisons per case:

* **At lme4's theta** (strict, rtol 1e-6): the native engine evaluated at the
  theta that lme4 found (``native_at_theta``) must give the R
  engine's F, DF2, p, estimates, standard errors, sigma and deviance. This
  checks everything except the optimiser: the profiled criterion, GLS
  solution, numDeriv's Hessian/Jacobian replicated step for step, contest1D /
  contestMD. Observed differences are ~1e-9 or smaller.
* **End to end** (``fit_timeseries(engine="native")`` vs ``engine="r"``): the
  native optimiser finds the optimum to ~1e-12 in theta (Newton with exact
  derivatives), bobyqa only to ~1e-8..1e-7 (its stopping point is limited by
  the rounding of the criterion, whose flat optimum makes theta
  indistinguishable below ~sqrt(1e-13 / curvature)). The native criterion at
  its optimum is never above lme4's (beyond 1e-9), but F/DF2 inherit bobyqa's
  theta noise: up to a few 1e-6 relative (more for values near zero, which are
  compared with an absolute floor). END_RTOL documents that bound for the
  simulated edge cases; on the bundled samples every converged timepoint agrees
  within 1e-6 (BUNDLED_RTOL, the issue's bound).

DF2 of fits with a small but positive theta (< 0.1) is also limited in R
itself: numDeriv steps 0.1 * theta, so lmerTest's Hessian carries rounding of
order 1e-13 / (0.1 theta)^2; those entries get a looser DF2 tolerance.

Run with ``pytest -s`` to see the largest differences per case.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from clusterlmer import datasets
from clusterlmer.design import build_design
from clusterlmer.engines import get_engine, native
from clusterlmer.engines.native import criterion, engine, nesting, optimize
from clusterlmer.engines.base import FitOptions
from clusterlmer.formula import parse_formula
from clusterlmer.spec import build_spec

pytest.importorskip("rpy2")

RTOL = 1e-6  # at lme4's theta
END_RTOL = 1e-5  # end to end (bobyqa's theta noise), simulated edge cases
BUNDLED_RTOL = 1e-6  # end to end on the bundled samples, the bound (with the absolute floors below for values near 0)
F2 = datasets.FORMULA_2WAY
F1 = datasets.FORMULA_1WAY
NESTED = "data ~ hit_miss + (1|sid) + (1|sid:ch)"


@pytest.fixture(scope="module")
def r_engine():
    try:
        from clusterlmer.engines.r import r_session

        r_session()
    except ImportError as exc:  # pragma: no cover - machines without R
        pytest.skip(f"R engine unavailable: {exc}")
    return get_engine("r")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def simulate(seed=0, n_subj=8, rows=(1, 2, 3, 4), n_times=6, subject_sd=1.0, channel_sd=0.7, site_sd=0.0,
             n_sites=0, noise_sd=1.0):
    """Nested data whose channels have unequal row counts (drawn from ``rows``),
    with a 3-level factor, a numeric covariate and optional sites above subjects."""
    rng = np.random.default_rng(seed)
    recs = []
    for s in range(n_subj):
        for c in range(int(rng.integers(2, 6))):
            region = rng.choice(["hc", "phrc", "amy"])
            for _ in range(int(rng.choice(rows))):
                recs.append({"site": f"site{s % max(n_sites, 1)}", "sid": f"S{s}", "ch": f"ch{c}",
                                 "hit_miss": float(rng.integers(0, 2)), "cond": rng.choice(["a", "b", "c"]),
                                 "region": region, "x": rng.normal(2.0, 1.5), "item": f"i{rng.integers(0, 5)}"})
    design = pd.DataFrame(recs)
    sid = pd.factorize(design.sid)[0]
    ch = pd.factorize(design.sid + ":" + design.ch)[0]
    site = pd.factorize(design.site)[0]
    n = len(design)
    Y = np.empty((n, n_times))
    for t in range(n_times):
        Y[:, t] = (0.4 * design.hit_miss + 0.3 * (design.cond == "b") + 0.2 * design.x
                   + rng.normal(0, subject_sd, sid.max() + 1)[sid] + rng.normal(0, channel_sd, ch.max() + 1)[ch]
                   + rng.normal(0, site_sd, site.max() + 1)[site] + rng.normal(0, noise_sd, n))
    return cl.TimeseriesData(design, Y, np.arange(n_times) / 10.0)


def rel_diff(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    with np.errstate(invalid="ignore"):
        d = np.abs(a - b) / np.where(b == 0, 1.0, np.abs(b))
    d[(np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))] = 0.0
    return d


def lme4_theta(design, Y, reml):
    """lme4's theta (its order) for every column, fitted as the R engine fits."""
    from clusterlmer.engines.r import r_session

    s = r_session()
    ro = s.ro
    ro.globalenv["cl_test_fr"] = s.call("cl_prepare_design", s.data_frame(design.frame),
                                        s.str_list(design.factors), design.coding)
    ro.globalenv["cl_test_Y"] = s.matrix(Y)
    ro.globalenv["cl_test_f"] = ro.r["as.formula"](design.formula.text)
    out = ro.r(f"""
      t(sapply(seq_len(ncol(cl_test_Y)), function(j) {{
        cl_test_fr[["{design.formula.response}"]] <- cl_test_Y[, j]
        m <- suppressMessages(suppressWarnings(lme4::lmer(cl_test_f, cl_test_fr, REML = {str(bool(reml)).upper()},
               control = lme4::lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-9, maxfun = 1e5),
                                           check.rankX = "message+drop.cols"))))
        lme4::getME(m, "theta")
      }}))""")
    return np.array(out).reshape(Y.shape[1], -1)


def native_at_theta(design, Y, options, theta):
    """The native engine's results at ``theta`` (lme4's order, shape (k, G)) instead of its optimum."""
    model = engine.prepare(build_spec(design), options, Y.shape[0])
    assert not model.error, model.error
    block = criterion.Block(model.structure, criterion.Responses(model.structure, Y), [model.X])
    return engine.evaluate(model, block, np.asarray(theta, float)[:, ::-1] ** 2, np.ones(Y.shape[1], bool), options)


def check_at_theta(r_engine, data, formula, *, reml=True, ddf="satterthwaite", coding="reference", label=""):
    """Native at lme4's theta equals the R engine to RTOL (finite Y only)."""
    design = build_design(data.design, parse_formula(formula), coding=coding)
    options = FitOptions(reml=reml, ddf=ddf)
    Y = data.values.reshape(data.n_obs, -1)
    theta = lme4_theta(design, Y, reml)
    nat = native_at_theta(design, Y, options, theta)
    ref = r_engine.fit_block(design, Y, options)
    assert nat.terms == ref.terms and nat.coef_names == ref.coef_names
    np.testing.assert_array_equal(nat.df1, ref.df1)
    worst = {}
    for name in ("F", "p", "estimate", "se", "sigma", "deviance", "df2"):
        d = rel_diff(getattr(nat, name), getattr(ref, name))
        if name == "df2":
            # numDeriv's steps are 0.1 * theta: lmerTest's own Hessian is
            # rounding-limited when a theta is small but positive.
            small = np.any((theta > 0) & (theta < 0.1), axis=1)
            assert np.all(d[:, small] <= 1e-5), (label, name, d[:, small].max())
            d = d[:, ~small]
        worst[name] = float(np.max(d, initial=0.0))
        assert worst[name] <= RTOL, (label, name, worst[name])
    print(f"\n[at lme4 theta] {label}: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    return theta


def check_end_to_end(fr, fn, label="", rtol=END_RTOL):
    """fit_timeseries with both engines: same labels, diagnostics and numbers."""
    assert fn.terms == fr.terms and fn.coef_names == fr.coef_names
    dr, dn = fr.diagnostics, fn.diagnostics
    for col in ("n_obs", "converged", "failed", "error", "messages"):
        assert dn[col].tolist() == dr[col].tolist(), (label, col)
    np.testing.assert_array_equal(dn["singular"].to_numpy(), dr["singular"].to_numpy())
    np.testing.assert_array_equal(fn.df1, fr.df1)
    ok = dr["converged"].to_numpy()
    # The optimum is at least as good as lme4's.
    assert np.all(dn["deviance"][ok] <= dr["deviance"][ok] + 1e-9 * np.abs(dr["deviance"][ok])), label
    worst = {}
    se = fr.se[..., ok]
    for name, atol in (("F", 1e-8), ("df2", 0.0), ("p", 1e-12), ("estimates", None), ("se", 0.0), ("t", 1e-8)):
        a, b = getattr(fn, name)[..., ok], getattr(fr, name)[..., ok]
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        if atol is None:  # estimates: absolute floor relative to their standard error
            tol = rtol * np.abs(b) + 1e-6 * se
        else:
            tol = rtol * np.abs(b) + atol
        with np.errstate(invalid="ignore"):
            bad = np.abs(a - b) > tol
        bad &= ~(np.isnan(a) & np.isnan(b)) & ~(np.isinf(a) & (a == b))
        worst[name] = float(np.nanmax(rel_diff(a, b), initial=0.0))
        assert not bad.any(), (label, name, worst[name])
    print(f"\n[end to end] {label}: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))


def both(data, formula, **kw):
    return (cl.fit_timeseries(data, formula, engine="r", **kw),
            cl.fit_timeseries(data, formula, engine="native", **kw))


# --------------------------------------------------------------------------
# parity
# --------------------------------------------------------------------------


def test_bundled_2way_reml_satterthwaite(r_engine):
    data = datasets.sample_2way()
    fr, fn = both(data, F2)
    check_end_to_end(fr, fn, "2way REML Satterthwaite", rtol=BUNDLED_RTOL)
    check_at_theta(r_engine, data, F2, label="2way REML Satterthwaite")


def test_bundled_2way_ml_residual(r_engine):
    data = datasets.sample_2way()
    fr, fn = both(data, F2, reml=False, ddf="residual")
    check_end_to_end(fr, fn, "2way ML residual", rtol=BUNDLED_RTOL)
    assert np.all(fn.df2 == data.n_obs - 4)


def test_bundled_1way_and_effects_coding(r_engine):
    data = datasets.sample_1way()
    check_end_to_end(*both(data, F1), "1way", rtol=BUNDLED_RTOL)
    two = datasets.sample_2way()
    sub = cl.TimeseriesData(two.design, two.values[:, ::6], two.times[::6])
    fr, fn = both(sub, F2, coding="effects")
    # hit_miss (0/1) interacts with region: a sum-coded factor, last level (1) coded -1
    assert fn.coef_names == ("(Intercept)", "hit_miss0", "regionhc", "hit_miss0:regionhc")
    check_end_to_end(fr, fn, "2way effects coding", rtol=BUNDLED_RTOL)
    check_at_theta(r_engine, sub, F2, coding="effects", label="2way effects coding")


@pytest.mark.parametrize("formula, kw", [
    ("data ~ cond * x + hit_miss + (1|sid) + (1|sid:ch)", {}),  # 3-level factor (2-df F), covariate, interaction
    ("data ~ cond * region + (1|sid/ch)", {"coding": "effects"}),  # 2-df and 4-df terms, sum coding
    ("data ~ hit_miss * x + (1|sid)", {"reml": False}),  # single level, ML
    ("data ~ cond + x + (1|sid:ch) + (1|sid)", {"ddf": "none"}),
])
def test_unbalanced_channels(r_engine, formula, kw):
    # Channels with 1, 2, 3 and 4 rows, subjects with 2-5 channels.
    data = simulate(seed=1, n_times=6)
    check_end_to_end(*both(data, formula, **kw), f"{formula} {kw}")
    check_at_theta(r_engine, data, formula, label=f"{formula} {kw}", **kw)


def test_three_level_nesting(r_engine):
    data = simulate(seed=2, n_subj=12, n_sites=3, site_sd=0.8, n_times=6)
    f3 = "data ~ hit_miss + x + (1|site) + (1|site:sid) + (1|site:sid:ch)"
    check_end_to_end(*both(data, f3), "3 levels")
    check_at_theta(r_engine, data, f3, label="3 levels")
    fr, fn = both(data, "data ~ hit_miss + cond + (1|site/sid/ch)", reml=False)
    check_end_to_end(fr, fn, "3 levels slash ML")


@pytest.mark.parametrize("sds", [{"subject_sd": 0.0}, {"channel_sd": 0.0}, {"subject_sd": 0.0, "channel_sd": 0.0}])
def test_zero_variance_components(r_engine, sds):
    data = simulate(seed=5, n_times=8, **sds)
    formula = "data ~ hit_miss + cond + (1|sid) + (1|sid:ch)"
    fr, fn = both(data, formula)
    check_end_to_end(fr, fn, f"zero variance {sds}")
    theta = check_at_theta(r_engine, data, formula, label=f"zero variance {sds}")
    assert (theta == 0).any()  # lme4 ended on the bound: singular fits are covered
    singular = fn.diagnostics["singular"] == 1
    assert singular.any()
    assert all("boundary (singular) fit" in m for m in fn.diagnostics.loc[singular, "messages"])


def test_nan_rows_and_constant_samples(r_engine):
    two = datasets.sample_2way()
    v = two.values[:, :10].copy()
    v[[4, 5, 100, 201], 2] = np.nan  # both rows of a channel and two single rows
    v[7, 5] = np.inf
    v[:, 7] = 3.0  # constant: not fitted
    v[10:300, 8] = np.nan  # most rows missing
    v[:, 9] = np.nan  # nothing to fit
    data = cl.TimeseriesData(two.design, v, two.times[:10])
    fr, fn = both(data, F2)
    check_end_to_end(fr, fn, "NaN rows")
    assert fn.diagnostics["n_excluded"].tolist() == fr.diagnostics["n_excluded"].tolist()


def test_design_errors_and_messages_match(r_engine):
    one_row = simulate(seed=1, rows=(1,), n_times=2)  # sid:ch has as many levels as rows
    fr, fn = both(one_row, NESTED)
    assert fn.diagnostics["error"].tolist() == fr.diagnostics["error"].tolist()
    assert "number of levels of each grouping factor" in fn.diagnostics["error"][0]
    scaled = simulate(seed=1, n_times=2)
    scaled.design["x"] = scaled.design["x"] * 1e4
    fr, fn = both(scaled, "data ~ hit_miss + x + (1|sid)")
    assert fn.diagnostics["messages"].tolist() == fr.diagnostics["messages"].tolist()
    assert "very different scales" in fn.diagnostics["messages"][0]


def test_permutation_analysis_matches(r_engine):
    data = cl.simulate_ieeg("2way", n_subjects=6, n_channels=30, n_times=20, seed=3, hit_miss_effect=1.0)
    kw = {"n_permutations": 19, "seed": 7, "progress": False}
    rr = cl.permutation_cluster_lmer(data, F2, engine="r", **kw)
    rn = cl.permutation_cluster_lmer(data, F2, engine="native", **kw)
    assert len(rr.clusters) > 0
    pd.testing.assert_frame_equal(rn.clusters, rr.clusters, rtol=END_RTOL)
    for term in rr.terms:
        np.testing.assert_array_equal(rn.p_clust[term], rr.p_clust[term])
        a, b = rn.null[term], rr.null[term]
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a, b, rtol=END_RTOL, atol=1e-8)


# --------------------------------------------------------------------------
# labels, scope and refusals
# --------------------------------------------------------------------------


@pytest.mark.parametrize("formula, coding", [
    ("data ~ cond * x * region + (1|sid)", "reference"),
    ("data ~ (hit_miss + region + cond)^2 + (1|sid)", "effects"),
    ("data ~ region:hit_miss + hit_miss + region + (1|sid)", "reference"),
    ("data ~ x * cond - x:cond + (1|sid/ch)", "effects"),
    ("data ~ 1 + (1|sid)", "reference"),
])
def test_describe_matches_r(r_engine, formula, coding):
    design = build_design(simulate(seed=3, n_times=1).design, parse_formula(formula), coding=coding)
    assert native.supports(design) == (True, "")
    assert native.describe(design, FitOptions()) == r_engine.describe(design, FitOptions())


def _design(formula, seed=0):
    return build_design(simulate(seed=seed, n_times=1).design, parse_formula(formula))


@pytest.mark.parametrize("formula", [
    "data ~ hit_miss + (hit_miss|sid)",
    "data ~ hit_miss + (0 + x|sid)",
    "data ~ hit_miss + (x||sid)",
    "data ~ hit_miss + (1|sid) + (1|item)",
    "data ~ hit_miss + (1|sid) + (1|ch)",  # channel labels repeat across subjects: crossed
])
def test_supports_slopes_and_crossed(formula):
    """Random slopes and crossed groupings take the general path (its numbers: test_native_general_parity)."""
    assert native.supports(_design(formula)) == (True, "")
    fit = cl.fit_timeseries(simulate(seed=0, n_times=2), formula, engine="native")
    assert np.all(np.isfinite(fit.F))


@pytest.mark.parametrize("formula, reason", [
    ("data ~ hit_miss:region + (1|sid)", "not hierarchical"),
    ("data ~ hit_miss * region - region + (1|sid)", "not hierarchical"),
    ("data ~ 0 + hit_miss + (1|sid)", "no intercept"),
    ("data ~ hit_miss + (1|sid) + (1|sid/ch)", "appears twice"),
])
def test_supports_refuses(formula, reason):
    ok, why = native.supports(_design(formula))
    assert not ok and reason in why, why
    data = simulate(seed=0, n_times=1)
    with pytest.raises(ValueError, match="native engine cannot fit this model"):
        cl.fit_timeseries(data, formula, engine="native")


def test_refuses_kenward_roger_accepts_type3():
    """Kenward-Roger stays with R (pbkrtest); type III tests are native (their numbers: test_type3.py)."""
    design = _design(NESTED)
    assert native.supports(design) == (True, "")
    ok, why = native.supports(design, FitOptions(ddf="kenward-roger"))
    assert not ok and "kenward-roger" in why
    assert native.supports(design, FitOptions(test="type3")) == (True, "")
    data = simulate(seed=0, n_times=1)
    with pytest.raises(ValueError, match="kenward-roger"):
        cl.fit_timeseries(data, NESTED, engine="native", ddf="kenward-roger")
    fit = cl.fit_timeseries(data, NESTED, engine="native", test="type3")
    assert "(Intercept)" not in fit.terms and np.all(np.isfinite(fit.F))


@pytest.mark.parametrize("option, reason", [
    (dict(ddf="kenward-roger"), "ddf='kenward-roger'"),
    (dict(optimizer="Nelder_Mead"), "optimizer='Nelder_Mead'"),
    (dict(optimizer_options={"maxfun": 5000}), "optimizer_options={'maxfun': 5000}"),
])
def test_options_only_r_has_make_auto_use_r_and_native_refuse(r_engine, option, reason):
    data = simulate(seed=0, n_times=2)
    with pytest.warns(UserWarning) as record:
        fit = cl.fit_timeseries(data, NESTED, **option)  # the default engine, "auto"
    assert fit.options["engine"] == "r" and "cross_check" not in fit.options
    ours = [str(w.message) for w in record if "engine='auto'" in str(w.message)]
    assert len(ours) == 1 and f"engine='auto' uses the R engine: {reason}" in ours[0], ours
    with pytest.raises(ValueError, match=rf"native engine cannot fit this model: {re.escape(reason)}.*engine='r'"):
        cl.fit_timeseries(data, NESTED, engine="native", **option)
    # the default optimizer, stated explicitly, stays native
    assert cl.fit_timeseries(data, NESTED, optimizer="bobyqa").options["engine"] == "native"


def test_auto_falls_back_once_per_permutation_run(r_engine):
    """A model outside the native class: the run uses R for the observed fit and every permutation,
    and says so once."""
    data = simulate(seed=0, n_times=2)
    with pytest.warns(UserWarning) as record:
        res = cl.permutation_cluster_lmer(data, "data ~ 0 + hit_miss + (1|sid)", n_permutations=2, seed=1,
                                          progress=False)
    ours = [str(w.message) for w in record if "engine='auto'" in str(w.message)]
    assert len(ours) == 1 and "no intercept" in ours[0], ours
    assert res.fit.options["engine"] == "r"
    expected = cl.permutation_cluster_lmer(data, "data ~ 0 + hit_miss + (1|sid)", n_permutations=2, seed=1,
                                           progress=False, engine="r")
    np.testing.assert_array_equal(res.null["hit_miss"], expected.null["hit_miss"])


def test_rank_deficient_design_drops_the_columns_lme4_drops():
    """x2 = 2 x: lme4 drops x2's column; the native engine does the same (estimate NaN, the term's F NaN,
    lme4's message), and the remaining terms equal the fit without x2."""
    data = simulate(seed=0, n_times=2)
    data.design["x2"] = data.design["x"] * 2.0
    design = build_design(data.design, parse_formula("data ~ x + x2 + (1|sid)"))
    blk = native.fit_block(design, data.values, FitOptions())
    assert blk.errors == ["", ""]
    assert all("fixed-effect model matrix is rank deficient so dropping 1 column / coefficient" in m
               for m in blk.messages)
    assert np.isnan(blk.estimate[blk.coef_names.index("x2")]).all() and np.isnan(blk.F[blk.terms.index("x2")]).all()
    alone = native.fit_block(build_design(data.design, parse_formula("data ~ x + (1|sid)")), data.values, FitOptions())
    for name in ("(Intercept)", "x"):
        i, j = blk.terms.index(name), alone.terms.index(name)
        np.testing.assert_allclose(blk.F[i], alone.F[j], rtol=1e-12)
        np.testing.assert_allclose(blk.df2[i], alone.df2[j], rtol=1e-9)


def test_optimum_is_exact_to_rounding():
    # The gradient of the profiled criterion vanishes at interior optima and
    # points into the bound where theta = 0.
    data = simulate(seed=4, n_times=8, subject_sd=0.3)
    design = build_design(data.design, parse_formula(NESTED))
    spec = build_spec(design)
    structure = criterion.Structure(nesting.Nesting.of(spec), spec.n_obs)
    block = criterion.Block(structure, criterion.Responses(structure, data.values), [spec.X])
    for reml in (True, False):
        phi, ok, _ = optimize.optimize(block, reml)
        assert ok.all()
        _, g, _H, _ = optimize.crit1(block, phi, None, 2, reml)
        interior = phi > 0
        assert np.all(np.abs(g[interior]) < 1e-6)
        assert np.all(g[~interior] >= 0)


@pytest.mark.parametrize("formula, seed, n_sites", [
    ("data ~ hit_miss * region + (1|sid) + (1|sid:ch)", 1, 0),
    ("data ~ hit_miss + x + (1|site/sid/ch)", 2, 3),
])
def test_node_mode_and_chunks_agree(monkeypatch, formula, seed, n_sites):
    # Levels above the leaves are summed either by Gram entries per pair of
    # chains or node by node (chosen by cost), and responses are fitted in
    # chunks: every route gives the same numbers to rounding.
    data = simulate(seed=seed, n_subj=10, n_sites=n_sites, site_sd=0.5, n_times=12)
    design = build_design(data.design, parse_formula(formula))
    options = FitOptions()
    monkeypatch.setattr(criterion, "NODE_MODE_FACTOR", 10**9)
    pairs = native.fit_block(design, data.values, options)
    monkeypatch.setattr(criterion, "NODE_MODE_FACTOR", -1)
    monkeypatch.setattr(engine, "CHUNK", 5)
    nodes = native.fit_block(design, data.values, options)
    # DF2 comes from numDeriv's finite differences, which turn rounding-level
    # changes of theta into ~1e-8..1e-7 (steps of 0.1 * theta, theta ~ 0.1 here).
    for name, rtol in (("F", 1e-9), ("df2", 1e-6), ("p", 1e-7), ("estimate", 1e-9), ("se", 1e-9),
                       ("sigma", 1e-12), ("deviance", 1e-12)):
        np.testing.assert_allclose(getattr(nodes, name), getattr(pairs, name), rtol=rtol, err_msg=name)
    assert nodes.messages == pairs.messages and nodes.errors == pairs.errors
