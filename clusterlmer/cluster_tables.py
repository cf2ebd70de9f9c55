"""The cluster table of a permutation result: one row per cluster, in samples and in the data's units.

Also the threshold sweep's table (the same rows at each cluster-forming
threshold). :class:`clusterlmer.results.PermutationClusterResult` holds them;
:func:`clusterlmer.permutation_cluster_lmer` builds them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._checks import check_option

__all__ = ["STATISTICS", "cluster_table", "sweep_table"]

STATISTICS = ("F", "t")  # what a permutation cluster test runs on


def cluster_table(cluster_info: dict, times, freqs=None, *, statistic, channels=None, stat=None) -> pd.DataFrame:
    """One row per cluster of every term, with its extent in samples and in the data's units.

    Parameters
    ----------
    cluster_info : dict of str to ClusterTestInfo
        Per term, the ``info`` returned by :func:`clusterlmer.cluster_test`.
    times : array-like
        Sample times (the statistic's first axis, or its second with channels).
    freqs : array-like, optional
        Frequencies (the axis after time) for time x frequency statistics.
    statistic : {"F", "t"}
        The statistic the clusters were formed on: ``sign`` is ``"+"``/``"-"``
        for signed t, and empty for F, which has no sign (an F cluster is
        where a term's effect is large, whatever its direction).

    channels : sequence of str, optional
        Channel names, when the statistic's first axis is channels.
    stat : dict of str to ndarray, optional
        Observed statistic per term: with channels, locates each cluster's
        peak (largest ``|stat|`` inside it).

    Returns
    -------
    pandas.DataFrame
        Columns ``term, sign, start, stop, t_start, t_stop`` (first and last
        time sample, inclusive, and their times), ``f_start, f_stop`` with a
        frequency axis; with channels also ``channels`` (the cluster's
        channels, comma-separated, in the data's order), ``n_channels``,
        ``peak_channel`` and ``peak_time``; then ``size`` (samples), ``stat``,
        ``p``; sorted by term and start.
    """
    check_option("statistic", statistic, STATISTICS)
    times = np.asarray(times)
    lead = 0 if channels is None else 1
    rows = []
    for term, info in cluster_info.items():
        for c in info.clusters:
            idx = [np.asarray(i) for i in c.indices]
            row = {"term": term, "sign": "" if statistic == "F" else "+" if c.sign > 0 else "-",
                   "start": int(idx[lead].min()), "stop": int(idx[lead].max())}
            row.update(t_start=times[row["start"]], t_stop=times[row["stop"]])
            if freqs is not None and len(idx) > 1 + lead:
                row.update(f_start=np.asarray(freqs)[idx[1 + lead].min()],
                           f_stop=np.asarray(freqs)[idx[1 + lead].max()])
            if channels is not None:
                members = np.unique(idx[0])
                row.update(channels=", ".join(str(channels[i]) for i in members), n_channels=int(members.size))
                peak_channel = peak_time = None
                if stat is not None and term in stat:
                    values = np.abs(np.asarray(stat[term])[tuple(idx)])
                    k = int(np.nanargmax(values)) if np.isfinite(values).any() else 0
                    peak_channel, peak_time = str(channels[idx[0][k]]), times[idx[1][k]]
                row.update(peak_channel=peak_channel, peak_time=peak_time)
            row.update(size=int(idx[0].size), stat=float(c.stat), p=float(c.p))
            rows.append(row)
    columns = ["term", "sign"] + (["channels", "n_channels"] if channels is not None else [])
    columns += ["start", "stop", "t_start", "t_stop"]
    columns += ["f_start", "f_stop"] if freqs is not None else []
    columns += ["peak_channel", "peak_time"] if channels is not None else []
    columns += ["size", "stat", "p"]
    table = pd.DataFrame(rows, columns=columns)
    if len(table):
        order = {t: i for i, t in enumerate(cluster_info)}
        table = table.sort_values(["term", "start"], key=lambda s: s.map(order) if s.name == "term" else s)
    return table.reset_index(drop=True)


def sweep_table(sweep: dict, times, freqs=None, *, statistic, channels=None, stat=None) -> pd.DataFrame:
    """The clusters of a threshold sweep: :func:`cluster_table` at each threshold, with a first column ``threshold``.

    ``sweep`` maps each cluster-forming alpha to its per-term ``cluster_info``
    (:func:`clusterlmer.corrections.threshold_sweep`).
    """
    tables = []
    for threshold, info in sweep.items():
        table = cluster_table(info, times, freqs, statistic=statistic, channels=channels, stat=stat)
        table.insert(0, "threshold", float(threshold))
        tables.append(table)
    found = [t for t in tables if len(t)]  # concatenating empty tables would blur the columns' dtypes
    return pd.concat(found, ignore_index=True) if found else tables[0]
