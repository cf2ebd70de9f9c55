"""The random part as the native engine fits it: nested random intercepts.

``random_groupings`` reads the formula's random terms into the column tuples
of each grouping and lme4's names for them (``(1|a/b)`` gives ``a`` and
``b:a``), refusing slopes and repeated groupings. ``Nesting`` codes the
groupings on the data, orders them coarsest to finest and checks that each
is nested in the one above (crossed or identical groupings are refused).
``design_checks`` are lme4's own errors about grouping factors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["Nesting", "design_checks", "random_groupings"]


def random_groupings(formula):
    """Column tuples and lme4 names of the random intercepts (``a/b`` -> ``a``,
    ``b:a``), or a reason they are not supported."""
    out, names = [], []
    for term in formula.random:
        if term.expr.replace(" ", "") != "1":
            return None, None, (f"the random term ({term.expr} | {term.group}) has a random slope or a "
                                "non-intercept part; the native engine fits random intercepts (1|g) only")
        parts = [[c.strip() for c in part.split(":")] for part in term.group.split("/")]
        if len(parts) > 1 and any(len(part) > 1 for part in parts):
            return None, None, f"the grouping {term.group!r} mixes ':' and '/'; write each nested term out"
        cols, name = [], ""
        for part in parts:
            cols = cols + part
            out.append(tuple(cols))
            # lme4 names a/b/c's terms a, b:a, c:(b:a)
            name = part[0] if not name else f"{part[0]}:{'(' + name + ')' if ':' in name else name}"
            names.append(name if len(parts) > 1 else ":".join(part))
    seen = set()
    for g in out:
        if frozenset(g) in seen:
            return None, None, f"the grouping {':'.join(g)!r} appears twice in the random part"
        seen.add(frozenset(g))
    return out, names, None


def _group_codes(frame, cols):
    codes = None
    for c in cols:
        k, uniq = pd.factorize(frame[c].to_numpy())
        codes = k if codes is None else codes * len(uniq) + k
    _, inv = np.unique(codes, return_inverse=True)
    return inv.ravel()


class Nesting:
    """Groupings ordered coarsest to finest with the data's nesting checked."""

    def __init__(self, frame, groupings, names):
        codes = [_group_codes(frame, g) for g in groupings]
        nlev = [int(c.max()) + 1 for c in codes]
        order = sorted(range(len(groupings)), key=lambda i: nlev[i])
        self.groupings = [groupings[i] for i in order]
        self.codes = [codes[i] for i in order]
        self.nlev = [nlev[i] for i in order]
        self.names = [names[i] for i in order]
        self.problem = None
        for g in range(1, len(self.codes)):
            fine, coarse = self.codes[g], self.codes[g - 1]
            pairs = np.unique(fine * self.nlev[g - 1] + coarse).size
            if pairs != self.nlev[g]:
                self.problem = (f"the groupings {self.names[g - 1]!r} and {self.names[g]!r} are crossed, "
                                "not nested; the native engine fits nested random intercepts only")
                break
            if self.nlev[g] == self.nlev[g - 1]:
                self.problem = (f"the groupings {self.names[g - 1]!r} and {self.names[g]!r} define the same "
                                "groups, so their variances are not identifiable")
                break


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
