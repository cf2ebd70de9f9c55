"""Generalized linear mixed models: the families fitted with ``lme4::glmer``, and the checks of their responses.

A ``family`` other than ``"gaussian"`` makes every fit a GLMM, fitted by
lme4's ``glmer`` (Laplace approximation, the family's canonical link) in the R
engine. Conventions, as lme4's:

* ``"binomial"``: the response is 0/1 per row, or with ``weights=`` (a
  design column holding the number of trials) the proportion of successes per
  row, so that proportion x trials is a whole number;
* ``"poisson"``: counts (non-negative whole numbers).

There is no REML for GLMMs and no denominator degrees of freedom: each term
is tested by a Wald chi-square on the fixed effects' covariance (what
``car::Anova`` and ``summary()``'s z tests use), or with
``glmm_test="lrt"`` by a likelihood-ratio chi-square: twice the
log-likelihood of the fit minus that of a ``glmer`` fit whose fixed part lacks
the term's columns (one more fit per term at every sample). The fit reports
either in the F layout: ``F = chi2 / DF1`` with ``DF2 = Inf``, whose p is the
chi-square p; ``t`` of a one-coefficient term is the Wald z (the signed root
of the likelihood-ratio chi-square).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ._checks import check_option, option_hint

__all__ = ["FAMILIES", "GLMM_TESTS", "LINKS", "TRIALS_COLUMN", "check_family", "check_glmm_response", "describe_family",
           "with_trials"]

FAMILIES = ("gaussian", "binomial", "poisson")
GLMM_TESTS = ("wald", "lrt")
LINKS = {"binomial": "logit", "poisson": "log"}
TRIALS_COLUMN = ".cl_weights"  # the numbers of trials, beside the model variables in the coded design
_WHOLE = 1e-8  # how far from a whole number a count (or proportion x trials) may be


def check_family(family, weights, reml, ddf, glmm_test="wald", test="marginal"):
    """Check ``family``, ``weights`` and ``glmm_test``; return the ``(reml, ddf)`` the fit uses.

    A GLMM is fitted by maximum likelihood (Laplace) and tested without
    denominator degrees of freedom, so ``reml`` becomes False and ``ddf``
    ``"none"``; ``ddf`` methods that only exist for linear models are refused.
    """
    check_option("family", family, FAMILIES)
    check_option("glmm_test", glmm_test, GLMM_TESTS)
    if glmm_test == "lrt" and family == "gaussian":
        raise ValueError("glmm_test='lrt' tests a GLMM's terms by likelihood ratio; a linear mixed model's terms "
                         "have F tests with denominator DF (ddf=). Pass family='binomial' or 'poisson', or leave "
                         "glmm_test out.")
    if glmm_test == "lrt" and test != "marginal":
        raise ValueError(f"glmm_test='lrt' compares the fit with one lacking each term's columns (the marginal "
                         f"test's hypotheses); test={test!r} defines its hypotheses by contrasts, which only the "
                         "Wald test takes: use test='marginal' or glmm_test='wald'.")
    if weights is not None and not isinstance(weights, str):
        raise TypeError(f"weights must name a design column (the number of trials), got {weights!r}.")
    if family == "gaussian":
        if weights is not None:
            binomial = option_hint("family='binomial'", "--family binomial")
            raise ValueError(
                f"weights={weights!r} gives the number of trials of a binomial response; linear mixed models "
                f"take no weights here. Use {binomial} for proportions of successes, or leave weights out.")
        return reml, ddf
    if weights is not None and family != "binomial":
        raise ValueError(f"weights= (numbers of trials) applies to family='binomial', not {family!r}; leave it out.")
    if ddf in ("kenward-roger", "residual"):
        none = option_hint("ddf='none'", "--ddf none")
        raise ValueError(
            f"ddf={ddf!r} applies to linear mixed models; a {family} GLMM's terms are tested by Wald chi-square "
            f"(asymptotic, no denominator DF): leave ddf at its default or use {none}.")
    return False, "none"


def check_glmm_response(values, design, family, weights):
    """Refuse responses the family cannot model, naming how many and the fix (before any fit).

    Parameters
    ----------
    values : ndarray, shape (n_obs, ...)
        The data; NaN (a missing sample) is left to the per-sample exclusion.
    design : pandas.DataFrame
    family : str
    weights : str or None
        Design column with the number of trials (binomial).
    """
    if family == "gaussian":
        return
    y = np.asarray(values, dtype=float).reshape(len(design), -1)
    finite = np.isfinite(y)
    if family == "poisson":
        bad = finite & ((y < 0) | (np.abs(y - np.round(y)) > _WHOLE))
        if bad.any():
            raise ValueError(f"family='poisson' models counts, but {int(bad.sum())} values are negative or not whole "
                             f"numbers (e.g. {y[bad][0]:g}). Pass counts, or use family='gaussian'.")
        return
    if weights is None:
        bad = finite & (y != 0) & (y != 1)
        if bad.any():
            hint = option_hint("weights='trials'", "--weights trials")
            raise ValueError(
                f"family='binomial' without weights models 0/1 responses, but {int(bad.sum())} values are neither "
                f"0 nor 1 (e.g. {y[bad][0]:g}). For proportions of successes pass the number of trials per row "
                f"with {hint} (a design column), as lme4's glmer takes them.")
        return
    if weights not in design.columns:
        raise ValueError(f"weights={weights!r} is not a design column; the columns are {list(design.columns)}.")
    try:
        trials = np.asarray(design[weights], dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"the weights column {weights!r} must hold numbers of trials, got non-numbers.") from None
    if not (np.isfinite(trials).all() and (trials > 0).all()):
        raise ValueError(f"the weights column {weights!r} must hold positive numbers of trials (no missing values).")
    out = finite & ((y < 0) | (y > 1))
    if out.any():
        raise ValueError(f"with weights, family='binomial' takes proportions of successes in [0, 1], but "
                         f"{int(out.sum())} values are outside (e.g. {y[out][0]:g}). Divide successes by {weights!r}.")
    successes = y * trials[:, None]
    bad = finite & (np.abs(successes - np.round(successes)) > _WHOLE * np.maximum(1, trials[:, None]))
    if bad.any():
        raise ValueError(f"proportion x {weights!r} must be a whole number of successes, but {int(bad.sum())} "
                         "values are not: pass successes / trials.")


def describe_family(options: dict) -> str | None:
    """One line for a fit's summary, or None for a linear model."""
    family = options.get("family", "gaussian")
    if family == "gaussian":
        return None
    weights = options.get("weights")
    lrt = options.get("glmm_test") == "lrt"
    test = ("likelihood-ratio chi-square (against the fit without the term's columns)" if lrt
            else "Wald chi-square")
    return (f"GLMM, family {family} ({LINKS[family]} link){f', trials in {weights!r}' if weights else ''}; "
            f"lme4::glmer, Laplace ML; each term's {test} reported as F = chi2/DF1 with DF2 = Inf "
            f"(same p), t = {'signed root of the chi-square' if lrt else 'Wald z'}")


def with_trials(design, table, weights):
    """The coded design with the ``weights`` column of ``table`` beside the model variables.

    It rides along with the rows (subsets for missing samples keep it, permutations leave it in
    place: trials belong to the response, not to the permuted conditions).
    """
    if weights is None:
        return design
    frame = design.frame.copy()
    frame[TRIALS_COLUMN] = np.asarray(table[weights], dtype=float)
    return replace(design, frame=frame)
