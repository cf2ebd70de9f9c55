"""lmerTest's type III tests: contrasts and F tests against lmerTest itself, run through Rscript.

A standalone ``Rscript`` fits each case with ``lmerTest::lmer`` (REML,
factor levels in order of first appearance as clusterlmer orders them,
``contr.sum`` set on the factors for effects coding as the R engine sets
it) and writes ``lmerTest:::get_contrasts_type3(fit)``, ``anova(fit, type =
3)`` (Satterthwaite), lme4's theta, beta and vcov, and lmerTest's own
Satterthwaite ingredients (``fit@Jac_list``, ``fit@vcov_varpar``). Every
number crosses as a C99 hex float (``%a``).

Checked here:

* :func:`clusterlmer.type3.type3_contrasts` gives lmerTest's matrices
  themselves (hence their row spaces), term by term, on the columns lme4
  fits (whose names must be lme4's), to 1e-12 absolute;
* :func:`clusterlmer.engines.native.marginal.contrast_tests` on those
  matrices, fed lmerTest's beta, vcov, Jacobian and varpar covariance,
  gives ``anova(type = 3)``'s F, NumDF, DenDF and p to 1e-6 relative, and
  with ``ddf="residual"`` the same F and NumDF with DF2 = n - p;
* on identity rows ``contrast_tests`` is ``marginal_tests`` bit for bit;
* with every column fitted the matrices do not change when the rows are
  permuted;
* the native engine evaluated at lme4's theta (``evaluate_at``) with
  ``test="type3"`` gives ``anova(type = 3)``.

Cases (both codings): lmerTest's ham (three-way factorial), TVbo (3 x 4
factorial; one term alone, where lmerTest takes its type I rows), cake
(``recipe * temp`` with temp numeric and as a factor), sleepstudy (``Days *
phase``), carrots (``sens2 * Homesize``), and TVbo and ham with an empty cell
(a rank-deficient X, one column dropped by lme4). For the engine, also
nested and partially crossed random intercepts on TVbo and a correlated
random slope on sleepstudy.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from clusterlmer.design import build_design
from clusterlmer.engines.base import FitOptions
from clusterlmer.engines.native import evaluate_at
from clusterlmer.engines.native.fixed import rank_deficiency
from clusterlmer.engines.native.marginal import contrast_tests, marginal_tests
from clusterlmer.formula import parse_formula
from clusterlmer.spec import build_spec
from clusterlmer.type3 import type3_contrasts
from conftest import R_DATA_SETS, R_HEX_PREAMBLE, read_r_hex_csv, run_rscript

RSCRIPT = shutil.which("Rscript")
needs_r = pytest.mark.skipif(RSCRIPT is None, reason="Rscript is not on PATH")
RTOL = 1e-6
FACTORIAL = "Informed.liking ~ Product * Information * Gender + (1|Consumer)"
TVBO = "Coloursaturation ~ TVset * Picture"
CASES = {
    "ham": ("ham", FACTORIAL),
    "tvbo": ("TVbo", TVBO + " + (1|Assessor)"),
    "tvbo_one_term": ("TVbo", "Coloursaturation ~ TVset + (1|Assessor)"),
    "cake_temp_numeric": ("cake", "angle ~ recipe * temp + (1|replicate)"),
    "cake_temp_factor": ("cake", "angle ~ recipe * tempf + (1|replicate)"),
    "sleep_days_phase": ("sleepstudy", "Reaction ~ Days * phase + (1|Subject)"),
    "carrots": ("carrots", "Preference ~ sens2 * Homesize + (1|Consumer)"),
    "tvbo_empty_cell": ("TVbo_gap", TVBO + " + (1|Assessor)"),
    "ham_empty_cell": ("ham_gap", FACTORIAL),
    "tvbo_nested": ("TVbo", TVBO + " + (1|Assessor) + (1|Assessor:TVset)"),
    "tvbo_partially_crossed": ("TVbo", TVBO + " + (1|Assessor) + (1|Assessor:TVset) + (1|Assessor:Picture)"),
    "sleep_random_slope": ("sleepstudy", "Reaction ~ Days * phase + (Days|Subject)"),
}
CODINGS = ("reference", "effects")

_R = R_HEX_PREAMBLE + r"""
entries <- function(what, term, M) { M <- as.matrix(M)
  if (!length(M)) return(NULL)
  data.frame(what = what, term = term, i = as.vector(row(M)), j = as.vector(col(M)), value = hex(M)) }
