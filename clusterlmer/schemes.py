"""Which permutation scheme each fixed-effect variable gets, and why it keeps the random-effects structure.

Scheme names and the grouping units they refer to are defined in
:mod:`clusterlmer.scheme_names`; this module derives a scheme for every
variable the user leaves open and checks every scheme against the data.

Derived schemes follow from where a variable varies. The *channel* is the
finest grouping (nested groupings) or the cell of all grouping columns
(crossed groupings such as ``(1|Subject) + (1|Item)``):

1. It varies within channels: shuffled within each channel
   (``"within-channel"``; two rows: a fair coin decides whether they swap).
   Every row keeps its level of every grouping, so the shuffled designs are
   exchangeable under H0 for any random-effects structure.
2. Nested groupings, constant within channels: permuted across subjects
   (``"between-subject"``) when constant within subjects, otherwise across
   all channels (``"between-channel"``). Constant within an intermediate level
   only (``sid`` in ``site/sid/ch``): no default, the user names one.
3. Crossed groupings, constant within the levels of a grouping: permuted
   across the levels of the coarsest such grouping (fewest levels) --
   ``"between:Subject"`` for a between-subject group in a subject x item
   design, ``"between:Item"`` for an item-level variable. Every row keeps its
   groups and the variable stays constant where it was. Two crossed
   groupings that both hold it constant are refused: permuted across either,
   it would vary within the other's levels.
4. Crossed groupings, constant within none of them (a within-subject,
   within-item condition) while every cell holds one row (each subject sees
   each item once): no shuffle keeps every row's groups. It is shuffled within
   the levels of the grouping with the most levels (ties: the first in the
   formula), usually subjects, as subject x item permutation tests commonly
   do. That keeps each of those levels' counts of every value exactly; each
   level of the other groupings gathers rows of many of them, so its counts
   vary around the observed. Exchangeability is approximate there, and the
   notes say so. With several rows per cell the variable is refused and the
   user names a scheme (e.g. ``"between:Subject:Item within:Subject"``).

Derived schemes are reported by their iEEG name where one applies (so
nested designs read as they always did), otherwise by grouping names; a
scheme passed by the user is reported as spelled. A variable that varies
within a minority of the channels and is constant within the rest is refused
(a channel-level variable with mislabelled rows would otherwise be shuffled
within channels, with a null almost equal to the observed); within a
majority it is shuffled within channels with a warning naming the channels
whose labels never move. Variables that share a scheme are permuted jointly,
and the notes say so; so do the schemes inferred for crossed groupings.

Drawing and applying the permutations is :mod:`clusterlmer.permute`'s job.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ._checks import option_hint
from .data import _preview, check_columns, group_label
from .design import _label_text
from .scheme_names import (ALIASES, BETWEEN, NONE, SCHEMES, WITHIN, Scheme, Units, check_scheme_names,
                           nested_in)

__all__ = ["SCHEMES", "SchemePlan", "Units", "assign_schemes"]


def _offender(codes, values):
    """First group in which ``values`` take more than one value, or None."""
    n = pd.Series(pd.factorize(values)[0]).groupby(codes).nunique()
    bad = n.index[n.to_numpy() > 1]
    return None if bad.empty else int(bad[0])


def _varies_within(codes, values) -> np.ndarray:
    """Per group of ``codes``: does ``values`` take more than one value in it?"""
    return pd.Series(pd.factorize(values)[0]).groupby(codes).nunique().to_numpy() > 1


def _rows(frame, name, part, level) -> tuple:
    """A partition level's label, its rows and their values of ``name`` (at most six shown)."""
    rows = np.flatnonzero(part.codes == level)
    labels = ", ".join(_label_text(frame[name].iloc[rows[:6]])) + (", ..." if rows.size > 6 else "")
    return group_label(frame, part.cols, rows[0]), _preview(rows, 6), labels


def _level_rows(frame, name, part, level) -> str:
    """One level of a partition with its rows and their values, e.g. ``S01:ch2 (rows 2, 3: 0, 1)``."""
    label, rows, labels = _rows(frame, name, part, level)
    return f"{label} (rows {rows}: {labels})"


def _group_rows(frame, name, part, groups, limit=3) -> str:
    shown = [_level_rows(frame, name, part, g) for g in np.flatnonzero(groups)[:limit]]
    more = f", ... ({int(groups.sum())} in all)" if groups.sum() > limit else ""
    return "; ".join(shown) + more


def _scheme_hint(name, scheme) -> str:
    return option_hint(f"schemes={{{name!r}: {scheme!r}}}", f"--scheme {name}={scheme}")


