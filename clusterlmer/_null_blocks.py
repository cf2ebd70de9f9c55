"""Reading a permutation null one block at a time.

A null distribution has the shape of the statistic map plus a trailing
permutation axis. For a 64-channel time-frequency analysis it can outgrow the
memory (64 channels x 200 times x 40 frequencies x 1000 permutations is 4 GiB
per term), and the run then keeps it in a file mapped into memory (see
:mod:`clusterlmer.checkpoint`). The cluster step needs two views of it: every
permutation of a few samples (the per-sample thresholds, quantiles across
permutations) and every sample of a few permutations (the largest cluster of
each permutation). The functions here produce both views in blocks of about
:data:`BLOCK_BYTES`, so the cluster step's temporaries stay bounded whatever
the size of the null, and an in-memory null small enough for one block is
processed exactly as a whole. Each permutation and each sample is computed
alone, so the results do not depend on the block size.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["BLOCK_BYTES", "permutation_blocks", "null_thresholds", "per_permutation", "nan_counts",
           "finite_abs_max"]

# Bytes of null values per block (float64). The cluster step's temporaries are a few times one block.
BLOCK_BYTES = 256 * 2 ** 20
_FLOAT = 8


def _samples(datrnd) -> int:
    return int(np.prod(datrnd.shape[:-1], dtype=np.int64))


def permutation_blocks(datrnd, block_bytes=None):
    """Consecutive permutations of ``datrnd``, permutation axis first.

    Parameters
    ----------
    datrnd : ndarray, shape (*sample_shape, n_permutations)
        Any array or memory-mapped view.
    block_bytes : int, optional
        Size of one block; :data:`BLOCK_BYTES` by default.

    Yields
    ------
    ndarray, shape (n_block, *sample_shape)
        C-contiguous float64 copies (labelling a contiguous block is about twice as fast).
    """
    per_permutation_bytes = _FLOAT * max(1, _samples(datrnd))
    step = max(1, (BLOCK_BYTES if block_bytes is None else block_bytes) // per_permutation_bytes)
    for start in range(0, datrnd.shape[-1], step):
        yield np.ascontiguousarray(np.moveaxis(datrnd[..., start:start + step], -1, 0), dtype=float)


def _sample_blocks(datrnd, block_bytes=None):
    """(slice along the first sample axis, every permutation of those samples)."""
    n_first = datrnd.shape[0]
    per_row = _FLOAT * max(1, _samples(datrnd) // max(1, n_first) * datrnd.shape[-1])
    step = max(1, (BLOCK_BYTES if block_bytes is None else block_bytes) // per_row)
    for start in range(0, n_first, step):
        rows = slice(start, min(n_first, start + step))
        yield rows, np.asarray(datrnd[rows], dtype=float)


def null_thresholds(datrnd, q, method, block_bytes=None):
    """Per-sample quantiles ``q`` of the null across permutations.

    Parameters
    ----------
    datrnd : ndarray, shape (*sample_shape, n_permutations)
    q : sequence of float
    method : str
        A :func:`numpy.quantile` method.

    Returns
    -------
    list of ndarray
        One array of shape ``sample_shape`` per quantile; NaN where every
        permutation of a sample is NaN (failed refits are left out).
    """
    out = np.empty((len(q),) + datrnd.shape[:-1])
    for rows, block in _sample_blocks(datrnd, block_bytes):
        if np.isnan(block).any():
            with warnings.catch_warnings():  # all-NaN samples -> NaN threshold, never crossed
                warnings.simplefilter("ignore", RuntimeWarning)
                out[:, rows] = np.nanquantile(block, q, axis=-1, method=method)
        else:
            out[:, rows] = np.quantile(block, q, axis=-1, method=method)
    return list(out)


def per_permutation(datrnd, function, block_bytes=None) -> np.ndarray:
    """``function(block)`` over permutation blocks, concatenated: one value per permutation."""
    parts = [np.asarray(function(block)) for block in permutation_blocks(datrnd, block_bytes)]
    return np.concatenate(parts) if parts else np.empty(0)


def nan_counts(datrnd, block_bytes=None) -> np.ndarray:
    """Per sample, the number of permutations whose value is NaN (failed refits)."""
    out = np.empty(datrnd.shape[:-1], dtype=np.int64)
    for rows, block in _sample_blocks(datrnd, block_bytes):
        out[rows] = np.isnan(block).sum(axis=-1)
    return out


def finite_abs_max(datrnd, block_bytes=None) -> float:
    """The largest finite ``|value|`` of the null, 0 when there is none."""
    top = 0.0
    for block in permutation_blocks(datrnd, block_bytes):
        finite = np.abs(block[np.isfinite(block)])
        if finite.size:
            top = max(top, float(finite.max()))
    return top
