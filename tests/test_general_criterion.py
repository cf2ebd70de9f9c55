"""The general profiled criterion against lme4's own ``devfun``, run through Rscript.

A standalone ``Rscript`` fits each case with ``lme4::lmer`` (REML and ML),
builds lme4's deviance function (``lmer(..., devFunOnly = TRUE)``) and
evaluates it at lme4's optimum theta, at 0.7 times it and at a perturbed
theta (lower bounds respected). ``clusterlmer.engines.native.general``
must give the same criterion (<= 1e-10 relative) at those thetas, and at
the optimum lme4's ``fixef``, ``sigma`` and ``vcov`` (<= 1e-8 relative).
Every number crosses between R and Python as a C99 hex float (``%a``), so
both sides work on identical doubles.

Cases: sleepstudy with ``(Days|Subject)`` and ``(Days||Subject)`` (and one
with a tie in lme4's term order), Penicillin (crossed), Pastes
(``(1|batch/cask)``), lmerTest's TVbo (three partially crossed terms), the
bundled 2-way sample with a correlated random slope of ``hit_miss``. The
theta layout itself (:func:`lme4_term_order`) is checked against lme4's
``cnms``. Secondary check (not the parity claim): on nested random
intercepts the criterion equals the closed-form native engine's.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from clusterlmer import datasets
from clusterlmer.design import build_design
from clusterlmer.engines.native.criterion import Block, Responses, Structure
from clusterlmer.engines.native.general import (CrossProducts, RandomLayout, lme4_term_order,
                                                profiled_criterion)
from clusterlmer.engines.native.nesting import Nesting
from clusterlmer.formula import parse_formula
from clusterlmer.spec import build_spec
from conftest import R_DATA_SETS, R_HEX_PREAMBLE, run_rscript

RSCRIPT = shutil.which("Rscript")
pytestmark = pytest.mark.skipif(RSCRIPT is None, reason="Rscript is not on PATH")

N_TIMES = 3
CASES = {
    "sleep_slope": ("sleepstudy", "Reaction ~ Days + (Days|Subject)", ["Reaction"]),
    "sleep_uncorrelated": ("sleepstudy", "Reaction ~ Days + (Days||Subject)", ["Reaction"]),
    "sleep_tie_order": ("sleepstudy", "Reaction ~ Days + (1|phase) + (Days||Subject)", ["Reaction"]),
    "penicillin_crossed": ("Penicillin", "diameter ~ 1 + (1|plate) + (1|sample)", ["diameter"]),
    "pastes_nested": ("Pastes", "strength ~ 1 + (1|batch/cask)", ["strength"]),
    "tvbo_partially_crossed": ("TVbo", "Coloursaturation ~ TVset * Picture + (1|Assessor) + (1|Assessor:TVset)"
                                       " + (1|Assessor:Picture)", ["Coloursaturation"]),
    "sample_2way_slope": ("sample2way", "t0 ~ hit_miss * region + (1 + hit_miss|sid) + (1|sid:ch)",
                          [f"t{i}" for i in range(N_TIMES)]),
}

_R = R_HEX_PREAMBLE + R_DATA_SETS + r"""
for (name in names(data)) write_hex(data[[name]], file.path(out, paste0(name, ".csv")))
data$sample2way <- unhex(utils::read.csv(file.path(out, "sample2way.csv"), colClasses = "character"))
# clusterlmer makes a numeric fixed-effect column a factor, levels sorted (0, 1), as factor() does.
data$sample2way$hit_miss <- factor(data$sample2way$hit_miss)
cases <- matrix(args[-1], ncol = 4, byrow = TRUE)
for (i in seq_len(nrow(cases))) {
  d <- data[[cases[i, 2]]]
  # Factor levels in order of first appearance, as clusterlmer orders them.
  for (col in names(d)) if (is.character(d[[col]])) d[[col]] <- factor(d[[col]], levels = unique(d[[col]]))
  for (resp in strsplit(cases[i, 4], ",")[[1]]) {
    d$y_ <- d[[resp]]
    f <- as.formula(sub("^[^~]*~", "y_ ~", cases[i, 3]))
    for (reml in c(TRUE, FALSE)) {
      fit <- lme4::lmer(f, d, REML = reml)
      dev <- lme4::lmer(f, d, REML = reml, devFunOnly = TRUE)
      th <- getME(fit, "theta"); lower <- getME(fit, "lower")
      thetas <- list(th, 0.7 * th, ifelse(lower == 0, abs(th) * 1.25 + 0.05, th + 0.1))
      rows <- NULL
      for (j in seq_along(thetas)) rows <- rbind(rows, data.frame(what = "theta", j = j, idx = seq_along(th),
        value = hex(thetas[[j]])), data.frame(what = "criterion", j = j, idx = 1, value = hex(dev(thetas[[j]]))))
      rows <- rbind(rows, data.frame(what = "beta", j = 1, idx = seq_along(fixef(fit)), value = hex(fixef(fit))),
                    data.frame(what = "sigma", j = 1, idx = 1, value = hex(sigma(fit))),
                    data.frame(what = "vcov", j = 1, idx = seq_along(as.matrix(vcov(fit))),
                               value = hex(as.matrix(vcov(fit)))))
      tag <- paste(cases[i, 1], resp, if (reml) "REML" else "ML", sep = "_")
      utils::write.csv(rows, file.path(out, paste0(tag, ".csv")), row.names = FALSE)
    }
    cnms <- getME(fit, "cnms")
    utils::write.csv(data.frame(name = names(cnms), cnms = vapply(cnms, paste, "", collapse = "|")),
                     file.path(out, paste0(cases[i, 1], "_terms.csv")), row.names = FALSE)
  }
}
"""


def _read_hex(path):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in frame.columns:
        if len(frame) and frame[col].str.match(r"^-?0x").all():
            frame[col] = frame[col].map(float.fromhex)
    return frame


def _sample_2way_frame():
    data = datasets.sample_2way()
    frame = data.design.copy()
    for i in range(N_TIMES):
        frame[f"t{i}"] = data.values[:, 10 + 20 * i]
    return frame


@pytest.fixture(scope="module")
def lme4_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("general_criterion")
    frame = _sample_2way_frame()
    hexed = frame.copy()
    for col in hexed.columns:
        if pd.api.types.is_numeric_dtype(hexed[col]):
            hexed[col] = [float(v).hex() for v in hexed[col]]
    hexed.to_csv(root / "sample2way.csv", index=False)
    args = [x for cid, (data, formula, resp) in CASES.items() for x in (cid, data, formula, ",".join(resp))]
    proc = run_rscript(_R, str(root), *args, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return root


def _spec(root, case):
    data, formula, _ = CASES[case]
    frame = _read_hex(root / f"{data}.csv")
    model = parse_formula(formula)
    return build_spec(build_design(frame, model, response_column=model.response)), frame


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))


@pytest.mark.parametrize("case", list(CASES))
def test_theta_layout_is_lme4s(lme4_runs, case):
    spec, _ = _spec(lme4_runs, case)
    theirs = pd.read_csv(lme4_runs / f"{case}_terms.csv")
    ours = [spec.random[i] for i in lme4_term_order(spec)]
    assert [(t.name, "|".join(t.coef_names)) for t in ours] == list(zip(theirs["name"], theirs["cnms"]))


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("case", list(CASES))
def test_criterion_beta_sigma_equal_lme4(lme4_runs, case, reml):
    spec, frame = _spec(lme4_runs, case)
    responses = CASES[case][2]
    cross = CrossProducts(spec)
    worst = {}
    for resp in responses:
        ref = _read_hex(lme4_runs / f"{case}_{resp}_{'REML' if reml else 'ML'}.csv")
        ref["j"] = ref["j"].astype(int)
        y = frame[resp].to_numpy(float)
        for j in (1, 2, 3):
            theta = ref.query("what == 'theta' and j == @j")["value"].to_numpy(float)
            crit = ref.query("what == 'criterion' and j == @j")["value"].to_numpy(float)
            got = profiled_criterion(spec, y, theta, reml=reml, cross=cross)
            worst[f"criterion{j}"] = max(worst.get(f"criterion{j}", 0), _rel(got["criterion"], crit))
            assert _rel(got["criterion"], crit) <= 1e-10, (resp, j, got["criterion"], crit)
            if j == 1:
                beta = ref.query("what == 'beta'")["value"].to_numpy(float)
                sigma = ref.query("what == 'sigma'")["value"].to_numpy(float)
                vcov = ref.query("what == 'vcov'")["value"].to_numpy(float).reshape(len(beta), len(beta))
                assert _rel(got["beta"][:, 0], beta) <= 1e-8, (got["beta"][:, 0], beta)
                assert _rel(got["sigma"], sigma) <= 1e-8
                assert _rel(got["vcov_unscaled"][:, :, 0] * got["sigma"][0] ** 2, vcov) <= 1e-8
                worst["beta"] = max(worst.get("beta", 0), _rel(got["beta"][:, 0], beta))
    print(case, "REML" if reml else "ML", {k: f"{v:.1e}" for k, v in worst.items()})


def test_batched_responses_and_per_response_theta_equal_one_by_one():
    data = datasets.sample_2way()
    model = parse_formula("data ~ hit_miss * region + (1 + hit_miss|sid) + (1|sid:ch)")
    spec = build_spec(build_design(data.design, model, response_column=data.response))
    Y = data.values[:, :5]
    rng = np.random.default_rng(0)
    thetas = np.abs(rng.normal(size=(4, 5)))
    thetas[RandomLayout.of(spec).lower < 0] -= 0.5  # an off-diagonal entry may be negative
    thetas[:, 3] = thetas[:, 1]  # responses sharing a theta share one factorisation
    joint = profiled_criterion(spec, Y, thetas)
    for r in range(5):
        one = profiled_criterion(spec, Y[:, r], thetas[:, r])
        for key in ("criterion", "sigma", "ldL2", "ldRX2"):
            np.testing.assert_allclose(joint[key][r], one[key][0], rtol=1e-12)
        np.testing.assert_allclose(joint["beta"][:, r], one["beta"][:, 0], rtol=1e-10, atol=1e-12)
    shared = profiled_criterion(spec, Y, thetas[:, 0])
    np.testing.assert_allclose(shared["criterion"][0], joint["criterion"][0], rtol=1e-12)
    with pytest.raises(ValueError, match="lower bounds"):
        profiled_criterion(spec, Y, -thetas[:, 0])


def test_permuted_spec_reuses_zz_and_recomputes_zx():
    from clusterlmer.permute import make_permutations

    data = datasets.sample_2way()
    for formula, shares in [("data ~ hit_miss * region + (1|sid) + (1|sid:ch)", True),
                            ("data ~ hit_miss * region + (1 + hit_miss|sid) + (1|sid:ch)", False)]:
        model = parse_formula(formula)
        design = build_design(data.design, model, response_column=data.response)
        spec = build_spec(design)
        perms = make_permutations(data.design, model, 2, seed=5)
        moved = spec.permuted({v: m[1] for v, m in perms.row_maps.items()})
        assert (RandomLayout.of(moved) is RandomLayout.of(spec)) == shares
        direct = build_spec(perms.apply(1, design))
        theta = np.full(RandomLayout.of(spec).n_theta, 0.6)
        a = profiled_criterion(moved, data.values[:, :3], theta)
        b = profiled_criterion(direct, data.values[:, :3], theta)
        np.testing.assert_allclose(a["criterion"], b["criterion"], rtol=1e-12)
        np.testing.assert_allclose(a["beta"], b["beta"], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
def test_nested_intercepts_equal_closed_form_engine(reml):
    """Secondary check: the nested-intercept engine's criterion (``Block.criterion``) at the same theta."""
    data = datasets.sample_2way()
    model = parse_formula("data ~ hit_miss * region + (1|sid) + (1|sid:ch)")
    spec = build_spec(build_design(data.design, model, response_column=data.response))
    Y = data.values[:, :6]
    nest = Nesting.of(spec)
    structure = Structure(nest, spec.n_obs)
    block = Block(structure, Responses(structure, Y), [spec.X])
    order = lme4_term_order(spec)
    coarse_first, _ = spec.nesting()
    for theta in ([0.8, 0.3], [0.05, 1.7], [0.0, 0.9]):
        theta = np.array(theta)  # lme4's order
        by_term = np.empty(len(order))
        by_term[order] = theta
        phi = np.repeat((by_term[coarse_first] ** 2)[:, None], Y.shape[1], axis=1)
        D, _, _, pieces = block.criterion(phi, None, 0, reml, ainv=True)
        got = profiled_criterion(spec, Y, theta, reml=reml)
        np.testing.assert_allclose(got["criterion"], D, rtol=1e-11)
        beta = pieces["beta"].copy()
        beta[0] += block.ybar  # the closed form works on centred responses
        np.testing.assert_allclose(got["beta"], beta, rtol=1e-8, atol=1e-10)
