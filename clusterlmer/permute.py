"""Permutations that keep the random-effects structure: drawn up front, applied to any table of the design's rows.

Rows never move: every row keeps its subject, channel and grouping columns, so
``(1|sid) + (1|sid:ch)`` stays valid for every permuted dataset. Only the
fixed-effect columns are shuffled, at the level where each one varies; which
level (the scheme) is decided and checked in :mod:`clusterlmer.schemes`, and
scheme names (``"within:G"``, ``"between:G"``, ``"between:G within:H"``,
``"none"`` and the iEEG aliases) are defined in :mod:`clusterlmer.scheme_names`.

All permutations are drawn up front from ``np.random.default_rng(seed)``, one
permutation after the other and, inside one, the schemes in a fixed order
(:meth:`~clusterlmer.scheme_names.Units.draw_key`: within before between,
finer groupings first), so the first k do not depend on ``n_permutations``,
workers or engine. An alias and its grouping spelling are one scheme and draw
the same maps. They are kept as integer row maps: permutation ``k`` gives row
``i`` the values of row ``maps[scheme][k, i]``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ._memory import check_memory, permutation_maps_bytes
from .data import TimeseriesData, _preview
from .design import ModelDesign
from .formula import ModelFormula, parse_formula
from .scheme_names import NONE, WITHIN
from .schemes import SCHEMES, assign_schemes
from .transforms import recompute, with_recomputed

__all__ = ["SCHEMES", "Permutations", "make_permutations"]


@dataclass(frozen=True, eq=False)
class Permutations:
    """Permuted designs drawn up front, stored as integer row maps.

    Attributes
    ----------
    design : pandas.DataFrame
        The observed design (a private copy).
    schemes : dict of str to str
        Scheme used for each fixed-effect variable: as the user spelled it,
        or derived (by its iEEG name where one applies, e.g.
        ``"within-channel"``, otherwise by grouping names, e.g.
        ``"between:Item"``).
    varies : dict of str to str
        Level at which each variable varies in the data, named as its derived
        scheme (``"within-channel"``, ``"between-channel"``,
        ``"between-subject"``, ``"between:Item"``, ...).
    seed : int
        Seed of ``np.random.default_rng``; drawn fresh when none was given.
    n_permutations : int
    maps : dict of str to numpy.ndarray
        For each scheme name in use, read-only ints ``(n_permutations, n_obs)``:
        permutation ``k`` gives row ``i`` the values of row ``maps[s][k, i]``.
        Two names of one scheme (an alias and its spelling) share one array.
    channel_columns, subject_columns : tuple of str
        Columns defining channels and subjects (``subject_columns`` is empty
        for crossed groupings).
    n_channels, n_subjects : int
    channel_name, subject_name : str
        The groupings by their columns, e.g. ``"sid:ch"`` and ``"sid"``, or
        ``"Subject"`` for both when the formula has one grouping.
    notes : tuple of str
        What the summary must say about the schemes: variables permuted
        jointly, channels whose labels never move, schemes inferred for
        crossed groupings.
    spellings : dict of str to str
        Every scheme name in use by grouping names, e.g.
        ``{"within-channel": "within:sid:ch"}``.
    among : dict of str to str
        What every scheme name in use shuffles, e.g.
        ``"rows within each of 169 sid:ch groups"``.
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
    spellings: dict = field(default_factory=dict)
    among: dict = field(default_factory=dict)

    @property
    def row_maps(self) -> dict:
        """Row map ``(n_permutations, n_obs)`` of every permuted variable.

        Variables sharing a scheme share one array (they move jointly).
        """
        return {v: self.maps[s] for v, s in self.schemes.items() if s != NONE}

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
            # Its transformations (log(x), poly(x, 2)) are recomputed from their moved source columns.
            maps = {v: m[k] for v, m in self.row_maps.items()}
            moved = replace(frame, frame=self.apply(k, frame.frame))
            return with_recomputed(moved, recompute(frame, maps), maps)
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
        return pd.DataFrame(
            [(v, self.varies[v], s, self.among.get(s, "not permuted")) for v, s in self.schemes.items()],
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


def _draw(units, in_use, n_permutations, seed) -> dict:
    """Row maps for every resolved scheme in use, one permutation after the other."""
    rng = np.random.default_rng(seed)
    n_obs = units.channel.size
    dtype = np.int32 if n_obs < 2**31 else np.int64
    maps = {s: np.empty((n_permutations, n_obs), dtype) for s in sorted(in_use, key=units.draw_key)}
    steps = []  # (out, partition, rows or levels in level order, level of H of every G level or None)
    for scheme, out in maps.items():
        part = units.partitions[scheme.group]
        outer = units.partitions[scheme.within].codes[part.first] if scheme.within else None
        order = np.argsort(part.codes if scheme.kind == WITHIN else outer, kind="stable") \
            if scheme.kind == WITHIN or outer is not None else None
        steps.append((scheme.kind, out, part, order, outer))
    for k in range(n_permutations):
        for kind, out, part, order, outer in steps:
            if kind == WITHIN:
                # Random keys sorted inside each level: a uniform shuffle per level.
                out[k, order] = np.lexsort((rng.random(n_obs), part.codes))
                continue
            if outer is None:
                target = np.argsort(rng.random(part.n))
            else:
                # Levels of G permuted among the levels that share their level of H.
                target = np.empty(part.n, np.intp)
                target[order] = np.lexsort((rng.random(part.n), outer))
            out[k] = part.first[target][part.codes]
    for out in maps.values():
        out.flags.writeable = False
    return maps


def make_permutations(design, formula, n_permutations, seed=None, *, schemes=None, aliases=None) -> Permutations:
    """Draw permuted designs that keep the random-effects structure.

    Parameters
    ----------
    design : pandas.DataFrame or TimeseriesData
        One row per observation (e.g. ``sid``, ``ch``, ``hit_miss``, ``region``).
    formula : str or ModelFormula
        Its random terms define the groupings; its fixed-effect variables
        are permuted.
    n_permutations : int
        Number of permuted designs (positive).
    seed : int, optional
        Seed for ``np.random.default_rng``. ``None`` draws a fresh one and
        stores it in ``Permutations.seed`` so the run can be repeated.
    schemes : dict of str to str, optional
        Scheme per variable, overriding the derived one: ``"within:G"``
        (shuffled among the rows of each level of G), ``"between:G"``
        (G-level values permuted across G's levels), ``"between:G within:H"``
        (across the levels of G within each level of H) or ``"none"``, with G
        and H groupings as the formula writes them (``"sid:ch"``,
        ``"Subject"``); or an iEEG alias: ``"within-channel"``,
        ``"between-channel"``, ``"channel-within-subject"``,
        ``"between-subject"``. Variables sharing a scheme are permuted
        jointly. How the default is derived, also for crossed groupings, is
        described in :mod:`clusterlmer.schemes`.
    aliases : bool, optional
        Report derived schemes by their iEEG names (``"within-channel"``)
        where they have one. Default: yes, unless ``design`` is a
        TimeseriesData with a channel axis, whose channels are not the
        design's groupings (schemes are then named by groupings,
        ``"within:Subject"``).

    Returns
    -------
    Permutations
    """
    if aliases is None:
        aliases = not (isinstance(design, TimeseriesData) and design.channels is not None)
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
    plan = assign_schemes(design, formula, schemes, aliases)
    units = plan.units
    check_memory({"permutation maps": permutation_maps_bytes(n_permutations, len(design), len(plan.in_use))})
    drawn = _draw(units, plan.in_use, int(n_permutations), seed)
    named = {s: plan.resolved[v] for v, s in plan.schemes.items() if s != NONE}
    return Permutations(design.copy(), plan.schemes, plan.varies, int(seed), int(n_permutations),
                        {s: drawn[r] for s, r in named.items()}, tuple(units.channel_cols),
                        tuple(units.subject_cols), units.n_channels, units.n_subjects, units.channel_name,
                        units.subject_name, plan.notes, {s: r.spelling for s, r in named.items()},
                        {s: units.among(r) for s, r in named.items()})
