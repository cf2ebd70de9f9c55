"""Corrections across samples on one permutation null: clusters, the max statistic, TFCE; a threshold sweep.

Every correction reads the same null (the statistic of every sample under every
permutation), so they can be compared on one run without refitting:

* ``"cluster"``: :func:`clusterlmer.cluster_test` with ``clusterstat`` ``"sum"``
  or ``"size"`` (thresholds are per-sample quantiles of the null).
* ``"tfce"``: :func:`clusterlmer.cluster_test` with ``clusterstat="tfce"``.
* ``"max"``: :func:`max_statistic_test`, each sample against the largest
  statistic of each permutation over all samples. It controls the family-wise
  error at every sample (strong control), so a significant sample is itself a
  finding; clusters only say that an effect exists somewhere inside them.

:func:`threshold_sweep` reruns the cluster correction at several
cluster-forming thresholds on the same null, to show whether a conclusion
depends on the one threshold chosen.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from ._checks import check_option, in_cli, option_hint
from ._null_blocks import per_permutation
from .cluster import CLUSTER_STATS, ClusterTestInfo, _check_inputs, _components, _make_clusters, _ndimage, cluster_test

__all__ = ["CORRECTIONS", "resolve_correction", "check_correction_options", "max_statistic_test", "correct",
           "threshold_sweep"]

CORRECTIONS = ("cluster", "max", "tfce")


def resolve_correction(correction, cluster_stat):
    """The (correction, cluster statistic) an analysis runs, from the two arguments that choose them.

    ``correction=None`` keeps the meaning ``cluster_stat`` always had:
    ``"tfce"`` is the TFCE correction, anything else (default ``"sum"``) the
    cluster correction. ``cluster_stat=None`` means the correction's own:
    ``"sum"`` for clusters, ``"tfce"`` for TFCE, ``"max"`` for the max
    statistic. Contradictory pairs are refused.

    Returns
    -------
    correction : {"cluster", "max", "tfce"}
    cluster_stat : {"sum", "size", "tfce", "max"}
    """
    if correction is not None:
        check_option("correction", correction, CORRECTIONS)
    if cluster_stat is not None:
        check_option("cluster_stat", cluster_stat, CLUSTER_STATS)
    if correction is None:
        correction = "tfce" if cluster_stat == "tfce" else "cluster"
    if correction == "cluster":
        if cluster_stat == "tfce":
            raise ValueError(f"{option_hint('correction=' + repr(correction), '--correction cluster')} forms "
                             f"clusters at a threshold, but cluster_stat='tfce' is threshold-free; use "
                             f"{option_hint('correction=' + repr('tfce'), '--correction tfce')} (or "
                             "cluster_stat 'sum' or 'size').")
        return correction, cluster_stat or "sum"
    if cluster_stat not in (None, correction):
        what = ("scores every sample by threshold-free cluster enhancement" if correction == "tfce" else
                "compares every sample with the largest statistic of each permutation and forms no clusters")
        given = f"--cluster-stat {cluster_stat}" if in_cli() else f"cluster_stat={cluster_stat!r}"
        raise ValueError(f"{option_hint(f'correction={correction!r}', f'--correction {correction}')} {what}, so "
                         f"{given} does not apply; leave it out.")
    return correction, correction


def check_correction_options(correction, thresholds, min_neighbours=0) -> tuple:
    """Options that only the cluster correction takes; return the sweep's alphas as floats (empty for None)."""
    if min_neighbours and correction != "cluster":
        raise ValueError(f"min_neighbours applies to the cluster correction (cluster_stat 'sum' and 'size'), not "
                         f"to {correction!r} (neither FieldTrip nor MNE defines it there); leave it at 0.")
    if thresholds is None:
        return ()
    if correction != "cluster":
        raise ValueError(f"thresholds sweep the cluster-forming threshold of the cluster correction; "
                         f"correction={correction!r} has no such threshold. Leave thresholds out, or use "
                         f"{option_hint('correction=' + repr('cluster'), '--correction cluster')}.")
    values = [thresholds] if isinstance(thresholds, numbers.Real) else thresholds
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"thresholds must be a list of cluster-forming alphas, e.g. [0.05, 0.01, 0.001], got "
                        f"{thresholds!r}.")
    values = list(values)
    bad = [v for v in values if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not 0 < v < 1]
    if bad or not values:
        raise ValueError(f"thresholds must be cluster-forming alphas strictly between 0 and 1, e.g. [0.05, 0.01, "
                         f"0.001]; got {thresholds!r}.")
    if len(set(values)) < len(values):
        raise ValueError(f"thresholds lists a value twice ({thresholds!r}); give each threshold once.")
    return tuple(float(v) for v in values)


def _exceeding_p(null, obs, nperm):
    """(#{null >= obs} + 1) / (nperm + 1) for every element of ``obs``; NaN never exceeds, NaN obs gets p = 1."""
    ranked = np.sort(null[~np.isnan(null)])
    counts = ranked.size - np.searchsorted(ranked, obs, side="left")  # #{null >= obs}
    return np.where(np.isnan(obs), 1.0, (counts + 1) / (nperm + 1))


def _extreme(datrnd, reduce):
    """``reduce`` (nanmax or nanmin) over all samples of each permutation; NaN for one that failed everywhere."""
    with warnings.catch_warnings():  # an all-NaN permutation gives NaN, which never exceeds
        warnings.simplefilter("ignore", RuntimeWarning)
        # Block by block: the null may be a memory-mapped file larger than the memory.
        return per_permutation(datrnd, lambda x: reduce(x.reshape(len(x), -1), axis=1))


