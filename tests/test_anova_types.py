"""lmerTest's type I / II / III tables and coefficient tables, against a standalone Rscript and SAS.

Parity: every case is fitted by ``clusterlmer.fit_timeseries`` (the R engine,
and the native engine where it fits the options) and by
``r_scripts/lmer_reference.R`` in its own ``Rscript`` process (plain
``lmerTest::lmer``, ``anova(type = "I"/"II"/"III")`` and ``summary()``'s
coefficients); FStat, DF2 and p of every term and Estimate, SE, t, DF and p
of every coefficient agree to a relative 1e-6. Cases: lmerTest's ham (a
three-way factorial, and ``Product * Age`` with a numeric covariate), ham
with an empty cell (a rank-deficient X), carrots (``sens2 * Homesize`` with a
correlated random slope, and ``sens2 * Homesize * sens1``), the two-factor
example of SAS's GLM report lmerTest tests type II on, and lme4's cake with
one empty cell per recipe (marginal with effects coding against type III).

SAS: lmerTest's own tests (tests/test_compare_sas.R of lmerTestR) pin SAS
PROC MIXED numbers for models clusterlmer expresses: type II F of ``y ~ a*b +
(1|f)``, of carrots' ``sens2*Homesize + (1+sens2|Consumer)`` and ``sens2 *
Homesize * sens1 + (1|Product)`` (also type III), of ham's ``Product*Age +
(1|Consumer)``, and carrots' ``sens2*Frequency*Income + (1+sens2|Consumer)``
(SAS's last-level reference coding) type III p and DenDF and the p of all 28
coefficients. They are compared with R's ``all.equal`` rule (mean relative
difference) at lmerTest's tolerances.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings

import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from clusterlmer.design import build_design
from clusterlmer.engines import get_engine
from clusterlmer.engines.base import FitOptions
from clusterlmer.formula import parse_formula
from clusterlmer.spec import build_spec
from conftest import run_rscript
from test_parity_lmertest import REFERENCE_SCRIPT, assert_same_parse

pytest.importorskip("rpy2")
RSCRIPT = shutil.which("Rscript")
pytestmark = pytest.mark.skipif(RSCRIPT is None, reason="Rscript is not on PATH")
RTOL = 1e-6
# The native optimum is exact where bobyqa stops short of a flat optimum: F, DF, SE and t agree to
# 4e-7 (carrots' 12 products), and a small p moves many times more than its F or t (measured: up to
# 1.9e-5, carrots' sens2 * Homesize * sens1 coefficients; 3.8e-6 on ham).
P_RTOL_NATIVE = 5e-5

_EXPORT_R = r"""
suppressPackageStartupMessages(library(lmerTest))
out <- commandArgs(trailingOnly = TRUE)[1]
w <- function(d, name) utils::write.csv(d, file.path(out, paste0(name, ".csv")), row.names = FALSE)
ham <- data.frame(Consumer = paste0("C", ham$Consumer), Product = paste0("P", ham$Product),
                  Information = paste0("I", ham$Information), Gender = paste0("G", ham$Gender),
                  Age = as.numeric(ham$Age), y = as.numeric(ham$Informed.liking))
w(ham, "ham")
w(subset(ham, !(Product == "P4" & Information == "I2" & Gender == "G2")), "ham_gap")
car <- data.frame(Consumer = paste0("C", carrots$Consumer), Product = as.character(carrots$Product),
                  Homesize = paste0("H", carrots$Homesize), Frequency = paste0("F", carrots$Frequency),
                  Income = paste0("I", carrots$Income), sens1 = carrots$sens1, sens2 = carrots$sens2,
                  y = carrots$Preference)
car <- car[!is.na(car$y), ]
w(car, "carrots")
w(car[!is.na(carrots$Income[!is.na(carrots$Preference)]), ], "carrots_income")
w(data.frame(a = paste0("a", c(1,1,1,2,2,2,2,2,1,2)), b = paste0("b", c(1,1,2,1,2,2,2,2,2,1)),
             f = paste0("f", c(1,2,1,2,1,2,1,2,1,2)), y = c(12,14,11,20,17,23,35,46,15,16)), "glm_report")
