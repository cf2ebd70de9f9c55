"""Codings (helmert, poly, per variable), R's sorted level order and rows with missing design values.

Every number is checked against a standalone Rscript run of lme4/lmerTest
written the way an R user would write it: ``factor()`` (sorted levels),
``ordered()`` (contr.poly), ``contrasts(x) <- contr.helmert / contr.sum``,
and lmer's default ``na.action = na.omit``. Both sides read the same
hex-float CSV, so they fit identical doubles. F, DF2 and the estimates must
agree to a relative tolerance of 1e-6, with the native engine (through
``engine="auto"``) and with the R engine.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from clusterlmer.coding import contrast, sorted_levels
from conftest import R_DATA_SETS, R_HEX_PREAMBLE, read_r_hex_csv, run_cli, run_rscript

RTOL = 1e-6
needs_r = pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript is not on PATH")

# Fits every response column with lmerTest and writes, per column, the marginal F tests of each
# term's coefficients (contestMD on rows of the identity), the type III table and fixef().
R_FITS = r"""
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-9, maxfun = 1e5))
fits <- function(d, f, responses) {
  rows <- list()
  add <- function(...) rows[[length(rows) + 1L]] <<- data.frame(...)
  for (col in responses) {
    d$y <- d[[col]]
    m <- lmer(f, data = d, REML = TRUE, control = ctrl)
    X <- model.matrix(m)
    asgn <- attr(X, "assign")
    labels <- c("(Intercept)", attr(terms(lme4::nobars(f)), "term.labels"))
    for (i in seq_along(labels)) {
      r <- contestMD(m, diag(ncol(X))[asgn == i - 1L, , drop = FALSE])
      add(response = col, kind = "marginal", name = labels[i], a = hex(r[["F value"]]), b = hex(r[["DenDF"]]))
    }
    a3 <- anova(m, type = 3)
    add(response = col, kind = "type3", name = rownames(a3), a = hex(a3[["F value"]]), b = hex(a3[["DenDF"]]))
    add(response = col, kind = "fixef", name = names(fixef(m)), a = hex(fixef(m)), b = hex(nobs(m)))
  }
  do.call(rbind, rows)
}
"""


def _rscript(code, out, *args):
    proc = run_rscript(R_HEX_PREAMBLE + R_DATA_SETS + R_FITS + code, out, *args)
    assert proc.returncode == 0, proc.stderr


def _compare(fit, ref, responses, test):
    """F and DF2 of ``fit`` (test marginal or type3) and its estimates against R's rows."""
    for j, col in enumerate(responses):
        r = ref[ref["response"] == col]
        tab = r[r["kind"] == test]
        assert list(fit.terms) == list(tab["name"])
        np.testing.assert_allclose(fit.F[:, j], tab["a"].to_numpy(float), rtol=RTOL)
        np.testing.assert_allclose(fit.df2[:, j], tab["b"].to_numpy(float), rtol=RTOL)
        fixef = r[r["kind"] == "fixef"]
        np.testing.assert_allclose(fit.estimates[:, j], fixef["a"].to_numpy(float), rtol=RTOL)
        assert int(fit.diagnostics["n_obs"].iloc[j]) == int(fixef["b"].iloc[0])


def test_contrast_matrices_are_rs():
    # R: contr.helmert(3), contr.poly(3) (values printed by R, exact to the digits shown)
    C, names = contrast(["a", "b", "c"], "helmert")
    np.testing.assert_array_equal(C, [[-1, -1], [1, -1], [0, 2]])
    assert names == ["1", "2"]
    C, names = contrast(["a", "b", "c"], "poly")
    np.testing.assert_allclose(C, [[-0.7071068, 0.4082483], [0, -0.8164966], [0.7071068, 0.4082483]], atol=1e-7)
    assert names == [".L", ".Q"]
    assert contrast(list("abcdef"), "poly")[1] == [".L", ".Q", ".C", "^4", "^5"]


def test_numbers_sort_by_value_and_text_as_r():
    assert sorted_levels("x", [10, 9, 1.5], ["10", "9", "1.5"]) == ["1.5", "9", "10"]
    assert sorted_levels("x", ["10", "9"], ["10", "9"]) == ["10", "9"]  # text: as R's sort(c("10", "9"))
    assert sorted_levels("x", ["b", "A", "a"], ["b", "A", "a"]) == ["a", "A", "b"]


