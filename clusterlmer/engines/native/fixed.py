"""lme4's checks of a fixed-effect matrix, as the native engine applies them.

The matrix itself comes from the model specification
(:class:`clusterlmer.spec.FixedSpec`); here are the columns lme4's
``check.rankX = "message+drop.cols"`` drops (and its message), and its
``check.scaleX`` message.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rank_deficiency", "scale_message"]


def _dropped_columns(X, tol=1e-7):
    """Columns lme4 drops from a rank-deficient ``X`` (``check.rankX = "message+drop.cols"``).

    lme4 keeps the columns R's ``qr(X, tol = 1e-7)`` (LINPACK ``dqrdc2``)
    ranks first: going left to right, a column whose norm after removing the
    kept columns is below ``tol`` times its own norm is moved to the end, and
    those columns are dropped.
    """
    Q = np.zeros((X.shape[0], 0))
    dropped = []
    for j in range(X.shape[1]):
        x = X[:, j]
        r = x - Q @ (Q.T @ x)
        r -= Q @ (Q.T @ r)  # a second pass keeps Q orthogonal to rounding
        norm, rnorm = np.linalg.norm(x), np.linalg.norm(r)
        if rnorm <= tol * norm or norm == 0:
            dropped.append(j)
        else:
            Q = np.column_stack([Q, r / rnorm])
    return dropped


def rank_deficiency(X):
    """lme4's treatment of a rank-deficient ``X``: (kept column indices, its message or None)."""
    dropped = _dropped_columns(X)
    kept = np.setdiff1d(np.arange(X.shape[1]), dropped)
    if not dropped:
        return kept, None
    n = len(dropped)
    return kept, (f"fixed-effect model matrix is rank deficient so dropping {n} column{'s' if n > 1 else ''} / "
                  f"coefficient{'s' if n > 1 else ''}")


def scale_message(X):
    """lme4's check.scaleX warning (message only)."""
    cont = np.flatnonzero(~np.all((X == 0.0) | (X == 1.0), axis=0))
    if not len(cont):
        return None
    sd = X[:, cont].std(axis=0, ddof=1)
    with np.errstate(divide="ignore"):
        logsd = np.abs(np.log(sd))
        comp = np.abs(np.log(sd[:, None] / sd[None, :]))
    if np.any(np.concatenate([comp[np.tril_indices(len(sd), -1)], logsd]) > np.log(1000)):
        return "Some predictor variables are on very different scales: consider rescaling"
    return None