cake <- data.frame(replicate = paste0("R", cake$replicate), recipe = as.character(cake$recipe),
                   temperature = paste0("T", cake$temperature), y = cake$angle)
w(subset(cake, !((recipe == "A" & temperature == "T175") | (recipe == "B" & temperature == "T185") |
                 (recipe == "C" & temperature == "T195"))), "cake_gap")
"""

HAM3 = "y ~ Product * Information * Gender + (1|Consumer)"
HAM_AGE = "y ~ Product * Age + (1|Consumer)"
CARROTS_SLOPE = "y ~ sens2 * Homesize + (1 + sens2|Consumer)"
CARROTS_3 = "y ~ sens2 * Homesize * sens1 + (1|Product)"
GLM_REPORT = "y ~ a * b + (1|f)"
CAKE = "y ~ recipe * temperature + (1|recipe:replicate)"

CASES = [
    # data set, formula, options
    ("ham", HAM3, dict(test="type1")),
    ("ham", HAM3, dict(test="type2", coding="effects")),
    ("ham_gap", HAM3, dict(test="type1")),
    ("ham_gap", HAM3, dict(test="type2")),
    ("ham", HAM_AGE, dict(test="type2")),
    ("ham", HAM_AGE, dict(test="type2", ddf="kenward-roger")),
    ("carrots", CARROTS_SLOPE, dict(test="type2")),
    ("carrots", CARROTS_3, dict(test="type2")),
    ("carrots", CARROTS_3, dict(test="type1", reml=False, ddf="residual")),
    ("glm_report", GLM_REPORT, dict(test="type2")),
    ("glm_report", GLM_REPORT, dict(test="type1", ddf="none")),
    ("cake_gap", CAKE, dict(test="type3", coding="effects")),
    ("cake_gap", CAKE, dict(test="marginal", coding="effects")),
]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("anova_types")
    proc = run_rscript(_EXPORT_R, str(root), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return root


def _data(tables, name):
    path = tables / f"{name}.csv"
    return path, pd.read_csv(path)


def _fit(frame, formula, **options):
    with warnings.catch_warnings():  # Age is numeric next to an interaction: said once per fit
        warnings.filterwarnings("ignore", message=".*is numeric.*interacts")
        return cl.fit_timeseries(cl.from_dataframe(frame, "y"), formula, **options)


def _compare(ours, ref, cols, tolerances, label, floors=None):
    """Largest relative difference per column of two aligned tables; asserts each is within its tolerance.

    ``floors``: per column, a number or a column of ``ref`` bounding the scale from below (an
    estimate of exactly 0 is compared relative to its SE, a t of 0 absolutely); infinities must be equal.
    """
    floors = floors or {}
    diffs = {}
    for col in cols:
        a, b = ours[col].to_numpy(float), ref[col].to_numpy(float)
        assert not np.isnan(a).any() and not np.isnan(b).any(), f"{label}: NaN {col}"
        inf = np.isinf(b)
        assert np.array_equal(a[inf], b[inf]) and not np.isinf(a[~inf]).any(), f"{label}: {col} Inf mismatch"
        floor = floors.get(col, 0.0)
        floor = np.abs(ref[floor].to_numpy(float)) if isinstance(floor, str) else floor
        scale = np.maximum(np.abs(b), floor)
        rel = np.abs(a - b)[~inf] / np.where(scale == 0, 1.0, scale)[~inf]
        diffs[col] = float(rel.max()) if rel.size else 0.0
        assert diffs[col] <= tolerances[col], f"{label}: {col} differs by {diffs[col]:.2e}"
    print(f"[{label}] " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    return diffs


def _aligned(ours, ref, key):
    """Rows of ``ours`` and ``ref`` in the same order: per sample, by ``key`` or (None) by position."""
    if key is None:
        ours, ref = (t.assign(k=t.groupby("sample").cumcount()) for t in (ours, ref))
        key = "k"
    m = ours.merge(ref, on=["sample", key], suffixes=("", "_ref"), validate="one_to_one")
    assert len(m) == len(ref) == len(ours), "the tables' rows differ"
    return m, m[[c for c in m.columns if c.endswith("_ref")]].rename(columns=lambda c: c[:-4])


def compare_fit(fit, anova_ref, coef_ref, label, rtol, p_rtol, names=True):
    """Assert the fit's ANOVA and coefficient tables at every sample equal lmerTest's."""
    ours, ref = _aligned(fit.to_frame(), anova_ref, "Term")
    assert np.array_equal(ours["DF1"], ref["DF1"]), f"{label}: DF1 differs"
    tol = {"FStat": rtol, "DF2": rtol, "pValue": p_rtol}
    _compare(ours, ref, list(tol), tol, f"{label} anova")
    coefs = fit.to_frame(coefficients=True).dropna(subset=["Estimate"])  # dropped columns: not in lme4's table
    ours, ref = _aligned(coefs, coef_ref, None)  # effects-coded names differ (R numbers the levels)
    if names:
        assert list(ours["Name"]) == list(ref["Name"]), f"{label}: coefficient names differ"
    tol = {"Estimate": rtol, "SE": rtol, "tStat": rtol, "DF": rtol, "pValue": p_rtol}
    _compare(ours, ref, list(tol), tol, f"{label} coefficients", floors={"Estimate": "SE", "tStat": 1.0})


@pytest.mark.parametrize("name, formula, options", CASES,
                         ids=[f"{c[0]}-{c[1].split('~')[1].split('+')[0].strip()}-"
                              + "-".join(str(v) for v in c[2].values()) for c in CASES])
def test_matches_lmertest(tables, tmp_path, name, formula, options):
    path, frame = _data(tables, name)
    assert_same_parse(path, frame)
    options = {"ddf": "satterthwaite", "coding": "reference", "reml": True, **options}
    cmd = [RSCRIPT, str(REFERENCE_SCRIPT), "--csv", str(path), "--formula", formula, "--reml",
           "TRUE" if options["reml"] else "FALSE", "--ddf", options["ddf"], "--coding", options["coding"],
           "--test", options["test"], "--out", str(tmp_path / "anova.csv"),
           "--coefficients", str(tmp_path / "coef.csv")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    anova_ref, coef_ref = pd.read_csv(tmp_path / "anova.csv"), pd.read_csv(tmp_path / "coef.csv")
    label = f"{name} {formula} {options}"
    engines = ["r", "native"] if options["ddf"] != "kenward-roger" else ["auto"]
    for engine in engines:
        if engine == "auto":  # Kenward-Roger is R's (pbkrtest): "auto" says so and uses R
            with pytest.warns(UserWarning, match="engine='auto' uses the R engine: ddf='kenward-roger'"):
                fit = _fit(frame, formula, engine=engine, cross_check=0, **options)
            engine = "r"
        else:
            fit = _fit(frame, formula, engine=engine, cross_check=0, **options)
        assert fit.options["engine"] == engine and fit.diagnostics["converged"].all()
        compare_fit(fit, anova_ref, coef_ref, f"{engine}: {label}", RTOL, RTOL if engine == "r" else P_RTOL_NATIVE,
                    names=options["coding"] == "reference")


# --------------------------------------------------------------------------
# SAS PROC MIXED numbers pinned by lmerTest's tests/test_compare_sas.R
# --------------------------------------------------------------------------

def _all_equal(current, target, tolerance):
    """R's ``all.equal`` on numbers: the mean relative difference is within ``tolerance``."""
    current, target = np.asarray(current, float), np.asarray(target, float)
    assert current.shape == target.shape
    diff = np.mean(np.abs(current - target)) / np.mean(np.abs(target))
    return diff <= tolerance, diff


