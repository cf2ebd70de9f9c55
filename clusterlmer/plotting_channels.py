"""EEG / MEG figures of a channels x time result: cluster topographies and condition waveforms.

:func:`plot_topomap` draws, for each significant cluster of a term, the
statistic averaged over the cluster's time window (and frequency band) on the
scalp, with the cluster's channels marked; :func:`plot_waveforms` draws the
mean waveform of each condition at the cluster's peak channel, the cluster's
time span shaded, and the difference wave. Both are also methods of
:class:`~clusterlmer.PermutationClusterResult`.

The topographies need MNE-Python and the channels' positions (an
``mne.Info``, which data from :func:`clusterlmer.from_mne` carry into the fit).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np

from .adjacency import _import_mne
from .data import TimeseriesData, _preview
from .design import _label_text
from .plotting import _SIG, _figure

__all__ = ["plot_topomap", "plot_waveforms"]

# The cluster's channels on the map: white dots, as MNE's cluster-test tutorials draw them.
_MASK_STYLE = dict(marker="o", markerfacecolor="white", markeredgecolor="black", linewidth=0, markersize=6)


def _chosen_clusters(result, term, cluster):
    """``[(index, Cluster)]`` to draw: cluster ``cluster`` of the term, or all its significant ones."""
    if result.fit.channels is None:
        raise ValueError(f"topographies and channel waveforms need channels x time results; these samples have "
                         f"axes {result.fit.sample_axes}. Use result.plot().")
    if term not in result.terms:
        raise ValueError(f"term {term!r} was not tested; tested terms: {list(result.terms)}.")
    found = result.cluster_info[term].clusters
    if cluster is not None:
        if isinstance(cluster, bool) or not isinstance(cluster, (int, np.integer)):
            raise TypeError(f"cluster must be an index into result.cluster_info[{term!r}].clusters, got {cluster!r}.")
        if not -len(found) <= cluster < len(found):
            raise IndexError(f"term {term!r} has {len(found)} cluster(s); cluster={cluster} is out of range.")
        return [(int(cluster) % len(found), found[cluster])]
    chosen = [(i, c) for i, c in enumerate(found) if c.p < result.alpha]
    if not chosen:
        smallest = "it has no cluster" if not found else f"its smallest cluster p is {min(c.p for c in found):.3g}"
        raise ValueError(f"term {term!r} has no cluster with p < {result.alpha:g} ({smallest}). Pass cluster=i to "
                         f"draw cluster i of result.cluster_info[{term!r}].clusters anyway.")
    return chosen


def _span(mask, axis):
    """The indices along ``axis`` from the cluster's first to its last sample there (a slice)."""
    hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
    return slice(int(hit[0]), int(hit[-1]) + 1)


def _peak(stat, mask):
    """Sample index of the largest ``|stat|`` inside the cluster (the cluster table's peak)."""
    inside = np.where(mask & np.isfinite(stat), np.abs(stat), -np.inf)
    return np.unravel_index(int(np.argmax(inside)), stat.shape)


def _window_text(result, c):
    times = np.asarray(result.times, dtype=float)
    ts = _span(c.mask, 1)
    text = f"{times[ts.start]:.3g}–{times[ts.stop - 1]:.3g} s"
    if c.mask.ndim == 3:
        freqs = np.asarray(result.fit.freqs, dtype=float)
        fs = _span(c.mask, 2)
        text += f", {freqs[fs.start]:.3g}–{freqs[fs.stop - 1]:.3g} Hz"
    return text


def _finish(fig, path, show):
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    if show:
        import matplotlib.pyplot as plt

        plt.show()
    return fig


def _positions(result, info):
    """(mne, the result's channels' Info in the result's order, their channel type)."""
    info = result.fit.info if info is None else info
    if info is None:
        raise ValueError("this result holds no channel positions (result files do not store the mne.Info, and "
                         "data not read with cl.from_mne have none): pass info=..., e.g. info=epochs.info, or "
                         "the name of a montage MNE ships that holds the channels, e.g. info='standard_1005'.")
    mne = _import_mne("Drawing topographic maps", "")
    channels = list(result.fit.channels)
    if isinstance(info, str):  # a montage MNE ships: EEG channels named as in it
        montage = mne.channels.make_standard_montage(info)
        missing = [c for c in channels if c not in montage.ch_names]
        if missing:
            raise ValueError(f"the montage {info!r} lacks {len(missing)} of the result's channels: "
                             f"{_preview(missing)}; pass an mne.Info with their positions instead.")
        made = mne.create_info(channels, 1000.0, "eeg")
        made.set_montage(montage)
        info = made
    if not isinstance(info, mne.Info):
        raise TypeError(f"info must be an mne.Info or a montage name, got {type(info).__name__}.")
    missing = [c for c in channels if c not in info.ch_names]
    if missing:
        raise ValueError(f"the info lacks {len(missing)} of the result's channels: {_preview(missing)}; pass the "
                         "info of the data the result was computed from.")
    info = mne.pick_info(info, [info.ch_names.index(c) for c in channels])  # a copy
    info["bads"] = []  # every analysed channel is drawn, marked bad in the info or not
    types = sorted(set(info.get_channel_types()))
    if len(types) != 1:
        raise ValueError(f"a topographic map shows one channel type; these channels are of types {types}. "
                         "Analyse one type at a time (cl.from_mne(inst, picks='eeg')).")
    if types[0] == "grad":
        raise ValueError("MNE draws planar gradiometer pairs as their combined (RMS) value, which is not a "
                         "statistic: draw magnetometers, or analyse combined gradiometers under another type.")
    return mne, info, types[0]


