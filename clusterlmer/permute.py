"""Permutations that keep the random-effects structure: drawn up front, applied to any table of the design's rows.

Rows never move: every row keeps its subject, channel and grouping columns, so
``(1|sid) + (1|sid:ch)`` stays valid for every permuted dataset. Only the
fixed-effect columns are shuffled, at the level where each one varies; which
level (the scheme) is decided and checked in :mod:`clusterlmer.schemes`.

All permutations are drawn up front from ``np.random.default_rng(seed)``, one
permutation after the other and, inside one, the schemes in a fixed order, so
the first k do not depend on ``n_permutations``, workers or engine. They are
kept as integer row maps: permutation ``k`` gives row ``i`` the values of row
``maps[scheme][k, i]``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ._memory import check_memory, permutation_maps_bytes
from .data import TimeseriesData, _preview
from .design import ModelDesign
from .formula import ModelFormula, parse_formula
from .schemes import SCHEMES, assign_schemes

__all__ = ["SCHEMES", "Permutations", "make_permutations"]

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
    plan = assign_schemes(design, formula, schemes)
    units = plan.units
    check_memory({"permutation maps": permutation_maps_bytes(n_permutations, len(design), len(plan.in_use))})
    maps = _draw(units, plan.in_use, int(n_permutations), seed)
    return Permutations(design.copy(), plan.schemes, plan.varies, int(seed), int(n_permutations), maps,
                        tuple(units.channel_cols), tuple(units.subject_cols), units.n_channels,
                        units.n_subjects, units.channel_name, units.subject_name, plan.notes)
