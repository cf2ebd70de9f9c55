"""Wall time of cluster_test over channels x time with a channel adjacency (the permutation null's labelling).

Workload: 30 channels x 231 samples x 1000 permutations, statistic maps smooth
in time and correlated between neighbouring channels, channels on a 5 x 6 grid
whose 8 nearest contacts are neighbours (clusterlmer.adjacency.distance_adjacency;
no MNE needed). Times cluster_test with adjacency= for "sum" (tail 0 and 1),
"size", "sum" with min_neighbours=2 and "tfce", and, as a reference, the
lattice path on the same maps seen as a 30 x 231 image. Each configuration
runs --repeat times; the best time is printed.

    python benchmarks/bench_adjacency.py [--nperm N] [--repeat R]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage, sparse

from clusterlmer.adjacency import distance_adjacency
from clusterlmer.cluster import cluster_test

N_CHANNELS, N_TIMES = 30, 231
LIMIT_SECONDS = 30.0  # what the "sum" null labelling must stay well under


def _maps(rng, adjacency, n):
    """n statistic maps (channels, times, n): smooth in time, mixed over each channel's neighbours."""
    x = ndimage.gaussian_filter1d(rng.standard_normal((N_CHANNELS, N_TIMES, n)), 4, axis=1)
    spread = sparse.csr_array(adjacency, dtype=float) + sparse.eye_array(N_CHANNELS)
    x = (spread @ x.reshape(N_CHANNELS, -1)).reshape(x.shape)
    return x / x.std()


def _best(repeat, run):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return min(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nperm", type=int, default=1000, help="permutations (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration; the best is shown (default 3)")
    args = parser.parse_args()

    grid = np.array([[x, y, 0.0] for x in range(5) for y in range(6)]) * 10.0  # 10 mm spacing
    adjacency = distance_adjacency(grid, 15.0)  # 8 nearest contacts
    rng = np.random.default_rng(0)
    null = _maps(rng, adjacency, args.nperm)
    obs = _maps(rng, adjacency, 1)[..., 0]
    obs[5:12, 80:130] += 1.5
    print(f"{N_CHANNELS} channels ({adjacency.nnz // 2} neighbour pairs) x {N_TIMES} samples x {args.nperm} "
          f"permutations; best of {args.repeat}")

    configurations = [
        ("adjacency, sum, tail 0", dict(adjacency=adjacency)),
        ("adjacency, sum, tail 1", dict(adjacency=adjacency, tail=1)),
        ("adjacency, size, tail 0", dict(adjacency=adjacency, clusterstat="size")),
        ("adjacency, sum, min_neighbours=2", dict(adjacency=adjacency, min_neighbours=2)),
        ("lattice 30 x 231 (face), sum, tail 0", dict(connectivity="face")),
        ("adjacency, tfce, tail 0", dict(adjacency=adjacency, clusterstat="tfce")),
        ("lattice 30 x 231 (face), tfce, tail 0", dict(connectivity="face", clusterstat="tfce")),
    ]
    main_seconds = None
    for name, kwargs in configurations:
        kwargs.setdefault("tail", 0)
        repeat = 1 if kwargs.get("clusterstat") == "tfce" else args.repeat
        seconds, (_, _, info) = _best(repeat, lambda: cluster_test(obs, null, **kwargs))
        smallest = min((c.p for c in info.clusters), default=1.0)
        print(f"  {name:40s} {seconds:7.2f} s   {len(info.clusters):4d} clusters, smallest p {smallest:.4f}")
        if main_seconds is None:
            main_seconds = seconds
    verdict = "OK" if main_seconds < LIMIT_SECONDS else "TOO SLOW"
    print(f"adjacency 'sum' null: {main_seconds:.2f} s for {args.nperm} permutations "
          f"(limit {LIMIT_SECONDS:.0f} s): {verdict}")
    raise SystemExit(0 if main_seconds < LIMIT_SECONDS else 1)


if __name__ == "__main__":
    main()