def plot_topomap(result, term, cluster=None, *, info=None, path=None, show=False):
    """Topographic maps of a term's clusters: the statistic over each cluster's window, its channels marked.

    Parameters
    ----------
    result : PermutationClusterResult
        Of channels x time (x frequency) data.
    term : str
        A tested term.
    cluster : int, optional
        Index into ``result.cluster_info[term].clusters``; default: every
        cluster with ``p < result.alpha`` (one map each).
    info : mne.Info or str, optional
        Channel positions; default the fit's (data from
        :func:`clusterlmer.from_mne`). Needed for results loaded from a file
        and data without an Info (e.g. :func:`clusterlmer.from_long`): an
        ``mne.Info``, or the name of a montage MNE ships that holds the
        channels (``"standard_1005"``, ``"biosemi64"``; EEG positions).
    path : str or path-like, optional
        Save the figure there.
    show : bool
        Draw with pyplot instead of an off-screen figure.

    Returns
    -------
    matplotlib.figure.Figure
        One map per cluster: the term's statistic averaged over the cluster's
        time window (and frequency band), all channels, drawn with
        ``mne.viz.plot_topomap`` on a common colour scale; the cluster's
        channels are white dots; the title gives the window and p.
    """
    chosen = _chosen_clusters(result, term, cluster)
    mne, info, ch_type = _positions(result, info)
    stat = np.asarray(result.stat[term], dtype=float)
    n_channels = stat.shape[0]
    maps, marks, titles = [], [], []
    for i, c in chosen:
        window = (slice(None),) + tuple(_span(c.mask, axis) for axis in range(1, stat.ndim))
        with warnings.catch_warnings():  # a channel whose fits all failed stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            maps.append(np.nanmean(stat[window].reshape(n_channels, -1), axis=1))
        marks.append(c.mask.reshape(n_channels, -1).any(axis=1))
        sign = "" if result.statistic == "F" else (" (+)" if c.sign > 0 else " (−)")
        titles.append(f"{term}, cluster {i}{sign}\n{_window_text(result, c)}, p = {c.p:.3g}")
    top = max(float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 0.0 for m in maps) or 1.0
    cmap, vlim = ("Reds", (0.0, top)) if result.statistic == "F" else ("RdBu_r", (-top, top))
    fig = _figure(1, show, figsize=(3.2 * len(chosen) + 1.2, 3.8))
    axes = [fig.add_subplot(1, len(chosen), k + 1) for k in range(len(chosen))]
    for ax, values, mark, title in zip(axes, maps, marks, titles):
        image, _ = mne.viz.plot_topomap(values, info, ch_type=ch_type, mask=mark, mask_params=_MASK_STYLE,
                                        cmap=cmap, vlim=vlim, axes=ax, show=False)
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.75, label=f"{result.statistic}, mean over the window")
    return _finish(fig, path, show)


def _display_unit(info, channel):
    """(scale, unit) to show a channel's values in: µV for volts, fT for T, fT/cm for T/m; (1, None) otherwise."""
    if info is None or channel not in info.ch_names:
        return 1.0, None
    from mne.io.constants import FIFF

    ch = info["chs"][info.ch_names.index(channel)]
    if int(ch["unit_mul"]) != 0:  # a scaled unit (mV, ...): not MNE's SI convention, shown as stored
        return 1.0, None
    return {int(FIFF.FIFF_UNIT_V): (1e6, "µV"), int(FIFF.FIFF_UNIT_T): (1e15, "fT"),
            int(FIFF.FIFF_UNIT_T_M): (1e13, "fT/cm")}.get(int(ch["unit"]), (1.0, None))


def _condition_rows(result, data, term):
    """``[(label, row mask)]``: the observations at each level (combination) of the term's factors."""
    if term == "(Intercept)":
        raise ValueError("the intercept has no conditions to draw: choose a factor term.")
    variables = term.split(":")
    numeric = [v for v in variables if v not in result.fit.levels]
    if numeric:
        raise ValueError(f"plot_waveforms draws the mean waveform of each level of a factor; {term!r} involves the "
                         f"numeric variable(s) {_preview(numeric)}.")
    absent = [v for v in variables if v not in data.design.columns]
    if absent:
        raise ValueError(f"the data's design has no column {_preview(absent)}: pass the data the result came from.")
    texts = {v: np.array(_label_text(data.design[v]), dtype=object) for v in variables}
    groups = []
    for combo in itertools.product(*(result.fit.levels[v] for v in variables)):
        rows = np.logical_and.reduce([texts[v] == level for v, level in zip(variables, combo)])
        if rows.any():
            groups.append((", ".join(f"{v}={level}" for v, level in zip(variables, combo)), rows))
    return groups


