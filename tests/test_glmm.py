"""Generalized linear mixed models (family="binomial" / "poisson") against a standalone lme4::glmer run.

The reference is an Rscript that fits each response with ``glmer`` written the way R users write
it (binomial successes as ``cbind(successes, failures)``, not our proportions-with-weights form) and
computes each term's Wald chi-square from ``fixef``/``vcov``; clusterlmer fits the same data through
its R engine. Data: lme4's ``cbpp`` (binomial, trials per row) and ``grouseticks`` (Poisson), and a
simulated 0/1 subject x item design.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from clusterlmer.cli import main
from conftest import run_rscript

pytestmark = [pytest.mark.filterwarnings("ignore:engine='auto' uses the R engine:UserWarning"),
              pytest.mark.filterwarnings("ignore:with 6 permutations the smallest possible cluster p:UserWarning")]

CTRL = "glmerControl(optimizer = 'bobyqa', optCtrl = list(rhoend = 1e-9, maxfun = 1e5))"

_REFERENCE_R = r"""
suppressMessages(library(lme4))
args <- commandArgs(TRUE)
wald <- function(m, cols) {
  b <- fixef(m)[cols]; V <- as.matrix(vcov(m))[cols, cols, drop = FALSE]
  drop(t(b) %*% solve(V, b))
}
rows <- list()
record <- function(name, m, terms) {
  V <- as.matrix(vcov(m))
  rows[[length(rows) + 1L]] <<- data.frame(fit = name, kind = c(rep("beta", length(fixef(m))),
    rep("se", length(fixef(m))), rep("chi2", length(terms))),
    value = c(unname(fixef(m)), unname(sqrt(diag(V))), vapply(terms, function(cols) wald(m, cols), 0)))
}
cbpp <- lme4::cbpp
write.csv(cbpp, file.path(args[1], "cbpp.csv"), row.names = FALSE)
m1 <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cbpp, family = binomial,
            control = CTRL)
m2 <- glmer(cbind(size - incidence, incidence) ~ period + (1 | herd), data = cbpp, family = binomial,
            control = CTRL)
record("cbpp0", m1, list(1, 2:4))
lr <- function(name, m0, m1) rows[[length(rows) + 1L]] <<- data.frame(fit = name, kind = "lr",
  value = anova(m0, m1)[["Chisq"]][2])
lr("cbpp0", glmer(cbind(incidence, size - incidence) ~ 1 + (1 | herd), data = cbpp, family = binomial,
                  control = CTRL), m1)
record("cbpp1", m2, list(1, 2:4))
gt <- lme4::grouseticks
gt$YEAR <- paste0("Y", gt$YEAR); gt$BROOD <- paste0("B", gt$BROOD)
write.csv(gt[, c("TICKS", "YEAR", "BROOD")], file.path(args[1], "grouseticks.csv"), row.names = FALSE)
m3 <- glmer(TICKS ~ YEAR + (1 | BROOD), data = gt, family = poisson, control = CTRL)
record("grouseticks", m3, list(1, 2:3))
lr("grouseticks", glmer(TICKS ~ 1 + (1 | BROOD), data = gt, family = poisson, control = CTRL), m3)
sim <- read.csv(file.path(args[1], "bernoulli.csv"))
record("bernoulli", glmer(y ~ cond + (1 | subject) + (1 | item), data = sim, family = binomial, control = CTRL),
       list(1, 2))