def _mixed_message(frame, name, units, varies, constant):
    part = units.channel_part
    unit, n_vary, n_const = part.name, int(varies.sum()), int(constant.sum())
    if n_vary < n_const:
        return True, (f"{name!r} is constant within {n_const} of the {n_vary + n_const} {unit} groups with several rows "
                f"but varies within {n_vary}: {_group_rows(frame, name, part, varies)}. That looks like a "
                f"{unit}-level variable with mislabelled rows; shuffled within each {unit} it would get a null "
                f"almost equal to the observed statistic. Fix the labels of those rows, or, if {name!r} really "
                f"varies within {unit}, pass {_scheme_hint(name, 'within-channel')}.")
    return False, (f"{name!r} varies within {n_vary} {unit} groups but takes a single value within {n_const}: "
            f"{_group_rows(frame, name, part, constant)}. It is shuffled within each {unit}; "
            f"{'that group keeps its' if n_const == 1 else f'those {n_const} groups keep their'} labels in every "
            "permutation.")


def _derive(frame, name, units):
    """Where ``name`` varies, as ``(scheme, problem, note)``.

    ``problem`` is ``(fatal, message)`` for a suspect reading of the data (or
    None), ``note`` says what was inferred on crossed groupings (or None).
    Refuses a constant column.
    """
    values = frame[name]
    if pd.factorize(values)[0].max() < 1:
        raise ValueError(f"variable {name!r} takes a single value ({_label_text(values[:1])[0]}) in every row: "
                         "there is nothing to permute. Remove it from the formula or check the data.")
    ch = units.channel_part
    varies = _varies_within(ch.codes, values)
    if varies.any():
        constant = (ch.sizes > 1) & ~varies
        problem = _mixed_message(frame, name, units, varies, constant) if constant.any() else None
        note = None if units.nested else (
            f"{name!r} varies within the {ch.name} cells: shuffled within each of them, so every row keeps "
            f"its {' and '.join(ch.cols)} (derived).")
        return Scheme(WITHIN, ch.name), problem, note
    if units.nested:
        if _offender(units.subject, values) is None:
            return Scheme(BETWEEN, units.subject_name), None, None
        return Scheme(BETWEEN, ch.name), None, None
    return _derive_crossed(frame, name, units)


def _in_formula_order(units) -> list:
    return sorted(units.groupings, key=lambda p: p.rank)


def _derive_crossed(frame, name, units):
    """Rules 3 and 4 of the module docstring: a variable constant within the cells of crossed groupings."""
    values = frame[name]
    holding = [p for p in units.groupings if _offender(p.codes, values) is None]  # coarse to fine
    if holding:
        top = holding[0]
        other = next((p for p in holding[1:] if not nested_in(p.codes, top.codes)), None)
        if other is not None:
            return Scheme(BETWEEN, top.name), (True, (
                f"{name!r} is constant within each {top.name} group and within each {other.name} group, and "
                f"those groupings cross: permuted across the levels of either, it would vary within the other's. "
                f"Pass {_scheme_hint(name, '...')} explicitly (e.g. {f'{BETWEEN}:{top.name}'!r} or 'none').")), None
        varying = [p.name for p in _in_formula_order(units) if p not in holding]
        return Scheme(BETWEEN, top.name), None, (
            f"{name!r} is constant within each {top.name} group and varies within {' and '.join(varying)} groups: "
            f"permuted across the {top.n} {top.name} groups (derived; every row keeps its groups).")
    cell = units.cell
    top = max(units.groupings, key=lambda p: (p.n, -p.rank))
    if cell.sizes.max() > 1:
        spelled = f"{BETWEEN}:{cell.name} {WITHIN}:{top.name}"
        return Scheme(BETWEEN, cell.name), (True, (
            f"{name!r} is constant within channels, but {units.crossed_hint()}, and it varies within every "
            f"grouping while constant within each {cell.name} cell, so no permutation is known to keep the "
            f"random-effects structure. Pass schemes={{{name!r}: ...}} explicitly ({spelled!r}, 'between-channel' "
            "or 'none').")), None
    others = [p.name for p in _in_formula_order(units) if p is not top]
    return Scheme(WITHIN, top.name), None, (
        f"{name!r} varies within every grouping ({', '.join(p.name for p in _in_formula_order(units))}) and each "
        f"{cell.name} cell holds one row, so no shuffle keeps every row's groups: it is shuffled within each of the "
        f"{top.n} {top.name} groups (the grouping with the most levels), which keeps each {top.name}'s counts of "
        f"its values, while those of each {' and '.join(others)} group vary between permutations (derived; "
        f"exchangeable only approximately; pass {_scheme_hint(name, '...')} to choose).")


