"""The coefficient table of a fit: each fixed-effect coefficient's t test, as lmerTest's ``summary()``.

lmerTest's ``summary()`` tests every coefficient ``b_j`` on its own
(``contest1D`` on the ``j``-th identity row): ``t = b_j / SE_j`` on the
Satterthwaite DF ``2 V_jj^2 / (g' A g)`` (``g``: the derivatives of ``V_jj``
in the variance parameters, ``A``: their covariance), or Kenward-Roger's DF
with pbkrtest's adjusted SE; ``p = 2 P(T_df > |t|)``. The engines store the
DF and the SE of that test per coefficient and sample (``coef_df``,
``coef_se`` of :class:`clusterlmer.results.TimeseriesFit`); this module lays
them out as MATLAB ``fitlme``'s ``Coefficients`` table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special

__all__ = ["COEFFICIENT_COLUMNS", "coefficient_table", "coefficient_frame"]

# MATLAB fitlme's Coefficients names.
COEFFICIENT_COLUMNS = ("Name", "Estimate", "SE", "tStat", "DF", "pValue")


def _test_arrays(fit):
    """Estimate, SE, t, DF and p per coefficient and sample (arrays shaped like ``fit.estimates``)."""
    if fit.coef_df is None:
        raise ValueError("this fit holds no coefficient DF (it was saved by a clusterlmer without coefficient "
                         "tests): refit it with cl.fit_timeseries to get fit.coefficients().")
    est = np.asarray(fit.estimates, dtype=float)
    se = np.asarray(fit.coef_se if fit.coef_se is not None else fit.se, dtype=float)
    df = np.asarray(fit.coef_df, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = est / se
        # Two-sided p of t on df (lmerTest: 2 * pt(|t|, df, lower = FALSE)); the normal tail for infinite DF.
        p = np.where(np.isinf(df), special.erfc(np.abs(t) / np.sqrt(2.0)), special.stdtr(df, -np.abs(t)) * 2.0)
    p = np.where(np.isfinite(t) & ~np.isnan(df), p, np.nan)
    return est, se, t, df, p


def coefficient_table(fit, idx) -> pd.DataFrame:
    """The coefficient table of ``fit`` at the sample ``idx`` (a tuple of indices, one per sample axis).

    Returns
    -------
    pandas.DataFrame
        Columns ``Name, Estimate, SE, tStat, DF, pValue``, one row per
        coefficient (a column lme4 dropped from a rank-deficient design: NaN).
    """
    sel = (slice(None),) + tuple(idx)
    est, se, t, df, p = (a[sel] for a in _test_arrays(fit))
    return pd.DataFrame(dict(zip(COEFFICIENT_COLUMNS, (list(fit.coef_names), est, se, t, df, p))))


def coefficient_frame(fit) -> pd.DataFrame:
    """One row per coefficient and sample: the sample's coordinates, then the columns of :func:`coefficient_table`."""
    n_samples = int(np.prod(fit.sample_shape))
    n_coef = len(fit.coef_names)
    grid = {"sample": np.tile(np.arange(n_samples), n_coef)}
    for axis, values in fit.sample_coordinates(np.arange(n_samples)).items():
        grid[axis] = np.tile(values, n_coef)
    grid["Name"] = np.repeat(list(fit.coef_names), n_samples)
    for col, arr in zip(COEFFICIENT_COLUMNS[1:], _test_arrays(fit)):
        grid[col] = arr.reshape(n_coef, n_samples).ravel()
    return pd.DataFrame(grid)
