"""Transformations in formulas (``I()``, ``log``, ``scale``, ``poly``, ...) against R's own evaluation.

The reference is one standalone ``Rscript`` run of lme4/lmerTest on data sets
lme4 and lmerTest ship, with each formula written as R reads it (R evaluates
``log(Days + 1)`` or ``poly(Days, 2)`` itself there). clusterlmer computes the
same columns in Python and hands them to its engines as plain columns; the
model matrices, the coefficient and term names, and the F, DF1, DF2 and
estimates of both engines must agree with R's (1e-6 relative).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from clusterlmer import FormulaError, parse_formula
from clusterlmer.design import DesignError, build_design
from clusterlmer.spec import build_spec
from clusterlmer.transforms import parse_transform, r_design
from conftest import R_DATA_SETS, R_HEX_PREAMBLE, run_cli, run_rscript

RTOL = 1e-6
needs_r = pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript is not on PATH")
# sleep_log2_phase: phase's main effect is its effect at log2(Days + 2) = 0, which design.py says once per build.
pytestmark = pytest.mark.filterwarnings("ignore:'log2\\(Days \\+ 2\\)' is numeric:UserWarning")

# case: (data set, formula as R reads it, response)
CASES = {
    "sleep_log": ("sleepstudy", "Reaction ~ log(Days + 1) + (1 | Subject)", "Reaction"),
    "sleep_poly_slope": ("sleepstudy", "Reaction ~ poly(Days, 2) + (Days | Subject)", "Reaction"),
    "sleep_poly_phase": ("sleepstudy", "Reaction ~ poly(Days, 3) * phase + (1 | Subject)", "Reaction"),
    "sleep_I_sqrt_slope": ("sleepstudy", "Reaction ~ Days + I(Days^2) + (1 + sqrt(Days) | Subject)", "Reaction"),
    "sleep_log10_abs": ("sleepstudy", "Reaction ~ log10(Days + 1) + abs(Days - 4.5) + (1 | Subject)", "Reaction"),
    "sleep_log2_phase": ("sleepstudy", "Reaction ~ log2(Days + 2) * phase + (1 | Subject)", "Reaction"),
    # Responses missing in 5 rows: scale() and poly() are computed over every row, then those rows are left out.
    "sleep_na_scale_poly": ("sleep_na", "Reaction ~ poly(Days, 2) + I(scale(Days)^3) + (1 | Subject)",
                            "Reaction"),
    "carrots_scale": ("carrots", "Preference ~ scale(sens2) * Homesize + (1 | Consumer)", "Preference"),
    "carrots_exp": ("carrots", "Preference ~ exp(sens2/10) + Homesize + (1 | Consumer) + (1 | Product)",
                    "Preference"),
}

_R = R_HEX_PREAMBLE + R_DATA_SETS + r"""
data$carrots <- data$carrots[!is.na(data$carrots$Preference), ]
data$sleep_na <- data$sleepstudy
data$sleep_na$Reaction[c(3, 17, 40, 41, 100)] <- NA
rows <- list()
put <- function(what, name, value) rows[[length(rows) + 1L]] <<- data.frame(case = case, what = what,
                                                                           name = name, value = hex(value))
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-9, maxfun = 1e5))
cases <- matrix(args[-1], nrow = 3)
for (j in seq_len(ncol(cases))) {
  case <- cases[1, j]; d <- data[[cases[2, j]]]; f <- stats::as.formula(cases[3, j])
  for (nm in names(d)) if (is.character(d[[nm]]) && !grepl("Subject|Consumer|Product", nm)) d[[nm]] <- factor(d[[nm]], levels = unique(d[[nm]]))
  m <- lmerTest::lmer(f, data = d, REML = TRUE, control = ctrl)
  X <- model.matrix(m)
  for (k in seq_len(ncol(X))) put("X", colnames(X)[k], X[, k])
  put("beta", names(lme4::fixef(m)), lme4::fixef(m))
  marg <- anova(m, type = "marginal")
  L0 <- matrix(as.numeric(colnames(X) == "(Intercept)"), nrow = 1)
  marg <- rbind("(Intercept)" = contestMD(m, L0)[, colnames(marg)], marg)
  t3 <- anova(m, type = "III")
  for (tab in list(list("marginal", marg), list("type3", t3)))
    for (s in c("F value", "NumDF", "DenDF"))
      put(paste(tab[[1]], s), rownames(tab[[2]]), tab[[2]][[s]])
}
for (name in names(data)) write_hex(data[[name]], file.path(out, paste0(name, ".csv")))
utils::write.csv(do.call(rbind, rows), file.path(out, "reference.csv"), row.names = FALSE)
"""


def _read_hex(path):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in frame.columns:
        if frame[col].str.match(r"^(-?0x|NA$)").all():
            frame[col] = [np.nan if v == "NA" else float.fromhex(v) for v in frame[col]]
    return frame


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The Rscript run: data sets (as R holds them) and, per case, R's model matrix, estimates and tests."""
    root = tmp_path_factory.mktemp("transforms")
    args = [x for cid, (data, formula, _) in CASES.items() for x in (cid, data, formula)]
    proc = run_rscript(_R, str(root), *args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(root / "reference.csv", dtype=str, keep_default_na=False)
    table["value"] = [float.fromhex(v) for v in table["value"]]
    data = {name: _read_hex(root / f"{name}.csv") for name in ("sleepstudy", "sleep_na", "carrots")}
    return data, {case: rows for case, rows in table.groupby("case")}


def _series(rows, what):
    part = rows[rows["what"] == what]
    return part.groupby("name", sort=False)["value"].apply(np.array)


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-300)