""" + R_DATA_SETS + r"""
data$cake$tempf <- paste0("T", data$cake$temp)
data$TVbo_gap <- subset(data$TVbo, !(TVset == "TV3" & Picture == "P4"))
data$ham_gap <- subset(data$ham, !(Product == "P4" & Information == "I2" & Gender == "G2"))
for (name in names(data)) write_hex(data[[name]], file.path(out, paste0(name, ".csv")))
cases <- matrix(args[-1], ncol = 4, byrow = TRUE)
for (i in seq_len(nrow(cases))) {
  d <- data[[cases[i, 2]]]
  for (col in names(d)) if (is.character(d[[col]])) {
    # Levels in order of first appearance, as clusterlmer orders them; effects coding as the R engine sets it.
    f <- factor(d[[col]], levels = unique(d[[col]]))
    if (cases[i, 4] == "effects") {
      cm <- contr.sum(levels(f)); colnames(cm) <- levels(f)[-nlevels(f)]; contrasts(f) <- cm
    }
    d[[col]] <- f
  }
  fit <- suppressMessages(lmerTest::lmer(as.formula(cases[i, 3]), d, REML = TRUE))
  Ls <- suppressMessages(lmerTest:::get_contrasts_type3(fit))
  tab <- suppressMessages(anova(fit, type = 3))
  X <- model.matrix(fit)
  rows <- rbind(data.frame(what = "coef", term = colnames(X), i = seq_len(ncol(X)), j = 1, value = hex(fixef(fit))),
                entries("theta", "", getME(fit, "theta")), entries("vcov", "", vcov(fit)),
                entries("varpar", "", fit@vcov_varpar))
  for (m in seq_along(fit@Jac_list)) rows <- rbind(rows, entries(paste0("jac", m), "", fit@Jac_list[[m]]))
  for (tm in names(Ls)) rows <- rbind(rows, entries("L", tm, Ls[[tm]]),
                                      data.frame(what = "L_rows", term = tm, i = 1, j = 1, value = hex(nrow(Ls[[tm]]))))
  for (stat in c("F value", "NumDF", "DenDF", "Pr(>F)"))
    rows <- rbind(rows, data.frame(what = stat, term = rownames(tab), i = 1, j = 1, value = hex(tab[[stat]])))
  utils::write.csv(rows, file.path(out, paste0(cases[i, 1], ".csv")), row.names = FALSE)
}
"""


@pytest.fixture(scope="module")
def lmertest_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("type3")
    args = [x for cid, (data, formula) in CASES.items() for coding in CODINGS
            for x in (f"{cid}_{coding}", data, formula, coding)]
    proc = run_rscript(_R, str(root), *args, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return root


class Reference:
    """One case's lmerTest output, read back from its hex CSV."""

    def __init__(self, root, case, coding):
        self.table = read_r_hex_csv(root / f"{case}_{coding}.csv")
        self.table[["i", "j"]] = self.table[["i", "j"]].astype(int)
        coef = self.table.query("what == 'coef'")
        self.coef_names = list(coef["term"])
        self.beta = coef["value"].to_numpy(float)

    def matrix(self, what, term="", shape=None):
        rows = self.table.query("what == @what and term == @term")
        M = np.zeros(shape or (rows["i"].max(), rows["j"].max()))
        M[rows["i"] - 1, rows["j"] - 1] = rows["value"].to_numpy(float)
        return M

    def contrast(self, term):
        n_rows = int(self.stat("L_rows", term))
        return self.matrix("L", term, (n_rows, len(self.beta)))

    def stat(self, what, term):
        return float(self.table.query("what == @what and term == @term")["value"].iloc[0])

    @property
    def varpar(self):
        A = self.matrix("varpar")
        J = np.stack([self.matrix(f"jac{m + 1}") for m in range(A.shape[0])])
        return J[None], A[None]


def _spec(root, case, coding):
    data, formula = CASES[case]
    frame = read_r_hex_csv(root / f"{data}.csv")
    model = parse_formula(formula)
    frame = frame[frame[model.response].notna()]  # lme4 drops rows without a response (carrots has 3)
    with warnings.catch_warnings():  # cake's temp: extrapolated main effects, said once in a fit
        warnings.simplefilter("ignore")
        design = build_design(frame, model, coding=coding, response_column=model.response)
    return build_spec(design), frame[model.response].to_numpy(float)


def _rel(a, b):
    return abs(a - b) / abs(b) if b != 0 else abs(a - b)


@needs_r
@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("case", list(CASES))
def test_contrasts_are_lmertests(lmertest_runs, case, coding):
    spec, _ = _spec(lmertest_runs, case, coding)
    ref = Reference(lmertest_runs, case, coding)
    kept, _ = rank_deficiency(spec.X)
    assert [spec.fixed.coef_names[j] for j in kept] == ref.coef_names
    ours = type3_contrasts(spec.fixed, spec.values, spec.n_obs, kept)
    assert len(ours) == len(spec.fixed.terms)
    np.testing.assert_array_equal(ours[0], np.eye(len(kept))[spec.fixed.assign[kept] == 0])
    worst = 0.0
    for term, L in zip(spec.fixed.terms[1:], ours[1:]):
        theirs = ref.contrast(term)
        assert L.shape == theirs.shape, term
        np.testing.assert_allclose(L, theirs, rtol=0, atol=1e-12, err_msg=term)
        worst = max(worst, np.max(np.abs(L - theirs), initial=0.0))
    # The default kept columns are lme4's.
    for a, b in zip(ours, type3_contrasts(spec.fixed, spec.values, spec.n_obs)):
        np.testing.assert_array_equal(a, b)
    print(case, coding, f"largest difference {worst:.1e}")


