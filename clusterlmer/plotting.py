"""Figures of a permutation cluster result (matplotlib).

One row per tested term: on the left the observed statistic over time with
the per-sample cluster thresholds and the clusters shaded (significant ones
in colour, annotated with their p), or a time x frequency or channel x time
map with cluster outlines for 2-D data; on the right the permutation distribution of the
largest cluster statistic with the observed clusters marked.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_result"]

_SIG = "#d62728"
_NONSIG = "#bbbbbb"


def _figure(n_rows, show, figsize=None):
    figsize = (11, 2.8 * n_rows + 0.6) if figsize is None else figsize
    if show:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize)
    from matplotlib.figure import Figure  # no pyplot: works without a display and leaks no global state

    return Figure(figsize=figsize)


def _stat_label(result):
    return "F" if result.statistic == "F" else "t"


def _plot_timecourse(ax, result, term, info):
    times = np.asarray(result.times, dtype=float)
    stat = result.stat[term]
    ax.plot(times, stat, color="black", lw=1.2, label=f"observed {_stat_label(result)}")
    for thr, label in ((info.threshold_upper, "cluster threshold"), (info.threshold_lower, None)):
        if thr is not None and np.any(np.isfinite(thr)):
            ax.plot(times, thr, color="tab:blue", lw=0.9, ls="--", label=label)
    step = np.median(np.diff(times)) if len(times) > 1 else 1.0
    top = np.nanmax(np.abs(stat)) if np.any(np.isfinite(stat)) else 1.0
    # Head room above (and below, for t) the curve for the cluster p labels.
    ax.set_ylim(-1.18 * top if result.statistic == "t" else min(0.0, np.nanmin(stat)), 1.18 * top)
    for c in info.clusters:
        idx = np.asarray(c.indices[0])
        lo, hi = times[idx.min()] - step / 2, times[idx.max()] + step / 2
        significant = c.p < result.alpha
        ax.axvspan(lo, hi, color=_SIG if significant else _NONSIG, alpha=0.25 if significant else 0.3, lw=0)
        if significant or idx.size >= 3:  # label every cluster wide enough to carry one
            y = 1.09 * top * (-1 if c.sign < 0 else 1)
            ax.text((lo + hi) / 2, y, f"p={c.p:.2g}", ha="center", va="center", fontsize=7 if significant else 6,
                    color=_SIG if significant else "dimgrey")
    if result.statistic == "t":
        ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlim(times[0] - step / 2, times[-1] + step / 2)
    ax.set_ylabel(_stat_label(result))
    ax.set_title(term, loc="left", fontsize=10)


def _cell_edges(centers):
    """Edges of the cells ``pcolormesh(shading="nearest")`` draws around ``centers`` (midpoints)."""
    c = np.asarray(centers, dtype=float)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[:-1] + c[1:]) / 2
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


def _outline(ax, mask, times, freqs, **style):
    """Draw the border of a cluster's cells (a contour of the mask would cut through cells)."""
    from matplotlib.collections import LineCollection

    te, fe = _cell_edges(times), _cell_edges(freqs)
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    segments = [[(te[i], fe[j]), (te[i], fe[j + 1])] for i, j in zip(*np.nonzero(m[1:, 1:-1] != m[:-1, 1:-1]))]
    segments += [[(te[i], fe[j]), (te[i + 1], fe[j])] for i, j in zip(*np.nonzero(m[1:-1, 1:] != m[1:-1, :-1]))]
    ax.add_collection(LineCollection(segments, **style))


