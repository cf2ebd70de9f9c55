"""User contrasts: tests of ``L beta = rhs`` over the fixed-effect coefficients.

A contrast is written over the coefficient names a fit reports
(``fit.coef_names``) in one of these forms:

* an expression of weighted coefficient names, e.g.
  ``"hit_misshit + 0.5*hit_misshit:regionhc"``; rows of a joint test are
  separated by ``;`` (``"Product2; Product3"``) and a row may end with
  ``= value`` (its right-hand side); a name that holds an operator may be
  written between backquotes;
* a dict (or pandas Series) of ``{coefficient name: weight}``: one row;
* a list of such expressions or dicts: one row each;
* a numeric vector (one row) or matrix (one row per hypothesis) with one
  column per coefficient, in ``fit.coef_names`` order.

Every engine tests each contrast as lmerTest's ``contest(model, L, joint =
TRUE)`` does (``contestMD``; ``contest1D`` for one row): F over the positive
eigenvalues of ``L vcov(beta) L'``, whose count is DF1, so linearly dependent
rows are reduced to the rank of ``L``; DF2 by Satterthwaite (lmerTest's
formulas), Kenward-Roger (pbkrtest, R engine), ``n - p`` or infinite. Such a
contrast is reported by the fit as an extra row of its F table, under its
name, and can be cluster-tested like a term.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ._checks import option_hint
from .data import _preview

__all__ = ["Contrast", "ContrastTest", "check_contrasts", "fit_contrast", "make_contrast", "parse_contrast_option",
           "require_zero_rhs", "with_contrasts", "check_tested_contrasts"]

_NUMBER = re.compile(r"\s*((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*")


@dataclass(frozen=True, eq=False)
class Contrast:
    """A checked contrast: its name and the hypothesis ``L beta = rhs``.

    Attributes
    ----------
    name : str
        The row label the F table gives it.
    L : ndarray, shape (q, p)
        Weights per coefficient of ``coef_names``.
    rhs : ndarray, shape (q,)
    coef_names : tuple of str
    """

    name: str
    L: np.ndarray
    rhs: np.ndarray
    coef_names: tuple

    @property
    def text(self) -> str:
        """The hypothesis in words, e.g. ``"hit_misshit + 0.5*regionhc = 0"``."""
        rows = []
        for row, r in zip(self.L, self.rhs):
            parts = []
            for w, name in zip(row, self.coef_names):
                if w == 0:
                    continue
                sign = "-" if w < 0 else "+"
                weight = "" if abs(w) == 1 else f"{abs(w):g}*"
                parts.append(f"{sign} {weight}{name}")
            expr = " ".join(parts)
            rows.append((expr[2:] if expr.startswith("+ ") else "-" + expr[2:]) + f" = {r:g}")
        return "; ".join(rows)

    def on_columns(self, kept):
        """``(L, rhs)`` on the coefficients ``kept`` (indices) a rank-deficient fit estimates.

        A contrast with weight on a dropped coefficient cannot be tested
        there: it gets no rows (NaN statistics, as for a term lme4 dropped).
        """
        kept = np.asarray(kept)
        dropped = np.setdiff1d(np.arange(self.L.shape[1]), kept)
        if dropped.size and np.any(self.L[:, dropped] != 0):
            return np.zeros((0, len(kept))), np.zeros(0)
        return self.L[:, kept], self.rhs

    def variables(self, fixed) -> list:
        """Fixed-effect variables of the coefficients it weights (``fixed``: a :class:`~clusterlmer.spec.FixedSpec`)."""
        out = []
        for j in np.flatnonzero(np.any(self.L != 0, axis=0)):
            ti = int(fixed.assign[j])
            if ti > 0:  # 0: the intercept, no variable
                out += [v for v in fixed.term_vars[ti - 1] if v not in out]
        return out


def _coefficient_at(text, pos, names):
    """The longest coefficient name (or backquoted name) starting at ``pos``: (name, end) or (None, pos)."""
    if text.startswith("`", pos):
        end = text.find("`", pos + 1)
        if end > pos:
            return text[pos + 1:end], end + 1
        return None, pos
    best = None
    for name in names:
        end = pos + len(name)
        # A name must end where the word does: "ab" is not "a" followed by "b".
        whole = end >= len(text) or not (text[end].isalnum() or text[end] in "._")
        if text.startswith(name, pos) and whole and (best is None or len(name) > len(best)):
            best = name
    return (best, pos + len(best)) if best else (None, pos)


def _parse_row(text, names, where):
    """Weights (dict) and right-hand side of one row of an expression."""
    def fail(pos, what):
        raise ValueError(f"{where}: {what} at position {pos} of {text!r}. Write weighted coefficient names such as "
                         f"'a - 0.5*b' (rows separated by ';', a name holding an operator between backquotes); "
                         f"the coefficients are {_preview(names, 60)}.")

    weights, pos, n, rhs = {}, 0, len(text), 0.0
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            if not weights:
                fail(pos, "no coefficient")
            break
        if text[pos] == "=":
            m = re.fullmatch(r"\s*([+-]?)" + _NUMBER.pattern, text[pos + 1:])
            if not weights or not m:
                fail(pos, "'=' must follow the weighted names and precede a number")
            rhs = float(m.group(1) + m.group(2))
            break
        sign = 1.0
        if weights:
            if text[pos] not in "+-":
                fail(pos, f"expected '+' or '-' before {text[pos:pos + 20]!r}")
        while pos < n and (text[pos] in "+-" or text[pos].isspace()):
            sign = -sign if text[pos] == "-" else sign
            pos += 1
        name, end = _coefficient_at(text, pos, names)
        weight = 1.0
        if name is None:
            m = _NUMBER.match(text, pos)
            if m and text.startswith("*", m.end()):
                weight = float(m.group(1))
                pos = m.end() + 1
                while pos < n and text[pos].isspace():
                    pos += 1
                name, end = _coefficient_at(text, pos, names)
        if name is None or name not in names:
            word = re.match(r"`[^`]*`|[^\s+*/=;-]+", text[pos:])
            shown = word.group(0).strip("`") if word else text[pos:pos + 20]
            fail(pos, f"{shown!r} is not a coefficient of the model")
        pos = end
        m = re.match(r"\s*([*/])" + _NUMBER.pattern, text[pos:])
        if m:
            value = float(m.group(2))
            weight = weight * value if m.group(1) == "*" else weight / value
            pos += m.end()
        weights[name] = weights.get(name, 0.0) + sign * weight
    return weights, rhs


def _rows(value, coef_names, where):
    """``(L, rhs)`` from any accepted form of a contrast."""
    p = len(coef_names)
    index = {name: j for j, name in enumerate(coef_names)}

    def from_weights(weights):
        unknown = [k for k in weights if k not in index]
        if unknown:
            raise ValueError(f"{where}: {_preview(unknown)} {'is' if len(unknown) == 1 else 'are'} not "
                             f"{'a coefficient' if len(unknown) == 1 else 'coefficients'} of the model; its "
                             f"coefficients are {_preview(coef_names, 60)}.")
        row = np.zeros(p)
        for k, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float, np.integer, np.floating)):
                raise TypeError(f"{where}: the weight of {k!r} must be a number, got {w!r}.")
            row[index[k]] = float(w)
        return row

    if isinstance(value, pd.Series):
        value = value.to_dict()
    if isinstance(value, str):
        parts = [s for s in value.split(";")]
        if any(not s.strip() for s in parts):
            raise ValueError(f"{where}: an empty row in {value!r}; separate rows by one ';'.")
        parsed = [_parse_row(s, coef_names, where) for s in parts]
        return np.array([from_weights(w) for w, _ in parsed]), np.array([r for _, r in parsed])
    if isinstance(value, Mapping):
        return from_weights(dict(value))[None, :], np.zeros(1)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, Mapping, pd.Series)) for v in value):
        rows = [_rows(v, coef_names, where) for v in value]
        return np.vstack([L for L, _ in rows]), np.concatenate([r for _, r in rows])
    try:
        L = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: a contrast is an expression, a dict of coefficient weights, a list of them, or a "
                        f"numeric vector/matrix over the coefficients; got {type(value).__name__}.") from None
    L = L[None, :] if L.ndim == 1 else L
    if L.ndim != 2 or L.shape[1] != p or L.shape[0] == 0:
        raise ValueError(f"{where}: a contrast matrix needs one column per coefficient ({p}: "
                         f"{_preview(coef_names, 60)}), got shape {np.shape(value)}.")
    return L, np.zeros(L.shape[0])


def make_contrast(name, value, coef_names, rhs=None) -> Contrast:
    """Check one contrast and return it as a :class:`Contrast`.

    Parameters
    ----------
    name : str
    value : str, dict, list or array-like
        See the module's description.
    coef_names : sequence of str
        The model's coefficients.
    rhs : float or array-like, optional
        Right-hand side per row (default: what the expression says, else 0).

    Raises
    ------
    ValueError
        An unknown coefficient (naming the model's), a matrix of the wrong
        shape, no nonzero weight, a non-finite weight, or a right-hand side
        other than 0 on rows that are linearly dependent (the hypothesis is
        then ill-defined; lmerTest only warns).
    """
    coef_names = tuple(coef_names)
    where = f"contrast {name!r}"
    L, parsed_rhs = _rows(value, coef_names, where)
    if not np.all(np.isfinite(L)):
        raise ValueError(f"{where}: the weights must be finite numbers.")
    if rhs is None:
        rhs = parsed_rhs
    else:
        if np.any(parsed_rhs != 0):
            raise ValueError(f"{where}: give the right-hand side once, in the expression ('= value') or as rhs.")
        rhs = np.broadcast_to(np.asarray(rhs, dtype=float), (L.shape[0],)).copy() if np.ndim(rhs) == 0 else \
            np.asarray(rhs, dtype=float)
        if rhs.shape != (L.shape[0],) or not np.all(np.isfinite(rhs)):
            raise ValueError(f"{where}: rhs must be one finite number or one per row ({L.shape[0]}), got {rhs!r}.")
    rank = np.linalg.matrix_rank(L) if L.any() else 0
    if rank == 0:
        raise ValueError(f"{where} has no nonzero weight: it tests nothing.")
    if rank < L.shape[0] and np.any(rhs != 0):
        raise ValueError(f"{where}: its {L.shape[0]} rows are linearly dependent (rank {rank}) and its right-hand "
                         "side is not 0, so the hypothesis is ambiguous; drop the dependent rows.")
    return Contrast(str(name), L, rhs, coef_names)


def check_contrasts(contrasts, coef_names, terms) -> tuple:
    """Check the ``contrasts`` argument of a fit or analysis: a tuple of :class:`Contrast`.

    ``contrasts`` maps names to contrasts (None or empty: none); a name may
    not repeat a term of the model (``terms``).
    """
    if contrasts is None:
        return ()
    if not isinstance(contrasts, Mapping):
        raise TypeError("contrasts must be a dict of {name: contrast}, e.g. {'hit vs miss in hc': "
                        f"'hit_misshit + hit_misshit:regionhc'}}, got {type(contrasts).__name__}.")
    out = []
    for name, value in contrasts.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a contrast's name must be a non-empty string, got {name!r}.")
        if name in terms:
            raise ValueError(f"contrast name {name!r} is also a term of the model; give the contrast another name.")
        out.append(make_contrast(name, value, coef_names))
    return tuple(out)


def with_contrasts(options, contrasts, terms, coef_names):
    """``options`` (:class:`~clusterlmer.engines.base.FitOptions`) with the checked ``contrasts`` added.

    ``terms`` and ``coef_names``: the model's, as the engine describes it.
    """
    _require_linear(options, contrasts)
    return replace(options, contrasts=check_contrasts(contrasts, coef_names, terms))


def _require_linear(options, contrasts):
    family = getattr(options, "family", "gaussian")
    if contrasts and family != "gaussian":
        raise ValueError(f"contrasts are tested for linear mixed models only, not family={family!r} (lme4::glmer "
                         "fits); leave out contrasts, or fit a linear model.")


def parse_contrast_option(text):
    """``NAME=EXPR`` of the command line's ``--contrast`` as a (name, expression) pair."""
    name, sep, expr = (part.strip() for part in text.partition("="))
    if not sep or not name or not expr:
        raise ValueError(f"expected NAME=EXPR, e.g. 'hit in hc=hit_misshit + hit_misshit:regionhc', got {text!r}")
    return name, expr


@dataclass(frozen=True, eq=False)
class ContrastTest:
    """The test of one contrast at every sample (:meth:`clusterlmer.TimeseriesFit.contrast`).

    Arrays have the fit's sample shape.

    Attributes
    ----------
    contrast : Contrast
    estimate : ndarray or None
        ``L beta`` for a one-row contrast (None for several rows).
    t : ndarray or None
        ``(L beta - rhs) / SE`` for a one-row contrast (lmerTest's ``contest1D``), else None.
    F, df1, df2, p : ndarray
        lmerTest's ``contest(joint = TRUE)``: F value, NumDF, DenDF, Pr(>F).
    ddf : str
    engine : str
    """

    contrast: Contrast
    estimate: np.ndarray | None
    t: np.ndarray | None
    F: np.ndarray
    df1: np.ndarray
    df2: np.ndarray
    p: np.ndarray
    ddf: str
    engine: str
    times: np.ndarray = None

    def to_frame(self) -> pd.DataFrame:
        """One row per sample: estimate and t (one-row contrasts), FStat, DF1, DF2, pValue."""
        cols = {"sample": np.arange(self.F.size)}
        if self.estimate is not None:
            cols.update(estimate=self.estimate.ravel(), t=self.t.ravel())
        cols.update(FStat=self.F.ravel(), DF1=self.df1.ravel(), DF2=self.df2.ravel(), pValue=self.p.ravel())
        return pd.DataFrame(cols)

    def __repr__(self) -> str:
        return (f"<ContrastTest {self.contrast.name!r} | {self.contrast.text} | {self.ddf} DF, {self.engine} engine "
                f"| {self.F.size} samples>")


def fit_contrast(fit, L, rhs=0, *, name="contrast", ddf=None) -> ContrastTest:
    """Test ``L beta = rhs`` at every sample of ``fit`` (see :meth:`clusterlmer.TimeseriesFit.contrast`)."""
    from .engines import REFERENCE_ENGINE, get_engine
    from .engines.base import DEFAULT_OPTIMIZER_OPTIONS, check_fit_options
    from .samples import fit_samples
    from .spec import build_spec

    if fit.source is None:
        raise ValueError("this fit holds no data (result files do not store it): refit with "
                         "cl.fit_timeseries(data, formula, ...) and call contrast on that fit.")
    if not isinstance(name, str) or not name or name in fit.terms:
        raise ValueError(f"name must be a string other than the fit's terms {_preview(fit.terms)}, got {name!r}.")
    contrast = make_contrast(name, L, fit.coef_names, rhs=rhs)
    o = fit.options
    defaults = DEFAULT_OPTIMIZER_OPTIONS.get(o["optimizer"], {})
    own = {k: v for k, v in o["optimizer_options"].items() if defaults.get(k) != v}
    options = check_fit_options(o["reml"], o["ddf"] if ddf is None else ddf, o["test"], o["optimizer"], own,
                                o.get("family", "gaussian"), o.get("weights"))
    _require_linear(options, [contrast])
    options = replace(options, contrasts=(contrast,))
    spec = build_spec(fit.source.design)
    engine = o["engine"]
    if engine != REFERENCE_ENGINE:
        ok, reason = get_engine(engine).supports(spec, options)
        if not ok:  # e.g. Kenward-Roger asked of a native fit
            warnings.warn(f"fit.contrast refits with the {REFERENCE_ENGINE} engine (lme4/lmerTest): {reason}.",
                          UserWarning, stacklevel=3)
            engine = REFERENCE_ENGINE
    blk, _ = fit_samples(spec, fit.source.values, options, engine)
    i = blk.terms.index(name)
    shape = fit.sample_shape

    def per_sample(arr):
        return np.asarray(arr, dtype=float).reshape(shape)

    estimate = t = None
    if contrast.L.shape[0] == 1:
        est = blk.contrast_estimate[i]  # L beta - rhs
        with np.errstate(invalid="ignore"):
            t = per_sample(np.sign(est) * np.sqrt(blk.F[i]))
        estimate = per_sample(est + contrast.rhs[0])
    return ContrastTest(contrast, estimate, t, per_sample(blk.F[i]), per_sample(blk.df1[i]), per_sample(blk.df2[i]),
                        per_sample(blk.p[i]), options.ddf, engine, fit.times)


def require_zero_rhs(contrasts):
    """Permutations test ``L beta = 0`` (their null has no effect): refuse another right-hand side."""
    bad = [c.name for c in contrasts if np.any(c.rhs != 0)]
    if bad:
        raise ValueError(f"contrasts {_preview(bad)} have a right-hand side other than 0, which permuting labels "
                         "cannot test (the permutations' null is 'no effect'); remove '= value' "
                         f"(use {option_hint('fit.contrast(L, rhs=...)', 'the fit command')} for such a test).")


def check_tested_contrasts(contrasts, statistic, fixed, unpermuted):
    """Contrasts a permutation test clusters: each needs a permuted variable, and one row for ``statistic='t'``.

    ``fixed``: the model's :class:`~clusterlmer.spec.FixedSpec`; ``unpermuted``: variables left in place.
    """
    for c in contrasts:
        if all(v in unpermuted for v in c.variables(fixed)):
            raise ValueError(f"contrast {c.name!r} uses only variables that are not permuted "
                             f"({_preview(unpermuted)}), so the permutations give it no null distribution; weight "
                             "a coefficient of a permuted variable, or permute one of its variables.")
        if statistic == "t" and c.L.shape[0] > 1:
            use_f = option_hint("statistic='F'", "--statistic F")
            raise ValueError(f"statistic='t' needs one-row contrasts, but {c.name!r} has {c.L.shape[0]} rows; use "
                             f"{use_f} or test its rows separately.")
