"""Parity of the native engine with standalone lme4 + lmerTest, for every lmer random structure.

One ``Rscript`` process (run once per module) fits every case with
``lmerTest::lmer`` (bobyqa, ``rhoend = 1e-9`` as clusterlmer's default) and
tabulates, per response and for REML and ML: lme4's theta, criterion,
``fixef`` (dropped columns NA), their standard errors, sigma, ``isSingular``
and every message or warning of the fit; the marginal test (``anova(type =
"marginal")`` plus ``contestMD`` for the intercept row) and ``anova(type =
"III")`` with Satterthwaite's DF, and the same F with residual DF (``n -
rank(X)``) or none (``Inf``), p from ``pf``. None of it comes from
clusterlmer. Numbers cross as C99 hex floats (``%a``) both ways, so both
sides fit identical doubles.

Where lme4's optimum is tight, the native engine's own optimum must give
F, DF2, p, estimates, standard errors and sigma within 1e-6 (relative; an
estimate relative to the larger of itself and its standard error, p's
relative difference divided by its condition ``1 + |dlog p/dlog F| +
|dlog p/dlog DF2|``, since a tiny p moves hundreds of times more than its F)
and the same DF1. Whether it is tight is decided by R alone: bobyqa sees only
rounded criterion values, so lme4's optimum is moved by one Newton step on
lme4's own deviance function (numDeriv's Richardson gradient and Hessian)
and lme4 evaluates the model there (``optimizer = NULL``). lme4's optimum
counts as loose when that step moves any compared number by more than a
tenth of the tolerance, when lme4 reports a singular fit or a convergence
problem, or for Penicillin, whose standalone run ends at one of two optima
from run to run (see ``LME4_SPREAD`` in ``test_parity_lmertest.py``). At a loose optimum the
native engine is evaluated at lme4's theta (``native.evaluate_at``) and
must agree within 1e-8; at every fit its criterion at its own optimum must
be at most lme4's (+1e-7 relative). ``test_native_at_lme4_theta`` makes the
1e-8 comparison at lme4's theta for every fit. lme4's singular-fit message
must be among the native messages exactly when lme4's ``isSingular`` is
TRUE, and lme4's rank-deficiency message whenever lme4 drops columns.

The native engine must accept every case's options (marginal and type III
tests alike); a case it declined would fail, not be skipped. Run with
``pytest -s`` to see the largest differences per case.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from clusterlmer import datasets
from clusterlmer.design import build_design
from clusterlmer.engines import native, resolve_engine
from clusterlmer.engines.base import FitOptions
from clusterlmer.formula import parse_formula
from clusterlmer.spec import build_spec
from conftest import R_DATA_SETS, R_HEX_PREAMBLE, run_rscript

RSCRIPT = shutil.which("Rscript")
pytestmark = pytest.mark.skipif(RSCRIPT is None, reason="Rscript is not on PATH")

RTOL = 1e-6  # the native optimum against lme4's, where lme4's is tight
RTOL_AT_THETA = 1e-8  # both evaluated at lme4's theta
# lmerTest's DF2 (and so p) come from numDeriv's Richardson-extrapolated differences of the
# criterion, which amplify its last-digit rounding: on Penicillin, moving theta by 1e-13 relative
# moves DF2 by 1.7e-8 (measured with the native evaluate_at). Two exact implementations evaluated at
# the same theta can differ that much, so DF2 and p at lme4's theta are held to 1e-7.
RTOL_AT_THETA_DF = 1e-7
CRITERION_RTOL = 1e-7  # the native criterion at its optimum may exceed lme4's by this much
# lme4's optimum is tight when refining it moves nothing by more than half the tolerance (the other
# half covers the refined point's own error).
TIGHT = RTOL / 2
SAMPLE_TIMES = (10, 55, 104)  # baseline, the hit_miss window, the interaction window
# The standalone lmerTest run on Penicillin ends at one of two optima from run to run (p 8.2e-6
# apart): lme4's optimum there is compared at its theta, whatever refining it shows in this run.
LME4_SPREAD = {"penicillin_crossed"}
SINGULAR = "boundary (singular) fit"


@dataclass(frozen=True)
class Case:
    data: str
    formula: str
    responses: tuple
    coding: str = "reference"
    ml: bool = True


CASES = {
    "sleep_slope": Case("sleepstudy", "Reaction ~ Days + (Days|Subject)", ("Reaction",)),
    "sleep_uncorrelated": Case("sleepstudy", "Reaction ~ Days + (Days||Subject)", ("Reaction",)),
    "penicillin_crossed": Case("Penicillin", "diameter ~ 1 + (1|plate) + (1|sample)", ("diameter",)),
    "pastes_nested": Case("Pastes", "strength ~ 1 + (1|batch/cask)", ("strength",)),
    "tvbo_partially_crossed": Case("TVbo", "Coloursaturation ~ TVset * Picture + (1|Assessor) + (1|Assessor:TVset)"
                                           " + (1|Assessor:Picture)", ("Coloursaturation",)),
    "tvbo_effects": Case("TVbo", "Coloursaturation ~ TVset * Picture + (1|Assessor) + (1|Assessor:TVset)"
                                 " + (1|Assessor:Picture)", ("Coloursaturation",), coding="effects", ml=False),
    "carrots_slope": Case("carrots", "Preference ~ sens2 + Homesize + (1 + sens2|Consumer)", ("Preference",)),
    "carrots_slope_crossed": Case("carrots", "Preference ~ sens2 + Homesize + (1 + sens2|Consumer) + (1|Product)",
                                  ("Preference",), ml=False),
    "cake_rank_deficient": Case("cake_cells", "angle ~ recipe * temp + (1|replicate)", ("angle",)),
    "subject_item_crossed": Case("subject_item", "y0 ~ a * b + (1|Subject) + (1|Item)", ("y0", "y1", "y2")),
    "subject_item_slope": Case("subject_item", "y0 ~ a * b + (1 + a|Subject) + (1|Item)", ("y0", "y1", "y2")),
    # Subject:a nests in Subject: the two are factored together, subject by subject (first_block.py).
    "subject_item_nested": Case("subject_item", "y0 ~ a * b + (1|Subject:a) + (1|Subject) + (1|Item)",
                                ("y0", "y1", "y2")),
    "sample_2way_slope": Case("sample_2way", "t0 ~ hit_miss * region + (1 + hit_miss|sid) + (1|sid:ch)",
                              tuple(f"t{i}" for i in range(len(SAMPLE_TIMES)))),
}
CROSSED_OR_SLOPES = [c for c in CASES if c not in ("pastes_nested", "cake_rank_deficient")]

_R = R_HEX_PREAMBLE + R_DATA_SETS + r"""
data$carrots <- data$carrots[!is.na(data$carrots$Preference), ]
# cake with temperature as a factor and two recipe x temperature cells left out: X is rank deficient.
cake <- data$cake
cake$temp <- paste0("T", cake$temp)
data$cake_cells <- cake[!((cake$recipe == "C" & cake$temp == "T225") | (cake$recipe == "B" & cake$temp == "T205")), ]
for (name in names(data)) write_hex(data[[name]], file.path(out, paste0(name, ".csv")))
for (name in c("sample_2way", "subject_item"))
  data[[name]] <- unhex(utils::read.csv(file.path(out, paste0(name, ".csv")), colClasses = "character"))
