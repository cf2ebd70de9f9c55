"""Permutation scheme names, and the grouping units of a design that they name.

A scheme says how the values of one fixed-effect variable move between rows
(rows themselves never move). Its name names a grouping of the formula as the
formula writes it (``sid``, ``sid:ch``, ``Subject``, ``Item``; ``a/b`` gives
``a`` and ``a:b`` as in lme4):

* ``"within:G"`` -- values shuffled among the rows of each level of G: every
  level keeps its rows and its count of each value;
* ``"between:G"`` -- values constant within each level of G permuted across
  the levels: every level keeps its rows (its size) and takes another level's
  value, so the number of levels holding each value is kept. Levels of
  different sizes do exchange values: the level is the unit of exchange,
  as a subject is in a between-subject design, and restricting exchanges to
  levels of equal size would leave unbalanced designs almost no
  permutations;
* ``"between:G within:H"`` -- as ``between:G``, but each level of G only
  takes values of levels in its own level of H (G must be nested in H):
  channels permuted within their subject are ``"between:sid:ch within:sid"``.
  This reuses the two one-grouping forms rather than adding a separator, so
  it reads as it does in words ("between channels, within subjects");
* ``"none"`` -- never permuted (a nuisance covariate).

Besides the formula's groupings, G may be the cell of all its grouping
columns (``Subject:Item`` for crossed ``(1|Subject) + (1|Item)``), the finest
partition: a shuffle within cells keeps every row's level of every grouping.

The iEEG names remain as aliases. They name a design's *channel* (its finest
grouping, or the cell when groupings cross) and *subject* (the coarsest of
nested groupings; crossed groupings have none): ``"within-channel"`` is
``within:<channel>``, ``"between-channel"`` ``between:<channel>``,
``"channel-within-subject"`` ``between:<channel> within:<subject>`` and
``"between-subject"`` ``between:<subject>``. An alias and its spelling draw
the same row maps for the same seed.

Choosing and checking a variable's scheme is :mod:`clusterlmer.schemes`'s job,
drawing the maps :mod:`clusterlmer.permute`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ._checks import check_option, in_cli
from .data import group_codes, group_label

__all__ = ["ALIASES", "NONE", "SCHEMES", "SCHEME_FORMS", "Partition", "Scheme", "Units", "check_scheme_names",
           "formula_groupings", "parse_scheme", "valid_schemes"]

NONE = "none"
WITHIN, BETWEEN = "within", "between"

#: The forms of a scheme name; G and H are groupings as the formula writes them.
SCHEME_FORMS = (f"{WITHIN}:G", f"{BETWEEN}:G", f"{BETWEEN}:G {WITHIN}:H", NONE)

#: The iEEG names and the form each stands for (channel: the finest grouping, or the cell of all
#: grouping columns when groupings cross; subject: the coarsest of nested groupings).
ALIASES = {
    "within-channel": f"{WITHIN}:<channel>",
    "between-channel": f"{BETWEEN}:<channel>",
    "channel-within-subject": f"{BETWEEN}:<channel> {WITHIN}:<subject>",
    "between-subject": f"{BETWEEN}:<subject>",
}

#: Every accepted name: the forms, then the aliases.
SCHEMES = SCHEME_FORMS + tuple(ALIASES)


class Scheme(NamedTuple):
    """A scheme with its groupings resolved: ``kind`` is ``"within"``, ``"between"`` or ``"none"``;
    ``group`` and ``within`` are partition names (``within`` only for ``between:G within:H``)."""

    kind: str
    group: str | None = None
    within: str | None = None

    @property
    def spelling(self) -> str:
        """The scheme as a grouping-named string, e.g. ``"between:sid:ch within:sid"``."""
        if self.kind == NONE:
            return NONE
        return f"{self.kind}:{self.group}" + (f" {WITHIN}:{self.within}" if self.within else "")


def parse_scheme(text, where="scheme"):
    """Split a scheme name into ``(form, G, H)`` without looking at any formula.

    Parameters
    ----------
    text : str
    where : str
        What the name is, to start the message (e.g. ``"schemes['cond']"``).

    Returns
    -------
    tuple
        ``(form, G, H)``: form is ``"none"``, an alias, ``"within"`` or
        ``"between"``; G and H are grouping texts or None.

    Raises
    ------
    ValueError
        The name has none of the forms of :data:`SCHEME_FORMS` and is no alias.
    """
    if isinstance(text, str):
        words = text.split()
        if len(words) == 1 and (words[0] == NONE or words[0] in ALIASES):
            return words[0], None, None
        parts = [w.partition(":") for w in words]
        if all(sep and g.strip(":") == g and all(c.strip() for c in g.split(":")) for _, sep, g in parts):
            kinds = [k for k, _, _ in parts]
            if kinds == [WITHIN] or kinds == [BETWEEN]:
                return kinds[0], parts[0][2], None
            if kinds == [BETWEEN, WITHIN]:
                return BETWEEN, parts[0][2], parts[1][2]
    check_option(where, text, SCHEMES)  # raises, naming every form and alias
    raise AssertionError("unreachable")  # pragma: no cover


def formula_groupings(formula) -> list:
    """Column tuples of every grouping; ``a/b`` expands to ``a`` and ``a:b`` as in lme4."""
    out = {}
    for term in formula.random:
        cols: list = []
        for part in term.group.split("/"):
            cols += [c.strip() for c in part.split(":")]
            out.setdefault(frozenset(cols), tuple(cols))
    return list(out.values())


def _named_groupings(formula) -> list:
    """The formula's groupings, then the cell of all grouping columns if it is not one of them."""
    groupings = formula_groupings(formula)
    cell = tuple(formula.grouping_variables)
    if frozenset(cell) not in {frozenset(g) for g in groupings}:
        groupings.append(cell)
    return groupings


