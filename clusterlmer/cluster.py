"""Cluster-based permutation test across samples (after Maris & Oostenveld 2007, E. Spaak 2015).

:func:`cluster_test` takes an observed statistic map (time, time x freq, ...)
and its permutation null (same shape plus a trailing permutation axis) and
returns a cluster-corrected p-map. Thresholds are per sample quantiles of the
null (not a parametric critical value), so the test works for any statistic
(F, t, ...). Alternatively ``clusterstat="tfce"`` scores every sample with
threshold-free cluster enhancement (Smith & Nichols 2009) on the same null.

Conventions (those of the original method's MATLAB ``cluster_test``, after E. Spaak, minus its defects):

* p of an observed cluster is ``(#{null > obs} + 1) / (n_permutations + 1)``
  (strictly greater), where the null holds one extreme per permutation; a
  permutation without any cluster counts as "not exceeding".
* tail = 0 halves ``clusteralpha`` and doubles every p (capped at 1).
* NaN (a failed fit) never crosses a threshold, in the observed map or the null.

The null is labelled in one :func:`scipy.ndimage.label` call per block of
permutations (one block unless the null exceeds
:data:`clusterlmer._null_blocks.BLOCK_BYTES`), moved to ``(n_permutations,
...)`` (contiguous, which labels about twice as fast), with a structuring
element that has no neighbours along the permutation axis, so permutations
never merge and no Python loop runs over single permutations. The null may be
a memory-mapped array: only one block of it is in memory at a time.

With ``adjacency=`` (a channel neighbour graph, see :mod:`clusterlmer.adjacency`)
the data are channels x time (x freq) and clusters follow the graph instead of
a lattice; :class:`clusterlmer._graph_clusters.ChannelGraph` labels them with
the same contract as ``ndimage.label``, so thresholds, statistics and p-values
are computed by the same code for both.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._checks import check_option
from .cluster_types import Cluster, ClusterTestInfo
from ._null_blocks import finite_abs_max, null_thresholds, per_permutation

__all__ = ["Cluster", "ClusterTestInfo", "cluster_test", "CLUSTER_STATS", "QUANTILE_METHODS", "TAILS"]


def _label(mask, structure):
    """Connected components of ``mask``: a lattice (a structuring element) or a :class:`ChannelGraph`."""
    if isinstance(structure, np.ndarray):
        return _ndimage().label(mask, structure=structure)
    return structure.label(mask)


def _ndimage():
    # Imported when first used: scipy.ndimage takes ~0.3 s to import, which every worker
    # process (they import the package but never label clusters) would pay.
    from scipy import ndimage

    return ndimage

CLUSTER_STATS = ("sum", "size", "tfce")
TAILS = (-1, 0, 1)
_CONNECTIVITY = ("full", "face")
QUANTILE_METHODS = ("inverted_cdf", "averaged_inverted_cdf", "closest_observation", "interpolated_inverted_cdf",
                    "hazen", "weibull", "linear", "median_unbiased", "normal_unbiased",
                    "lower", "higher", "midpoint", "nearest")
_TFCE_DEFAULTS = {"E": 0.5, "H": 2.0, "dh": None}
_TFCE_N_STEPS = 100  # default dh = max|stat| / 100, MNE's suggested resolution


def smallest_cluster_p(n_permutations, tail) -> float:
    """The smallest cluster p a test with ``n_permutations`` can give: 1 / (n + 1), doubled for ``tail=0``."""
    return min(1.0, (2 if tail == 0 else 1) / (n_permutations + 1))


def cluster_test(datobs, datrnd, tail=0, alpha=0.05, clusteralpha=0.05, clusterstat="sum",
                 *, quantile_method="hazen", connectivity=None, tfce=None, adjacency=None, min_neighbours=0):
    """Cluster-based permutation test with per-sample thresholds from the null.

    Parameters
    ----------
    datobs : array_like, shape (n_times[, n_freqs, ...])
        Observed statistic. NaN means "no candidate here". With
        ``adjacency``: shape (n_channels, n_times[, n_freqs]).
    datrnd : array_like, shape (*datobs.shape, n_permutations)
        Statistic under each permutation; permutations on the LAST axis. NaN
        (a failed refit) is tolerated and never crosses a threshold.
    tail : {0, 1, -1}
        1: positive clusters only, -1: negative only, 0: both (halves
        ``clusteralpha`` and doubles p).
    alpha : float
        ``h = p < alpha``.
    clusteralpha : float
        Thresholds are the ``clusteralpha`` and ``1 - clusteralpha`` quantiles
        of the null at each sample.
    clusterstat : {"sum", "size", "tfce"}
        Sum of the statistic over the cluster (single-sample clusters are
        ignored), number of samples (all clusters count), or threshold-free
        cluster enhancement (no thresholds; see Notes).
    quantile_method : str
        Any :func:`numpy.quantile` method. ``"hazen"`` (default) is MATLAB's
        ``quantile``; ``"linear"`` reproduces the original Python port.
    connectivity : {"full", "face"} or None
        The lattice's neighbours (without ``adjacency``). ``"full"`` (also
        what None means): samples touching by a face, edge or corner are
        neighbours (MATLAB ``bwconncomp`` default: 8 in 2-D, 26 in 3-D);
        ``"face"``: 4 in 2-D, 6 in 3-D (MNE's lattice default). Same in 1-D.
    tfce : dict or None
        ``"tfce"`` only: ``E`` (extent power, 0.5), ``H`` (height power, 2),
        ``dh`` (step; default max |stat| over ``datobs`` and ``datrnd`` / 100).
    adjacency : scipy.sparse matrix or array_like or None
        Channel x channel neighbour matrix (square, symmetric, 0/1; the
        diagonal is ignored), e.g. from
        :func:`clusterlmer.adjacency.channel_adjacency`. Clusters are then
        connected components over channels x time (x freq): neighbouring
        channels at the same sample, plus adjacent times (and adjacent
        frequencies) on the same channel -- the graph of
        ``mne.stats.combine_adjacency(adjacency, n_times[, n_freqs])``.
        ``connectivity`` must then be left out.
    min_neighbours : int
        With ``adjacency``, for ``"sum"`` and ``"size"``: FieldTrip's
        ``minnbchan``. Before clusters are formed, a supra-threshold sample
        is removed unless at least this many of its neighbouring channels are
        supra-threshold at the same time (and frequency), repeatedly until
        none is removed; in the observed map and in every permutation alike.

    Returns
    -------
    h : ndarray of bool
        ``p < alpha``, shape of ``datobs``.
    p : ndarray of float
        Cluster-corrected p per sample (1 outside clusters).
    info : ClusterTestInfo
        Clusters, thresholds and the permutation maxima.

    Notes
    -----
    Candidates are ``stat >= upper`` / ``stat <= lower``. The p of an observed
    cluster is ``(#{k: null_max[k] > stat} + 1) / (n_permutations + 1)``
    (negative sums: ``null_min[k] < stat``; negative sizes: the largest
    negative size ``> size``). A permutation without a cluster of that sign
    never exceeds but still counts in the denominator. MNE instead includes
    the observed data among the permutations and counts ``>=``.

    TFCE ignores ``clusteralpha`` and ``quantile_method``. The score of a
    sample with statistic s is ``sum_k extent_k**E * h_k**H * dh`` over
    heights ``h_k = k * dh <= s`` (k = 1, 2, ...), where ``extent_k`` is the
    size of the connected component of ``{stat >= h_k}`` holding the sample;
    the negative side scores ``-stat``. This is MNE's
    ``threshold=dict(start=0, step=dh)`` (MNE also multiplies by ``dh``) except
    that MNE uses ``stat > h``, so the two differ only at exact ties; note
    that the default ``dh`` puts the single most extreme value (observed or
    null) exactly on the top height, which we count and MNE does not. A
    sample's p is ``(#{k: null_max[k] > score} + 1) / (n_permutations + 1)``,
    ``null_max[k]`` being permutation k's largest score (strict ``>`` as for
    clusters); a zero score gives p = 1. With ``adjacency`` the extents are
    those of the graph's components.

    With ``adjacency`` the cluster masks and bounding boxes are over
    (channel, time[, freq]); ``start``/``stop`` of the first axis are then
    the lowest and highest channel index, not a contiguous range.
    """
    datobs, datrnd, tail, tfce = _check_inputs(datobs, datrnd, tail, alpha, clusteralpha, clusterstat,
                                               quantile_method, connectivity, tfce)
    if adjacency is not None or min_neighbours:
        from ._graph_clusters import channel_graph_for

        structure = channel_graph_for(adjacency, min_neighbours, datobs, clusterstat, connectivity)
        null_structure = structure.over_all_permutations()
        connectivity = "adjacency"
    else:
        connectivity = "full" if connectivity is None else connectivity
        structure = _ndimage().generate_binary_structure(datobs.ndim, datobs.ndim if connectivity == "full" else 1)
        null_structure = np.zeros((3,) + structure.shape, bool)
        null_structure[1] = structure  # no neighbours across permutations
    if clusterstat == "tfce":
        return _tfce_test(datobs, datrnd, tail, alpha, structure, null_structure, tfce, quantile_method,
                          connectivity)
    return _cluster_test(datobs, datrnd, tail, alpha, clusteralpha, clusterstat, quantile_method, connectivity,
                         structure, null_structure)


def _check_inputs(datobs, datrnd, tail, alpha, clusteralpha, clusterstat, quantile_method, connectivity, tfce):
    """Validate every argument in one place; return float arrays, int tail and the TFCE parameters."""
    try:
        datobs = np.asarray(datobs, dtype=float)
        datrnd = np.asarray(datrnd, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"datobs and datrnd must be numeric arrays ({err}).") from None
    if datobs.ndim < 1:
        raise ValueError(f"datobs must have at least one dimension (time), got a scalar {datobs}.")
    if datrnd.ndim != datobs.ndim + 1 or datrnd.shape[:-1] != datobs.shape:
        expected = "(" + ", ".join([str(n) for n in datobs.shape] + ["n_permutations"]) + ")"
        raise ValueError(
            f"datrnd must have the shape of datobs plus a trailing permutation axis (permutations go on the "
            f"last axis): datobs has shape {datobs.shape}, so datrnd should have shape {expected}, but got "
            f"{datrnd.shape}.")
    if datrnd.shape[-1] < 1:
        raise ValueError(f"datrnd must hold at least 1 permutation on its last axis, got {datrnd.shape[-1]}.")
    check_option("tail", tail, TAILS)
    for name, value in (("alpha", alpha), ("clusteralpha", clusteralpha)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
            raise ValueError(f"Invalid value for the {name!r} parameter. It must be a number strictly between "
                             f"0 and 1, but got {value!r} instead.")
    check_option("clusterstat", clusterstat, CLUSTER_STATS)
    check_option("quantile_method", quantile_method, QUANTILE_METHODS)
    if connectivity is not None:
        check_option("connectivity", connectivity, _CONNECTIVITY)
    if tfce is not None and clusterstat != "tfce":
        raise ValueError(f"tfce parameters were given but clusterstat={clusterstat!r}; pass clusterstat='tfce'.")
    params = dict(_TFCE_DEFAULTS)
    if clusterstat == "tfce":
        if tfce is not None and not isinstance(tfce, dict):
            raise TypeError(f"tfce must be a dict with keys 'E', 'H', 'dh' or None, got {type(tfce).__name__}.")
        for key, value in (tfce or {}).items():
            check_option("tfce key", key, tuple(_TFCE_DEFAULTS))
            if not (value is None and key == "dh") and (
                    isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0):
                raise ValueError(f"tfce[{key!r}] must be a positive number"
                                 f"{' or None' if key == 'dh' else ''}, got {value!r}.")
            params[key] = value
    return datobs, datrnd, int(tail), params


def _components(mask, structure):
    """Connected components of ``mask``: one array of flat indices (ascending, C order) per label."""
    labels, n = _label(mask, structure)
    idx = np.flatnonzero(labels)
    lab = labels.ravel()[idx]
    order = np.argsort(lab, kind="stable")  # stable: each component's indices stay ascending
    idx = idx[order]
    bounds = np.searchsorted(lab[order], np.arange(1, n + 2))
    return [idx[bounds[k]:bounds[k + 1]] for k in range(n)]


def _observed_clusters(x, mask, clusterstat, structure):
    """Components of ``mask``: [(flat indices, stat)], stat = sum of ``x`` or size; ``sum`` drops singletons."""
    out = []
    flat_x = x.ravel()
    for flat in _components(mask, structure):
        if clusterstat == "sum":
            if flat.size > 1:
                out.append((flat, float(flat_x[flat].sum())))  # C order, as x[mask].sum() adds them
        else:
            out.append((flat, float(flat.size)))
    return out


def _null_max(x, mask, clusterstat, null_structure):
    """Per permutation (first axis) the largest cluster sum of ``x`` / size inside ``mask``; NaN if none."""
    nperm = x.shape[0]
    labels, n = _label(mask, null_structure)
    best = np.full(nperm, -np.inf)
    if n:
        idx = np.flatnonzero(labels)  # only the suprathreshold samples, in C order
        lab = labels.ravel()[idx]
        sizes = np.bincount(lab, minlength=n + 1)
        perm_of_label = np.zeros(n + 1, dtype=np.intp)
        perm_of_label[lab] = idx // (x.size // nperm)  # permutation axis is first
        if clusterstat == "sum":
            stats = np.bincount(lab, weights=x.ravel()[idx], minlength=n + 1)
            keep = sizes > 1
        else:
            stats = sizes.astype(float)
            keep = sizes > 0
        keep[0] = False
        np.maximum.at(best, perm_of_label[keep], stats[keep])
    best[np.isneginf(best)] = np.nan
    return best


def _exceed_p(null, obs, nperm):
    """(#{null > obs} + 1) / (nperm + 1); NaN in the null counts as not exceeding."""
    return (np.count_nonzero(null > obs) + 1) / (nperm + 1)


def _make_clusters(found, tail, shape):
    """Sort (sign, flat indices, stat, p) tuples: positive first, then by decreasing |stat|; double p for tail 0."""
    found = sorted(found, key=lambda c: (-c[0], -abs(c[2])))  # sorted() is stable: ties keep label order
    scale = 2.0 if tail == 0 else 1.0
    clusters = []
    for sign, flat, stat, p in found:
        indices = np.unravel_index(flat, shape)  # np.nonzero(mask), as flat indices ascend
        start = tuple(int(i.min()) for i in indices)
        stop = tuple(int(i.max()) for i in indices)
        if len(shape) == 1:
            start, stop = start[0], stop[0]
        clusters.append(Cluster(sign=sign, indices=indices, stat=stat, p=min(1.0, scale * p), start=start,
                                stop=stop, shape=tuple(shape)))
    return clusters


def _cluster_test(datobs, datrnd, tail, alpha, clusteralpha, clusterstat, method, connectivity,
                  structure, null_structure):
    """Core of the threshold-based test (sum / size)."""
    nperm = datrnd.shape[-1]
    if tail == 0:
        clusteralpha = clusteralpha / 2
    lower, upper = null_thresholds(datrnd, [clusteralpha, 1 - clusteralpha], method)
    pmap = np.ones(datobs.shape)
    found, null_max, null_min = [], None, None
    # NaN compares False, so NaN samples (observed or null) are never candidates.
    if tail in (0, 1):
        null_max = per_permutation(datrnd, lambda x: _null_max(x, x >= upper, clusterstat, null_structure))
        for flat, stat in _observed_clusters(datobs, datobs >= upper, clusterstat, structure):
            p = _exceed_p(null_max, stat, nperm)
            pmap.ravel()[flat] = p
            found.append((1, flat, stat, p))
    if tail in (0, -1):
        # Negate so that "larger is more extreme" for the sum too; size is already positive.
        sign = -1.0 if clusterstat == "sum" else 1.0
        neg_null = per_permutation(datrnd, lambda x: _null_max(-x, x <= lower, clusterstat, null_structure))
        null_min = sign * neg_null
        for flat, stat in _observed_clusters(-datobs, datobs <= lower, clusterstat, structure):
            p = _exceed_p(neg_null, stat, nperm)  # sum: #{null_min < obs}
            pmap.ravel()[flat] = np.minimum(pmap.ravel()[flat], p)
            found.append((-1, flat, sign * stat, p))
    if tail == 0:
        pmap = np.minimum(1.0, 2 * pmap)
    info = ClusterTestInfo(
        clusters=_make_clusters(found, tail, datobs.shape),
        threshold_lower=lower if tail in (0, -1) else None,
        threshold_upper=upper if tail in (0, 1) else None,
        null_max=null_max, null_min=null_min, tail=tail, alpha=alpha, clusterstat=clusterstat,
        clusteralpha=clusteralpha, quantile_method=method, connectivity=connectivity, n_permutations=nperm)
    return pmap < alpha, pmap, info


def _tfce_scores(x, structure, heights, dh, E, H):
    """TFCE of ``x`` (positive side) at every sample: sum_k extent_k**E * h_k**H * dh over h_k <= x."""
    if not isinstance(structure, np.ndarray):  # a channel graph
        return structure.tfce_scores(x, heights, dh, E, H)
    scores = np.zeros(x.size)
    for h in heights:
        mask = x >= h
        idx = np.flatnonzero(mask)
        if idx.size == 0:  # heights increase, so nothing above from here on
            break
        labels, n = _label(mask, structure)
        lab = labels.ravel()[idx]
        weight = np.bincount(lab, minlength=n + 1) ** E * (h ** H * dh)
        scores[idx] += weight[lab]
    return scores.reshape(x.shape)


def _tfce_test(datobs, datrnd, tail, alpha, structure, null_structure, params, method, connectivity):
    """Core of the TFCE test: per-sample scores against the per-permutation maximum score."""
    nperm = datrnd.shape[-1]
    E, H, dh = params["E"], params["H"], params["dh"]
    top = max(finite_abs_max(datobs[..., None]), finite_abs_max(datrnd))
    if dh is None:
        dh = top / _TFCE_N_STEPS if top > 0 else 1.0
    heights = dh * np.arange(1, int(np.ceil(top / dh)) + 1)
    pmap = np.ones(datobs.shape)
    signed_scores = np.zeros(datobs.shape)
    sides, null_max, null_min = [], None, None
    for sign in ((1, -1) if tail == 0 else (tail,)):
        obs = _tfce_scores(sign * datobs, structure, heights, dh, E, H)
        nmax = per_permutation(datrnd, lambda x: _tfce_scores(sign * x, null_structure, heights, dh, E, H)
                               .reshape(len(x), -1).max(axis=1))
        nmax[nmax == 0] = np.nan  # no sample reached the first height: no cluster in that permutation
        if sign == 1:
            null_max = nmax
        else:
            null_min = nmax
        # p per sample, strict ">" as for clusters; a zero score stays at p = 1.
        ranked = np.sort(nmax[~np.isnan(nmax)])
        counts = ranked.size - np.searchsorted(ranked, obs, side="right")  # #{null_max > score}
        p = np.where(obs > 0, (counts + 1) / (nperm + 1), 1.0)
        pmap = np.minimum(pmap, p)
        signed_scores += sign * obs
        sides.append((sign, obs, p))
    if tail == 0:
        pmap = np.minimum(1.0, 2 * pmap)
    found = []
    for sign, obs, p in sides:
        p_used = np.minimum(1.0, 2 * p) if tail == 0 else p
        for flat in _components((obs > 0) & (p_used < alpha), structure):
            found.append((sign, flat, float(obs.ravel()[flat].max()), float(p.ravel()[flat].min())))
    info = ClusterTestInfo(
        clusters=_make_clusters(found, tail, datobs.shape), threshold_lower=None, threshold_upper=None,
        null_max=null_max, null_min=null_min, tail=tail, alpha=alpha, clusterstat="tfce",
        clusteralpha=None, quantile_method=method, connectivity=connectivity, n_permutations=nperm,
        tfce_scores=signed_scores, tfce_params={"E": E, "H": H, "dh": float(dh)})
    return pmap < alpha, pmap, info
