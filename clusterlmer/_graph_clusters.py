"""Connected components of supra-threshold samples over channels x time (x freq) with a channel graph.

Used by :func:`clusterlmer.cluster.cluster_test` when ``adjacency=`` is given,
in place of :func:`scipy.ndimage.label`: :meth:`ChannelGraph.label` has the
same contract (an integer label image, 0 outside, 1..n in order of each
cluster's first sample in C order, and the count n), so the rest of the
cluster test is shared with the lattice path.

Two samples are neighbours when they sit at the same time (and frequency) on
neighbouring channels, or on the same channel at adjacent times (or adjacent
frequencies): the graph of ``mne.stats.combine_adjacency(channel_adjacency,
n_times[, n_freqs])``, which is never built. Only the edges whose two ends are
supra-threshold are listed, with array operations per channel pair and per
lattice axis (no loop over samples), and one
:func:`scipy.sparse.csgraph.connected_components` call labels them. For the
null, the permutations are stacked on a leading axis that has no edges, so
every permutation is labelled in the same call (in chunks of permutations to
bound memory). TFCE (:meth:`ChannelGraph.tfce_scores`) finds the edges once
and builds the components of all heights from the top down.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from .adjacency import validate_adjacency

__all__ = ["ChannelGraph", "channel_graph_for"]

# Samples labelled per connected_components call: bounds the memory of the edge lists
# (a few arrays of this many entries) when the null is large.
_NODES_PER_CHUNK = 1 << 22


class ChannelGraph:
    """Labeller of supra-threshold masks shaped (n_channels, *lattice) or (n_permutations, n_channels, *lattice).

    Parameters
    ----------
    adjacency : scipy.sparse.csr_array of bool
        Validated channel adjacency (symmetric, empty diagonal).
    min_neighbours : int
        FieldTrip's ``minnbchan``: before labelling, a supra-threshold sample
        is dropped unless at least this many neighbouring channels are
        supra-threshold at the same time (and frequency); repeated until no
        sample is dropped, as FieldTrip's ``findcluster`` does.
    over_permutations : bool
        Masks carry a leading permutation axis, never connected across.
    """

    def __init__(self, adjacency, min_neighbours=0, over_permutations=False):
        self.adjacency = adjacency
        upper = sparse.triu(adjacency, k=1, format="coo")
        self.first, self.second = upper.row.astype(np.intp), upper.col.astype(np.intp)
        self.min_neighbours = int(min_neighbours)
        self.over_permutations = over_permutations
        # min_neighbours counts come from one sparse @ dense product; float32 holds such small counts
        # exactly at half the memory of float64.
        self._counter = sparse.csr_array(adjacency, dtype=np.float32)

    def over_all_permutations(self):
        """The same graph for masks with a leading permutation axis."""
        return ChannelGraph(self.adjacency, self.min_neighbours, over_permutations=True)

    def label(self, mask):
        """Label connected supra-threshold samples, like ``scipy.ndimage.label``.

        Parameters
        ----------
        mask : ndarray of bool
            (n_channels, *lattice), or with a leading permutation axis when
            the graph was made by :meth:`over_all_permutations`.

        Returns
        -------
        labels : ndarray of int, shape of ``mask``
            0 outside clusters; 1..n numbered by each cluster's first sample
            in C order (as ``ndimage.label`` numbers them).
        n : int
        """
        stacked = mask if self.over_permutations else mask[None]
        stacked = self.prune(stacked)
        labels = np.zeros(stacked.shape, dtype=np.int64)
        per_permutation = max(1, int(np.prod(stacked.shape[1:])))
        chunk = max(1, _NODES_PER_CHUNK // per_permutation)
        flat = labels.reshape(-1)
        n = 0
        for start in range(0, stacked.shape[0], chunk):
            part = stacked[start:start + chunk]
            active, components, n_part = self._components(part)
            flat[start * per_permutation + active] = components + (n + 1)
            n += n_part
        return (labels if self.over_permutations else labels[0]), n

    def prune(self, stacked):
        """Drop samples with fewer than ``min_neighbours`` supra-threshold neighbouring channels (iterated)."""
        if self.min_neighbours <= 0:
            return stacked
        keep = stacked.copy()
        n_channels = keep.shape[1]
        while True:
            # (channels, everything else) so that one sparse product counts every sample's neighbours.
            by_channel = np.moveaxis(keep, 1, 0).reshape(n_channels, -1).astype(np.float32)
            counts = np.moveaxis((self._counter @ by_channel).reshape((n_channels, keep.shape[0]) + keep.shape[2:]),
                                 0, 1)
            drop = keep & (counts < self.min_neighbours)
            if not drop.any():
                return keep
            keep &= ~drop

    def tfce_scores(self, x, heights, dh, E, H):
        """TFCE of ``x`` (positive side): sum over heights h <= x of extent**E * h**H * dh.

        The same sum, added in the same (ascending) order, as the lattice
        path's ``cluster._tfce_scores``, with the extents of graph components.
        Rather than labelling every height from scratch, the components are
        built from the top height down: the samples sorted by decreasing value
        make those at or above any height a prefix of that order, the edges
        sorted by the rank of their lower end make the edges among them a
        prefix too, and each height only links the previous height's
        components with the samples and edges that enter at this height. The
        resulting tree (each component's parent one height down) then gives
        every sample its sum, walking up the heights.
        """
        stacked = x if self.over_permutations else x[None]
        scores = np.zeros(stacked.shape)
        if len(heights) == 0:
            return scores if self.over_permutations else scores[0]
        per_permutation = max(1, int(np.prod(stacked.shape[1:])))
        chunk = max(1, _NODES_PER_CHUNK // per_permutation)
        flat_scores = scores.reshape(-1)
        for start in range(0, stacked.shape[0], chunk):
            part = stacked[start:start + chunk]
            lowest = part >= heights[0]  # NaN compares False
            active = np.flatnonzero(lowest)
            if active.size == 0:
                continue
            values = part.reshape(-1)[active]
            order = np.argsort(-values, kind="stable")
            rank = np.empty(active.size, dtype=np.intp)
            rank[order] = np.arange(active.size)
            ends_a, ends_b = self._edges(lowest)
            rank_a, rank_b = rank[np.searchsorted(active, ends_a)], rank[np.searchsorted(active, ends_b)]
            edge_order = np.argsort(np.maximum(rank_a, rank_b), kind="stable")
            rank_a, rank_b = rank_a[edge_order], rank_b[edge_order]
            # Per height: how many samples are >= h (ranks below n_on) and how many edges join two of them.
            n_on = np.searchsorted(-values[order], -np.asarray(heights), side="right")
            n_edges = np.searchsorted(np.maximum(rank_a, rank_b), n_on)
            part_scores = np.zeros(active.size)
            for lo, hi, sample_scores in self._tfce_levels(n_on, n_edges, rank_a, rank_b, heights, dh, E, H):
                part_scores[lo:hi] = sample_scores
            flat_scores[start * per_permutation + active[order]] = part_scores
        return scores if self.over_permutations else scores[0]

    @staticmethod
    def _tfce_levels(n_on, n_edges, rank_a, rank_b, heights, dh, E, H):
        """Yield (lo, hi, scores): TFCE scores of the samples of ranks lo..hi-1, whose top height is one level."""
        levels = int(np.count_nonzero(n_on > 0))  # heights increase, so the reached ones are a prefix
        parents, sizes, first = [None] * levels, [None] * levels, [None] * levels
        node_component = np.empty(0, dtype=np.intp)  # each sample above the previous height: its component
        n_components, done_nodes, done_edges = 0, 0, 0
        for level in range(levels - 1, -1, -1):
            new_nodes = int(n_on[level]) - done_nodes
            edge_a, edge_b = rank_a[done_edges:n_edges[level]], rank_b[done_edges:n_edges[level]]
            # Graph of the previous height's components (ids 0..n_components-1) and the new samples.
            ids_a, ids_b = n_components + edge_a - done_nodes, n_components + edge_b - done_nodes
            for ids, ends in ((ids_a, edge_a), (ids_b, edge_b)):
                old = ends < done_nodes
                ids[old] = node_component[ends[old]]
            n_ids = n_components + new_nodes
            graph = sparse.csr_array((np.ones(ids_a.size, dtype=np.int8), (ids_a, ids_b)), shape=(n_ids, n_ids))
            n, merged = connected_components(graph, directed=False)
            if level + 1 < levels:
                parents[level + 1] = merged[:n_components]
            first[level] = merged[n_components:]
            node_component = np.concatenate([merged[node_component], first[level]])
            sizes[level] = np.bincount(node_component, minlength=n)
            n_components, done_nodes, done_edges = n, int(n_on[level]), int(n_edges[level])
        # Walk up: a component's sum is its parent's plus its own term, added in ascending heights.
        total = None
        for level in range(levels):
            term = sizes[level] ** E * (heights[level] ** H * dh)
            total = term if level == 0 else total[parents[level]] + term
            lo = int(n_on[level + 1]) if level + 1 < levels else 0
            yield lo, int(n_on[level]), total[first[level]]

    def _components(self, stacked):
        """(flat indices of the supra-threshold samples, their component 0..n-1, n) for one chunk."""
        active = np.flatnonzero(stacked)
        if active.size == 0:
            return active, active, 0
        ends_a, ends_b = self._edges(stacked)
        nodes = active.size
        graph = sparse.csr_array(
            (np.ones(ends_a.size, dtype=np.int8), (np.searchsorted(active, ends_a), np.searchsorted(active, ends_b))),
            shape=(nodes, nodes))
        n, components = connected_components(graph, directed=False)
        return active, components, n

    def _edges(self, stacked):
        """Flat indices of both ends of every edge whose ends are both supra-threshold.

        Works on flat indices (``flatnonzero`` and integer arithmetic on the
        hits only), which is several times faster than ``np.nonzero`` on the
        N-D arrays followed by ``ravel_multi_index``.
        """
        n_perm, n_channels = stacked.shape[:2]
        lattice = stacked.shape[2:]
        per_channel = int(np.prod(lattice))
        ends_a, ends_b = [], []
        if self.first.size:
            # Channel pairs at the same permutation and lattice position.
            by_channel = stacked.reshape(n_perm, n_channels, per_channel)
            hit = np.flatnonzero(by_channel[:, self.first] & by_channel[:, self.second])
            pair = (hit // per_channel) % self.first.size
            base = (hit // (per_channel * self.first.size)) * (n_channels * per_channel) + hit % per_channel
            ends_a.append(base + self.first[pair] * per_channel)
            ends_b.append(base + self.second[pair] * per_channel)
        flat = stacked.reshape(-1)
        stride = per_channel
        for length in lattice:
            # The same channel, one step along this lattice axis; a step from the axis's last
            # position would wrap into the next row, so those hits are dropped.
            stride //= length
            hit = np.flatnonzero(flat[:-stride] & flat[stride:]) if flat.size > stride else np.empty(0, np.intp)
            hit = hit[(hit // stride) % length != length - 1]
            ends_a.append(hit)
            ends_b.append(hit + stride)
        return np.concatenate(ends_a), np.concatenate(ends_b)


def channel_graph_for(adjacency, min_neighbours, datobs, clusterstat, connectivity):
    """Validate the channel-graph arguments against the data; return the observed map's :class:`ChannelGraph`."""
    if adjacency is None:
        raise ValueError(f"min_neighbours={min_neighbours!r} counts neighbouring channels, so it needs a channel "
                         f"adjacency: pass adjacency= (see clusterlmer.adjacency.channel_adjacency).")
    if connectivity is not None:
        raise ValueError(f"connectivity={connectivity!r} sets the neighbours of a regular lattice; with adjacency= "
                         f"the channels follow the adjacency and time (and frequency) are 1-D chains (MNE's and "
                         f"FieldTrip's convention). Leave connectivity out.")
    if datobs.ndim not in (2, 3):
        raise ValueError(f"With adjacency=, datobs must have shape (n_channels, n_times) or (n_channels, n_times, "
                         f"n_freqs), got shape {datobs.shape}.")
    if (isinstance(min_neighbours, bool) or not isinstance(min_neighbours, numbers.Integral)
            or min_neighbours < 0):
        raise ValueError(f"min_neighbours must be a whole number >= 0, got {min_neighbours!r}.")
    if min_neighbours and clusterstat == "tfce":
        raise ValueError("min_neighbours (FieldTrip's minnbchan) prunes the samples of threshold-formed clusters; "
                         "it is not defined for clusterstat='tfce'. Use 'sum' or 'size', or min_neighbours=0.")
    matrix = validate_adjacency(adjacency, datobs.shape[0])
    return ChannelGraph(matrix, min_neighbours)
