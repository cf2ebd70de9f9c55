"""Sample datasets shipped with clusterlmer, in the original method's ``.mat`` layout.

Two simulated MATLAB v7.3 files have the layout and shape of the original
method's public sample files (which cannot be redistributed here):

* ``lme_data_2way.mat``: 338 rows x 139 timepoints, 15 subjects with unequal
  channel counts (169 channels), two regions of unequal size (``hc``,
  ``phrc``); for :data:`FORMULA_2WAY` (F statistics).
* ``lme_data_1way.mat``: 186 rows x 139 timepoints, 15 subjects (93
  channels); for :data:`FORMULA_1WAY` (t statistic).

Each channel has two rows (``hit_miss`` = 1 and 0). The data are drawn by
:func:`clusterlmer.simulate.simulate_ieeg` with subject and channel random
intercepts, AR(1) noise and known effects: a hit/miss effect in one window
and (2-way) a hit/miss x region interaction in a later window. A JSON file
next to each ``.mat`` file records the generator, the seed, every parameter
and where the effects are; :func:`ground_truth` reads it.

Examples
--------
>>> import clusterlmer as cl
>>> data = cl.datasets.sample_2way()
>>> data.values.shape
(338, 139)
>>> truth = cl.datasets.ground_truth("2way")
>>> truth.windows["interaction"].first_time, truth.windows["interaction"].last_time
(0.7, 0.97)
"""

from __future__ import annotations

import atexit
import contextlib
import json
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType

__all__ = [
    "FORMULA_1WAY",
    "FORMULA_2WAY",
    "KINDS",
    "EffectWindow",
    "SampleTruth",
    "ground_truth",
    "sample_1way",
    "sample_2way",
    "sample_path",
]

#: The 2-way model of the original method (F tests of ``hit_miss``, ``region``
#: and ``hit_miss:region``); use it with :func:`sample_2way`.
FORMULA_2WAY = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"
#: The 1-way model of the original method (t test of ``hit_miss``); use it
#: with :func:`sample_1way`.
FORMULA_1WAY = "data ~ hit_miss + (1|sid) + (1|sid:ch)"
#: The available sample datasets.
KINDS = ("2way", "1way")

_files = contextlib.ExitStack()
atexit.register(_files.close)


def _check_kind(kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(repr(k) for k in KINDS)}, got {kind!r}.")
    return kind


def _resource(name):
    return resources.files(__name__) / "data" / name


def sample_path(kind="2way") -> pathlib.Path:
    """Path of a bundled sample ``.mat`` file.

    Parameters
    ----------
    kind : {"2way", "1way"}
        ``"2way"``: ``lme_data_2way.mat`` (338 x 139, for :data:`FORMULA_2WAY`);
        ``"1way"``: ``lme_data_1way.mat`` (186 x 139, for :data:`FORMULA_1WAY`).

    Returns
    -------
    pathlib.Path
        A file on disk that :func:`clusterlmer.load_mat`, the command line or
        MATLAB (``load(path)``) can open. Treat it as read-only.
    """
    resource = _resource(f"lme_data_{_check_kind(kind)}.mat")
    if isinstance(resource, pathlib.Path):
        return resource
    # Installed in a zip: extract once for the life of the process.
    return pathlib.Path(_files.enter_context(resources.as_file(resource)))


def _load(kind):
    from ..io import load_mat

    return load_mat(sample_path(kind))


def sample_2way():
    """The 2-way sample dataset: 338 rows x 139 timepoints.

    15 subjects with unequal channel counts, 169 channels in two regions of
    unequal size (``hc``: 57, ``phrc``: 112; ``hc`` appears first, so it is
    the reference level). Two rows per channel: ``hit_miss`` 1 (hit) and 0
    (miss). Times run from -0.2 to 1.18 s in 0.01 s steps.

    Model: :data:`FORMULA_2WAY`,
    ``data ~ hit_miss * region + (1|sid) + (1|sid:ch)`` (F tests).

    Returns
    -------
    TimeseriesData
        ``design`` has the columns ``sid``, ``ch`` (text), ``hit_miss``
        (float 0/1) and ``region`` (text); ``values`` has shape (338, 139);
        ``times`` has 139 values in seconds.

    Notes
    -----
    Known effects (see :func:`ground_truth`): hit - miss = 0.6 (peak, noise
    SD units) in every channel at samples 41..68 (0.21..0.48 s), and
    hit - miss = +0.8 in ``hc`` and -0.8 in ``phrc`` at samples 90..117
    (0.70..0.97 s), both Hann-tapered. With reference coding, the
    ``hit_miss`` term is the effect in ``hc`` and so shows both windows.
    """
    return _load("2way")


def sample_1way():
    """The 1-way sample dataset: 186 rows x 139 timepoints.

    15 subjects with unequal channel counts, 93 channels, two rows per
    channel: ``hit_miss`` 1 (hit) and 0 (miss). Times run from -0.2 to
    1.18 s in 0.01 s steps.

    Model: :data:`FORMULA_1WAY`, ``data ~ hit_miss + (1|sid) + (1|sid:ch)``
    (t test of ``hit_miss``).

    Returns
    -------
    TimeseriesData
        ``design`` has the columns ``sid``, ``ch`` (text) and ``hit_miss``
        (float 0/1); ``values`` has shape (186, 139); ``times`` has 139
        values in seconds.

    Notes
    -----
    Known effect (see :func:`ground_truth`): hit - miss = 0.6 (peak, noise
    SD units) at samples 41..68 (0.21..0.48 s), Hann-tapered.
    """
    return _load("1way")