@needs_r
@pytest.mark.parametrize("recipe", ["helmert", "effects"])
def test_helmert_poly_sum_and_sorted_levels_match_lmertest(tmp_path, recipe):
    """lme4's cake: recipe (contr.helmert or contr.sum) x temperature as an ordered factor (contr.poly)."""
    _rscript(r"""
d <- data$cake
d <- d[order(d$recipe, decreasing = TRUE), ]  # recipe C first: first appearance is not the sorted order
d$y0 <- d$angle
d$y1 <- d$angle + ((seq_len(nrow(d)) * 7) %% 13) / 8
write_hex(d[c("replicate", "recipe", "temp", "y0", "y1")], file.path(out, "input.csv"))
d$recipe <- factor(d$recipe)
d$temp <- ordered(d$temp)
contrasts(d$recipe) <- if (args[2] == "helmert") contr.helmert(3) else contr.sum(3)
res <- fits(d, y ~ recipe * temp + (1 | replicate) + (1 | replicate:recipe), c("y0", "y1"))
utils::write.csv(res, file.path(out, "ref.csv"), row.names = FALSE)
ctr <- lapply(2:7, function(k) data.frame(k = k, helmert = hex(contr.helmert(k)), poly = hex(contr.poly(k))))
utils::write.csv(do.call(rbind, ctr), file.path(out, "contrasts.csv"), row.names = FALSE)
""", tmp_path, recipe)
    frame = read_r_hex_csv(tmp_path / "input.csv")
    ref = read_r_hex_csv(tmp_path / "ref.csv")
    for k, rows in read_r_hex_csv(tmp_path / "contrasts.csv").groupby("k"):
        for coding in ("helmert", "poly"):
            np.testing.assert_allclose(contrast(list(range(int(k))), coding)[0].ravel(order="F"), rows[coding],
                                       rtol=1e-12, atol=1e-14)
    assert list(dict.fromkeys(frame["recipe"])) == ["C", "B", "A"]
    data = cl.from_dataframe(frame, values=["y0", "y1"])
    coding = {"recipe": "helmert", "temp": "poly"} if recipe == "helmert" else {"*": "effects", "temp": "poly"}
    formula = "y ~ recipe * temp + (1|replicate) + (1|replicate:recipe)"
    for test in ("marginal", "type3"):
        for engine in ("auto", "r"):
            fit = cl.fit_timeseries(data, formula, coding=coding, level_order="sorted", test=test, engine=engine,
                                    cross_check=0)
            assert fit.options["engine"] == ("native" if engine == "auto" else "r")
            assert fit.levels["recipe"] == ["A", "B", "C"]
            assert fit.levels["temp"] == ["175", "185", "195", "205", "215", "225"]
            if recipe == "helmert":  # R's own coefficient names
                assert list(fit.coef_names) == list(ref[(ref["kind"] == "fixef") & (ref["response"] == "y0")]["name"])
            _compare(fit, ref, ["y0", "y1"], test)
    summary = fit.summary()
    assert "temp: poly" in summary and ("recipe: helmert" in summary or "recipe: effects" in summary)


@needs_r
def test_rows_with_missing_design_values_are_left_out_as_lme4_does(tmp_path):
    """sleepstudy with NA in a factor, a numeric variable and the grouping; levels sorted as R sorts them."""
    _rscript(r"""
invisible(Sys.setlocale("LC_COLLATE", "C.UTF-8"))
d <- data$sleepstudy
d$phase <- c("b", "A", "a")[1 + (d$Days >= 3) + (d$Days >= 6)]
d$y0 <- round(d$Reaction * 65536) / 65536
d$y1 <- round((d$Reaction + 3 * sin(seq_len(nrow(d)))) * 65536) / 65536
d$phase[c(5, 40)] <- NA
d$Days[c(77, 120, 121)] <- NA
d$Subject[c(150, 5)] <- NA
write_hex(d[c("Subject", "Days", "phase", "y0", "y1")], file.path(out, "input.csv"))
d$phase <- factor(d$phase)
cat(levels(d$phase), sep = "\n", file = file.path(out, "levels.txt"))
cat(capabilities("ICU"), sep = "\n", file = file.path(out, "icu.txt"))
res <- fits(d, y ~ phase + Days + (Days | Subject), c("y0", "y1"))
utils::write.csv(res, file.path(out, "ref.csv"), row.names = FALSE)
""", tmp_path)
    frame = read_r_hex_csv(tmp_path / "input.csv")
    ref = read_r_hex_csv(tmp_path / "ref.csv")
    r_levels = (tmp_path / "levels.txt").read_text().split()
    if (tmp_path / "icu.txt").read_text().strip() == "TRUE":
        assert r_levels == ["a", "A", "b"]
    data = cl.from_dataframe(frame, values=["y0", "y1"])
    design_before, values_before = data.design.copy(), data.values.copy()
    formula = "y ~ phase + Days + (Days|Subject)"
    for engine in ("auto", "r"):
        with pytest.warns(UserWarning, match=r"6 of 180 rows have missing values in model variables \(missing per "
                                             r"variable: 'phase' 2, 'Days' 3, 'Subject' 2; rows 4, 39, 76, 119, 120, "
                                             r"149\) and are left out") as rec:
            fit = cl.fit_timeseries(data, formula, level_order="sorted", engine=engine, cross_check=0)
        assert "na_action='fail'" in str(rec[0].message)
        assert fit.levels["phase"] == r_levels
        _compare(fit, ref, ["y0", "y1"], "marginal")
    assert fit.options["rows_omitted"] == 6
    assert fit.options["rows_omitted_by_variable"] == {"phase": 2, "Days": 3, "Subject": 2}
    assert "Missing:     6 row(s) with missing values in model variables left out" in fit.summary()
    pd.testing.assert_frame_equal(data.design, design_before)  # the user's data are untouched
    np.testing.assert_array_equal(data.values, values_before)
    with pytest.raises(ValueError, match=r"6 of 180 rows have missing values in model variables \(column 'phase': "
                                         r"2 row\(s\) \(4, 39\); column 'Days': 3 row\(s\) \(76, 119, 120\); "
                                         r"column 'Subject': 2 row\(s\) \(4, 149\)\)"):
        cl.fit_timeseries(data, formula, na_action="fail", cross_check=0)