@needs_r
@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("case", list(CASES))
def test_contrast_tests_give_anova_type3(lmertest_runs, case, coding):
    spec, _ = _spec(lmertest_runs, case, coding)
    ref = Reference(lmertest_runs, case, coding)
    L = type3_contrasts(spec.fixed, spec.values, spec.n_obs)[1:]
    V = ref.matrix("vcov")[None]
    F, df1, df2, p, _ = contrast_tests(L, ref.beta[None], V, "satterthwaite", 0, ref.varpar)
    resid_df = spec.n_obs - len(ref.beta)
    Fr, df1r, df2r, pr, _ = contrast_tests(L, ref.beta[None], V, "residual", resid_df)
    worst = {}
    for t, term in enumerate(spec.fixed.terms[1:]):
        for name, got in (("F value", F), ("NumDF", df1), ("DenDF", df2), ("Pr(>F)", p)):
            rel = _rel(got[t, 0], ref.stat(name, term))
            worst[name] = max(worst.get(name, 0.0), rel)
            assert rel <= RTOL, (term, name, got[t, 0], ref.stat(name, term))
        assert _rel(Fr[t, 0], ref.stat("F value", term)) <= RTOL and df1r[t, 0] == ref.stat("NumDF", term)
        assert df2r[t, 0] == resid_df and pr[t, 0] > 0
    print(case, coding, {k: f"{v:.1e}" for k, v in worst.items()})


@needs_r
@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("case", list(CASES))
def test_native_engine_gives_anova_type3_at_lme4s_theta(lmertest_runs, case, coding):
    spec, y = _spec(lmertest_runs, case, coding)
    ref = Reference(lmertest_runs, case, coding)
    theta = ref.matrix("theta")[:, 0]
    fit = evaluate_at(spec, y, FitOptions(test="type3"), theta)
    for term in spec.fixed.labels:
        t = list(fit.terms).index(term)
        for name, got in (("F value", fit.F), ("NumDF", fit.df1), ("DenDF", fit.df2), ("Pr(>F)", fit.p)):
            assert _rel(got[t, 0], ref.stat(name, term)) <= RTOL, (term, name, got[t, 0], ref.stat(name, term))


def test_identity_rows_are_the_marginal_tests():
    rng = np.random.default_rng(3)
    k, p, nv = 5, 6, 3
    assign = np.array([0, 1, 2, 2, 3, 3])
    identity_rows = [np.eye(p)[assign == t] for t in range(4)]
    for rank_deficient in (False, True):
        beta = rng.normal(size=(k, p))
        M = rng.normal(size=(k, p, p))
        Vb = M @ M.transpose(0, 2, 1)
        if rank_deficient:  # a term whose covariance is singular
            Vb[:, 4], Vb[:, :, 4] = Vb[:, 5], Vb[:, :, 5]
        J = rng.normal(size=(k, nv, p, p))
        J = J + J.transpose(0, 1, 3, 2)
        A = rng.normal(size=(k, nv, nv))
        A = A @ A.transpose(0, 2, 1) * 1e-3
        for ddf in ("satterthwaite", "residual", "none"):
            for need in ("all", "statistic"):
                a = marginal_tests(assign, 4, beta, Vb, ddf, 40, (J, A), need)
                b = contrast_tests(identity_rows, beta, Vb, ddf, 40, (J, A), need)
                for x, y in zip(a, b):
                    np.testing.assert_array_equal(x, y)
                # The same hypotheses through the general path (rows scaled by 2): same F, DF1 and p.
                c = contrast_tests([2 * L for L in identity_rows], beta, Vb, ddf, 40, (J, A), need)
                for x, y in zip(a[:4], c[:4]):
                    np.testing.assert_allclose(y, x, rtol=1e-10)


def test_contrasts_do_not_move_with_permuted_rows():
    data = pd.DataFrame({"g": np.repeat([f"s{i}" for i in range(8)], 12),
                         "a": np.tile(["a1", "a2", "a3"], 32), "b": np.tile(np.repeat(["b1", "b2"], 3), 16),
                         "x": np.linspace(-1, 1, 96) ** 3, "y": np.zeros(96)})
    model = parse_formula("y ~ a * b * x + (1|g)")
    for coding in CODINGS:
        spec = build_spec(build_design(data, model, coding=coding, response_column="y"))
        observed = type3_contrasts(spec.fixed, spec.values, spec.n_obs)
        perm = np.random.default_rng(0).permutation(96)
        moved = spec.permuted({"a": perm, "x": perm[::-1]})
        assert len(rank_deficiency(moved.X)[0]) == moved.X.shape[1]
        for L, M in zip(observed, type3_contrasts(moved.fixed, moved.values, moved.n_obs)):
            np.testing.assert_allclose(M, L, rtol=0, atol=1e-12)
        assert any(L.shape[0] > 1 and not np.all(np.isin(L, (0.0, 1.0))) for L in observed)
