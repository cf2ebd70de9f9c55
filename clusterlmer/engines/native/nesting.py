"""The random part as the native engine fits it: nested random intercepts.

``random_problem`` says why a model specification's random part is outside
that class (slopes, a grouping that mixes ``:`` and ``/``, a repeated
grouping). ``Nesting`` orders the groupings coarsest to finest from the
specification (:meth:`clusterlmer.spec.ModelSpec.nesting` checks that each
is nested in the one above). ``design_checks`` are lme4's own errors about
grouping factors.
"""

from __future__ import annotations

__all__ = ["Nesting", "design_checks", "random_problem"]


def random_problem(spec):
    """Why the random part is not nested random intercepts only, or None."""
    for term in spec.formula.random:
        if term.expr.replace(" ", "") != "1":
            return (f"the random term ({term.expr} | {term.group}) has a random slope or a non-intercept part; "
                    "the native engine fits random intercepts (1|g) only")
        parts = term.group.split("/")
        if len(parts) > 1 and any(":" in part for part in parts):
            return f"the grouping {term.group!r} mixes ':' and '/'; write each nested term out"
    seen = set()
    for t in spec.random:
        if frozenset(t.columns) in seen:
            return f"the grouping {':'.join(t.columns)!r} appears twice in the random part"
        seen.add(frozenset(t.columns))
    return None


class Nesting:
    """Groupings ordered coarsest to finest, with why they are not nested (``problem``)."""

    def __init__(self, terms, problem):
        self.codes = [t.codes for t in terms]
        self.nlev = [t.n_levels for t in terms]
        self.names = [t.name for t in terms]
        self.problem = None if problem is None else (
            f"{problem}; the native engine fits nested random intercepts only" if "crossed" in problem else problem)

    @classmethod
    def of(cls, spec):
        """The nesting of ``spec``'s random intercepts (computed once per spec and subset)."""
        def make():
            order, problem = spec.nesting()
            return cls([spec.random[i] for i in (order or range(len(spec.random)))], problem)

        return spec.shared("native-nesting", make)


def design_checks(nest, n):
    """lme4's checks on the grouping factors (lFormula errors)."""
    if any(m < 2 for m in nest.nlev):
        return "grouping factors must have > 1 sampled level"
    # lme4 lists the factors in its term order (most levels first).
    bad = [name for name, m in sorted(zip(nest.names, nest.nlev), key=lambda t: -t[1]) if m >= n]
    if bad:
        return ("number of levels of each grouping factor must be < number of observations "
                f"(problems: {', '.join(bad)})")
    return None
