"""What each row of the F table tests, in words, for the summary.

The same formula tests different hypotheses under different codings: with
reference coding a main effect next to an interaction is the simple effect at
the other variables' reference levels (for a numeric variable, at the value
0); with a coding whose columns sum to zero (effects, helmert, poly) it is
averaged over the other factors' levels (still at 0 for numeric variables). lmerTest's type III table averages over factors
whatever the coding, and so do its type II and type I tables. These sentences are built from the model itself, so the
summary never promises a hypothesis the row does not test.
"""

from __future__ import annotations

from .coding import zero_sum

__all__ = ["term_hypotheses", "sign_convention"]


def _levels_text(levels):
    return ", ".join(repr(v) for v in levels)


def _per_factor(coding, factors) -> dict:
    """``coding`` (one for all, or a dict per factor) as each factor's coding."""
    return dict(coding) if isinstance(coding, dict) else {v: coding for v in factors}


def _effect_of(var, factors, coding):
    """What the coefficients of ``var`` alone measure (``coding``: that variable's)."""
    if var not in factors:
        return f"slope of {var}"
    levels = factors[var]
    if coding == "helmert":
        if len(levels) == 2:
            return f"{var} ({levels[1]!r} - {levels[0]!r})/2"
        return (f"{var}: each of {_levels_text(levels[1:])} - the mean of the levels before it "
                "(divided by its position in the level order)")
    if coding == "poly":
        if len(levels) == 2:
            return f"{var} ({levels[1]!r} - {levels[0]!r})/sqrt(2)"
        return (f"{var}: polynomial trends (linear, quadratic, ...) over its levels in the order "
                f"{_levels_text(levels)}, taken as equally spaced")
    if coding == "reference":
        if len(levels) == 2:
            return f"{var} {levels[1]!r} - {levels[0]!r}"
        return f"{var}: each of {_levels_text(levels[1:])} - {levels[0]!r}"
    if len(levels) == 2:
        return f"{var} ({levels[0]!r} - {levels[1]!r})/2"
    return f"{var}: deviations of {_levels_text(levels[:-1])} from the mean of its {len(levels)} levels"


def _where(others, factors, codings, test):
    """Where the other variables stand when a term's coefficients are read."""
    averaged = [v for v in others if v in factors and (zero_sum(codings[v]) or test != "marginal")]
    parts = [f"averaged over {' and '.join(averaged)}"] if averaged else []
    for var in others:
        if var not in factors:
            parts.append(f"at {var} = 0")
        elif var not in averaged:
            parts.append(f"at {var} = {factors[var][0]!r}")
    return ", ".join(parts)


def term_hypotheses(fixed_terms, factors, coding, test="marginal") -> dict:
    """One sentence per F-table row: the hypothesis its test rejects or keeps.

    Parameters
    ----------
    fixed_terms : clusterlmer.formula.FixedTerms
        The expanded fixed part.
    factors : dict of str to list of str
        Level order of every factor (reference level first).
    coding : str or dict of str to str
        One coding for every factor, or each factor's (see
        :mod:`clusterlmer.coding`).
    test : {"marginal", "type3", "type2", "type1"}

    Returns
    -------
    dict of str to str
        Keyed by the table's term labels, ``"(Intercept)"`` first when the
        model has one.
    """
    out = {}
    codings = _per_factor(coding, factors)
    if fixed_terms.intercept:
        where = _where(fixed_terms.variables, factors, codings, test)
        out["(Intercept)"] = "mean response = 0" + (f" ({where})" if where else "")
    for vars_ in fixed_terms.terms:
        partners = []
        for other in fixed_terms.terms:
            if len(other) > len(vars_) and set(vars_) <= set(other):
                partners += [v for v in other if v not in vars_ and v not in partners]
        # Type I/II/III tests do not depend on the coding; describe them as effects coding would.
        coding_read = codings.get(vars_[0]) if test == "marginal" else "effects"
        if len(vars_) == 1:
            what = _effect_of(vars_[0], factors, coding_read) + " = 0"
        else:
            what = (f"the effect of {_effect_of(vars_[0], factors, coding_read)} is the same at every level of "
                    + " x ".join(vars_[1:]))
        where = _where([v for v in fixed_terms.variables if v in partners], factors, codings, test)
        out[":".join(vars_)] = what + (f" ({where})" if where else "") + _ADJUSTED.get(test, "")
    return out


# Type I and II rows test a term adjusted for only some of the others (lmerTest's definitions).
_ADJUSTED = {"type1": "; adjusted for the terms before it only (type I, sequential)",
             "type2": "; adjusted for every term that does not contain it (type II)"}


def sign_convention(factors, coding) -> str:
    """How to read the sign of a two-level factor's t (or coefficient)."""
    two = [(v, lv) for v, lv in factors.items() if len(lv) == 2]
    if not two:
        return ""
    var, (first, last) = two[0]
    coding = _per_factor(coding, factors)[var]
    if coding in ("helmert", "poly"):
        scale = "2" if coding == "helmert" else "sqrt(2)"
        return (f"{coding} coding: a two-level factor's coefficient is (second level - first level)/{scale}: "
                f"t > 0 for {var} means {last!r} > {first!r}")
    if coding == "effects":
        return (f"effects coding codes the last level -1, so a two-level factor's coefficient is "
                f"(first level - last level)/2: t > 0 for {var} means {first!r} > {last!r}")
    return (f"reference coding: a two-level factor's coefficient is (other level - reference level): "
            f"t > 0 for {var} means {last!r} > {first!r}")