def _check_scheme(frame, name, scheme, given, derived, units, explicit, aliased):
    """Refuse a scheme that breaks the structure or cannot change ``name``.

    Besides what cannot work (a level-constant scheme for a variable that
    varies within the levels, a shuffle that moves nothing), ``within:G`` is
    refused for a variable constant within the levels of another grouping:
    its shuffles would make it vary there, designs the data never have.

    Suggestions are spelled by iEEG name when ``aliased`` (the user wrote one,
    or the scheme was derived), otherwise by grouping names.
    """
    where = f"schemes[{name!r}]={given!r}" if explicit else f"{name!r} ({given}, derived)"
    if scheme.kind == NONE:
        return
    if name in units.grouping_columns:
        raise ValueError(f"{where}: {name!r} is also a grouping column, so permuting it would move rows "
                         f"between groups. Pass schemes={{{name!r}: 'none'}}.")
    values, say = frame[name], (lambda s: units.name(s, aliased))
    g = units.partitions[scheme.group]
    if scheme.kind == WITHIN:
        if g.sizes.max() == 1:
            raise ValueError(f"{where}: every {g.name} group has a single row, so shuffling "
                             "within them cannot change labels.")
        if _offender(g.codes, values) is None:
            raise ValueError(f"{where}: {name!r} is constant within every {g.name} group, so "
                             f"shuffling within them cannot change it; use {say(derived)!r}.")
        for p in units.partitions.values():
            if p is not g and p.sizes.max() > 1 and _offender(p.codes, values) is None:
                fix = Scheme(BETWEEN, p.name, g.name) if nested_in(p.codes, g.codes) else derived
                raise ValueError(f"{where}: {name!r} is constant within every {p.name} group; shuffled within "
                                 f"each {g.name} group it would vary within them, which the observed data never "
                                 f"do. Use {say(fix)!r}.")
        return
    ch = units.channel_part
    bad = _offender(ch.codes, values)
    if bad is not None:
        label, rows, labels = _rows(frame, name, ch, bad)
        raise ValueError(f"{where}: {name!r} varies within {ch.name} groups (e.g. {ch.name} = {label}), whose "
                         f"rows {rows} hold {labels}, so it cannot be permuted as a {ch.name}-level value; use "
                         f"{say(Scheme(WITHIN, ch.name))!r} (shuffled within each {ch.name}).")
    if not explicit and units.nested and scheme == Scheme(BETWEEN, ch.name):
        for cols, codes in units.middle:
            if _offender(codes, values) is None:
                g_name = ":".join(cols)
                options = f"{f'{BETWEEN}:{g_name}'!r} or {f'{BETWEEN}:{g_name} {WITHIN}:{units.subject_name}'!r}"
                raise ValueError(f"{name!r} is constant within each {g_name!r} group, an intermediate "
                                 f"grouping level, for which no scheme is derived. Pass schemes={{{name!r}: ...}} "
                                 f"explicitly, e.g. {options}.")
    bad = _offender(g.codes, values)
    if bad is not None:
        fixes = [say(Scheme(BETWEEN, ch.name, g.name))] if units.nested else []
        fixes = dict.fromkeys(fixes + [say(derived)])
        label, rows, labels = _rows(frame, name, g, bad)
        raise ValueError(f"{where}: {name!r} varies between the {ch.name} groups of one {g.name}, so it cannot "
                         f"be permuted as a {g.name}-level value (e.g. {g.name} = {label}, whose rows {rows} hold "
                         f"{labels}); use {' or '.join(map(repr, fixes))}.")
    if scheme.within:
        h = units.partitions[scheme.within]
        if _offender(h.codes, values) is None:
            if h is g:
                raise ValueError(f"{where}: the formula has one grouping level ({h.name}), so there are no smaller "
                                 f"units within a {h.name} group to permute; use {say(Scheme(BETWEEN, h.name))!r} "
                                 f"(whole {h.name} groups are permuted).")
            raise ValueError(f"{where}: {name!r} is constant within every {h.name} group, so permuting "
                             f"{g.name} groups within them cannot change it; use {say(Scheme(BETWEEN, h.name))!r}.")


def _joint_notes(used, resolved, explicit) -> list:
    """Say which variables share a scheme: one shuffle moves them together."""
    notes = []
    for scheme in dict.fromkeys(resolved.values()):
        names = [v for v, s in resolved.items() if s == scheme]
        if scheme.kind == NONE or len(names) < 2 or all(v in explicit for v in names):
            continue
        alone = names[-1]
        hint = option_hint(f"schemes={{{alone!r}: 'none'}}", f"--scheme {alone}=none")
        notes.append(f"{', '.join(map(repr, names))} share the scheme {used[names[0]]!r} and are permuted jointly "
                     f"(one shuffle moves them together, keeping each row's combination); to permute "
                     f"{names[0]!r} alone, pass {hint}.")
    return notes


