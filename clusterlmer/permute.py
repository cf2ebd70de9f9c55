"""Permutations that keep the random-effects structure.

Rows never move: every row keeps its subject, channel and grouping columns, so
``(1|sid) + (1|sid:ch)`` stays valid for every permuted dataset. Only the
fixed-effect columns are shuffled, at the level where each one varies:

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
whose labels never move.

All permutations are drawn up front from ``np.random.default_rng(seed)``, one
permutation after the other, so the first k do not depend on
``n_permutations``, workers or engine.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ._checks import check_option, option_hint
from ._memory import check_memory, permutation_maps_bytes
from .data import TimeseriesData, _preview
from .design import ModelDesign, _label_text
from .formula import ModelFormula, parse_formula

__all__ = ["SCHEMES", "Permutations", "check_one_row_per_level", "make_permutations"]

SCHEMES = ("within-channel", "between-channel", "channel-within-subject", "between-subject", "none")
# Fixed draw order inside one permutation: this is what makes runs prefix-stable.
_DRAW_ORDER = SCHEMES[:4]


@dataclass(frozen=True, eq=False)
class Permutations:
    """Permuted designs drawn up front, stored as integer row maps.

    Attributes
    ----------
    design : pandas.DataFrame
        The observed design (a private copy).
    schemes : dict of str to str
        Scheme used for each fixed-effect variable.
    varies : dict of str to str
        Level at which each variable varies in the data: ``"within-channel"``,
        ``"between-channel"`` or ``"between-subject"``.
    seed : int
        Seed of ``np.random.default_rng``; drawn fresh when none was given.
    n_permutations : int
    maps : dict of str to numpy.ndarray
        For each scheme in use, read-only ints ``(n_permutations, n_obs)``:
        permutation ``k`` gives row ``i`` the values of row ``maps[s][k, i]``.
    channel_columns, subject_columns : tuple of str
        Columns defining channels and subjects (``subject_columns`` is empty
        for crossed groupings).
    n_channels, n_subjects : int
    channel_name, subject_name : str
        The groupings by their columns, e.g. ``"sid:ch"`` and ``"sid"``, or
        ``"Subject"`` for both when the formula has one grouping.
    notes : tuple of str
        What the summary must say about the schemes: variables permuted
        jointly, channels whose labels never move.
    """

    design: pd.DataFrame
    schemes: dict
    varies: dict
    seed: int
    n_permutations: int
    maps: dict
    channel_columns: tuple
    subject_columns: tuple
    n_channels: int
    n_subjects: int
    channel_name: str = "channel"
    subject_name: str = "subject"
    notes: tuple = ()

    @property
    def row_maps(self) -> dict:
        """Row map ``(n_permutations, n_obs)`` of every permuted variable.

        Variables sharing a scheme share one array (they move jointly).
        """
        return {v: self.maps[s] for v, s in self.schemes.items() if s != "none"}

    def __len__(self) -> int:
        return self.n_permutations

    def _index(self, k) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"permutation index must be an integer, got {type(k).__name__}.")
        if not -self.n_permutations <= k < self.n_permutations:
            raise IndexError(f"permutation {k} out of range for {self.n_permutations} permutations.")
        return int(k) % self.n_permutations

    def __getitem__(self, k) -> pd.DataFrame:
        return self.apply(k, self.design)

    def __iter__(self):
        for k in range(self.n_permutations):
            yield self[k]

    def column(self, k, name) -> pd.Series:
        """Column ``name`` of the ``k``-th permuted design (same index and dtype)."""
        k = self._index(k)
        if name not in self.design.columns:
            raise KeyError(f"{name!r} is not a design column; columns: {_preview(self.design.columns)}.")
        col = self.design[name]
        m = self.row_maps.get(name)
        return col.copy() if m is None else _take(col, m[k])

    def apply(self, k, frame):
        """Permute the variables' columns of any table with the design's rows.

        Parameters
        ----------
        k : int
            Permutation index.
        frame : pandas.DataFrame or ModelDesign
            Same rows in the same order as the design, e.g. an already coded
            ``ModelDesign.frame``. Columns named like permuted variables are
            permuted; the others are left as they are.

        Returns
        -------
        pandas.DataFrame or ModelDesign
            A new object of the type given.
        """
        k = self._index(k)
        if isinstance(frame, ModelDesign):
            return replace(frame, frame=self.apply(k, frame.frame))
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"frame must be a pandas DataFrame or ModelDesign, got {type(frame).__name__}.")
        if len(frame) != len(self.design):
            raise ValueError(f"frame has {len(frame)} rows but the design has {len(self.design)}; "
                             "it must hold the same rows in the same order.")
        out = frame.copy()
        for name, m in self.row_maps.items():
            if name in out.columns:
                out[name] = _take(out[name], m[k])
        return out

    def describe(self) -> pd.DataFrame:
        """One row per fixed-effect variable: where it varies and how it is permuted."""
        ch, sub = self.channel_name, self.subject_name
        among = {
            "within-channel": f"rows within each of {self.n_channels} {ch} groups",
            "between-channel": f"{self.n_channels} {ch} groups",
            "channel-within-subject": f"{ch} groups within each of {self.n_subjects} {sub} groups",
            "between-subject": f"{self.n_subjects} {sub} groups",
            "none": "not permuted",
        }
        return pd.DataFrame(
            [(v, self.varies[v], s, among[s]) for v, s in self.schemes.items()],
            columns=["variable", "varies", "scheme", "permuted_among"],
        )

    def summary_lines(self) -> list:
        """One line per variable (scheme and what it shuffles), then the notes."""
        table = self.describe()
        lines = [f"{r.variable}: {r.scheme} (among {r.permuted_among})" if r.scheme != "none"
                 else f"{r.variable}: not permuted" for r in table.itertuples()]
        return lines + list(self.notes)

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the seed, schemes and row maps (for checkpoints)."""
        h = hashlib.sha256()
        head = {"seed": str(self.seed), "n_permutations": self.n_permutations,
                "n_obs": len(self.design), "schemes": sorted(self.schemes.items())}
        h.update(json.dumps(head, sort_keys=True).encode())
        for scheme in sorted(self.maps):
            h.update(scheme.encode())
            h.update(np.ascontiguousarray(self.maps[scheme], dtype="<i8").tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        how = ", ".join(f"{v}: {s}" for v, s in self.schemes.items())
        return f"<Permutations | {self.n_permutations} permutations, seed={self.seed} | {how}>"


def _take(col: pd.Series, rows) -> pd.Series:
    # .array.take keeps the dtype (categorical, string, nullable); same index.
    return pd.Series(col.array.take(rows), index=col.index, name=col.name)


def _codes(frame, cols) -> np.ndarray:
    """Group code 0..G-1 (order of first appearance) of rows sharing ``cols``."""
    return frame.groupby(list(cols), sort=False).ngroup().to_numpy()


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


def _label(frame, cols, row) -> str:
    return ":".join(str(frame[c].iloc[row]) for c in cols)


class _Units:
    """Channels and subjects of the design, as codes per row."""

    def __init__(self, frame, formula):
        self.grouping_columns = formula.grouping_variables
        groupings = [(g, _codes(frame, g)) for g in _groupings(formula)]
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
            self.channel_cols, self.channel = cols, _codes(frame, cols)
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
        shown.append(f"{_label(frame, units.channel_cols, rows[0])} (rows {_preview(rows, 6)}: {labels})")
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
                         f"{_label(frame, units.channel_cols, row)}), so it cannot be permuted as a "
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


def _draw(units, in_use, n_permutations, seed) -> dict:
    """Row maps for every scheme in use, one permutation after the other."""
    rng = np.random.default_rng(seed)
    ch = units.channel
    n_obs = ch.size
    dtype = np.int32 if n_obs < 2**31 else np.int64
    maps = {s: np.empty((n_permutations, n_obs), dtype) for s in _DRAW_ORDER if s in in_use}
    rows_by_channel = np.argsort(ch, kind="stable")
    if "channel-within-subject" in maps:
        sub_of_ch = units.subject_of_channel
        channels_by_subject = np.argsort(sub_of_ch, kind="stable")
    for k in range(n_permutations):
        for scheme, out in maps.items():
            if scheme == "within-channel":
                # Random keys sorted inside each channel: a uniform shuffle per channel.
                out[k, rows_by_channel] = np.lexsort((rng.random(n_obs), ch))
            elif scheme == "between-channel":
                target = np.argsort(rng.random(units.n_channels))
                out[k] = units.channel_first[target][ch]
            elif scheme == "channel-within-subject":
                target = np.empty(units.n_channels, np.intp)
                target[channels_by_subject] = np.lexsort((rng.random(units.n_channels), sub_of_ch))
                out[k] = units.channel_first[target][ch]
            else:
                target = np.argsort(rng.random(units.n_subjects))
                out[k] = units.subject_first[target][units.subject]
    for out in maps.values():
        out.flags.writeable = False
    return maps


def _check_columns(frame, names, what):
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} {_preview(map(repr, missing))} {'is' if len(missing) == 1 else 'are'} not in the "
                         f"design. Available columns: {_preview(frame.columns)}.")
    for c in names:
        na = frame[c].isna().to_numpy()
        if na.any():
            raise ValueError(f"column {c!r} has {na.sum()} missing value(s) (rows "
                             f"{_preview(np.flatnonzero(na), 6)}); fill them or drop those rows.")