SAS_F = [
    # data set, formula, test, SAS's F per term (lmerTest's order), lmerTest's tolerance
    ("glm_report", GLM_REPORT, "type2", [3.90131, 1.32753, 0.99565], 1e-5),
    ("carrots", CARROTS_SLOPE, "type2", [54.8361, 5.16138, 1.03035], 1e-4),
    ("ham", HAM_AGE, "type2", [2.48135, .005387, 1.48451], 1e-5),
    ("carrots", CARROTS_3, "type2", [16.4842, 14.0010, .526076, 1.18144, .107570, .335177, 1.05946], 1e-4),
    ("carrots", CARROTS_3, "type3", [16.9140, 14.0010, .481148, 1.18144, .074201, .335177, 1.05946], 1e-4),
]


@pytest.mark.parametrize("name, formula, test, sas, tolerance", SAS_F,
                         ids=[f"{c[0]}-{c[2]}-{len(c[3])}terms" for c in SAS_F])
def test_sas_f(tables, name, formula, test, sas, tolerance):
    _, frame = _data(tables, name)
    fit = _fit(frame, formula, test=test, cross_check=0)  # engine="auto": native
    assert fit.options["engine"] == "native"
    ok, diff = _all_equal(fit.F[:, 0], sas, tolerance)
    print(f"[SAS] {name} {formula} {test}: mean relative difference {diff:.1e}")
    assert ok, (fit.anova(0), sas)