@dataclass(frozen=True, eq=False)
class SchemePlan:
    """How every fixed-effect variable of one design is permuted.

    Attributes
    ----------
    units : Units
        The design's groupings, channels and subjects.
    schemes : dict of str to str
        Scheme used for each fixed-effect variable, as named (given or derived).
    resolved : dict of str to Scheme
        The same schemes with their groupings resolved; variables with equal
        ones are permuted jointly.
    varies : dict of str to str
        Level at which each variable varies in the data, named as its derived
        scheme (``"constant"`` for a constant variable the user chose not to
        permute).
    notes : tuple of str
        What the summary must say: variables permuted jointly, channels
        whose labels never move, schemes inferred for crossed groupings.
    """

    units: Units
    schemes: dict
    resolved: dict
    varies: dict
    notes: tuple

    @property
    def in_use(self) -> set:
        """Resolved schemes that move something (every scheme but ``"none"``)."""
        return {s for s in self.resolved.values() if s.kind != NONE}


def assign_schemes(design, formula, schemes=None, aliases=True) -> SchemePlan:
    """Choose and check the permutation scheme of every fixed-effect variable.

    A variable's scheme is derived from where it varies in ``design`` (see
    the module docstring) unless ``schemes`` names one; every scheme is
    checked against the grouping structure. Warnings (channels whose labels
    never move) are issued here and kept in the plan's notes.

    Parameters
    ----------
    design : pandas.DataFrame
        One row per observation.
    formula : ModelFormula
        Its random terms define the groupings; its fixed-effect variables
        get a scheme.
    schemes : dict of str to str, optional
        Scheme per variable, overriding the derived one: ``"within:G"``,
        ``"between:G"``, ``"between:G within:H"`` or ``"none"``, G and H
        groupings as the formula writes them, or an alias of
        :data:`~clusterlmer.scheme_names.ALIASES`.
    aliases : bool
        Name derived schemes by their iEEG aliases where they have one
        (``"within-channel"``); False names them by their groupings
        (``"within:Subject"``), for data whose "channels" are a sample axis.

    Returns
    -------
    SchemePlan

    Raises
    ------
    ValueError
        A scheme for a variable the formula does not have, an unknown
        scheme or grouping, absent or incomplete columns, a constant
        variable, a scheme that would break the grouping structure or cannot
        change the variable, or nothing left to permute.
    """
    schemes = dict(schemes or {})
    fixed = formula.fixed_variables
    for name in schemes:
        if name not in fixed:
            raise ValueError(f"schemes names {name!r}, which is not a fixed-effect variable of the formula. "
                             f"Fixed-effect variables: {_preview(fixed) or '(none)'}.")
    parsed = check_scheme_names(schemes, formula)
    check_columns(design, formula.grouping_variables, "grouping column(s)")
    check_columns(design, fixed, "fixed-effect column(s)")
    if not fixed:
        raise ValueError(f"formula {formula.text!r} has no fixed-effect variable: there is nothing to permute.")

    units = Units(design, formula)
    varies, used, resolved, notes = {}, {}, {}, []
    for name in fixed:
        explicit = name in schemes
        scheme = units.resolve(parsed[name], f"schemes[{name!r}]={schemes[name]!r}") if explicit else None
        # A constant nuisance column the user chose not to permute is not an error here.
        if explicit and scheme.kind == NONE and design[name].nunique() < 2:
            derived, problem, note = None, None, None
            varies[name] = "constant"
        else:
            derived, problem, note = _derive(design, name, units)
            varies[name] = units.name(derived, aliases)
        resolved[name] = scheme if explicit else derived
        used[name] = schemes[name] if explicit else varies[name]
        aliased = (not explicit and aliases) or (explicit and schemes[name] in ALIASES)
        _check_scheme(design, name, resolved[name], used[name], derived, units, explicit, aliased)
        if explicit:
            continue
        if problem:
            fatal, text = problem
            if fatal:
                raise ValueError(text)
            # stacklevel 3: the warning points at the caller of make_permutations.
            warnings.warn(text, UserWarning, stacklevel=3)
            notes.append(text)
        if note:
            notes.append(note)
    plan = SchemePlan(units, used, resolved, varies, ())
    if not plan.in_use:
        raise ValueError("every fixed-effect variable has scheme 'none': there is nothing to permute.")
    return replace(plan, notes=tuple(notes + _joint_notes(used, resolved, schemes)))