def make_permutations(design, formula, n_permutations, seed=None, *, schemes=None) -> Permutations:
    """Draw permuted designs that keep the random-effects structure.

    Parameters
    ----------
    design : pandas.DataFrame or TimeseriesData
        One row per observation (e.g. ``sid``, ``ch``, ``hit_miss``, ``region``).
    formula : str or ModelFormula
        Its random terms define channels and subjects; its fixed-effect
        variables are permuted.
    n_permutations : int
        Number of permuted designs (positive).
    seed : int, optional
        Seed for ``np.random.default_rng``. ``None`` draws a fresh one and
        stores it in ``Permutations.seed`` so the run can be repeated.
    schemes : dict of str to str, optional
        Scheme per variable, overriding the derived one; one of
        ``"within-channel"``, ``"between-channel"``,
        ``"channel-within-subject"``, ``"between-subject"``, ``"none"``.
        Variables sharing a scheme are permuted jointly.

    Returns
    -------
    Permutations
    """
    if isinstance(design, TimeseriesData):
        design = design.design
    if not isinstance(design, pd.DataFrame):
        raise TypeError(f"design must be a pandas DataFrame or TimeseriesData, got {type(design).__name__}.")
    if len(design) == 0:
        raise ValueError("design has no rows: there is nothing to permute.")
    if not isinstance(formula, ModelFormula):
        formula = parse_formula(formula)
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) \
            or n_permutations < 1:
        raise ValueError(f"n_permutations must be a positive integer, got {n_permutations!r}.")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy)
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}.")
    schemes = dict(schemes or {})
    fixed = formula.fixed_variables
    for name, scheme in schemes.items():
        if name not in fixed:
            raise ValueError(f"schemes names {name!r}, which is not a fixed-effect variable of the formula. "
                             f"Fixed-effect variables: {_preview(fixed) or '(none)'}.")
        check_option(f"schemes[{name!r}]", scheme, SCHEMES)
    _check_columns(design, formula.grouping_variables, "grouping column(s)")
    _check_columns(design, fixed, "fixed-effect column(s)")
    if not fixed:
        raise ValueError(f"formula {formula.text!r} has no fixed-effect variable: there is nothing to permute.")

    units = _Units(design, formula)
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
            warnings.warn(text, UserWarning, stacklevel=2)
            notes.append(text)
    in_use = set(used.values()) - {"none"}
    if not in_use:
        raise ValueError("every fixed-effect variable has scheme 'none': there is nothing to permute.")
    notes += _joint_notes(used, schemes)
    check_memory({"permutation maps": permutation_maps_bytes(n_permutations, len(design), len(in_use))})
    maps = _draw(units, in_use, int(n_permutations), seed)
    return Permutations(design.copy(), used, varies, int(seed), int(n_permutations), maps,
                        tuple(units.channel_cols), tuple(units.subject_cols), units.n_channels,
                        units.n_subjects, units.channel_name, units.subject_name, tuple(notes))


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