def valid_schemes(formula) -> list:
    """Every grouping-named scheme a formula's groupings allow (``between:G within:H`` where G's
    columns include H's), then ``"none"``."""
    names = [":".join(g) for g in _named_groupings(formula)]
    cols = {":".join(g): set(g) for g in _named_groupings(formula)}
    nested = [f"{BETWEEN}:{g} {WITHIN}:{h}" for g in names for h in names if cols[g] > cols[h]]
    return [f"{WITHIN}:{g}" for g in names] + [f"{BETWEEN}:{g}" for g in names] + nested + [NONE]


def _groupings_text(formula) -> str:
    formula_ones = [":".join(g) for g in formula_groupings(formula)]
    named = [":".join(g) for g in _named_groupings(formula)]
    cell = f" and their cell {named[-1]}" if len(named) > len(formula_ones) else ""
    return (f"the formula's groupings are {', '.join(formula_ones)}{cell}; valid schemes for them: "
            f"{', '.join(valid_schemes(formula))} (or an alias: {', '.join(ALIASES)})")


def _find(groupings, text):
    key = frozenset(c.strip() for c in text.split(":"))
    return next((g for g in groupings if frozenset(g) == key), None)


def check_scheme_names(schemes, formula) -> dict:
    """Check every scheme name's form and that the groupings it names are the formula's.

    Parameters
    ----------
    schemes : dict of str to str
        Scheme per variable.
    formula : ModelFormula

    Returns
    -------
    dict of str to tuple
        ``(form, G, H)`` of every variable, as :func:`parse_scheme` gives.

    Raises
    ------
    ValueError
        An unknown form, or a grouping the formula does not have; the
        message lists the valid schemes for the formula's groupings.
    """
    groupings = _named_groupings(formula)
    parsed = {}
    for name, text in schemes.items():
        try:
            parsed[name] = parse_scheme(text, f"schemes[{name!r}]")
        except ValueError as exc:
            raise ValueError(f"{exc} Here {_groupings_text(formula)}.") from None
        for part in parsed[name][1:]:
            if part is not None and _find(groupings, part) is None:
                flag = f"{name}={text}"
                where = f"--scheme {repr(flag) if ' ' in flag else flag}" if in_cli() else f"schemes[{name!r}]={text!r}"
                raise ValueError(f"{where}: {part!r} is not a grouping of the formula; "
                                 f"{_groupings_text(formula)}.")
    return parsed