def _with_missing(data):
    design = data.design.copy()
    design.loc[[3, 10], "hit_miss"] = np.nan
    design.loc[[10, 25, 26], "region"] = None
    return cl.TimeseriesData(design=design, values=data.values, times=data.times), [3, 10, 25, 26]


def test_permutations_see_the_complete_rows_only(small):
    """Same seed: the analysis with NA rows equals the analysis of the rows kept, permutation by permutation."""
    data, dropped = _with_missing(small)
    keep = np.setdiff1d(np.arange(data.n_obs), dropped)
    complete = cl.TimeseriesData(design=data.design.iloc[keep].reset_index(drop=True), values=data.values[keep],
                                 times=data.times)
    kwargs = dict(n_permutations=20, seed=2, engine="native", cross_check=0, progress=False,
                  coding={"*": "effects", "region": "helmert"}, level_order="sorted")
    formula = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"
    with pytest.warns(UserWarning, match="4 of 48 rows have missing values"):
        a = cl.permutation_cluster_lmer(data, formula, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = cl.permutation_cluster_lmer(complete, formula, **kwargs)
    assert not [w for w in caught if "missing values" in str(w.message)]
    for term in a.terms:
        np.testing.assert_array_equal(a.null[term], b.null[term])
        np.testing.assert_array_equal(a.stat[term], b.stat[term])
    assert a.fit.options["rows_omitted"] == 4 and b.fit.options["rows_omitted"] == 0
    assert "Missing:       4 row(s) with missing values in model variables left out ('hit_miss' 2, 'region' 3" \
        in a.summary() and "Missing:" not in b.summary()
    with pytest.raises(ValueError, match="column 'hit_miss': 2 row"):
        cl.permutation_cluster_lmer(data, formula, na_action="fail", **kwargs)


def test_coding_and_level_order_errors_name_the_fix(small):
    formula = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"
    with pytest.raises(ValueError, match="Allowed values are 'reference', 'effects', 'helmert', 'poly'"):
        cl.fit_timeseries(small, formula, coding="sum")
    with pytest.raises(ValueError, match=r"\('region'\).*got 'polynomial'"):
        cl.fit_timeseries(small, formula, coding={"region": "polynomial"})
    with pytest.raises(ValueError, match="coding names 'sid'"):
        cl.fit_timeseries(small, formula, coding={"sid": "effects"})
    with pytest.raises(ValueError, match="level_order"):
        cl.fit_timeseries(small, formula, level_order="alphabetical")
    with pytest.raises(ValueError, match="na_action"):
        cl.fit_timeseries(small, formula, na_action="drop")


def test_cli_codings_level_order_and_missing_rows(capsys, small, tmp_path):
    data, _ = _with_missing(small)
    rows = []
    for i, t in enumerate(data.times[:2]):
        part = data.design.copy()
        part["Time"], part["amp"] = t, data.values[:, i]
        rows.append(part)
    table = tmp_path / "long.csv"
    pd.concat(rows).to_csv(table, index=False)
    argv = ["fit", table, "--long", "--time", "Time", "--value", "amp", "--formula",
            "amp ~ hit_miss * region + (1|sid) + (1|sid:ch)", "--engine", "native", "--cross-check", "0",
            "--coding", "effects", "--coding", "region=helmert", "--level-order", "sorted"]
    code, out, err = run_cli(capsys, argv)
    assert code == 0, err
    assert "Coding:      hit_miss: effects ['0', '1']; region: helmert ['hc', 'phrc']" in out
    assert "Missing:     4 row(s) with missing values in model variables left out" in out
    code, out, err = run_cli(capsys, argv + ["--na-action", "fail"])
    assert code == 1 and "4 of 48 rows have missing values" in err and "--na-action omit" in err
    code, out, err = run_cli(capsys, argv + ["--coding", "region=poly"])
    assert code == 1 and "--coding gives 'region' two codings" in err