# clusterlmer makes a two-valued numeric column that interacts a factor, levels sorted, as factor() does.
data$sample_2way$hit_miss <- factor(data$sample_2way$hit_miss)

ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-9, maxfun = 1e5))
rows <- list()
put <- function(part, name, value, test = "", ddf = "", stat = "")
  rows[[length(rows) + 1L]] <<- data.frame(case = case, resp = resp, reml = reml, part = part, test = test,
                                            ddf = ddf, name = name, stat = stat, value = value)
fit_lmer <- function(f, d, reml, control, start = NULL) {
  msgs <- character(0)
  m <- withCallingHandlers(lmerTest::lmer(f, data = d, REML = reml, control = control, start = start),
    warning = function(w) { msgs <<- c(msgs, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) { msgs <<- c(msgs, trimws(conditionMessage(m))); invokeRestart("muffleMessage") })
  list(m = m, msgs = unique(msgs))
}
table_of <- function(m, test) {
  if (test == "type3") return(anova(m, type = "III", ddf = "Satterthwaite"))
  tab <- anova(m, type = "marginal", ddf = "Satterthwaite")
  L0 <- matrix(as.numeric(colnames(model.matrix(m)) == "(Intercept)"), nrow = 1)
  if (sum(L0) == 1) tab <- rbind("(Intercept)" = contestMD(m, L0, ddf = "Satterthwaite")[, colnames(tab)], tab)
  tab
}
put_fit <- function(m, prefix) {
  th <- getME(m, "theta")
  put(paste0(prefix, "theta"), seq_along(th), hex(th))
  put(paste0(prefix, "criterion"), "", hex(if (reml) REMLcrit(m) else deviance(m)))
  put(paste0(prefix, "sigma"), "", hex(sigma(m)))
  beta <- fixef(m, add.dropped = TRUE)
  se <- setNames(rep(NA_real_, length(beta)), names(beta))
  se[names(fixef(m))] <- sqrt(diag(as.matrix(vcov(m))))
  put(paste0(prefix, "beta"), names(beta), hex(beta))
  put(paste0(prefix, "se"), names(se), hex(se))
}
put_tests <- function(m, tests, prefix) {
  X <- model.matrix(m)
  for (test in tests) {
    tab <- table_of(m, test)
    if (nrow(tab) == 0L) next
    F <- tab[["F value"]]; df1 <- tab[["NumDF"]]
    for (ddf in c("satterthwaite", "residual", "none")) {
      df2 <- switch(ddf, satterthwaite = tab[["DenDF"]], residual = rep(nrow(X) - qr(X)$rank, nrow(tab)),
                    none = rep(Inf, nrow(tab)))
      p <- if (ddf == "satterthwaite") tab[["Pr(>F)"]] else pf(F, df1, df2, lower.tail = FALSE)
      for (s in list(list("F", F), list("DF1", df1), list("DF2", df2), list("p", p)))
        put(paste0(prefix, "stat"), rownames(tab), hex(s[[2]]), test, ddf, s[[1]])
    }
  }
}
# lme4's optimum moved by one Newton step on lme4's own criterion (numDeriv's Richardson gradient and
# Hessian, accurate where bobyqa only sees rounded values), and lme4's fit at that theta (optimizer = NULL).
refine <- function(f, d, reml, m) {
  th <- getME(m, "theta")
  dev <- lme4::lmer(f, d, REML = reml, control = ctrl, devFunOnly = TRUE)
  th_new <- th - solve(numDeriv::hessian(dev, th), numDeriv::grad(dev, th))
  if (any(th_new < getME(m, "lower"))) return(NULL)
  fit_lmer(f, d, reml, lmerControl(optimizer = NULL), start = list(theta = th_new))$m
}

cases <- matrix(args[-1], ncol = 6, byrow = TRUE)
for (i in seq_len(nrow(cases))) {
  case <- cases[i, 1]
  d <- data[[cases[i, 2]]]
  # Factor levels in order of first appearance, as clusterlmer orders them; effects coding as the R engine's.
  for (col in names(d)) if (is.character(d[[col]])) {
    d[[col]] <- factor(d[[col]], levels = unique(d[[col]]))
    if (cases[i, 5] == "effects") {
      cm <- contr.sum(levels(d[[col]])); colnames(cm) <- levels(d[[col]])[-nlevels(d[[col]])]
      contrasts(d[[col]]) <- cm
    }
  }
  f <- as.formula(sub("^[^~]*~", "y_ ~", cases[i, 3]))
  for (resp in strsplit(cases[i, 4], ",")[[1]]) {
    d$y_ <- d[[resp]]
    for (reml in if (cases[i, 6] == "TRUE") c(TRUE, FALSE) else TRUE) {
      fit <- fit_lmer(f, d, reml, ctrl)
      m <- fit$m
      put_fit(m, "")
      put_tests(m, c("marginal", "type3"), "")
      put("singular", "", as.character(isSingular(m)))
      put("converged", "", as.character(m@optinfo$conv$opt == 0 && !any(grepl("converge", fit$msgs, TRUE))))
      for (msg in fit$msgs) put("message", "", msg)
      refined <- if (isSingular(m)) NULL else refine(f, d, reml, m)
      if (!is.null(refined)) {
        put_fit(refined, "refined_")
        put_tests(refined, c("marginal", "type3"), "refined_")
      }
    }
  }
}
utils::write.csv(do.call(rbind, rows), file.path(out, "reference.csv"), row.names = FALSE)
"""


# --------------------------------------------------------------------------
# data and the lme4 run
# --------------------------------------------------------------------------

def _hexed(frame):
    out = frame.copy()
    for col in out.columns:
        if pd.api.types.is_numeric_dtype(out[col]):
            out[col] = [float(v).hex() for v in out[col]]
    return out


def _numbers(texts):
    return np.array([np.nan if t == "NA" else float.fromhex(t) for t in texts], dtype=float)


def _read_hex(path):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in frame.columns:
        if len(frame) and frame[col].str.match(r"^-?0x").all():
            frame[col] = _numbers(frame[col])
    return frame


def _sample_2way_frame():
    data = datasets.sample_2way()
    frame = data.design.copy()
    for i, t in enumerate(SAMPLE_TIMES):
        frame[f"t{i}"] = data.values[:, t]
    return frame


def _subject_item_frame():
    """Subjects x items, about 15% of the trials missing: ``a`` varies between items (within
    subjects), ``b`` between subjects (within items). y1 has no item or slope variance."""
    rng = np.random.default_rng(20240607)
    n_subjects, n_items = 18, 14
    subject = np.repeat(np.arange(n_subjects), n_items)
    item = np.tile(np.arange(n_items), n_subjects)
    keep = rng.random(subject.size) >= 0.15
    subject, item = subject[keep], item[keep]
    a2, b2 = (item >= n_items // 2).astype(float), (subject % 2).astype(float)
    frame = pd.DataFrame({"Subject": [f"S{s:02d}" for s in subject], "Item": [f"I{i:02d}" for i in item],
                          "a": np.where(a2 > 0, "a2", "a1"), "b": np.where(b2 > 0, "b2", "b1")})
    # SDs of the subject intercept, subject a-slope, item intercept and residual; a, b, a:b effects.
    for name, (sd_s, sd_slope, sd_i, sd_e, (ea, eb, eab)) in {
            "y0": (1.0, 0.6, 0.8, 1.0, (0.5, 0.3, 0.4)),
            "y1": (0.7, 0.0, 0.0, 1.0, (0.2, 0.0, 0.0)),
            "y2": (1.5, 1.0, 0.4, 0.5, (1.0, -0.5, 0.8))}.items():
        u = rng.normal(size=(n_subjects, 2)) * [sd_s, sd_slope]
        w = rng.normal(size=n_items) * sd_i
        frame[name] = (5 + ea * a2 + eb * b2 + eab * a2 * b2 + u[subject, 0] + u[subject, 1] * a2 + w[item]
                       + sd_e * rng.normal(size=subject.size))
    return frame


@dataclass
class Lme4Fit:
    """One lmerTest fit of one response, as the Rscript reported it."""

    theta: np.ndarray
    criterion: float
    sigma: float
    beta: pd.Series  # by coefficient name, NaN where lme4 dropped the column
    se: pd.Series
    stats: pd.DataFrame  # index (test, ddf, term), columns F, DF1, DF2, p
    singular: bool
    converged: bool
    messages: list
    refined: "Lme4Fit | None" = None
    spread: float = np.inf  # largest relative move of a compared number when refined
    loose: bool = True


def _lme4_fit(rows, prefix=""):
    if not (rows["part"] == prefix + "theta").any():
        return None
    part = {p: g for p, g in rows.groupby("part")}
    series = {k: pd.Series(_numbers(part[prefix + k]["value"]), index=part[prefix + k]["name"].tolist())
              for k in ("beta", "se")}
    st = part[prefix + "stat"].assign(num=lambda g: _numbers(g["value"]))
    stats = st.pivot(index=["test", "ddf", "name"], columns="stat", values="num")
    # Flags and messages belong to lme4's own fit (prefix ""), not to its refined point.
    flag = {k: not prefix and part[k]["value"].iloc[0] == "TRUE" for k in ("singular", "converged")}
    return Lme4Fit(theta=_numbers(part[prefix + "theta"]["value"]),
                   criterion=float(_numbers(part[prefix + "criterion"]["value"])[0]),
                   sigma=float(_numbers(part[prefix + "sigma"]["value"])[0]), beta=series["beta"], se=series["se"],
                   stats=stats, singular=flag["singular"], converged=flag["converged"],
                   messages=part["message"]["value"].tolist() if "message" in part and not prefix else [])


def _rel(a, b, scale=None):
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = np.abs(b) if scale is None else np.maximum(np.abs(b), np.abs(scale))
    both_nan, same = np.isnan(a) & np.isnan(b), a == b  # equal infinities too
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(same | both_nan, 0.0, np.abs(a - b) / np.where(scale == 0, 1.0, scale))
    return np.where(np.isnan(rel), np.inf, rel)


def _p_condition(F, df1, df2):
    """1 + |d log p / d log F| + |d log p / d log DF2|: how far p moves, relatively, when F and DF2 move by 1.

    A tiny p (e.g. an intercept's) moves hundreds of times more than its F, so p agrees to
    ``rtol * _p_condition`` when F and DF2 agree to ``rtol``.
    """
    if not (np.isfinite(F) and F > 0):
        return 1.0
    h = 1e-4

    def logp(f, d2):
        return scipy.stats.chi2.logsf(f * df1, df1) if np.isinf(d2) else scipy.stats.f.logsf(f, df1, d2)

    near = [logp(F * np.exp(h), df2), logp(F * np.exp(-h), df2)]
    near += [near[0]] * 2 if np.isinf(df2) else [logp(F, df2 * np.exp(h)), logp(F, df2 * np.exp(-h))]
    if not np.isfinite(near).all():  # p underflows (below ~1e-300): it says nothing beyond F
        return np.inf
    return 1.0 + abs(near[0] - near[1]) / (2 * h) + abs(near[2] - near[3]) / (2 * h)


def _stat_moves(ours, table, term):
    """Relative differences of F, DF2 and p (p's divided by its condition) against lme4's ``table`` row."""
    row = table.loc[term]
    kappa = _p_condition(row["F"], row["DF1"], row["DF2"])
    p = float(_rel(ours["p"], row["p"]))
    return {"F": float(_rel(ours["F"], row["F"])), "DF2": float(_rel(ours["DF2"], row["DF2"])),
            "p": p / kappa if np.isfinite(p) else np.inf}


def _spread(fit, refined):
    """Largest relative move, when lme4's optimum is refined, of the numbers the comparison uses."""
    if refined is None:
        return np.inf
    moves = []
    for test in ("marginal", "type3"):  # both tables: type III's DF2 can move more than the marginal one's
        if test not in fit.stats.index.get_level_values(0) or test not in refined.stats.index.get_level_values(0):
            continue
        a, b = refined.stats.loc[test], fit.stats.loc[test]
        moves += [list(_stat_moves(a.loc[key], b, key).values()) for key in b.index]
    moves += [_rel(refined.beta, fit.beta, fit.se), _rel(refined.se, fit.se), _rel(refined.sigma, fit.sigma)]
    return float(max(np.max(m, initial=0.0) for m in moves))


@pytest.fixture(scope="module")
def lme4_run(tmp_path_factory):
    """The Rscript run: its directory (data sets as hex CSVs) and every fit, by (case, response, reml)."""
    root = tmp_path_factory.mktemp("native_general_parity")
    _hexed(_sample_2way_frame()).to_csv(root / "sample_2way.csv", index=False)
    _hexed(_subject_item_frame()).to_csv(root / "subject_item.csv", index=False)
    args = [x for cid, c in CASES.items()
            for x in (cid, c.data, c.formula, ",".join(c.responses), c.coding, str(c.ml).upper())]
    proc = run_rscript(_R, str(root), *args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(root / "reference.csv", dtype=str, keep_default_na=False)
    fits = {}
    for (case, resp, reml), rows in table.groupby(["case", "resp", "reml"]):
        fit = _lme4_fit(rows)
        fit.refined = _lme4_fit(rows, "refined_")
        fit.spread = _spread(fit, fit.refined)
        fit.loose = case in LME4_SPREAD or fit.singular or not fit.converged or not fit.spread <= TIGHT
        fits[case, resp, reml == "TRUE"] = fit
    return root, fits


@pytest.fixture(scope="module")
def models(lme4_run):
    """``models(case)``: the case's (spec, Y) from the same hex CSVs R fitted."""
    root, _ = lme4_run
    cache = {}

    def get(case):
        if case not in cache:
            c = CASES[case]
            frame = _read_hex(root / f"{c.data}.csv")
            model = parse_formula(c.formula)
            design = build_design(frame, model, coding=c.coding, response_column=model.response)
            cache[case] = build_spec(design), frame[list(c.responses)].to_numpy(float)
        return cache[case]

    return get


# --------------------------------------------------------------------------
# comparisons
# --------------------------------------------------------------------------

def _differences(fit, r, ref, options, rtol, label):
    """Problems (text) of fit column ``r`` against lme4's ``ref`` under ``options``, and the worst differences."""
    problems, worst = [], {}
    try:
        table = ref.stats.loc[(options.test, options.ddf)]
    except KeyError:  # no term to test (type III of an intercept-only model)
        table = pd.DataFrame(columns=["F", "DF1", "DF2", "p"])
    if set(fit.terms) != set(table.index):
        return [f"{label}: terms {fit.terms} vs lme4's {list(table.index)}"], worst
    for i, term in enumerate(fit.terms):
        if fit.df1[i, r] != table.loc[term, "DF1"]:
            problems.append(f"{label} {term}: DF1 {fit.df1[i, r]} vs lme4's {table.loc[term, 'DF1']}")
        ours = {"F": fit.F[i, r], "DF2": fit.df2[i, r], "p": fit.p[i, r]}
        for stat, d in _stat_moves(ours, table, term).items():
            worst[stat] = max(worst.get(stat, 0.0), d)
            if not d <= (max(rtol, RTOL_AT_THETA_DF) if stat in ("DF2", "p") else rtol):
                what = "rel" if stat != "p" else "rel / p's condition"
                problems.append(f"{label} {term}: {stat} {ours[stat]!r} vs lme4's {table.loc[term, stat]!r} "
                                f"({what} {d:.2e})")
    if tuple(fit.coef_names) != tuple(ref.beta.index):
        return problems + [f"{label}: coefficients {fit.coef_names} vs lme4's {list(ref.beta.index)}"], worst
    for what, ours, theirs, scale in (("estimate", fit.estimate[:, r], ref.beta, ref.se),
                                      ("se", fit.se[:, r], ref.se, None),
                                      ("sigma", [fit.sigma[r]], [ref.sigma], None)):
        d = _rel(ours, theirs, scale)
        worst[what] = float(d.max())
        for j in np.flatnonzero(~(d <= rtol)):
            problems.append(f"{label}: {what}[{j}] {ours[j]!r} vs lme4's {np.asarray(theirs)[j]!r} (rel {d[j]:.2e})")
    return problems, worst


def _message_problems(message, ref, label):
    """lme4's singular-fit message in ``message`` exactly when lme4 says isSingular; its rank message always."""
    problems = []
    singular = [m for m in ref.messages if m.startswith(SINGULAR)]
    if ref.singular and not any(m in message for m in singular):
        problems.append(f"{label}: lme4's {singular} is not among the native messages {message!r}")
    if not ref.singular and SINGULAR in message:
        problems.append(f"{label}: the native engine says {message!r}, lme4's isSingular is FALSE")
    for m in ref.messages:
        if m.startswith("fixed-effect model matrix is rank deficient") and m not in message:
            problems.append(f"{label}: lme4's {m!r} is not among the native messages {message!r}")
    return problems


def _options(spec, reml, ddf, test):
    """The options of a case; the native engine must accept every one of them (marginal and type III)."""
    options = FitOptions(reml=reml, ddf=ddf, test=test)
    ok, why = native.supports(spec, options)
    assert ok, f"the native engine declines {options}: {why}"
    return options


def _theta(refs):
    return np.column_stack([ref.theta for ref in refs])


FIT_PARAMS = [pytest.param(case, reml, id=f"{case}-{'REML' if reml else 'ML'}")
              for case, c in CASES.items() for reml in ((True, False) if c.ml else (True,))]


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------

def test_lme4_reference_run(lme4_run):
    """The R side: every fit tabulated, lme4's messages where they belong, refining never uphill."""
    _, fits = lme4_run
    expected = {(case, resp, reml) for case, c in CASES.items() for resp in c.responses
                for reml in ((True, False) if c.ml else (True,))}
    assert set(fits) == expected
    for key, fit in fits.items():
        assert fit.singular == any(m.startswith(SINGULAR) for m in fit.messages), (key, fit.messages)
        marginal = fit.stats.loc[("marginal", "satterthwaite")]
        assert np.isfinite(marginal.to_numpy()).all(), key
        assert "(Intercept)" in marginal.index, key
        # lmerTest's type III table: the marginal test's terms without the intercept (none: no table).
        tests = set(fit.stats.index.get_level_values("test"))
        if len(marginal) > 1:
            type3 = fit.stats.loc[("type3", "satterthwaite")]
            assert tests == {"marginal", "type3"} and set(type3.index) == set(marginal.index) - {"(Intercept)"}, key
            assert np.isfinite(type3.to_numpy()).all(), key
        else:
            assert tests == {"marginal"}, key
        if fit.refined is not None:
            assert fit.refined.criterion <= fit.criterion + 1e-12 * abs(fit.criterion), key
        print(f"[lme4] {key}: criterion {fit.criterion:.12g}, refining moves {fit.spread:.1e}, "
              f"singular {fit.singular}, converged {fit.converged}, {'loose' if fit.loose else 'tight'}")
    # Both branches of the singular-message check are exercised.
    assert any(f.singular for f in fits.values()) and not all(f.singular for f in fits.values())
    for reml in (True, False):
        cake = fits["cake_rank_deficient", "angle", reml]
        assert "fixed-effect model matrix is rank deficient so dropping 2 columns / coefficients" in cake.messages
        assert sorted(cake.beta.index[cake.beta.isna()]) == ["recipeB:tempT205", "recipeC:tempT225"]
        assert cake.stats.loc[("marginal", "satterthwaite", "recipe:temp"), "DF1"] == 8


@pytest.mark.parametrize("case", list(CASES))
def test_spec_matches_lme4_design(lme4_run, models, case):
    """Our specification has lme4's coefficients, terms and number of theta entries."""
    _, fits = lme4_run
    spec, _ = models(case)
    ref = fits[case, CASES[case].responses[0], True]
    assert tuple(spec.fixed.coef_names) == tuple(ref.beta.index)
    assert set(spec.fixed.terms) == set(ref.stats.loc[("marginal", "satterthwaite")].index)
    assert sum(t.n_theta for t in spec.random) == len(ref.theta)


@pytest.mark.parametrize("test", ["marginal", "type3"])
@pytest.mark.parametrize("ddf", ["satterthwaite", "residual", "none"])
@pytest.mark.parametrize("case, reml", FIT_PARAMS)
def test_native_matches_lme4(lme4_run, models, case, reml, ddf, test):
    _, fits = lme4_run
    spec, Y = models(case)
    options = _options(spec, reml, ddf, test)
    refs = [fits[case, resp, reml] for resp in CASES[case].responses]
    fit = native.fit_block(spec, Y, options)
    problems, worst, loose = [], {}, []
    for r, (resp, ref) in enumerate(zip(CASES[case].responses, refs)):
        label = f"{case} {resp} {'REML' if reml else 'ML'} {ddf}/{test}"
        problems += _message_problems(fit.messages[r], ref, label)
        ours, theirs = fit.deviance[r], ref.criterion
        if not ours <= theirs + CRITERION_RTOL * abs(theirs):
            problems.append(f"{label}: native criterion {ours!r} at its optimum is above lme4's {theirs!r} "
                            f"(refined lme4: {ref.refined.criterion if ref.refined else None!r})")
        if ref.loose:
            loose.append(r)
            continue
        if not fit.converged[r]:
            problems.append(f"{label}: the native fit did not converge ({fit.messages[r]!r}), lme4's did")
        more, w = _differences(fit, r, ref, options, RTOL, label + " (own optimum)")
        problems += more
        worst.update({k: max(v, worst.get(k, 0.0)) for k, v in w.items()})
    if loose:  # lme4's optimum is loose there: compare at lme4's theta
        at = native.evaluate_at(spec, Y[:, loose], options, _theta([refs[r] for r in loose]))
        for j, r in enumerate(loose):
            label = f"{case} {CASES[case].responses[r]} {'REML' if reml else 'ML'} {ddf}/{test} at lme4's theta"
            more, _ = _differences(at, j, refs[r], options, RTOL_AT_THETA, label)
            problems += more + _message_problems(at.messages[j], refs[r], label)
    print(f"[native] {case} {'REML' if reml else 'ML'} {ddf}/{test}: own optimum max rel "
          + ", ".join(f"{k}={v:.1e}" for k, v in worst.items()) + f"; loose at lme4: {len(loose)}/{len(refs)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case, reml", FIT_PARAMS)
def test_native_at_lme4_theta(lme4_run, models, case, reml):
    """Evaluated at lme4's theta, every fit agrees to 1e-8 (Satterthwaite, marginal test)."""
    _, fits = lme4_run
    spec, Y = models(case)
    options = FitOptions(reml=reml)
    refs = [fits[case, resp, reml] for resp in CASES[case].responses]
    at = native.evaluate_at(spec, Y, options, _theta(refs))
    problems, worst = [], {}
    for r, ref in enumerate(refs):
        label = f"{case} {CASES[case].responses[r]} {'REML' if reml else 'ML'} at lme4's theta"
        more, w = _differences(at, r, ref, options, RTOL_AT_THETA, label)
        problems += more + _message_problems(at.messages[r], ref, label)
        w["criterion"] = float(_rel(at.deviance[r], ref.criterion))
        if not w["criterion"] <= RTOL_AT_THETA:
            problems.append(f"{label}: criterion {at.deviance[r]!r} vs lme4's {ref.criterion!r} "
                            f"(rel {w['criterion']:.2e})")
        worst.update({k: max(v, worst.get(k, 0.0)) for k, v in w.items()})
    print(f"[native] {case} {'REML' if reml else 'ML'} at lme4's theta: max rel "
          + ", ".join(f"{k}={v:.1e}" for k, v in worst.items()))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", CROSSED_OR_SLOPES)
def test_auto_picks_native(models, case):
    """engine='auto' fits crossed and random-slope models natively, and names why it does not."""
    spec, _ = models(case)
    for options in (FitOptions(), FitOptions(reml=False, ddf="residual"), FitOptions(ddf="none")):
        name, note = resolve_engine("auto", spec, options)
        assert name == "native", f"{case} {options}: auto chose {name!r}: {note}"
        assert note == ""
    name, note = resolve_engine("auto", spec, FitOptions(ddf="kenward-roger"))
    assert name == "r" and "kenward-roger" in note, (name, note)