def nested_in(fine, coarse) -> bool:
    """Every group of codes ``fine`` lies inside one group of codes ``coarse``."""
    return np.unique(np.c_[fine, coarse], axis=0).shape[0] == np.unique(fine).size


@dataclass(frozen=True, eq=False)
class Partition:
    """One grouping coded on the data.

    Attributes
    ----------
    cols : tuple of str
    name : str
        The columns joined by ``":"``, as the formula writes them.
    codes : numpy.ndarray of int
        Level 0..n-1 of every row (order of first appearance).
    n : int
        Number of levels.
    first : numpy.ndarray of int
        First row of every level.
    rank : int
        Position in the formula (the cell of all grouping columns last).
    """

    cols: tuple
    name: str
    codes: np.ndarray
    n: int
    first: np.ndarray
    rank: int

    @classmethod
    def of(cls, frame, cols, rank):
        codes = group_codes(frame, cols)
        return cls(tuple(cols), ":".join(cols), codes, int(codes.max()) + 1,
                   np.unique(codes, return_index=True)[1], rank)

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.codes, minlength=self.n)


class Units:
    """The groupings of one design, and the channels and subjects the iEEG names refer to.

    Nested groupings (ordered coarse to fine): the finest is the channel, the
    coarsest the subject (one grouping: the two coincide). Crossed groupings:
    the channel is the cell of all grouping columns and there is no subject
    (``subject`` is None, ``crossed`` holds the first pair that is not
    nested).

    Attributes
    ----------
    partitions : dict of str to Partition
        The formula's groupings, then the cell of all grouping columns, by name.
    cell : Partition
        The cell of all grouping columns (the finest partition).
    groupings : list of Partition
        The formula's groupings ordered by their number of levels (coarse to fine).
    channel, subject : numpy.ndarray of int
        Group code 0..G-1 of every row (order of first appearance).
    channel_cols, subject_cols : tuple of str
    channel_name, subject_name : str
        The groupings by their columns, e.g. ``"sid:ch"`` and ``"sid"``.
    n_channels, n_subjects : int
    channel_first, subject_first : numpy.ndarray of int
        First row of every channel / subject.
    subject_of_channel : numpy.ndarray of int
        Subject code of every channel (nested groupings only).
    middle : list
        ``(columns, codes)`` of intermediate grouping levels of nested
        groupings, which get no derived scheme.
    """

    def __init__(self, frame, formula):
        self.frame = frame
        self.grouping_columns = formula.grouping_variables
        named = _named_groupings(formula)
        parts = [Partition.of(frame, g, i) for i, g in enumerate(named)]
        self.partitions = {p.name: p for p in parts}
        self.cell = next(p for p in parts if frozenset(p.cols) == frozenset(self.grouping_columns))
        n_formula = len(formula_groupings(formula))
        self.groupings = sorted(parts[:n_formula], key=lambda p: p.n)
        gs = self.groupings
        self.nested = all(nested_in(f.codes, c.codes) for c, f in zip(gs, gs[1:]))
        if self.nested:
            self.channel_part, self.subject_part = gs[-1], gs[0]
            # Intermediate levels (e.g. sid in site/sid/ch) are not permutation units.
            self.middle = [(p.cols, p.codes) for p in gs[1:-1] if p.n not in (gs[0].n, gs[-1].n)]
        else:
            self.channel_part, self.subject_part, self.middle = self.cell, None, []
            self.crossed = next((c.cols, f.cols) for c, f in zip(gs, gs[1:]) if not nested_in(f.codes, c.codes))
        ch, sub = self.channel_part, self.subject_part
        self.channel_cols, self.channel, self.channel_name = ch.cols, ch.codes, ch.name
        self.n_channels, self.channel_first = ch.n, ch.first
        self.subject_cols = sub.cols if sub else ()
        self.subject = sub.codes if sub else None
        self.subject_name = sub.name if sub else ""
        self.n_subjects = sub.n if sub else 0
        if sub:
            self.subject_first = sub.first
            self.subject_of_channel = sub.codes[ch.first]

    def crossed_hint(self) -> str:
        coarse, fine = (":".join(g) for g in self.crossed)
        return (f"the formula's groupings are crossed, not nested ({fine!r} is not nested in {coarse!r}"
                f"; if {fine!r} labels repeat across {coarse!r} groups, write (1|{coarse}:{fine}))")

    def partition(self, text) -> Partition:
        """The partition a grouping text names (``"ch:sid"`` names ``sid:ch``)."""
        cols = _find([p.cols for p in self.partitions.values()], text)
        return self.partitions[":".join(cols)]

    def resolve(self, parsed, where) -> Scheme:
        """The :class:`Scheme` of a name parsed by :func:`parse_scheme`.

        Raises
        ------
        ValueError
            A subject alias on crossed groupings (they have no subject), or
            ``between:G within:H`` where G is not nested in H.
        """
        form, g, h = parsed
        if form == NONE:
            return Scheme(NONE)
        if form in ALIASES:
            if "subject" in ALIASES[form] and self.subject_part is None:
                examples = ", ".join(repr(f"{BETWEEN}:{p.name}") for p in self.groupings)
                raise ValueError(f"{where}: {self.crossed_hint()}, so there is no subject level to permute at; "
                                 f"use 'within-channel', 'between-channel' or 'none', or name a grouping "
                                 f"({examples}).")
            ch, sub = self.channel_part.name, self.subject_name
            g, h = {"within-channel": (ch, None), "between-channel": (ch, None),
                    "channel-within-subject": (ch, sub), "between-subject": (sub, None)}[form]
            form = ALIASES[form].partition(":")[0]
        group = self.partition(g)
        if h is None:
            return Scheme(form, group.name)
        outer = self.partition(h)
        if group is not outer and not nested_in(group.codes, outer.codes):
            pairs = np.unique(np.c_[group.codes, outer.codes], axis=0)
            level = int(np.flatnonzero(np.bincount(pairs[:, 0]) > 1)[0])
            label = group_label(self.frame, group.cols, group.first[level])
            raise ValueError(f"{where}: the {group.name} groups are not nested in the {outer.name} groups (e.g. "
                             f"{group.name} = {label} lies in several), so they cannot be permuted within them; "
                             f"use {f'{BETWEEN}:{group.name}'!r}.")
        return Scheme(form, group.name, outer.name)

    def alias(self, scheme) -> str | None:
        """The iEEG name of ``scheme`` on this design, if it has one (one grouping: ``"between-subject"``)."""
        ch, sub = self.channel_part.name, self.subject_name
        names = {Scheme(WITHIN, ch): "within-channel"}
        if sub:  # nested groupings; with one grouping, between:G is called "between-subject"
            names.update({Scheme(BETWEEN, sub): "between-subject", Scheme(BETWEEN, ch, sub): "channel-within-subject"})
        names.setdefault(Scheme(BETWEEN, ch), "between-channel")
        return NONE if scheme.kind == NONE else names.get(scheme)

    def name(self, scheme, aliased) -> str:
        """``scheme`` by its iEEG name when ``aliased`` and it has one, else as grouping names."""
        return (aliased and self.alias(scheme)) or scheme.spelling

    def draw_key(self, scheme) -> tuple:
        """Draw order: within before between, finer groupings first, ``between:G`` before
        ``between:G within:H``. On nested groupings this is the order the aliases were always
        drawn in (within-channel, between-channel, channel-within-subject, between-subject)."""
        p = self.partitions[scheme.group]
        outer = self.partitions[scheme.within] if scheme.within else None
        return (scheme.kind != WITHIN, -p.n, p.rank, outer is not None, -(outer.n if outer else 0),
                outer.rank if outer else 0)

    def among(self, scheme) -> str:
        """What ``scheme`` shuffles, e.g. ``"rows within each of 16 sid:ch groups"``."""
        if scheme.kind == NONE:
            return "not permuted"
        p = self.partitions[scheme.group]
        if scheme.kind == WITHIN:
            return f"rows within each of {p.n} {p.name} groups"
        if scheme.within:
            return f"{p.name} groups within each of {self.partitions[scheme.within].n} {scheme.within} groups"
        return f"{p.n} {p.name} groups"
