"""The model specification against lme4's own ``lFormula``, run through Rscript.

For data sets lme4 ships (sleepstudy, Penicillin, Pastes, cake) and formulas
with correlated and uncorrelated random slopes (numeric and factor, with
and without intercept), crossed and nested
groupings, ``clusterlmer.spec.build_spec`` must give lme4's fixed-effect
matrix (column names, ``assign``, values), its random-effects terms
(grouping names, term columns, each observation's group, the ``Zt`` block
of every term), theta's lower bounds and the relative covariance factor a
theta gives (lme4's ``Lind`` mapping into ``Lambdat``). Level order is free
in lme4's ``Zt`` (factor levels sorted) and ours (first appearance), so
levels are matched through the observations' groups before comparing.

Also: permuted and subset specifications equal the specification of the
permuted or subset table.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from clusterlmer.design import build_design
from conftest import R_DATA_SETS, run_rscript
from clusterlmer.formula import parse_formula
from clusterlmer.permute import make_permutations
from clusterlmer.spec import build_spec

RSCRIPT = shutil.which("Rscript")

CASES = {
    "sleep_slope": ("sleepstudy", "Reaction ~ Days + (Days|Subject)", "reference"),
    "sleep_uncorrelated": ("sleepstudy", "Reaction ~ Days + (Days||Subject)", "reference"),
    "penicillin_crossed": ("Penicillin", "diameter ~ 1 + (1|plate) + (1|sample)", "reference"),
    "pastes_nested": ("Pastes", "strength ~ 1 + (1|batch/cask)", "reference"),
    "cake_interaction": ("cake", "angle ~ recipe * temp + (1|recipe:replicate)", "reference"),
    "cake_effects_slope": ("cake", "angle ~ recipe + temp + (1 + temp|replicate)", "effects"),
    "sleep_factor_slope": ("sleepstudy", "Reaction ~ phase + (phase|Subject)", "effects"),
    "sleep_factor_no_intercept": ("sleepstudy", "Reaction ~ phase + (0 + phase|Subject)", "reference"),
}

_R = r"""
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
out <- args[1]
""" + R_DATA_SETS + r"""
for (name in names(data)) utils::write.csv(data[[name]], file.path(out, paste0(name, ".csv")), row.names = FALSE)
cases <- matrix(args[-1], ncol = 4, byrow = TRUE)
for (i in seq_len(nrow(cases))) {
  id <- cases[i, 1]; d <- data[[cases[i, 2]]]
  for (col in names(d)) if (is.character(d[[col]])) {
    d[[col]] <- factor(d[[col]], levels = unique(d[[col]]))
    if (cases[i, 4] == "effects") {  # sum contrasts with the columns named by level, as clusterlmer names them
      cm <- contr.sum(nlevels(d[[col]]))
      colnames(cm) <- levels(d[[col]])[-nlevels(d[[col]])]
      contrasts(d[[col]]) <- cm
    }
  }
  f <- lFormula(as.formula(cases[i, 3]), d)
  X <- f$X
  utils::write.csv(data.frame(name = colnames(X), assign = attr(X, "assign")),
                   file.path(out, paste0(id, "_xcols.csv")), row.names = FALSE)
  utils::write.csv(unname(X), file.path(out, paste0(id, "_X.csv")), row.names = FALSE)
  re <- f$reTrms
  theta <- seq_along(re$theta) / 7 - (re$lower != 0) * 0.9
  re$Lambdat@x <- theta[re$Lind]
  terms <- NULL
  for (t in seq_along(re$cnms)) {
    rows <- (re$Gp[t] + 1):re$Gp[t + 1]
    k <- length(re$cnms[[t]])
    utils::write.csv(as.matrix(re$Ztlist[[t]]), file.path(out, paste0(id, "_Zt", t, ".csv")), row.names = FALSE)
    utils::write.csv(as.matrix(re$Lambdat[rows[1:k], rows[1:k], drop = FALSE]),
                     file.path(out, paste0(id, "_Lt", t, ".csv")), row.names = FALSE)
    grp <- re$flist[[attr(re$flist, "assign")[t]]]
    utils::write.csv(data.frame(group = as.integer(grp)), file.path(out, paste0(id, "_g", t, ".csv")),
                     row.names = FALSE)
    terms <- rbind(terms, data.frame(name = names(re$cnms)[t], cnms = paste(re$cnms[[t]], collapse = "|"),
                                     k = k, nlev = nlevels(grp)))
  }
  utils::write.csv(terms, file.path(out, paste0(id, "_terms.csv")), row.names = FALSE)
  utils::write.csv(data.frame(lower = re$lower, theta = theta), file.path(out, paste0(id, "_theta.csv")),
                   row.names = FALSE)
}
"""


@pytest.fixture(scope="module")
def lme4_terms(tmp_path_factory):
    if RSCRIPT is None:
        pytest.skip("Rscript is not on PATH")
    root = tmp_path_factory.mktemp("lformula")
    args = [x for cid, (data, formula, coding) in CASES.items() for x in (cid, data, formula, coding)]
    proc = run_rscript(_R, str(root), *args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return root


def _spec(root, case):
    data, formula, coding = CASES[case]
    model = parse_formula(formula)
    frame = pd.read_csv(root / f"{data}.csv")
    design = build_design(frame, model, coding=coding, response_column=model.response)
    return build_spec(design)


@pytest.mark.parametrize("case", list(CASES))
def test_fixed_part_equals_lme4_model_matrix(lme4_terms, case):
    spec = _spec(lme4_terms, case)
    cols = pd.read_csv(lme4_terms / f"{case}_xcols.csv")
    assert spec.fixed.coef_names == tuple(cols["name"])
    np.testing.assert_array_equal(spec.fixed.assign, cols["assign"].to_numpy())
    X = pd.read_csv(lme4_terms / f"{case}_X.csv").to_numpy()
    np.testing.assert_allclose(spec.X, X, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("case", list(CASES))
def test_random_part_equals_lme4_reTrms(lme4_terms, case):
    spec = _spec(lme4_terms, case)
    theirs = pd.read_csv(lme4_terms / f"{case}_terms.csv")
    theta = pd.read_csv(lme4_terms / f"{case}_theta.csv")
    # lme4 orders terms by decreasing number of levels (stable); match by name and columns.
    ours = {(t.name, "|".join(t.coef_names)): t for t in spec.random}
    assert len(ours) == len(spec.random) == len(theirs)
    values, offset = spec.values, 0
    lower, thetas = theta["lower"].to_numpy(), theta["theta"].to_numpy()
    for i, row in enumerate(theirs.itertuples(), start=1):
        term = ours[(row.name, row.cnms)]
        assert term.n_levels == row.nlev
        # Our level of each observation -> lme4's (through the observations' groups).
        their_group = pd.read_csv(lme4_terms / f"{case}_g{i}.csv")["group"].to_numpy() - 1
        level_map = np.full(term.n_levels, -1)
        level_map[term.codes] = their_group
        assert np.array_equal(level_map[term.codes], their_group) and (level_map >= 0).all()
        k = len(term.coef_names)
        Zt = term.Zt(values).toarray()
        rows = (level_map[:, None] * k + np.arange(k)).ravel()  # our row l*k+j is lme4's row map[l]*k+j
        theirs_Zt = pd.read_csv(lme4_terms / f"{case}_Zt{i}.csv").to_numpy()
        np.testing.assert_allclose(Zt, theirs_Zt[rows], rtol=1e-14, atol=1e-14)
        # theta layout: lower bounds and the k x k block of Lambda (lme4: Lambdat, its transpose).
        n = term.n_theta
        np.testing.assert_array_equal(term.theta_lower, lower[offset:offset + n])
        Lt = pd.read_csv(lme4_terms / f"{case}_Lt{i}.csv").to_numpy()
        np.testing.assert_allclose(term.relative_factor(thetas[offset:offset + n]), Lt.T, rtol=0, atol=1e-15)
        offset += n


def test_uncorrelated_slopes_split_like_lme4():
    frame = pd.DataFrame({"x": np.tile([0.0, 1.0, 2.0], 4), "g": np.repeat(list("abcd"), 3)})
    spec = build_spec(build_design(frame, parse_formula("y ~ x + (1 + x || g)")))
    assert [(t.name, t.coef_names) for t in spec.random] == [("g", ("(Intercept)",)), ("g", ("x",))]
    assert [t.n_theta for t in spec.random] == [1, 1]
    nested = build_spec(build_design(frame, parse_formula("y ~ x + (1|g)")))
    assert nested.nesting() == ([0], None)


@pytest.mark.parametrize("formula", ["data ~ hit_miss * region + (1|sid) + (1|sid:ch)",
                                     "data ~ hit_miss + (1 + hit_miss|sid) + (1|sid:ch)"])
def test_permuted_and_subset_specs_equal_specs_of_the_permuted_table(formula):
    from clusterlmer import datasets

    data = datasets.sample_2way()
    model = parse_formula(formula)
    design = build_design(data.design, model, response_column=data.response)
    spec = build_spec(design)
    perms = make_permutations(data.design, model, 4, seed=3)
    keep = np.ones(spec.n_obs, bool)
    keep[[0, 5, 77]] = False
    for k in range(4):
        moved = spec.permuted({v: m[k] for v, m in perms.row_maps.items()})
        table = perms.apply(k, design)
        direct = build_spec(table)
        np.testing.assert_array_equal(moved.X, direct.X)
        assert moved.design.frame.equals(table.frame)
        for name in moved.values:
            np.testing.assert_array_equal(moved.values[name], direct.values[name])
        sub, direct_sub = moved.subset(keep), build_spec(table.subset(keep))
        np.testing.assert_array_equal(sub.X, direct_sub.X)
        assert sub.design.frame.equals(direct_sub.design.frame)
        for a, b in zip(sub.random, direct_sub.random):
            assert a.n_levels == b.n_levels
            np.testing.assert_array_equal(a.codes, b.codes)