def test_sas_carrots_type3_and_coefficients(tables):
    """``sens2*Frequency*Income + (1+sens2|Consumer)`` with SAS's coding (last level the reference)."""
    _, frame = _data(tables, "carrots_income")
    # contr.SAS makes the last level the reference: the same columns as treatment coding with it first.
    levels = {"Frequency": ["F5", "F1", "F2", "F3", "F4"], "Income": ["I4", "I1", "I2", "I3"]}
    fit = _fit(frame, "y ~ sens2 * Frequency * Income + (1 + sens2|Consumer)", test="type3", levels=levels,
               cross_check=0)
    assert fit.options["engine"] == "native"
    ok, diff = _all_equal(fit.p[:, 0], [2e-5, 0.15512, 0.06939, 0.08223, 0.52459, 0.03119, 0.48344], 1e-4)
    assert ok, fit.anova(0)
    assert np.array_equal(np.round(fit.df2[:, 0]), np.full(7, 83.0))
    coefs = fit.coefficients(0).dropna(subset=["Estimate"])  # lme4 drops the columns of empty cells
    sas = [1e-10, 0.005061, 0.6865554, 0.342613, 0.129157, 0.088231, 0.846000, 0.354472, 0.526318, 0.020646,
           0.010188, 0.031242, 0.055356, 0.694689, 0.099382, 0.28547, 0.977774, 0.855653, 0.427737, 0.321086,
           0.417465, 0.204385, 0.784437, 0.681434, 0.106180, 0.149122, 0.390870, 0.273686]
    ok_coef, diff_coef = _all_equal(coefs["pValue"], sas, 1e-4)
    print(f"[SAS] carrots type III p: {diff:.1e}; coefficient p: {diff_coef:.1e}")
    assert ok_coef, coefs


@pytest.mark.parametrize("test", ["type1", "type2"])
def test_permutations_get_their_own_contrasts(tables, test):
    """Type I/II contrasts follow X'X, which a permutation moves: each permuted design is tested on its own.

    The native engine's statistic-only fit of a permuted design (what a permutation computes: no
    DF, no coefficient DF) gives the F that lme4/lmerTest give for that design, and the full fit's.
    """
    _, frame = _data(tables, "ham")
    model = parse_formula(HAM3)
    spec = build_spec(build_design(frame, model, response_column="y"))
    y = frame[["y"]].to_numpy(float)
    perm = np.random.default_rng(5).permutation(len(frame))
    moved = spec.permuted({"Information": perm, "Gender": perm[::-1]})
    options = FitOptions(test=test)
    native = get_engine("native")
    quick, full = native.fit_block(moved, y, options, need="statistic"), native.fit_block(moved, y, options)
    lme4 = get_engine("r").fit_block(moved, y, options)
    observed = native.fit_block(spec, y, options, need="statistic")
    assert np.isnan(quick.coef_df).all() and np.isnan(quick.df2).all() and np.isfinite(full.coef_df).all()
    np.testing.assert_allclose(quick.F, full.F, rtol=1e-12)
    np.testing.assert_allclose(quick.F, lme4.F, rtol=RTOL)
    assert np.abs(quick.F / observed.F - 1).max() > 1e-3  # the permutation moved the statistics


