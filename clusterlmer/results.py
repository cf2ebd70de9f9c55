"""Result objects: plain NumPy arrays in small frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["TimeseriesFit"]

_DDF_NAMES = {
    "satterthwaite": "Satterthwaite",
    "residual": "residual (n - rank X)",
    "kenward-roger": "Kenward-Roger",
    "none": "none (DF2 = Inf)",
}
_TEST_NAMES = {
    "marginal": "marginal F-test of each term's coefficients (MATLAB anova)",
    "type3": "lmerTest type III F-test",
}


@dataclass(frozen=True, eq=False)
class TimeseriesFit:
    """Per-sample mixed-model fits and their F/t tests.

    Term arrays (``F``, ``df1``, ``df2``, ``p``, ``t``) have shape
    ``(n_terms, *sample_shape)``; coefficient arrays (``estimates``, ``se``)
    ``(n_coef, *sample_shape)``. A sample whose fit failed holds NaN, and
    ``diagnostics`` says why.

    Attributes
    ----------
    formula : str
    terms : tuple of str
        Tested terms, ``"(Intercept)"`` first when present.
    F, df1, df2, p : ndarray
        F statistic, numerator and denominator degrees of freedom, p-value.
    t : ndarray
        Signed t for one-coefficient terms (``sign * sqrt(F)``); NaN otherwise.
    coef_names : tuple of str
    estimates, se : ndarray
        Fixed-effect estimates and standard errors.
    times : ndarray
    freqs : ndarray or None
    diagnostics : pandas.DataFrame
        One row per sample: observations used and excluded, convergence,
        singular fit, R's warnings and messages, error.
    options : dict
        Fit method, ddf method, test, coding, optimizer and its controls.
    levels : dict
        Level order per factor (reference level first).
    """

    formula: str
    terms: tuple
    F: np.ndarray
    df1: np.ndarray
    df2: np.ndarray
    p: np.ndarray
    t: np.ndarray
    coef_names: tuple
    estimates: np.ndarray
    se: np.ndarray
    times: np.ndarray
    freqs: np.ndarray | None
    diagnostics: pd.DataFrame
    options: dict
    levels: dict

    @property
    def sample_shape(self) -> tuple:
        """``(n_times,)`` or ``(n_times, n_freqs)``."""
        return self.F.shape[1:]

    @property
    def reference_levels(self) -> dict:
        """Reference level of each factor (meaningful for reference coding)."""
        return {k: v[0] for k, v in self.levels.items()}

    def _sample_index(self, t, time):
        if (t is None) == (time is None):
            raise ValueError("give exactly one of t (sample index) or time (in the data's time unit).")
        if time is not None:
            if len(self.sample_shape) != 1:
                raise ValueError("time= selects a sample of 1-D data; for time x frequency data pass t=(i, j).")
            return (int(np.argmin(np.abs(np.asarray(self.times, dtype=float) - float(time)))),)
        idx = (t,) if np.isscalar(t) else tuple(t)
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in idx):
            raise TypeError(f"t must be an integer sample index (or a tuple of them), got {t!r}; use time= for times.")
        if len(idx) != len(self.sample_shape):
            raise ValueError(f"t must have {len(self.sample_shape)} index(es) for samples of shape {self.sample_shape}.")
        for i, n in zip(idx, self.sample_shape):
            if not -n <= int(i) < n:
                raise IndexError(f"sample index {i} is out of range for {n} samples.")
        return tuple(int(i) for i in idx)

    def anova(self, t=None, *, time=None) -> pd.DataFrame:
        """MATLAB-layout ANOVA table at one sample.

        Parameters
        ----------
        t : int or tuple of int
            Sample index (``(time, freq)`` for 2-D samples).
        time : float
            Alternatively, the time in the data's unit (nearest sample).

        Returns
        -------
        pandas.DataFrame
            Columns ``Term, FStat, DF1, DF2, pValue``, one row per term.
        """
        idx = self._sample_index(t, time)
        sel = (slice(None),) + idx
        return pd.DataFrame(
            {
                "Term": list(self.terms),
                "FStat": self.F[sel],
                "DF1": self.df1[sel],
                "DF2": self.df2[sel],
                "pValue": self.p[sel],
            }
        )

    def to_frame(self) -> pd.DataFrame:
        """Tidy long table: one row per term and sample."""
        n_samples = int(np.prod(self.sample_shape))
        grid = {"sample": np.tile(np.arange(n_samples), len(self.terms))}
        time_idx = np.unravel_index(np.arange(n_samples), self.sample_shape)
        grid["time"] = np.tile(np.asarray(self.times)[time_idx[0]], len(self.terms))
        if self.freqs is not None:
            grid["freq"] = np.tile(np.asarray(self.freqs)[time_idx[1]], len(self.terms))
        grid["Term"] = np.repeat(list(self.terms), n_samples)
        for col, arr in (("FStat", self.F), ("DF1", self.df1), ("DF2", self.df2), ("pValue", self.p), ("t", self.t)):
            grid[col] = arr.reshape(len(self.terms), n_samples).ravel()
        return pd.DataFrame(grid)

    def summary(self) -> str:
        """A text summary: model, methods, coding, fit health and peak effects."""
        o, d = self.options, self.diagnostics
        opt_ctrl = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in o["optimizer_options"].items())
        if o["coding"] == "reference":
            coding = "reference (treatment); reference levels: " + (
                ", ".join(f"{k} = {v!r}" for k, v in self.reference_levels.items()) or "no factors"
            )
        else:
            coding = "effects (sum to zero, last level -1); levels: " + (
                ", ".join(f"{k} = {v}" for k, v in self.levels.items()) or "no factors"
            )
        times = np.asarray(self.times)
        lines = [
            f"Mixed-model fits per sample (clusterlmer, engine: {o['engine']})",
            f"Formula:     {self.formula}",
            f"Fit method:  {'REML' if o['reml'] else 'ML'}; optimizer {o['optimizer']} ({opt_ctrl})",
            f"Test:        {_TEST_NAMES[o['test']]}; DF2: {_DDF_NAMES[o['ddf']]}",
            f"Coding:      {coding}",
            f"Samples:     {'x'.join(map(str, self.sample_shape))} (times {times[0]:g} .. {times[-1]:g}); "
            f"observations: {int(d['n_obs'].max()) if len(d) else 0}",
            f"Fits:        {int(d['converged'].sum())} converged, {int(d['failed'].sum())} failed, "
            f"{int((d['singular'] == 1).sum())} singular, {int((d['n_excluded'] > 0).sum())} with rows excluded",
        ]
        if o["coding"] == "reference" and any(":" in term for term in self.terms):
            lines.append(
                "Note:        with reference coding and an interaction, a 'main effect' is the simple effect "
                "at the reference level of the other factor(s); use coding='effects' for averaged main effects."
            )
        lines.append("Peak F per term:")
        rows = []
        for i, term in enumerate(self.terms):
            f = self.F[i].ravel()
            if np.all(np.isnan(f)):
                rows.append((term, np.nan, np.nan, np.nan))
                continue
            j = int(np.nanargmax(f))
            at = times[np.unravel_index(j, self.sample_shape)[0]]
            rows.append((term, f[j], at, self.p[i].ravel()[j]))
        table = pd.DataFrame(rows, columns=["Term", "max FStat", "at time", "pValue"])
        lines.append(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"<TimeseriesFit | {self.formula} | {len(self.terms)} terms x "
            f"{'x'.join(map(str, self.sample_shape))} samples>"
        )