def max_statistic_test(datobs, datrnd, tail=0, alpha=0.05, *, connectivity=None, adjacency=None):
    """Max-statistic permutation test: every sample against the largest statistic of each permutation.

    Parameters
    ----------
    datobs : array_like, shape (n_times[, n_freqs, ...])
        Observed statistic; with ``adjacency``, (n_channels, n_times[, n_freqs]).
    datrnd : array_like, shape (*datobs.shape, n_permutations)
        Statistic under each permutation (permutations on the last axis). NaN
        (a failed refit) is ignored; a permutation that is NaN everywhere
        never exceeds.
    tail : {0, 1, -1}
        1: ``null_max[k] = max over samples of datrnd[..., k]``, compared with
        ``stat``; -1: the minimum, compared with ``-stat`` on the negated
        null; 0: the largest ``|stat|`` of each permutation, compared with
        ``|stat|``.
    alpha : float
        ``h = p < alpha``.
    connectivity, adjacency
        As :func:`clusterlmer.cluster_test`; used only to group significant
        samples into the regions listed in ``info.clusters`` (they do not
        change any p).

    Returns
    -------
    h : ndarray of bool
    p : ndarray of float
        ``(#{k: null_max[k] >= stat} + 1) / (n_permutations + 1)`` per
        sample: each sample's p is corrected for every sample tested
        (family-wise, strong control).
    info : ClusterTestInfo
        ``clusterstat="max"``; ``clusters``: connected regions of one sign
        whose samples all have ``p < alpha``, ``stat`` the signed peak
        statistic and ``p`` the smallest p inside; ``null_max`` / ``null_min``
        the largest / smallest statistic of each permutation (NaN where a
        permutation has none); no thresholds.

    Notes
    -----
    Unlike the cluster and TFCE p, the two-tailed p is not doubled: the
    maximum of ``|stat|`` covers both signs in one exact test. Ties count as
    exceeding (``>=``), so the p is never below its exact value.
    """
    datobs, datrnd, tail, _ = _check_inputs(datobs, datrnd, tail, alpha, 0.05, "sum", "hazen", connectivity, None)
    nperm = datrnd.shape[-1]
    null_max = _extreme(datrnd, np.nanmax) if tail in (0, 1) else None
    null_min = _extreme(datrnd, np.nanmin) if tail in (0, -1) else None
    if tail == 0:
        p = _exceeding_p(np.fmax(null_max, -null_min), np.abs(datobs), nperm)
    elif tail == 1:
        p = _exceeding_p(null_max, datobs, nperm)
    else:
        p = _exceeding_p(-null_min, -datobs, nperm)
    if adjacency is not None:
        from ._graph_clusters import channel_graph_for

        structure, connectivity = channel_graph_for(adjacency, 0, datobs, "max", connectivity), "adjacency"
    else:
        connectivity = connectivity or "full"
        structure = _ndimage().generate_binary_structure(datobs.ndim, datobs.ndim if connectivity == "full" else 1)
    found = []
    for sign in ((1, -1) if tail == 0 else (tail,)):
        with np.errstate(invalid="ignore"):
            significant = (sign * datobs > 0) & (p < alpha)
        for flat in _components(significant, structure):
            peak = sign * np.max(sign * datobs.ravel()[flat])
            found.append((sign, flat, float(peak), float(p.ravel()[flat].min())))
    info = ClusterTestInfo(
        clusters=_make_clusters(found, 1, datobs.shape),  # tail 1: the p are final (not doubled for two tails)
        threshold_lower=None, threshold_upper=None, null_max=null_max, null_min=null_min, tail=tail, alpha=alpha,
        clusterstat="max", clusteralpha=None, quantile_method=None, connectivity=connectivity, n_permutations=nperm)
    return p < alpha, p, info


def correct(stat, null, *, correction, tail, alpha, cluster_alpha, cluster_stat, quantile_method, adjacency=None,
            min_neighbours=0):
    """One term's correction across samples: ``(p, info)`` of :func:`max_statistic_test` or :func:`cluster_test`."""
    if correction == "max":
        _, p, info = max_statistic_test(stat, null, tail=tail, alpha=alpha, adjacency=adjacency)
    else:
        _, p, info = cluster_test(stat, null, tail=tail, alpha=alpha, clusteralpha=cluster_alpha,
                                  clusterstat=cluster_stat, quantile_method=quantile_method, adjacency=adjacency,
                                  min_neighbours=min_neighbours)
    return p, info


def threshold_sweep(stat, null, thresholds, *, tail, alpha, cluster_stat, quantile_method, adjacency=None,
                    min_neighbours=0, done=None):
    """The cluster test of every term at each cluster-forming alpha, on the same null.

    Parameters
    ----------
    stat, null : dict of str to ndarray
        Per term, the observed statistic and its null (permutations last).
    thresholds : sequence of float
        Cluster-forming alphas (as ``cluster_alpha``: halved per tail for
        ``tail=0``).
    done : tuple (float, dict) or None
        A cluster-forming alpha and the per-term ``ClusterTestInfo`` already
        computed at it (not computed again).

    Returns
    -------
    dict of float to dict of str to ClusterTestInfo
    """
    out = {}
    for threshold in thresholds:
        if done is not None and threshold == done[0]:
            out[threshold] = done[1]
            continue
        out[threshold] = {term: cluster_test(stat[term], null[term], tail=tail, alpha=alpha, clusteralpha=threshold,
                                             clusterstat=cluster_stat, quantile_method=quantile_method,
                                             adjacency=adjacency, min_neighbours=min_neighbours)[2]
                          for term in stat}
    return out