def test_cli_type2_and_coefficients(tables, tmp_path, capsys):
    """``clusterlmer fit --test type2 --coefficients FILE`` prints and writes what the Python API gives."""
    from conftest import run_cli

    _, frame = _data(tables, "ham")
    path = tmp_path / "ham_long.csv"
    frame.assign(Time=0.0).to_csv(path, index=False)
    out = tmp_path / "coef.csv"
    code, printed, err = run_cli(capsys, ["fit", path, "--long", "--time", "Time", "--channels", "y", "--formula",
                                          HAM_AGE, "--test", "type2", "--engine", "native", "--cross-check", "0",
                                          "--coefficients", out])
    assert code == 0, err
    assert "lmerTest type II F-test" in printed and "Coefficients there" in printed and "tStat" in printed
    expected = _fit(frame, HAM_AGE, test="type2", engine="native", cross_check=0).coefficients(0)
    written = pd.read_csv(out)
    assert list(written["Name"]) == list(expected["Name"])
    for col in ("Estimate", "SE", "tStat", "DF", "pValue"):
        np.testing.assert_allclose(written[col], expected[col], rtol=1e-12, err_msg=col)
    code, _, err = run_cli(capsys, ["fit", path, "--long", "--time", "Time", "--channels", "y", "--formula",
                                    HAM_AGE, "--test", "type4"])
    assert code == 2 and "type4" in err


def test_type2_does_not_depend_on_term_order_and_type1_does():
    """lmerTest's check on SAS's GLM example: type II of ``a*b`` and ``b*a`` agree row for row; type I do not."""
    frame = pd.DataFrame({"a": [f"a{x}" for x in (1, 1, 1, 2, 2, 2, 2, 2, 1, 2)],
                          "b": [f"b{x}" for x in (1, 1, 2, 1, 2, 2, 2, 2, 2, 1)],
                          "f": [f"f{x}" for x in (1, 2, 1, 2, 1, 2, 1, 2, 1, 2)],
                          "y": [12.0, 14, 11, 20, 17, 23, 35, 46, 15, 16]})
    fits = {(formula, test): _fit(frame, formula, test=test, engine="native", cross_check=0).anova(0)
            for formula in ("y ~ a * b + (1|f)", "y ~ b * a + (1|f)") for test in ("type2", "type1")}
    ab, ba = fits["y ~ a * b + (1|f)", "type2"], fits["y ~ b * a + (1|f)", "type2"].iloc[[1, 0, 2]]
    np.testing.assert_allclose(ab[["FStat", "DF2", "pValue"]], ba[["FStat", "DF2", "pValue"]], rtol=1e-8)
    ab1, ba1 = fits["y ~ a * b + (1|f)", "type1"], fits["y ~ b * a + (1|f)", "type1"].iloc[[1, 0, 2]]
    assert abs(ab1["FStat"].iloc[0] / ba1["FStat"].iloc[0] - 1) > 0.01  # a first vs a after b: unbalanced


def test_type1_and_type2_are_refused_for_a_glmm():
    from clusterlmer.engines.base import check_fit_options

    for test in ("type1", "type2"):
        with pytest.raises(ValueError, match="defined for linear mixed models.*test='type3'"):
            check_fit_options(True, "satterthwaite", test, "bobyqa", None, family="binomial")
    assert check_fit_options(True, "satterthwaite", "type3", "bobyqa", None, family="poisson").test == "type3"