def check_one_row_per_level(design, variable, channel_columns=("sid", "ch")):
    """Require exactly one row per level of ``variable`` in every channel.

    The original layout has one hit and one miss row per channel; a channel
    with a missing or repeated condition would make within-channel swaps
    unequal. A level that only a minority of channels hold (e.g. one row of
    ``hit_miss = 2``) is reported with those channels and rows.

    Parameters
    ----------
    design : pandas.DataFrame or TimeseriesData
    variable : str
        A within-channel condition, e.g. ``"hit_miss"``.
    channel_columns : tuple of str
        Columns that together identify a channel.

    Raises
    ------
    ValueError
        Naming the first offending channels and what they hold.
    """
    if isinstance(design, TimeseriesData):
        design = design.design
    channel_columns = (channel_columns,) if isinstance(channel_columns, str) else tuple(channel_columns)
    _check_columns(design, [*channel_columns, variable], "column(s)")
    texts = pd.Series(_label_text(design[variable]), index=design.index)
    levels = list(dict.fromkeys(texts))
    if len(levels) < 2:
        raise ValueError(f"{variable!r} has a single level ({levels[0]!r}); each channel needs one row per "
                         f"level of {variable!r}, so the data must hold at least two levels.")
    codes = _codes(design, channel_columns)
    counts = pd.crosstab(codes, texts.to_numpy())[levels]  # channels x levels, in first-appearance order
    n_channels = len(counts)
    # A level found in a minority of channels is the odd one out (e.g. one row of hit_miss = 2), not a
    # level all the other channels lack: the channels holding it are the ones to name.
    common = [lev for lev in levels if 2 * int((counts[lev] > 0).sum()) >= n_channels]
    expected = common if len(common) >= 2 else levels
    stray = [lev for lev in levels if lev not in expected]
    bad = (counts[expected] != 1).any(axis=1) | (counts[stray] > 0).any(axis=1)
    if not bad.any():
        return
    first = np.unique(codes, return_index=True)[1]

    def rows_of(mask):
        rows = np.flatnonzero(mask)
        return f"0-based row{'s' if len(rows) > 1 else ''} {_preview(rows, 6)}"

    shown = []
    for lev in stray:
        holders = counts.index[(counts[lev] > 0).to_numpy()]
        names = _preview([_label(design, channel_columns, first[c]) for c in holders], 5)
        shown.append(f"{variable} = {lev} occurs only in channel{'s' if len(holders) > 1 else ''} {names} "
                     f"({rows_of(texts.to_numpy() == lev)})")
    uneven = counts.index[(counts[expected] != 1).any(axis=1).to_numpy()]
    for code in uneven[:5]:
        held = texts.iloc[np.flatnonzero(codes == code)].tolist()
        shown.append(f"{_label(design, channel_columns, first[code])} has {len(held)} row(s) "
                     f"({', '.join(held)})")
    more = f", ... ({len(uneven)} channels in all)" if len(uneven) > 5 else ""
    raise ValueError(
        f"each channel needs one row per level of {variable!r} (one row each for {', '.join(expected)}"
        f"{', i.e. one hit and one miss row' if variable == 'hit_miss' else ''}); {int(bad.sum())} of {n_channels} "
        f"channels do not: {'; '.join(shown)}{more}. Drop or fix those rows."
    )