def _plot_map(ax, result, term, info):
    """A time x frequency or channel x time map of the statistic with the clusters outlined."""
    times = np.asarray(result.times, dtype=float)
    channels = result.fit.channels
    stat = result.stat[term]
    if channels is not None:  # channels on the y axis, named
        rows = np.arange(len(channels), dtype=float)
        image, masks = stat.T, [c.mask.T for c in info.clusters]
        centre = [(c.indices[1], c.indices[0]) for c in info.clusters]
    else:
        rows = np.asarray(result.fit.freqs, dtype=float)
        image, masks = stat, [c.mask for c in info.clusters]
        centre = [(c.indices[0], c.indices[1]) for c in info.clusters]
    vmax = np.nanmax(np.abs(stat)) if np.any(np.isfinite(stat)) else 1.0
    cmap, vmin = ("viridis", 0) if result.statistic == "F" else ("RdBu_r", -vmax)
    mesh = ax.pcolormesh(times, rows, image.T, shading="nearest", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.figure.colorbar(mesh, ax=ax, label=_stat_label(result), pad=0.01)
    for c, mask, (ti, ri) in zip(info.clusters, masks, centre):
        significant = c.p < result.alpha
        _outline(ax, mask, times, rows, colors="white" if significant else "grey",
                 linewidths=1.5 if significant else 0.8, linestyles="solid" if significant else "dashed")
        if significant:
            ax.text(times[int(np.median(ti))], rows[int(np.median(ri))], f"p={c.p:.3g}",
                    color="white", fontsize=8, ha="center")
    if channels is not None:
        step = max(1, len(channels) // 40)  # at most ~40 names
        ax.set_yticks(rows[::step], [str(c) for c in channels[::step]], fontsize=max(4, 8 - len(channels) // 20))
        ax.invert_yaxis()
        ax.set_ylabel("channel")
    else:
        ax.set_ylabel("frequency")
    ax.set_title(term, loc="left", fontsize=10)


def _plot_null(ax, result, term, info):
    shown = False
    for null, sign in ((info.null_max, 1), (info.null_min, -1)):
        if null is None:
            continue
        null = np.asarray(null, dtype=float)
        null = null[np.isfinite(null)]
        if null.size == 0:
            continue
        ax.hist(null, bins=min(40, max(5, null.size // 5)), color="tab:blue" if sign > 0 else "tab:purple",
                alpha=0.6, label="max (+)" if sign > 0 else "min / max (-)")
        shown = True
    for c in info.clusters:
        ax.axvline(c.stat, color=_SIG if c.p < result.alpha else "grey", lw=1.2)
    if not shown:
        ax.text(0.5, 0.5, "no permutation\nhad a cluster", ha="center", va="center", transform=ax.transAxes)
    largest = "statistic" if result.correction == "max" else "cluster"
    ax.set_title(f"null: largest {largest} per permutation", fontsize=9)
    ax.set_ylabel("permutations", fontsize=8)
    ax.set_xlabel("statistic (over all samples)" if result.correction == "max" else f"cluster {result.cluster_stat}")
    ax.tick_params(labelsize=8)


def plot_result(result, path=None, *, terms=None, show=False):
    """Draw each tested term's statistic, thresholds, clusters and cluster-statistic null.

    Parameters
    ----------
    result : PermutationClusterResult
    path : str or path-like, optional
        Save the figure there (format from the suffix, e.g. ``.png``, ``.pdf``).
    terms : list of str, optional
        Terms to draw (default: every tested term).
    show : bool
        Draw with pyplot (for interactive sessions) instead of an off-screen figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    terms = list(result.terms if terms is None else ([terms] if isinstance(terms, str) else terms))
    unknown = [t for t in terms if t not in result.terms]
    if unknown:
        raise ValueError(f"terms {unknown} were not tested; tested terms: {list(result.terms)}.")
    fig = _figure(len(terms), show)
    # Keep 0.8 inch above the first row for the suptitle and the row's titles (they overlap with one row).
    grid = fig.add_gridspec(len(terms), 2, width_ratios=(3.2, 1), hspace=0.55, wspace=0.18,
                            top=1 - 0.8 / fig.get_figheight())
    if len(result.fit.sample_shape) > 2:
        raise ValueError(f"plot() draws time, time x frequency and channel x time statistics; these have axes "
                         f"{result.fit.sample_axes}. Plot result.stat[term] for one channel or frequency yourself.")
    two_d = len(result.fit.sample_shape) == 2
    for row, term in enumerate(terms):
        info = result.cluster_info[term]
        ax = fig.add_subplot(grid[row, 0])
        (_plot_map if two_d else _plot_timecourse)(ax, result, term, info)
        if row == len(terms) - 1:
            ax.set_xlabel("time")
        if row == 0 and not two_d:
            ax.legend(loc="best", fontsize=8, frameon=False)
        _plot_null(fig.add_subplot(grid[row, 1]), result, term, info)
    legend = "outlined: clusters (white, solid" if two_d else "shaded: clusters (red"
    method = "max-statistic correction" if result.correction == "max" else f"cluster '{result.cluster_stat}'"
    fig.suptitle(f"{result.fit.formula}  —  {result.n_permutations} permutations, {method}, "
                 f"{legend}: p < {result.alpha:g})", fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    if show:
        import matplotlib.pyplot as plt

        plt.show()
    return fig