# ---------------------------------------------------------------------------
# Reading: labels as R prints them, refusals
# ---------------------------------------------------------------------------

LABELS = ["I(x^2)", "I(x**2)", "log(x+1)", "I((x-1)^2)", "poly(x,2)", "scale( x )", "I(-x^2*3/z)", "sqrt(abs(x))",
          "I(x*1e-3)", "I(x/100000)", "I(x/10000)", "I(x^-1)", "I(.5*x)", "I(x*(1/3))", "I(x*1e15)",
          "I(x*0.00012)", "I(-(x))", "I(x - -1)", "exp(x/10)", "log2(2 + x^2)", "log10(abs(x) + 1)", "I(2^x^2)"]


@needs_r
def test_labels_are_r_deparse():
    code = "for (s in commandArgs(TRUE)) cat(deparse(str2lang(s)), '\\n', sep = '')"
    proc = run_rscript(code, *LABELS)
    assert proc.returncode == 0, proc.stderr
    assert [parse_transform(s).label for s in LABELS] == proc.stdout.splitlines()


def test_formula_reads_transformations_as_variables():
    f = parse_formula("y ~ x + I(x^2) + poly(z,2)*cond + log(x+1):cond + (1 + log(x)|g)")
    assert f.text == "y ~ x + I(x^2) + poly(z, 2) * cond + log(x + 1):cond + (1 + log(x) | g)"
    assert f.fixed_variables == ("x", "z", "cond") and f.slope_variables == ("x",)
    assert f.fixed_terms.labels == ("x", "I(x^2)", "poly(z, 2)", "cond", "poly(z, 2):cond", "cond:log(x + 1)")
    assert f.sources("poly(z, 2)") == ("z",) and f.sources("cond") == ("cond",)
    assert f.r_text({"I(x^2)": "A", "poly(z, 2)": "B", "log(x + 1)": "C", "log(x)": "D"}) == \
        "y ~ x + A + B * cond + C:cond + (1 + D | g)"


