"""User contrasts (``contrasts=``, ``fit.contrast``, ``--contrast``) against lmerTest's ``contest``, run through Rscript.

A standalone ``Rscript`` fits (``lmerTest::lmer``, bobyqa with ``rhoend = 1e-9``
as clusterlmer's default) lmerTest's ham (``Informed.liking ~ Product *
Information + (1|Consumer)``, the nested path of the native engine) and lme4's
sleepstudy with a correlated random slope (``Reaction ~ Days * phase +
(Days|Subject)``, the general path), builds each contrast matrix itself from
coefficient names and weights written here in R, and writes
``lmerTest::contest(fit, L, rhs, joint = TRUE)``'s F value, NumDF, DenDF and
Pr(>F) with Satterthwaite's and Kenward-Roger's DF (and ``contest1D``'s t for
one row), and the Wald F from lme4's beta and vcov with ``n - p`` or infinite
DF2, as C99 hex floats. clusterlmer parses the same contrasts from its
expression syntax and must give the same numbers to 1e-6 relative: with the
native engine (Satterthwaite), the R engine (both) and ``engine="auto"``
(which must pick R for Kenward-Roger and say why). The cases cover one row,
several rows, a right-hand side, linearly dependent rows (lmerTest tests
the rank of ``L``: NumDF 2 for three rows), and ham without one cell (lme4
drops a column: a contrast of the kept columns as lmerTest, one weighting the
dropped column NaN).

The permutation test checks an identity of the model rather than numbers:
under reference coding the contrast ``hit_miss1 + hit_miss1:regionphrc`` is
the hit/miss effect in region ``phrc``, which is the coefficient of
``hit_miss`` itself when ``phrc`` is made the reference level. With the same
seed, the contrast's permutation null (signed t) must equal that term's null in
the recoded model, and a contrast ``-2*hit_miss1`` must give minus the null
of the term ``hit_miss``.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from clusterlmer.contrasts import make_contrast
from conftest import R_DATA_SETS, R_HEX_PREAMBLE, run_cli, run_rscript, write_small_mat

needs_r = pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript is not on PATH")
RTOL = 1e-6
HAM = "Informed.liking ~ Product * Information + (1|Consumer)"
SLEEP = "Reaction ~ Days * phase + (Days|Subject)"

# name: (data set, contrast in clusterlmer's syntax, the same contrast as R rows of named weights, rhs)
CASES = {
    "ham_one_row": ("ham", "ProductP2 - ProductP3",
                    "list(c(ProductP2 = 1, ProductP3 = -1))", "0"),
    "ham_rhs": ("ham", "0.5*ProductP2 - ProductP3:InformationI2 = 0.25",
                "list(c(ProductP2 = 0.5, `ProductP3:InformationI2` = -1))", "0.25"),
    "ham_joint": ("ham", "ProductP2; ProductP3 + ProductP3:InformationI2; ProductP4",
                  "list(c(ProductP2 = 1), c(ProductP3 = 1, `ProductP3:InformationI2` = 1), c(ProductP4 = 1))", "0"),
    "ham_joint_rhs": ("ham", "ProductP2 = 0.3; InformationI2 = -0.2",
                      "list(c(ProductP2 = 1), c(InformationI2 = 1))", "c(0.3, -0.2)"),
    "ham_dependent_rows": ("ham", "ProductP2; ProductP3; ProductP2 - 2*ProductP3",
                           "list(c(ProductP2 = 1), c(ProductP3 = 1), c(ProductP2 = 1, ProductP3 = -2))", "0"),
    "gap_kept": ("ham_gap", "ProductP2 - ProductP4",
                 "list(c(ProductP2 = 1, ProductP4 = -1))", "0"),
    "sleep_one_row": ("sleepstudy", "Days + Days:phaselate",
                      "list(c(Days = 1, `Days:phaselate` = 1))", "0"),
    "sleep_joint": ("sleepstudy", "phaselate; Days:phaselate",
                    "list(c(phaselate = 1), c(`Days:phaselate` = 1))", "0"),
}

_R = R_HEX_PREAMBLE + R_DATA_SETS + r"""
data$ham_gap <- subset(data$ham, !(Product == "P4" & Information == "I2"))  # lme4 drops a column
for (name in c("ham", "ham_gap", "sleepstudy")) write_hex(data[[name]], file.path(out, paste0(name, ".csv")))
formulas <- list(ham = "Informed.liking ~ Product * Information + (1|Consumer)",
                 ham_gap = "Informed.liking ~ Product * Information + (1|Consumer)",
                 sleepstudy = "Reaction ~ Days * phase + (Days|Subject)")
