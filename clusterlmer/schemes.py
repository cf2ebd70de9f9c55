"""Which permutation scheme each fixed-effect variable gets, and why it keeps the random-effects structure.

Schemes say at which level a variable's values are shuffled:

* ``"within-channel"`` -- labels shuffled among the rows of each channel
  (two rows: a fair coin decides whether they swap);
* ``"between-channel"`` -- channel-level values permuted across all channels;
* ``"channel-within-subject"`` -- channel-level values permuted among the
  channels of the same subject;
* ``"between-subject"`` -- subject-level values permuted across subjects;
* ``"none"`` -- never permuted (a nuisance covariate).

Units come from the formula's random terms: each grouping (``sid``,
``sid:ch``; ``sid/ch`` expands to both) partitions the rows. Nested
groupings are ordered coarse to fine: the finest is the "channel", the
coarsest the "subject" (one grouping: the two coincide). Crossed groupings,
such as ``(1|sid) + (1|item)``, have no subject/channel hierarchy: the
channel is then the cell of all grouping columns, only within-channel
shuffles are derived automatically (they keep every row's groups),
``"between-channel"`` must be asked for explicitly, and the subject schemes
are refused.

The summary names these units by their grouping columns (e.g. "sid:ch",
or "Subject" when the formula has one grouping). A variable that varies
within a minority of the channels and is constant within the rest is refused
(a channel-level variable with mislabelled rows would otherwise be shuffled
within channels, with a null almost equal to the observed); within a
majority it is shuffled within channels with a warning naming the channels
whose labels never move. Variables that share a derived scheme are permuted
jointly, and the notes say so.

Drawing and applying the permutations is :mod:`clusterlmer.permute`'s job.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ._checks import check_option, option_hint
from .data import _preview, check_columns, group_codes, group_label
from .design import _label_text
from .formula import ModelFormula

__all__ = ["SCHEMES", "SchemePlan", "Units", "assign_schemes"]

#: Every scheme. Their order is the draw order inside one permutation (:mod:`clusterlmer.permute`):
#: reordering them changes every seeded run.
SCHEMES = ("within-channel", "between-channel", "channel-within-subject", "between-subject", "none")


def _groupings(formula: ModelFormula) -> list:
    """Column tuples of every grouping; ``a/b`` expands to ``a`` and ``a:b`` as in lme4."""
    out = {}
    for term in formula.random:
        cols: list = []
        for part in term.group.split("/"):
            cols += [c.strip() for c in part.split(":")]
            out.setdefault(frozenset(cols), tuple(cols))
    return list(out.values())


def _nested(fine, coarse) -> bool:
    """Every group of ``fine`` lies inside one group of ``coarse``."""
    return np.unique(np.c_[fine, coarse], axis=0).shape[0] == np.unique(fine).size


def _offender(codes, values):
    """First group in which ``values`` take more than one value, or None."""
    n = pd.Series(pd.factorize(values)[0]).groupby(codes).nunique()
    bad = n.index[n.to_numpy() > 1]
    return None if bad.empty else int(bad[0])


class Units:
    """Channels and subjects of the design, as codes per row.

    Built from the formula's groupings ordered coarse to fine. Nested: the
    finest grouping is the channel, the coarsest the subject. Crossed: the
    channel is the cell of all grouping columns and there is no subject
    (``subject`` is None, ``crossed`` holds the first pair that is not
    nested).

    Attributes
    ----------
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
        ``(columns, codes)`` of intermediate grouping levels, which are not
        permutation units.
    """

    def __init__(self, frame, formula):
        self.grouping_columns = formula.grouping_variables
        groupings = [(g, group_codes(frame, g)) for g in _groupings(formula)]
        groupings.sort(key=lambda gc: gc[1].max() + 1)
        self.nested = all(_nested(f, c) for (_, c), (_, f) in zip(groupings, groupings[1:]))
        if self.nested:
            self.channel_cols, self.channel = groupings[-1]
            self.subject_cols, self.subject = groupings[0]
            # Intermediate levels (e.g. sid in site/sid/ch) are not permutation units.
            self.middle = [(g, c) for g, c in groupings[1:-1] if c.max() != self.subject.max()
                           and c.max() != self.channel.max()]
        else:
            cols = tuple(formula.grouping_variables)
            self.channel_cols, self.channel = cols, group_codes(frame, cols)
            self.subject_cols, self.subject, self.middle = (), None, []
            self.crossed = next((g, f) for (g, c), (f, cf) in zip(groupings, groupings[1:])
                                if not _nested(cf, c))
        # What users call these units: the grouping columns themselves ("sid:ch", "Subject").
        self.channel_name = ":".join(self.channel_cols)
        self.subject_name = ":".join(self.subject_cols)
        self.n_channels = int(self.channel.max()) + 1
        self.channel_first = np.unique(self.channel, return_index=True)[1]
        if self.subject is not None:
            self.n_subjects = int(self.subject.max()) + 1
            self.subject_first = np.unique(self.subject, return_index=True)[1]
            self.subject_of_channel = self.subject[self.channel_first]
        else:
            self.n_subjects = 0


def _crossed_hint(units) -> str:
    coarse, fine = (":".join(g) for g in units.crossed)
    return (f"the formula's groupings are crossed, not nested ({fine!r} is not nested in {coarse!r}"
            f"; if {fine!r} labels repeat across {coarse!r} groups, write (1|{coarse}:{fine}))")


def _derive(frame, name, units):
    """Level at which ``name`` varies, and ``(fatal, message)`` for a problem with that reading (or None).

    Refuses a constant column. A variable that varies within some channels but
    is constant within others is suspect: within a minority it is most likely
    a channel-level variable with mislabelled rows (shuffled within channels
    it would get a null almost equal to the observed), within a majority a
    within-channel condition some channels hold only one level of.
    """
    values = frame[name]
    if pd.factorize(values)[0].max() < 1:
        raise ValueError(f"variable {name!r} takes a single value ({_label_text(values[:1])[0]}) in every row: "
                         "there is nothing to permute. Remove it from the formula or check the data.")
    varies = _varies_within(units.channel, values)
    if varies.any():
        several = np.bincount(units.channel) > 1
        constant = several & ~varies
        return "within-channel", (_mixed_message(frame, name, units, varies, constant)
                                  if constant.any() else None)
    if units.subject is None or _offender(units.subject, values) is not None:
        return "between-channel", None
    return "between-subject", None


def _varies_within(codes, values) -> np.ndarray:
    """Per group of ``codes``: does ``values`` take more than one value in it?"""
    return pd.Series(pd.factorize(values)[0]).groupby(codes).nunique().to_numpy() > 1


def _group_rows(frame, name, units, groups, limit=3) -> str:
    shown = []
    for g in np.flatnonzero(groups)[:limit]:
        rows = np.flatnonzero(units.channel == g)
        labels = ", ".join(_label_text(frame[name].iloc[rows]))
        shown.append(f"{group_label(frame, units.channel_cols, rows[0])} (rows {_preview(rows, 6)}: {labels})")
    more = f", ... ({int(groups.sum())} in all)" if groups.sum() > limit else ""
    return "; ".join(shown) + more


def _mixed_message(frame, name, units, varies, constant):
    unit, n_vary, n_const = units.channel_name, int(varies.sum()), int(constant.sum())
    if n_vary < n_const:
        return True, (f"{name!r} is constant within {n_const} of the {n_vary + n_const} {unit} groups with several rows "
                f"but varies within {n_vary}: {_group_rows(frame, name, units, varies)}. That looks like a "
                f"{unit}-level variable with mislabelled rows; shuffled within each {unit} it would get a null "
                f"almost equal to the observed statistic. Fix the labels of those rows, or, if {name!r} really "
                f"varies within {unit}, pass "
                f"{option_hint(f'schemes={{{name!r}: {chr(39)}within-channel{chr(39)}}}', f'--scheme {name}=within-channel')}.")
    return False, (f"{name!r} varies within {n_vary} {unit} groups but takes a single value within {n_const}: "
            f"{_group_rows(frame, name, units, constant)}. It is shuffled within each {unit}; "
            f"{'that group keeps its' if n_const == 1 else f'those {n_const} groups keep their'} labels in every "
            "permutation.")


def _check_scheme(frame, name, scheme, varies, units, explicit):
    """Refuse a scheme that breaks the structure or cannot change ``name``."""
    where = f"schemes[{name!r}]={scheme!r}" if explicit else f"{name!r} ({scheme}, derived)"
    if scheme == "none":
        return
    if name in units.grouping_columns:
        raise ValueError(f"{where}: {name!r} is also a grouping column, so permuting it would move rows "
                         f"between groups. Pass schemes={{{name!r}: 'none'}}.")
    if scheme == "within-channel":
        if np.bincount(units.channel).max() == 1:
            raise ValueError(f"{where}: every {units.channel_name} group has a single row, so shuffling "
                             "within them cannot change labels.")
        if varies != "within-channel":
            raise ValueError(f"{where}: {name!r} is constant within every {units.channel_name} group, so "
                             f"shuffling within them cannot change it; use {varies!r}.")
        return
    bad = _offender(units.channel, frame[name])
    if bad is not None:
        row = units.channel_first[bad]
        unit = units.channel_name
        raise ValueError(f"{where}: {name!r} varies within {unit} groups (e.g. {unit} = "
                         f"{group_label(frame, units.channel_cols, row)}), so it cannot be permuted as a "
                         f"{unit}-level value; use 'within-channel' (shuffled within each {unit}).")
    if not explicit and varies == "between-channel":
        if not units.nested:
            raise ValueError(f"{name!r} is constant within channels, but {_crossed_hint(units)}, so no "
                             "channel-level permutation is known to keep the random-effects structure. "
                             f"Pass schemes={{{name!r}: ...}} explicitly ('between-channel' or 'none').")
        for g, codes in units.middle:
            if _offender(codes, frame[name]) is None:
                raise ValueError(f"{name!r} is constant within each {':'.join(g)!r} group, an intermediate "
                                 "grouping level; clusterlmer permutes whole channels or whole subjects only. "
                                 f"Pass schemes={{{name!r}: ...}} explicitly.")
    if scheme in ("channel-within-subject", "between-subject"):
        if units.subject is None:
            raise ValueError(f"{where}: {_crossed_hint(units)}, so there is no subject level to permute "
                             "at; use 'within-channel', 'between-channel' or 'none'.")
        ch, sub = units.channel_name, units.subject_name
        if scheme == "between-subject" and varies != "between-subject":
            raise ValueError(f"{where}: {name!r} varies between the {ch} groups of one {sub}, so it cannot "
                             f"be permuted as a {sub}-level value; use 'channel-within-subject' or "
                             "'between-channel'.")
        if scheme == "channel-within-subject" and varies == "between-subject":
            if units.n_channels == units.n_subjects:
                raise ValueError(f"{where}: the formula has one grouping level ({sub}), so there are no smaller "
                                 f"units within a {sub} group to permute; use 'between-subject' (whole {sub} "
                                 "groups are permuted).")
            raise ValueError(f"{where}: {name!r} is constant within every {sub} group, so permuting "
                             f"{ch} groups within them cannot change it; use 'between-subject'.")


def _joint_notes(used, explicit) -> list:
    """Say which variables share a derived scheme: one shuffle moves them together."""
    notes = []
    for scheme in dict.fromkeys(used.values()):
        names = [v for v, s in used.items() if s == scheme]
        if scheme == "none" or len(names) < 2 or all(v in explicit for v in names):
            continue
        alone = names[-1]
        hint = option_hint(f"schemes={{{alone!r}: 'none'}}", f"--scheme {alone}=none")
        notes.append(f"{', '.join(map(repr, names))} share the scheme {scheme!r} and are permuted jointly (one "
                     f"shuffle moves them together, keeping each row's combination); to permute "
                     f"{names[0]!r} alone, pass {hint}.")
    return notes


@dataclass(frozen=True, eq=False)
class SchemePlan:
    """How every fixed-effect variable of one design is permuted.

    Attributes
    ----------
    units : Units
        Channels and subjects of the design.
    schemes : dict of str to str
        Scheme used for each fixed-effect variable.
    varies : dict of str to str
        Level at which each variable varies in the data
        (``"constant"`` for a constant variable the user chose not to permute).
    notes : tuple of str
        What the summary must say: variables permuted jointly, channels
        whose labels never move.
    """

    units: Units
    schemes: dict
    varies: dict
    notes: tuple

    @property
    def in_use(self) -> set:
        """Schemes that move something (every scheme but ``"none"``)."""
        return set(self.schemes.values()) - {"none"}


def assign_schemes(design, formula, schemes=None) -> SchemePlan:
    """Choose and check the permutation scheme of every fixed-effect variable.

    A variable's scheme is the level at which it varies in ``design`` unless
    ``schemes`` names another; every scheme is checked against the grouping
    structure. Warnings (channels whose labels never move) are issued here
    and kept in the plan's notes.

    Parameters
    ----------
    design : pandas.DataFrame
        One row per observation.
    formula : ModelFormula
        Its random terms define channels and subjects; its fixed-effect
        variables get a scheme.
    schemes : dict of str to str, optional
        Scheme per variable, overriding the derived one (one of
        :data:`SCHEMES`).

    Returns
    -------
    SchemePlan

    Raises
    ------
    ValueError
        A scheme for a variable the formula does not have, an unknown
        scheme, absent or incomplete columns, a constant variable, a scheme
        that would break the grouping structure or cannot change the
        variable, or nothing left to permute.
    """
    schemes = dict(schemes or {})
    fixed = formula.fixed_variables
    for name, scheme in schemes.items():
        if name not in fixed:
            raise ValueError(f"schemes names {name!r}, which is not a fixed-effect variable of the formula. "
                             f"Fixed-effect variables: {_preview(fixed) or '(none)'}.")
        check_option(f"schemes[{name!r}]", scheme, SCHEMES)
    check_columns(design, formula.grouping_variables, "grouping column(s)")
    check_columns(design, fixed, "fixed-effect column(s)")
    if not fixed:
        raise ValueError(f"formula {formula.text!r} has no fixed-effect variable: there is nothing to permute.")

    units = Units(design, formula)
    varies, used, notes = {}, {}, []
    for name in fixed:
        explicit = name in schemes
        # A constant nuisance column the user chose not to permute is not an error here.
        constant = explicit and schemes[name] == "none" and design[name].nunique() < 2
        varies[name], problem = ("constant", None) if constant else _derive(design, name, units)
        used[name] = schemes.get(name, varies[name])  # the level it varies at names its scheme
        _check_scheme(design, name, used[name], varies[name], units, explicit)
        if problem and not explicit:
            fatal, text = problem
            if fatal:
                raise ValueError(text)
            # stacklevel 3: the warning points at the caller of make_permutations.
            warnings.warn(text, UserWarning, stacklevel=3)
            notes.append(text)
    plan = SchemePlan(units, used, varies, ())
    if not plan.in_use:
        raise ValueError("every fixed-effect variable has scheme 'none': there is nothing to permute.")
    return replace(plan, notes=tuple(notes + _joint_notes(used, schemes)))
