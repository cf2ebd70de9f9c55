"""The command line's model-fit options: their flags, and the fit keywords they become.

``clusterlmer fit`` and ``clusterlmer run`` share them; each flag is named
after the keyword of :func:`clusterlmer.fit_timeseries` it sets, and its
choices come from the module that checks that keyword.
"""

from __future__ import annotations

import argparse

from .coding import CODINGS, LEVEL_ORDERS, coding_flag, coding_from_flags
from .engines import ENGINE_CHOICES
from .engines.base import DDF_METHODS, OPTIMIZERS, TESTS
from .families import FAMILIES, GLMM_TESTS
from .missing import NA_ACTIONS

__all__ = ["add_fit_options", "checked", "contrast_argument", "contrasts_dict", "fit_kwargs", "non_negative_int"]


def checked(convert, ok, what):
    """An argparse ``type`` converting with ``convert`` and accepting values where ``ok(value)``."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


non_negative_int = checked(int, lambda v: v >= 0, "0 or a positive integer")


def fit_kwargs(args) -> dict:
    """The :func:`clusterlmer.fit_timeseries` keywords of parsed model-fit flags."""
    return dict(reml=not args.ml, ddf=args.ddf, coding=coding_from_flags(args.coding), test=args.test,
                optimizer=args.optimizer, engine=args.engine, cross_check=args.cross_check,
                level_order=args.level_order, na_action=args.na_action, family=args.family, weights=args.weights,
                glmm_test=args.glmm_test,
                contrasts=args.contrasts)


def add_fit_options(p):
    """The model-fit flags shared by ``fit`` and ``run``."""
    g = p.add_argument_group("model fit (as lmerTest; see clusterlmer.fit_timeseries)")
    g.add_argument("--ml", action="store_true", help="fit by ML (MATLAB fitlme's default) instead of REML")
    g.add_argument("--ddf", default="satterthwaite", choices=DDF_METHODS,
                   help="denominator degrees of freedom (default satterthwaite; MATLAB's default is residual)")
    g.add_argument("--coding", action="append", type=coding_flag, metavar="CODING|VAR=CODING", help=f"factor coding, "
                   f"{'/'.join(CODINGS)} as R's contr.treatment/sum/helmert/poly (default reference, as MATLAB); "
                   "VAR=CODING codes one variable (repeatable), e.g. --coding effects --coding dose=poly")
    g.add_argument("--level-order", default="appearance", choices=LEVEL_ORDERS,
                   help="factor levels in order of first appearance (default, MATLAB) or sorted as R's factor()")
    g.add_argument("--na-action", default="omit", choices=NA_ACTIONS, help="rows with a missing value in a model "
                   "variable: left out as lme4's na.omit (default) or an error")
    g.add_argument("--test", default="marginal", choices=TESTS,
                   help="marginal F per term as MATLAB's anova (default), or lmerTest's anova type III, II or I")
    g.add_argument("--family", default="gaussian", choices=FAMILIES,
                   help="binomial/poisson: a GLMM fitted by lme4::glmer (Wald chi-square per term)")
    g.add_argument("--weights", metavar="COLUMN", help="binomial: design column with each row's number of trials")
    g.add_argument("--glmm-test", default="wald", choices=GLMM_TESTS, help="a GLMM's test of each term: Wald "
                   "chi-square (default) or likelihood ratio against the fit without the term (marginal test only)")
    g.add_argument("--optimizer", default="bobyqa", choices=OPTIMIZERS,
                   help="lme4 optimizer (default bobyqa with rhoend 1e-9); another one makes --engine auto use R")
    g.add_argument("--engine", default="auto", choices=ENGINE_CHOICES,
                   help="auto (default): the native engine (batched, exact, tens to hundreds of times faster) when "
                   "the options allow, cross-checked against lme4/lmerTest at 3 timepoints, else "
                   "lme4/lmerTest with a warning saying why; r: lme4/lmerTest at every fit; native: the native "
                   "engine or an error naming what it cannot fit")
    g.add_argument("--contrast", action="append", type=contrast_argument, metavar="NAME=EXPR", dest="contrasts",
                   help="also test a contrast of the coefficients, as lmerTest's contest, under NAME: EXPR weights "
                   "coefficient names, e.g. 'hit in hc=hit_misshit + hit_misshit:regionhc' (rows of a joint test "
                   "separated by ';'); repeat for several")
    g.add_argument("--cross-check", type=non_negative_int, default=3, metavar="N",
                   help="with the native engine, refit N observed timepoints with lme4/lmerTest and report the "
                   "largest difference (default 3; 0 turns it off, and R is then not needed)")


def contrast_argument(text):
    """``NAME=EXPR`` of --contrast as a (name, expression) pair (argparse type)."""
    from .contrasts import parse_contrast_option

    try:
        return parse_contrast_option(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def contrasts_dict(parser, pairs):
    """The --contrast options as ``{name: expression}`` (None without any); a name given twice is an error."""
    out = {}
    for name, expr in pairs or []:
        if name in out:
            parser.error(f"--contrast names {name!r} twice; give each contrast its own name")
        out[name] = expr
    return out or None