fits <- lapply(names(formulas), function(name) {
  d <- data[[name]]
  for (col in names(d)) if (is.character(d[[col]])) d[[col]] <- factor(d[[col]], levels = unique(d[[col]]))
  suppressMessages(lmerTest::lmer(as.formula(formulas[[name]]), d, REML = TRUE, control = lmerControl(
    optimizer = "bobyqa", optCtrl = list(rhoend = 1e-9, maxfun = 1e5))))
})
names(fits) <- names(formulas)
contrast_matrix <- function(fit, rows) {
  L <- matrix(0, length(rows), length(fixef(fit)), dimnames = list(NULL, names(fixef(fit))))
  for (i in seq_along(rows)) L[i, names(rows[[i]])] <- rows[[i]]
  L
}
cases <- CASES
res <- NULL
for (case in names(cases)) {
  fit <- fits[[cases[[case]]$data]]
  L <- contrast_matrix(fit, cases[[case]]$rows)
  rhs <- cases[[case]]$rhs
  for (ddf in c("Satterthwaite", "Kenward-Roger")) {
    tab <- suppressWarnings(contest(fit, L, rhs = rhs, joint = TRUE, ddf = ddf))
    t <- if (nrow(L) == 1L) contest(fit, L, rhs = rhs, joint = FALSE, ddf = ddf)[["t value"]] else NA
    res <- rbind(res, data.frame(case = case, ddf = ddf, F = hex(tab[["F value"]]), df1 = hex(tab$NumDF),
                                 df2 = hex(tab$DenDF), p = hex(tab[["Pr(>F)"]]), t = hex(t)))
  }
  # Wald F with n - p (MATLAB's residual DF) or no denominator DF, from lme4's beta and vcov.
  d <- drop(L %*% fixef(fit)) - rhs
  VL <- L %*% as.matrix(vcov(fit)) %*% t(L)
  q <- qr(L)$rank
  Fw <- drop(t(d) %*% MASS::ginv(VL) %*% d) / q
  tw <- if (nrow(L) == 1L) d / sqrt(drop(VL)) else NA
  n_p <- nrow(model.matrix(fit)) - ncol(model.matrix(fit))
  res <- rbind(res, data.frame(case = case, ddf = c("residual", "none"), F = hex(Fw), df1 = hex(q),
                               df2 = hex(c(n_p, Inf)), p = hex(c(pf(Fw, q, n_p, lower.tail = FALSE),
                                                                 pchisq(Fw * q, q, lower.tail = FALSE))),
                               t = hex(tw)))
}
utils::write.csv(res, file.path(out, "contest.csv"), row.names = FALSE)
"""


def _read_hex(path):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in frame.columns:
        if frame[col].str.match(r"^-?0x|^NA$|^-?Inf$").all():
            frame[col] = [np.nan if v == "NA" else float(v) if "Inf" in v else float.fromhex(v) for v in frame[col]]
    return frame


@pytest.fixture(scope="module")
def lmertest(tmp_path_factory):
    out = tmp_path_factory.mktemp("contest")
    cases = ",\n".join(f"  {name} = list(data = {d!r}, rows = {rows}, rhs = {rhs})"
                       for name, (d, _, rows, rhs) in CASES.items())
    proc = run_rscript(_R.replace("cases <- CASES", f"cases <- list(\n{cases})"), out)
    assert proc.returncode == 0, proc.stderr
    data = {}
    for name in ("ham", "ham_gap", "sleepstudy"):
        frame = _read_hex(out / f"{name}.csv")
        response = "Reaction" if name == "sleepstudy" else "Informed.liking"
        data[name] = cl.from_dataframe(frame.drop(columns=[response]).assign(y=frame[response]), "y")
    return data, _read_hex(out / "contest.csv").set_index(["case", "ddf"])


def _fit(data, name, engine, ddf):
    formula = (SLEEP if name == "sleepstudy" else HAM).replace("Informed.liking", "y").replace("Reaction", "y")
    mine = {case: expr for case, (d, expr, _, _) in CASES.items() if d == name}
    if name == "ham_gap":  # weights a column lme4 drops: not estimable, NaN (as a term lme4 drops)
        mine["gap_dropped"] = "ProductP4:InformationI2 + ProductP2"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = cl.fit_timeseries(data[name], formula, ddf=ddf, engine=engine, cross_check=0, contrasts=mine)
    return fit, mine, [str(w.message) for w in caught]


def _assert_row(fit, case, expected):
    i = fit.terms.index(case)
    got = np.array([fit.F[i, 0], fit.df1[i, 0], fit.df2[i, 0], fit.p[i, 0]])
    want = expected[["F", "df1", "df2", "p"]].to_numpy(dtype=float)
    np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=case)
    if np.isfinite(expected["t"]):
        np.testing.assert_allclose(fit.t[i, 0], expected["t"], rtol=RTOL, err_msg=case)


@needs_r
@pytest.mark.parametrize("name", ["ham", "ham_gap", "sleepstudy"])
@pytest.mark.parametrize("engine", ["native", "r"])
def test_satterthwaite_contrasts_match_lmertest_contest(lmertest, name, engine):
    data, expected = lmertest
    fit, mine, _ = _fit(data, name, engine, "satterthwaite")
    assert fit.options["engine"] == engine and bool(fit.diagnostics["converged"].all())
    for case in mine:
        if case == "gap_dropped":
            assert np.isnan(fit.F[fit.terms.index(case), 0])
            continue
        _assert_row(fit, case, expected.loc[(case, "Satterthwaite")])
    assert fit.df1[fit.terms.index("ham_dependent_rows"), 0] == 2 if name == "ham" else True


@needs_r
@pytest.mark.parametrize("ddf", ["residual", "none"])
def test_wald_contrasts_match_r(lmertest, ddf):
    data, expected = lmertest
    for name in ("ham", "ham_gap", "sleepstudy"):
        fit, mine, _ = _fit(data, name, "native", ddf)
        for case in mine:
            if case != "gap_dropped":
                _assert_row(fit, case, expected.loc[(case, ddf)])


@needs_r
@pytest.mark.parametrize("name", ["ham", "ham_gap", "sleepstudy"])
def test_kenward_roger_contrasts_use_r_through_auto_and_match_contest(lmertest, name):
    data, expected = lmertest
    fit, mine, messages = _fit(data, name, "auto", "kenward-roger")
    assert fit.options["engine"] == "r"
    assert any("R engine" in m and "kenward-roger" in m for m in messages), messages
    for case in mine:
        if case != "gap_dropped":
            _assert_row(fit, case, expected.loc[(case, "Kenward-Roger")])


@needs_r
def test_fit_contrast_method_matches_contest(lmertest):
    data, expected = lmertest
    fit = cl.fit_timeseries(data["ham"], HAM.replace("Informed.liking", "y"), engine="native", cross_check=0)
    got = fit.contrast({"ProductP2": 0.5, "ProductP3:InformationI2": -1}, rhs=0.25, name="c")
    want = expected.loc[("ham_rhs", "Satterthwaite")]
    np.testing.assert_allclose([got.F[0], got.df1[0], got.df2[0], got.p[0], got.t[0]],
                               want[["F", "df1", "df2", "p", "t"]].to_numpy(dtype=float), rtol=RTOL)
    i = fit.coef_names.index
    np.testing.assert_allclose(got.estimate[0], 0.5 * fit.estimates[i("ProductP2"), 0]
                               - fit.estimates[i("ProductP3:InformationI2"), 0], rtol=1e-9)
    # A matrix over the coefficients, with Kenward-Roger (R) asked for on a native fit.
    L = np.zeros((3, len(fit.coef_names)))
    L[0, i("ProductP2")] = L[1, i("ProductP3")] = L[2, i("ProductP4")] = 1
    L[1, i("ProductP3:InformationI2")] = 1
    with pytest.warns(UserWarning, match="refits with the r engine.*kenward-roger"):
        kr = fit.contrast(L, ddf="kenward-roger")
    assert kr.engine == "r" and kr.estimate is None
    want = expected.loc[("ham_joint", "Kenward-Roger")]
    np.testing.assert_allclose([kr.F[0], kr.df1[0], kr.df2[0], kr.p[0]],
                               want[["F", "df1", "df2", "p"]].to_numpy(dtype=float), rtol=RTOL)
    assert list(got.to_frame().columns) == ["sample", "estimate", "t", "FStat", "DF1", "DF2", "pValue"]


FORMULA = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"


@pytest.fixture(scope="module")
def small():
    return cl.simulate_ieeg(kind="2way", n_subjects=6, n_channels=24, n_times=12, seed=3)


def test_contrast_null_is_the_recoded_terms_null(small):
    kw = dict(n_permutations=20, seed=5, statistic="t", engine="native", cross_check=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 20 permutations cannot reach alpha
        res = cl.permutation_cluster_lmer(small, FORMULA, terms=["hit_miss", "hit in phrc", "minus"],
                                          contrasts={"hit in phrc": "hit_miss1 + hit_miss1:regionphrc",
                                                     "minus": "-2*hit_miss1"}, **kw)
        recoded = cl.permutation_cluster_lmer(small, FORMULA, terms=["hit_miss"], levels={"region": ["phrc", "hc"]},
                                              **kw)
    scale = np.abs(recoded.null["hit_miss"]).max()
    np.testing.assert_allclose(res.null["hit in phrc"], recoded.null["hit_miss"], rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(res.stat["hit in phrc"], recoded.stat["hit_miss"], rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(res.null["minus"], -res.null["hit_miss"], rtol=0, atol=1e-10 * scale)
    assert "hit_miss1 + hit_miss1:regionphrc = 0" in res.summary()


def test_contrast_forms_give_the_same_matrix():
    names = ("(Intercept)", "a", "a.b", "x-y", "a:x-y")
    want = np.array([[0, 2, 0, -0.5, 0], [0, 0, 1, 0, 0.25]])
    forms = ["2*a - 0.5*`x-y`; a.b + a:x-y/4", " 2 * a-x-y*0.5 ;a.b+0.25*a:x-y",
             [{"a": 2, "x-y": -0.5}, {"a.b": 1, "a:x-y": 0.25}], want, pd.Series({"a": 2, "x-y": -0.5})]
    for form in forms:
        c = make_contrast("c", form, names)
        np.testing.assert_array_equal(c.L, want[:len(c.L)])
        assert not c.rhs.any()
    c = make_contrast("c", "a = 1.5; -a.b = -2e-1", names)
    np.testing.assert_array_equal(c.rhs, [1.5, -0.2])
    assert c.text == "a = 1.5; -a.b = -0.2"
    with pytest.raises(ValueError, match=r"'ab' is not a coefficient.*coefficients are \(Intercept\), a, a.b, x-y"):
        make_contrast("c", "ab + a", names)
    with pytest.raises(ValueError, match=r"expected '\+' or '-'"):
        make_contrast("c", "a a.b", names)
    with pytest.raises(ValueError, match="empty row"):
        make_contrast("c", "a;;a.b", names)
    with pytest.raises(ValueError, match="once"):
        make_contrast("c", "a = 1", names, rhs=2)


def test_bad_contrasts_are_refused_before_fitting(small):
    with pytest.raises(ValueError, match=r"'hit_mis' is not a coefficient.*hit_miss1.*regionphrc"):
        cl.fit_timeseries(small, FORMULA, engine="native", contrasts={"c": "hit_mis + regionphrc"})
    with pytest.raises(ValueError, match="also a term"):
        cl.fit_timeseries(small, FORMULA, engine="native", contrasts={"region": "regionphrc"})
    with pytest.raises(ValueError, match="one column per coefficient"):
        cl.fit_timeseries(small, FORMULA, engine="native", contrasts={"c": [1.0, 2.0]})
    with pytest.raises(ValueError, match="no nonzero weight"):
        cl.fit_timeseries(small, FORMULA, engine="native", contrasts={"c": "0*regionphrc"})
    with pytest.raises(ValueError, match="linearly dependent"):
        cl.fit_timeseries(small, FORMULA, engine="native", contrasts={"c": "regionphrc = 1; 2*regionphrc"})
    with pytest.raises(ValueError, match="right-hand side other than 0"):
        cl.permutation_cluster_lmer(small, FORMULA, n_permutations=40, engine="native",
                                    contrasts={"c": "regionphrc = 1"})
    with pytest.raises(ValueError, match="contrast 'c' uses only variables that are not permuted"):
        cl.permutation_cluster_lmer(small, FORMULA, n_permutations=40, engine="native", cross_check=0,
                                    progress=False, schemes={"region": "none"}, terms=["hit_miss", "c"],
                                    contrasts={"c": "regionphrc"})
    with pytest.raises(ValueError, match="needs one-coefficient terms"):
        cl.permutation_cluster_lmer(small, FORMULA, n_permutations=40, engine="native", cross_check=0,
                                    progress=False, statistic="t", terms=["c"],
                                    contrasts={"c": "regionphrc; hit_miss1"})
    with pytest.raises(ValueError, match="needs one-row contrasts, but 'c' has 2 rows"):  # rank 1: DF1 is 1
        cl.permutation_cluster_lmer(small, FORMULA, n_permutations=40, engine="native", cross_check=0,
                                    progress=False, statistic="t", terms=["c"],
                                    contrasts={"c": "regionphrc; 2*regionphrc"})


def test_cli_contrast_option(small, tmp_path, capsys):
    mat = write_small_mat(tmp_path / "small.mat", small)
    out = tmp_path / "fit.csv"
    code, stdout, err = run_cli(capsys, ["fit", mat, "--formula", FORMULA, "--engine", "native", "--cross-check", "0",
                                         "--contrast", "hit in phrc=hit_miss1 + hit_miss1:regionphrc",
                                         "--out", out])
    assert code == 0, err
    assert "hit_miss1 + hit_miss1:regionphrc = 0" in stdout
    table = pd.read_csv(out)
    fit = cl.fit_timeseries(small, FORMULA, engine="native", cross_check=0)
    direct = fit.contrast("hit_miss1 + hit_miss1:regionphrc")
    np.testing.assert_allclose(table.loc[table["Term"] == "hit in phrc", "FStat"], direct.F, rtol=1e-12)
    code, _, err = run_cli(capsys, ["fit", mat, "--formula", FORMULA, "--engine", "native", "--cross-check", "0",
                                    "--contrast", "c=hit_miss1 + region_phrc"])
    assert code == 1 and "'region_phrc' is not a coefficient" in err and "regionphrc" in err
    code, _, err = run_cli(capsys, ["fit", mat, "--formula", FORMULA, "--contrast", "no equals sign"])
    assert code == 2 and "NAME=EXPR" in err