def plot_waveforms(result, data, term, cluster=None, *, path=None, show=False):
    """Condition waveforms at each cluster's peak channel, the cluster's time span shaded, and their difference.

    Parameters
    ----------
    result : PermutationClusterResult
        Of channels x time (x frequency) data.
    data : TimeseriesData
        The data the result was computed from (its design gives the conditions).
    term : str
        A tested factor term; an interaction draws every combination of levels.
    cluster : int, optional
        Index into ``result.cluster_info[term].clusters``; default: every
        cluster with ``p < result.alpha`` (one row each).
    path : str or path-like, optional
        Save the figure there.
    show : bool
        Draw with pyplot instead of an off-screen figure.

    Returns
    -------
    matplotlib.figure.Figure
        Per cluster, at its peak channel (largest ``|stat|`` in the cluster,
        the cluster table's ``peak_channel``): the mean over the
        observations of each level (a plain mean over rows, not a mean of
        subject means), the cluster's time span shaded and its peak time
        dotted; with two levels, the difference (second level minus the
        first, the reference) beside it. Values in volts (MNE's unit for
        EEG) are shown in µV (multiplied by 1e6), teslas in fT, T/m in
        fT/cm; the axis label gives the unit. Time-frequency data are
        averaged over the cluster's frequency band and shown as stored.
    """
    chosen = _chosen_clusters(result, term, cluster)
    if not isinstance(data, TimeseriesData):
        raise TypeError(f"data must be the TimeseriesData the result came from, got {type(data).__name__}.")
    if (data.channels != result.fit.channels or data.sample_shape != result.fit.sample_shape
            or not np.array_equal(np.asarray(data.times, dtype=float), np.asarray(result.times, dtype=float))):
        raise ValueError(f"these data are not those of the result: the result has channels x time x ... samples "
                         f"{result.fit.sample_shape}, the data {data.sample_shape} (or other channels or times).")
    groups = _condition_rows(result, data, term)
    stat = np.asarray(result.stat[term], dtype=float)
    info = data.info if data.info is not None else result.fit.info
    times = np.asarray(result.times, dtype=float)
    step = float(np.median(np.diff(times))) if times.size > 1 else 1.0
    pair = len(groups) == 2
    fig = _figure(len(chosen), show, figsize=(11 if pair else 6.5, 3.0 * len(chosen) + 0.6))
    grid = fig.add_gridspec(len(chosen), 2 if pair else 1, hspace=0.6, wspace=0.25)
    for row, (i, c) in enumerate(chosen):
        peak = _peak(stat, c.mask)
        channel = result.fit.channels[peak[0]]
        series = data.values[:, peak[0]]
        if series.ndim == 2:
            scale, unit = _display_unit(info, channel)
            label = f"amplitude ({unit})" if unit else "value"
        else:
            fs = _span(c.mask, 2)
            series = np.nanmean(series[:, :, fs], axis=2)
            freqs = np.asarray(result.fit.freqs, dtype=float)
            scale, label = 1.0, f"mean over {freqs[fs.start]:.3g}–{freqs[fs.stop - 1]:.3g} Hz"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a level with no finite value at some time
            means = [np.nanmean(series[rows], axis=0) * scale for _, rows in groups]
        ts = _span(c.mask, 1)
        panels = [(fig.add_subplot(grid[row, 0]), [(name, m) for (name, _), m in zip(groups, means)],
                   f"{channel}: {term}, cluster {i}, p = {c.p:.3g}")]
        if pair:
            panels.append((fig.add_subplot(grid[row, 1]), [(None, means[1] - means[0])],
                           f"{channel}: {groups[1][0]} − {groups[0][0]}"))
        for ax, lines, title in panels:
            ax.axvspan(times[ts.start] - step / 2, times[ts.stop - 1] + step / 2, color=_SIG, alpha=0.15, lw=0,
                       label="cluster")
            ax.axvline(times[peak[1]], color="grey", lw=0.8, ls=":")
            ax.axhline(0, color="grey", lw=0.5)
            for name, values in lines:
                ax.plot(times, values, lw=1.3, label=name, color="black" if name is None else None)
            ax.set_title(title, loc="left", fontsize=9)
            ax.set_ylabel(label)
            ax.set_xlabel("time (s)" if info is not None else "time")
        panels[0][0].legend(fontsize=7, frameon=False, loc="best")
    return _finish(fig, path, show)