@dataclass(frozen=True)
class EffectWindow:
    """Where one simulated effect is.

    Attributes
    ----------
    name : str
        ``"hit_miss"`` or ``"interaction"``.
    start, stop : int
        0-based sample indices, half-open ``[start, stop)`` (a Python slice).
    first_time, last_time : float
        Times (seconds) of the first and last sample inside the window.
    effect : float
        Peak size of the effect in noise SD units.
    profile : tuple of float
        Weight of the effect at each sample of the window (Hann taper, peak
        near 1); the simulated hit - miss difference is ``effect * profile``
        (2-way interaction: ``+`` in ``hc``, ``-`` in ``phrc``).
    signal : str
        The simulated signal in words.
    """

    name: str
    start: int
    stop: int
    first_time: float
    last_time: float
    effect: float
    profile: tuple = field(repr=False)
    signal: str = ""

    @property
    def first(self) -> int:
        """First sample inside the window (0-based, inclusive)."""
        return self.start

    @property
    def last(self) -> int:
        """Last sample inside the window (0-based, inclusive)."""
        return self.stop - 1

    @property
    def slice(self) -> slice:
        """``slice(start, stop)``, to index the time axis."""
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class SampleTruth:
    """Ground truth of a sample dataset, read from the JSON file next to it.

    Attributes
    ----------
    kind : str
        ``"2way"`` or ``"1way"``.
    seed : int
        Seed passed to :func:`clusterlmer.simulate.simulate_ieeg`.
    formula : str
        The model the dataset is for.
    statistic : str
        ``"F"`` (2-way) or ``"t"`` (1-way).
    shape : tuple of int
        ``(rows, timepoints)``.
    windows : mapping of str to EffectWindow
        ``"hit_miss"`` and (2-way) ``"interaction"``.
    hit_miss_effect : float
        Peak hit - miss difference in the hit/miss window (noise SD units).
    interaction_effect : float or None
        Peak of the region-dependent hit - miss difference (2-way only).
    channels_per_subject : mapping of str to int
    channels_per_region : mapping of str to int or None
        In order of first appearance (the first is the reference level); 2-way only.
    simulate_kwargs : mapping
        Every argument of the :func:`~clusterlmer.simulate.simulate_ieeg`
        call that produced the data (``simulate_ieeg(**simulate_kwargs)``
        gives the same values).
    sha256 : str
        Checksum of the ``.mat`` file.
    path : pathlib.Path
        The ``.mat`` file.
    """

    kind: str
    seed: int
    formula: str
    statistic: str
    shape: tuple
    windows: Mapping[str, EffectWindow]
    hit_miss_effect: float
    interaction_effect: float | None
    channels_per_subject: Mapping[str, int]
    channels_per_region: Mapping[str, int] | None
    simulate_kwargs: Mapping
    sha256: str
    path: pathlib.Path

    def as_dict(self) -> dict:
        """The full JSON record (a fresh copy): generator, environment, windows, counts."""
        return _record(self.kind)


def _record(kind) -> dict:
    return json.loads(_resource(f"lme_data_{_check_kind(kind)}.json").read_text(encoding="utf-8"))


def ground_truth(kind="2way") -> SampleTruth:
    """Where the effects of a sample dataset are, and how it was generated.

    Parameters
    ----------
    kind : {"2way", "1way"}

    Returns
    -------
    SampleTruth
        Seed, model, shape, effect windows (0-based half-open sample ranges
        and times in seconds), effect sizes and channel counts. ``as_dict()``
        gives the whole JSON record.

    Examples
    --------
    >>> w = ground_truth("1way").windows["hit_miss"]
    >>> (w.first, w.last, w.first_time, w.last_time)
    (41, 68, 0.21, 0.48)
    """
    rec = _record(kind)
    windows = {
        name: EffectWindow(
            name=name,
            start=int(w["start"]),
            stop=int(w["stop"]),
            first_time=float(w["first_time"]),
            last_time=float(w["last_time"]),
            effect=float(w["effect"]),
            profile=tuple(float(p) for p in w["profile"]),
            signal=str(w["signal"]),
        )
        for name, w in rec["windows"].items()
    }
    regions = rec.get("channels_per_region")
    return SampleTruth(
        kind=kind,
        seed=int(rec["seed"]),
        formula=rec["formula"],
        statistic=rec["statistic"],
        shape=(int(rec["shape"]["rows"]), int(rec["shape"]["times"])),
        windows=MappingProxyType(windows),
        hit_miss_effect=windows["hit_miss"].effect,
        interaction_effect=windows["interaction"].effect if "interaction" in windows else None,
        channels_per_subject=MappingProxyType(dict(rec["channels_per_subject"])),
        channels_per_region=MappingProxyType(dict(regions)) if regions is not None else None,
        simulate_kwargs=MappingProxyType(dict(rec["simulate_ieeg"])),
        sha256=rec["sha256"],
        path=sample_path(kind),
    )