out <- do.call(rbind, rows)
out$value <- sprintf("%.17g", out$value)
write.csv(out, file.path(args[1], "reference.csv"), row.names = FALSE)
""".replace("CTRL", CTRL)


def _bernoulli(seed=0, n_subjects=12, n_items=8):
    rng = np.random.default_rng(seed)
    rows = [(f"s{s}", f"i{i}") for s in range(n_subjects) for i in range(n_items)]
    design = pd.DataFrame(rows, columns=["subject", "item"])
    design["cond"] = np.where(design["item"].str[1:].astype(int) % 2 == 0, "a", "b")
    subject = rng.normal(0, 0.8, n_subjects)[design["subject"].str[1:].astype(int)]
    item = rng.normal(0, 0.5, n_items)[design["item"].str[1:].astype(int)]
    eta = -0.3 + 0.9 * (design["cond"] == "b") + subject + item
    times = 3
    y = (rng.random((len(design), times)) < 1 / (1 + np.exp(-eta.to_numpy()[:, None]))).astype(float)
    return design, y


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("glmm")
    design, y = _bernoulli()
    design.assign(y=y[:, 0]).to_csv(root / "bernoulli.csv", index=False)
    proc = run_rscript(_REFERENCE_R, str(root), timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(root / "reference.csv")
    ref = {name: {kind: part.loc[part["kind"] == kind, "value"].to_numpy(float) for kind in ("beta", "se", "chi2", "lr")}
           for name, part in table.groupby("fit")}
    return root, ref, design, y


def _check(fit, sample, ref, terms):
    np.testing.assert_allclose(fit.estimates[:, sample], ref["beta"], rtol=1e-6)
    np.testing.assert_allclose(fit.se[:, sample], ref["se"], rtol=1e-6)
    table = fit.anova(sample)
    np.testing.assert_allclose(table["Chi2Stat"], ref["chi2"], rtol=1e-6)
    assert list(table["Term"]) == terms
    assert np.isinf(table["DF2"]).all()
    from scipy import stats

    # p is the chi-square p of the statistic (parity of the statistic is checked above)
    np.testing.assert_allclose(table["pValue"], stats.chi2.sf(table["Chi2Stat"], table["DF1"]), rtol=1e-9)


def test_binomial_proportions_with_trials_equal_glmer_on_successes_and_failures(reference):
    root, ref, _, _ = reference
    cbpp = pd.read_csv(root / "cbpp.csv", dtype={"herd": str, "period": str})
    prop = (cbpp["incidence"] / cbpp["size"]).to_numpy()
    data = cl.TimeseriesData(design=cbpp[["herd", "period", "size"]], values=np.stack([prop, 1 - prop], 1),
                             times=np.arange(2.0))
    fit = cl.fit_timeseries(data, "y ~ period + (1|herd)", family="binomial", weights="size")
    for sample in (0, 1):
        _check(fit, sample, ref[f"cbpp{sample}"], ["(Intercept)", "period"])
    # t of the intercept is its Wald z: the sign of the estimate, the size of sqrt(chi2)
    np.testing.assert_allclose(fit.t[0, 0], ref["cbpp0"]["beta"][0] / ref["cbpp0"]["se"][0], rtol=1e-6)
    assert fit.options["family"] == "binomial" and not fit.options["reml"] and fit.options["ddf"] == "none"
    assert "GLMM, family binomial (logit link), trials in 'size'" in fit.summary()
    assert "Wald chi-square reported as F = chi2/DF1 with DF2 = Inf" in fit.summary()


def test_poisson_counts_equal_glmer(reference):
    root, ref, _, _ = reference
    gt = pd.read_csv(root / "grouseticks.csv")
    data = cl.TimeseriesData(design=gt[["YEAR", "BROOD"]], values=gt["TICKS"].to_numpy(float)[:, None],
                             times=np.zeros(1))
    fit = cl.fit_timeseries(data, "ticks ~ YEAR + (1|BROOD)", family="poisson", engine="r")
    _check(fit, 0, ref["grouseticks"], ["(Intercept)", "YEAR"])


def test_bernoulli_crossed_equal_glmer(reference):
    _, ref, design, y = reference
    data = cl.TimeseriesData(design=design, values=y, times=np.arange(3.0))
    fit = cl.fit_timeseries(data, "y ~ cond + (1|subject) + (1|item)", family="binomial")
    _check(fit, 0, ref["bernoulli"], ["(Intercept)", "cond"])


def test_likelihood_ratio_chi_square_equals_anova_of_two_glmer_fits(reference):
    root, ref, _, _ = reference
    cbpp = pd.read_csv(root / "cbpp.csv", dtype={"herd": str, "period": str})
    prop = (cbpp["incidence"] / cbpp["size"]).to_numpy()
    data = cl.TimeseriesData(design=cbpp[["herd", "period", "size"]], values=prop[:, None], times=np.zeros(1))
    fit = cl.fit_timeseries(data, "y ~ period + (1|herd)", family="binomial", weights="size", glmm_test="lrt")
    table = fit.anova(0)
    np.testing.assert_allclose(table.loc[table["Term"] == "period", "Chi2Stat"], ref["cbpp0"]["lr"], rtol=1e-6)
    assert "likelihood-ratio chi-square" in fit.summary() and fit.options["glmm_test"] == "lrt"
    gt = pd.read_csv(root / "grouseticks.csv")
    data = cl.TimeseriesData(design=gt[["YEAR", "BROOD"]], values=gt["TICKS"].to_numpy(float)[:, None],
                             times=np.zeros(1))
    table = cl.fit_timeseries(data, "ticks ~ YEAR + (1|BROOD)", family="poisson", glmm_test="lrt").anova(0)
    np.testing.assert_allclose(table.loc[table["Term"] == "YEAR", "Chi2Stat"], ref["grouseticks"]["lr"], rtol=1e-6)
    # the Wald and likelihood-ratio chi-squares test the same hypothesis and differ only in how
    wald = cl.fit_timeseries(data, "ticks ~ YEAR + (1|BROOD)", family="poisson").anova(0)
    assert not np.allclose(wald["Chi2Stat"], table["Chi2Stat"], rtol=1e-3)


def test_glmm_null_is_each_permutation_refit_by_glmer():
    design, y = _bernoulli(seed=1, n_subjects=10, n_items=6)
    data = cl.TimeseriesData(design=design, values=y[:, :2], times=np.arange(2.0))
    formula = "y ~ cond + (1|subject)"
    res = cl.permutation_cluster_lmer(data, formula, n_permutations=6, seed=3, family="binomial",
                                      progress=False)
    assert res.fit.options["engine"] == "r"
    perms = cl.make_permutations(design, formula, 6, seed=3)
    for k in (0, 5):
        permuted = cl.TimeseriesData(design=perms[k], values=data.values, times=data.times)
        fit = cl.fit_timeseries(permuted, formula, family="binomial", levels=res.fit.levels, engine="r")
        np.testing.assert_allclose(res.null["cond"][:, k], fit.F[fit.terms.index("cond")], rtol=1e-9)


@pytest.mark.parametrize("kwargs, message", [
    (dict(family="gaussian", weights="size"), "linear mixed models take no weights here"),
    (dict(family="binomial"), "without weights models 0/1 responses, but 6 values are neither 0 nor 1"),
    (dict(family="poisson"), "family='poisson' models counts, but 6 values are negative or not whole"),
    (dict(family="binomial", weights="size", ddf="kenward-roger"), "ddf='kenward-roger' applies to linear"),
    (dict(family="binomial", weights="nope"), "weights='nope' is not a design column"),
    (dict(family="binomial", weights="size", engine="native"), "the native engine cannot fit this model: "
                                                                "family='binomial' makes a generalized linear"),
    (dict(family="gamma"), "family"),
    (dict(glmm_test="lrt"), "glmm_test='lrt' tests a GLMM's terms by likelihood ratio"),
    (dict(family="binomial", weights="size", glmm_test="lrt", test="type3"), "use test='marginal' or"),
])
def test_bad_glmm_arguments_are_refused_before_fitting(kwargs, message):
    design = pd.DataFrame({"g": list("aabbccdd"), "x": list("uvuvuvuv"), "size": [4] * 8})
    values = np.array([[0.25], [0.5], [0.75], [0.0], [1.0], [0.5], [0.25], [0.5]])
    data = cl.TimeseriesData(design=design, values=values, times=np.zeros(1))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cl.fit_timeseries(data, "y ~ x + (1|g)", **kwargs)


def test_cli_fits_a_glmm_and_names_a_bad_response(tmp_path, capsys, reference):
    root, ref, _, _ = reference
    cbpp = pd.read_csv(root / "cbpp.csv", dtype={"herd": str, "period": str})
    table = cbpp[["herd", "size"]].assign(period="p" + cbpp["period"], time=0.0,
                                          p0=cbpp["incidence"] / cbpp["size"])
    table.to_csv(tmp_path / "cbpp.csv", index=False)
    out = tmp_path / "fit.csv"
    common = ["fit", str(tmp_path / "cbpp.csv"), "--long", "--time", "time", "--value", "p0", "--formula",
              "p0 ~ period + (1|herd)", "--family", "binomial"]
    assert main(common + ["--weights", "size", "--out", str(out)]) == 0
    saved = pd.read_csv(out)
    period = saved[saved["Term"] == "period"]
    np.testing.assert_allclose(period["FStat"].to_numpy() * 3, ref["cbpp0"]["chi2"][1], rtol=1e-6)
    assert main(common) != 0
    assert "without weights models 0/1 responses" in capsys.readouterr().err