@pytest.mark.parametrize("formula, message", [
    ("y ~ foo(x) + (1|g)", r"function calls such as 'foo\(\.\.\.\)' are not allowed; compute the transformed"),
    ("y ~ log(system(x)) + (1|g)", r"'system\(\.\.\.\)' are not allowed \(the transformations clusterlmer"),
    ("y ~ log(x, 2) + (1|g)", r"log\(\) takes one argument here"),
    ("y ~ scale(x, center = FALSE) + (1|g)", r"unexpected text '= FALSE\)"),
    ("y ~ log(x; q()) + (1|g)", r"unexpected text '; q\(\)\)"),
    ('y ~ I("x") + (1|g)', r"unexpected text '\"x\"\)"),
    ("y ~ I(`x`) + (1|g)", r"unexpected text '`x`\)"),
    ("y ~ I(x$a) + (1|g)", r"unexpected text '\$a\)"),
    ("y ~ I(x == 1) + (1|g)", r"unexpected text '== 1\)"),
    ("y ~ log(x + (1|g)", r"unexpected text '\|g\)"),
    ("y ~ poly(x, 2.5) + (1|g)", r"poly\(\) takes a variable and a whole number"),
    ("y ~ poly(x, 2, raw = TRUE) + (1|g)", r"unexpected text '= TRUE\)"),
    ("y ~ I(poly(x, 2)^2) + (1|g)", r"poly\(\) must be a whole term"),
    ("y ~ I(2) + (1|g)", r"I\(2\) uses no column"),
    ("y ~ I(TRUE) + (1|g)", r"'TRUE' is an R keyword"),
    ("y ~ I(" + "(" * 5000 + "x" + ")" * 5000 + ") + (1|g)", r"nested too deeply"),
    ("y ~ x + (1 + poly(x, 2)|g)", r"poly\(x, 2\) has several columns and cannot be a random slope"),
    ("y ~ x + (1|log(g))", r"a grouping factor must be a column name, found 'log\(g\)'"),
    ("log(y) ~ x + (1|g)", r"the left-hand side must be a single name"),
])
def test_refused(formula, message):
    with pytest.raises(FormulaError, match=message):
        parse_formula(formula)


