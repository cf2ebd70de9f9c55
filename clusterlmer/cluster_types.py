"""What a cluster test found: one observed cluster, and everything the test used and found.

Kept apart from :mod:`clusterlmer.cluster` (which computes them) so that the
result files' reader and writer can name these types without the test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["Cluster", "ClusterTestInfo"]


@dataclass(frozen=True, eq=False)
class Cluster:
    """One observed cluster.

    Attributes
    ----------
    sign : int
        +1 (stat >= upper threshold) or -1 (stat <= lower threshold).
    indices : tuple of ndarray
        ``np.nonzero(mask)``: the cluster's samples, one index array per axis.
    stat : float
        ``"sum"``: sum of the statistic (negative for negative clusters);
        ``"size"``: number of samples (positive for both signs); ``"tfce"``:
        peak TFCE score in the region (positive for both signs).
    p : float
        Cluster p-value, already doubled for ``tail=0`` and capped at 1.
    start, stop : int or tuple of int
        First and last index (inclusive). ``int`` for 1-D data, one entry
        per axis (the bounding box) for N-D data.
    shape : tuple of int
        Shape of ``datobs``.

    Notes
    -----
    The boolean ``mask`` is built from ``indices`` when asked for: a noisy
    64-channel time-frequency map can hold thousands of clusters, whose masks
    would take 1 byte per sample each.
    """

    sign: int
    indices: tuple
    stat: float
    p: float
    start: object
    stop: object
    shape: tuple

    @property
    def size(self):
        """Number of samples in the cluster."""
        return int(np.asarray(self.indices[0]).size)

    @property
    def mask(self) -> np.ndarray:
        """Boolean map of ``shape``, True inside the cluster."""
        mask = np.zeros(self.shape, dtype=bool)
        mask[tuple(np.asarray(i, dtype=np.intp) for i in self.indices)] = True
        return mask


@dataclass(frozen=True, eq=False)
class ClusterTestInfo:
    """Everything :func:`cluster_test` used and found, besides ``h`` and ``p``.

    Attributes
    ----------
    clusters : list of Cluster
        Positive clusters, then negative ones, each by decreasing ``|stat|``.
        ``"sum"`` leaves out single-sample clusters (they get no p). For
        ``"tfce"``: connected regions (same connectivity) of one sign whose
        samples all have ``p < alpha``.
    threshold_lower, threshold_upper : ndarray or None
        Per-sample cluster-forming thresholds (shape of ``datobs``); None for
        the tail not tested and for ``"tfce"``.
    null_max, null_min : ndarray or None
        One value per permutation, NaN where that permutation had no cluster
        of that sign; None for the tail not tested. ``null_max``: largest
        positive cluster statistic. ``null_min``: for ``"sum"`` the most
        negative cluster sum; for ``"size"`` and ``"tfce"`` the largest
        negative cluster size / TFCE score on ``-stat`` (a positive number,
        "larger is more extreme").
    tail, alpha, clusterstat, quantile_method : as passed
    connectivity : str
        ``"full"`` or ``"face"`` (the lattice), or ``"adjacency"`` when
        clusters followed a channel graph (``min_neighbours`` is not
        recorded here).
    clusteralpha : float or None
        As used: halved for ``tail=0``; None for ``"tfce"`` (no thresholds).
    n_permutations : int
    tfce_scores : ndarray or None
        Observed TFCE map, signed (``-score`` on the negative side).
    tfce_params : dict or None
        ``E``, ``H`` and ``dh`` actually used.
    """

    clusters: list
    threshold_lower: object
    threshold_upper: object
    null_max: object
    null_min: object
    tail: int
    alpha: float
    clusterstat: str
    clusteralpha: object
    quantile_method: str
    connectivity: str
    n_permutations: int
    tfce_scores: object = None
    tfce_params: object = None

    def to_frame(self):
        """Clusters as a DataFrame: sign, stat, p, size, start, stop.

        ``start``/``stop`` index the first axis (time, inclusive; the channel
        with ``adjacency``); N-D data add ``start_1``/``stop_1``, ... for the
        other axes.
        """
        rows = []
        for c in self.clusters:
            starts, stops = np.atleast_1d(c.start), np.atleast_1d(c.stop)
            row = {"sign": c.sign, "stat": c.stat, "p": c.p, "size": c.size, "start": starts[0], "stop": stops[0]}
            for ax in range(1, len(starts)):
                row[f"start_{ax}"], row[f"stop_{ax}"] = starts[ax], stops[ax]
            rows.append(row)
        return pd.DataFrame(rows, columns=None if rows else ["sign", "stat", "p", "size", "start", "stop"])