def _frame(n_subjects=8, per=6, seed=0):
    rng = np.random.default_rng(seed)
    n = n_subjects * per
    return pd.DataFrame({"sid": np.repeat([f"S{i}" for i in range(n_subjects)], per),
                         "x": rng.uniform(0.5, 4, n), "z": rng.normal(size=n),
                         "cond": np.tile(["a", "b"], n // 2), "y": rng.normal(size=n)})


@pytest.mark.parametrize("change, formula, message", [
    ({"x": -1.0}, "y ~ log(x) + (1|sid)", r"log\(x\) is not finite in 1 of 48 rows \(rows 3, where x = -1\)"),
    ({"x": 0.0}, "y ~ I(1/x) + (1|sid)", r"I\(1/x\) is not finite in 1 of 48 rows"),
    ({"x": np.nan}, "y ~ sqrt(x) + (1|sid)", r"column 'x' \(used in sqrt\(x\)\) has 1 missing"),
    ({}, "y ~ log(cond) + (1|sid)", r"log\(cond\) needs numbers, but column 'cond' holds labels"),
    ({}, "y ~ log(w) + (1|sid)", r"the formula uses w, which is not a design column"),
    ({}, "y ~ poly(cond2, 2) + (1|sid)", r"poly\(cond2, 2\): the degree must be less than the number of distinct"),
    ({}, "y ~ I(x - x) + (1|sid)", r"I\(x - x\) has the same value \(0\) in every row"),
])
def test_bad_values_are_refused_naming_rows(change, formula, message):
    frame = _frame()
    frame["cond2"] = (frame["cond"] == "a").astype(float)
    for col, value in change.items():
        frame.loc[3, col] = value
    with pytest.raises(DesignError, match=message):
        build_design(frame, parse_formula(formula), response_column="y")


def test_levels_naming_a_transformed_source_is_refused():
    with pytest.raises(DesignError, match=r"levels names 'x', which log\(x\) uses as numbers"):
        build_design(_frame(), parse_formula("y ~ log(x) + (1|sid)"), levels={"x": [1, 2]}, response_column="y")


def test_transformed_two_valued_column_stays_numeric():
    frame = _frame()
    frame["d"] = np.where(frame["cond"] == "a", 1.0, 2.0)
    with pytest.warns(UserWarning, match=r"the main effect of 'z' is the effect at I\(d \* 2\) = 0, outside"):
        design = build_design(frame, parse_formula("y ~ I(d * 2) * z + (1|sid)"), response_column="y")
    assert "I(d * 2)" in design.numeric and not design.factors


def test_r_is_handed_generated_names_only():
    frame = _frame()
    frame["cl_tr1_"] = np.arange(len(frame), dtype=float)  # a column with the name the engine would generate first
    design = build_design(frame, parse_formula("y ~ poly(x, 2) * cond + log(x):z + cl_tr1_ + (1 + I(z^2)|sid)"),
                          response_column="y")
    table, text, matrices, back = r_design(design)
    assert "(" not in text.replace("(1 + ", "").replace("| sid)", "")  # no call reaches R
    assert not any("(" in c for c in table.columns)
    assert set(matrices) == {"cl_tr_1_"} and matrices["cl_tr_1_"] == ["cl_tr_1_1", "cl_tr_1_2"]
    assert back(("cl_tr_1_2:condb", "cl_tr_1_", "z:cl_tr_2_", "cl_tr1_")) == \
        ("poly(x, 2)2:condb", "poly(x, 2)", "z:log(x)", "cl_tr1_")


# ---------------------------------------------------------------------------
# Permutations move a transformation with its source
# ---------------------------------------------------------------------------

def test_permuting_a_source_recomputes_its_transformations():
    frame = _frame()
    formula = parse_formula("y ~ x + log(x) + poly(x, 2) + scale(z) + I(x * z) + (1 + sqrt(x)|sid)")
    spec = build_spec(build_design(frame, formula, response_column="y"))
    rng = np.random.default_rng(5)
    maps = {"x": rng.permutation(len(frame)), "z": rng.permutation(len(frame))}
    permuted = spec.permuted(maps)
    moved = frame.copy()
    for v, m in maps.items():
        moved[v] = frame[v].to_numpy()[m]
    expected = build_spec(build_design(moved, formula, response_column="y"))
    np.testing.assert_allclose(permuted.X, expected.X, rtol=1e-12, atol=1e-12)
    for v in expected.values:
        np.testing.assert_allclose(permuted.values[v], expected.values[v], rtol=1e-12, atol=1e-12)
    assert {"log(x)", "poly(x, 2)", "scale(z)", "I(x * z)", "sqrt(x)"} <= set(permuted.moved)
    # scale() and poly() of a permuted column are its rows moved (their statistics do not depend on the order)
    np.testing.assert_allclose(permuted.values["poly(x, 2)"], spec.values["poly(x, 2)"][maps["x"]], atol=1e-12)
    pd.testing.assert_frame_equal(permuted.design.frame, expected.design.frame, rtol=1e-12, atol=1e-12)


def test_permutations_apply_to_a_coded_design_recomputes_its_transformations():
    frame = _frame()
    formula = parse_formula("y ~ poly(x, 2) * cond + log(x) + (1|sid)")
    perms = cl.make_permutations(frame, formula, 3, seed=2)
    coded = build_design(frame, formula, response_column="y")
    for k in range(3):
        expected = build_design(perms[k], formula, response_column="y")
        pd.testing.assert_frame_equal(perms.apply(k, coded).frame, expected.frame, rtol=1e-12, atol=1e-12)
    assert not np.allclose(perms.apply(1, coded).frame["log(x)"], coded.frame["log(x)"])


# ---------------------------------------------------------------------------
# Parity with R's own evaluation
# ---------------------------------------------------------------------------

def _spec(data, case):
    name, formula, response = CASES[case]
    return build_spec(build_design(data[name], parse_formula(formula), response_column=response))


@needs_r
@pytest.mark.parametrize("case", CASES)
def test_model_matrix_matches_r(reference, case):
    data, ref = reference
    name, _, response = CASES[case]
    spec = _spec(data, case).subset(np.isfinite(data[name][response].to_numpy(float)))  # R's na.omit
    X = _series(ref[case], "X")
    assert spec.fixed.coef_names == tuple(X.index)
    R = np.column_stack(X.to_list())
    np.testing.assert_allclose(spec.X, R, rtol=0, atol=1e-12 * np.abs(R).max())


@needs_r
@pytest.mark.parametrize("test", ["marginal", "type3"])
@pytest.mark.parametrize("engine", ["native", "r"])
@pytest.mark.parametrize("case", CASES)
def test_fit_matches_lmertest(reference, case, engine, test):
    data, ref = reference
    name, formula, response = CASES[case]
    frame = data[name]
    ts = cl.from_dataframe(frame, response)
    fit = cl.fit_timeseries(ts, formula, engine=engine, test=test, cross_check=0)
    rows = ref[case]
    problems = []
    worst = {}
    for stat, ours in (("F value", fit.F), ("NumDF", fit.df1), ("DenDF", fit.df2)):
        theirs = _series(rows, f"{test} {stat}")
        assert tuple(fit.terms) == tuple(theirs.index)
        d = _rel(ours[:, 0], np.concatenate(theirs.to_list()))
        worst[stat] = d.max()
        problems += [f"{stat} {t}: rel {x:.1e}" for t, x in zip(fit.terms, d) if not x <= RTOL]
    beta = _series(rows, "beta")
    assert tuple(fit.coef_names) == tuple(beta.index)
    d = _rel(fit.estimates[:, 0], np.concatenate(beta.to_list()))
    problems += [f"estimate {c}: rel {x:.1e}" for c, x in zip(fit.coef_names, d) if not x <= RTOL]
    print(f"[{engine}] {case} {test}: worst rel F {worst['F value']:.1e}, DF2 {worst['DenDF']:.1e}, "
          f"estimates {d.max():.1e}")
    assert not problems, problems


@needs_r
def test_auto_picks_native_and_the_analysis_permutes(reference):
    data, _ = reference
    ts = cl.from_dataframe(data["sleepstudy"], ["Reaction"])
    formula = "Reaction ~ poly(Days, 2) + (1|Subject)"
    fit = cl.fit_timeseries(ts, formula, cross_check=1)
    assert fit.options["engine"] == "native"
    res = cl.permutation_cluster_lmer(ts, formula, n_permutations=20, seed=3, progress=False, cross_check=0)
    assert res.terms == ("poly(Days, 2)",) and res.schemes == {"Days": "within-channel"}
    assert np.isfinite(res.null["poly(Days, 2)"]).all()
    # R refits every permuted design from the columns recomputed in Python: the same null.
    res_r = cl.permutation_cluster_lmer(ts, formula, n_permutations=20, seed=3, progress=False, engine="r")
    np.testing.assert_allclose(res_r.null["poly(Days, 2)"], res.null["poly(Days, 2)"], rtol=1e-6)
    assert len(np.unique(np.round(res.null["poly(Days, 2)"], 6))) > 10  # the permutations moved the term
    with pytest.raises(ValueError, match=r"pymer4 model is not available for a formula with transformations"):
        fit.model_at(0)


@needs_r
def test_cli_fit_with_a_transformation(reference, capsys, tmp_path):
    data, _ = reference
    frame = data["sleepstudy"].assign(Time=0.0)
    path = tmp_path / "sleep.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "fit.csv"
    code, stdout, err = run_cli(capsys, ["fit", path, "--long", "--time", "Time", "--value", "Reaction",
                                         "--formula", "Reaction ~ log(Days + 1) + (1|Subject)",
                                         "--engine", "r", "--out", out])
    assert code == 0, err
    table = pd.read_csv(out)
    assert "log(Days + 1)" in set(table["Term"])
    fit = cl.fit_timeseries(cl.from_dataframe(frame, "Reaction"), "Reaction ~ log(Days + 1) + (1|Subject)",
                            engine="r", cross_check=0)
    row = table[table["Term"] == "log(Days + 1)"].iloc[0]
    assert row["FStat"] == pytest.approx(fit.F[fit.terms.index("log(Days + 1)"), 0], rel=1e-9)
