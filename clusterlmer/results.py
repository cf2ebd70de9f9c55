"""Result objects: plain NumPy arrays in small frozen dataclasses.

Their cluster tables are built by :mod:`clusterlmer.cluster_tables`, text summaries by :mod:`clusterlmer.summaries`; files by :mod:`clusterlmer.saving`
(read back by :mod:`clusterlmer.loading`), figures by :mod:`clusterlmer.plotting` (and, for EEG / MEG
channels, :mod:`clusterlmer.plotting_channels`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .data import _preview, sample_axes
from .cluster_tables import STATISTICS, cluster_table, sweep_table
from .summaries import fit_summary, result_summary

__all__ = ["TimeseriesFit", "FitSource", "PermutationClusterResult", "cluster_table", "sweep_table", "STATISTICS"]

@dataclass(frozen=True, eq=False)
class FitSource:
    """What a :class:`TimeseriesFit` was computed from, kept in memory for
    :meth:`TimeseriesFit.model_at` (never saved to a result file).

    Attributes
    ----------
    design : clusterlmer.design.ModelDesign
        The design as the engine received it (columns, level order, coding, formula).
    values : numpy.ndarray
        The responses, shape ``(n_obs, n_samples)`` (samples flattened in C order).
    """

    design: object
    values: np.ndarray

    def __repr__(self) -> str:
        return f"<FitSource | {self.values.shape[0]} observations x {self.values.shape[1]} samples>"


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
    channels : tuple of str or None
        Channel names when the samples have a channel axis (the first).
    coef_df, coef_se : ndarray or None
        DF and standard error of each coefficient's t test as lmerTest's
        ``summary()`` computes them (``coef_se`` differs from ``se`` only
        under Kenward-Roger); see :meth:`coefficients`.
    diagnostics : pandas.DataFrame
        One row per sample: observations used and excluded, convergence,
        singular fit, R's warnings and messages, error.
    options : dict
        Fit method, ddf method, test, coding, optimizer and its controls.
    levels : dict
        Level order per factor (reference level first).
    source : FitSource or None
        The design and responses, for :meth:`model_at`; ``None`` in a fit
        loaded from a file (result files do not hold the data).
    info : mne.Info or None
        The channels' MNE measurement info when the data had one
        (:func:`clusterlmer.from_mne`), for topographic maps; like
        ``source``, kept in memory only (``None`` in a loaded fit).
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
    channels: tuple | None = None
    coef_df: np.ndarray | None = None
    coef_se: np.ndarray | None = None
    # Not part of the result: left out of comparisons, repr and result files.
    source: FitSource | None = field(default=None, repr=False, compare=False)
    info: object = field(default=None, repr=False, compare=False)

    @property
    def sample_shape(self) -> tuple:
        """``([n_channels,] n_times[, n_freqs])``."""
        return self.F.shape[1:]

    @property
    def sample_axes(self) -> tuple:
        """Names of the sample axes, e.g. ``("time",)`` or ``("channel", "time")``."""
        return sample_axes(self.channels is not None, self.freqs is not None)

    def sample_coordinates(self, flat) -> dict:
        """Channel name, time and frequency of flat sample indices ``flat``, by axis name."""
        idx = np.unravel_index(np.asarray(flat), self.sample_shape)
        values = {"channel": None if self.channels is None else np.asarray(self.channels, dtype=object),
                  "time": np.asarray(self.times), "freq": None if self.freqs is None else np.asarray(self.freqs)}
        return {axis: values[axis][i] for axis, i in zip(self.sample_axes, idx)}

    @property
    def reference_levels(self) -> dict:
        """Reference level of each factor (meaningful for reference coding)."""
        return {k: v[0] for k, v in self.levels.items()}

    def _sample_index(self, t, time, channel=None):
        if (t is None) == (time is None):
            raise ValueError("give exactly one of t (sample index) or time (in the data's time unit).")
        if channel is not None and self.channels is None:
            raise ValueError("channel= selects a channel, but these data have no channel axis.")
        if time is not None:
            nearest = int(np.argmin(np.abs(np.asarray(self.times, dtype=float) - float(time))))
            if self.sample_axes == ("time",):
                return (nearest,)
            if self.sample_axes == ("channel", "time"):
                if channel is None:
                    raise ValueError(f"channels x time data: give the channel too, e.g. channel={self.channels[0]!r}.")
                return (self._channel_index(channel), nearest)
            raise ValueError(f"time= selects a sample of time or channel x time data; for samples of axes "
                             f"{self.sample_axes} pass t=(...) with one index per axis.")
        if channel is not None:
            raise ValueError("channel= goes with time=; with t= give one index per axis instead.")
        idx = (t,) if np.isscalar(t) else tuple(t)
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in idx):
            raise TypeError(f"t must be an integer sample index (or a tuple of them), got {t!r}; use time= for times.")
        if len(idx) != len(self.sample_shape):
            raise ValueError(f"t must have {len(self.sample_shape)} index(es) for samples of shape {self.sample_shape}.")
        for i, n in zip(idx, self.sample_shape):
            if not -n <= int(i) < n:
                raise IndexError(f"sample index {i} is out of range for {n} samples.")
        return tuple(int(i) for i in idx)

    def _channel_index(self, channel):
        if isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
            if not -len(self.channels) <= int(channel) < len(self.channels):
                raise IndexError(f"channel index {channel} is out of range for {len(self.channels)} channels.")
            return int(channel)
        if str(channel) not in self.channels:
            raise ValueError(f"channel {channel!r} is not one of the data's channels: {_preview(self.channels)}.")
        return self.channels.index(str(channel))

    def anova(self, t=None, *, time=None, channel=None) -> pd.DataFrame:
        """MATLAB-layout ANOVA table at one sample.

        Parameters
        ----------
        t : int or tuple of int
            Sample index, one per sample axis (e.g. ``(time, freq)`` or
            ``(channel, time)``).
        time : float
            Alternatively, the time in the data's unit (nearest sample).
        channel : str or int
            With ``time`` on channels x time data: the channel (name or index).

        Returns
        -------
        pandas.DataFrame
            Columns ``Term, FStat, DF1, DF2, pValue``, one row per term; a
            GLMM (``family`` not Gaussian) adds ``Chi2Stat`` (the Wald
            chi-square, ``FStat * DF1``; ``DF2`` is Inf).
        """
        idx = self._sample_index(t, time, channel)
        sel = (slice(None),) + idx
        table = {"Term": list(self.terms), "FStat": self.F[sel]}
        if self.options.get("family", "gaussian") != "gaussian":
            table["Chi2Stat"] = self.F[sel] * self.df1[sel]
        table.update(DF1=self.df1[sel], DF2=self.df2[sel], pValue=self.p[sel])
        return pd.DataFrame(table)

    def coefficients(self, t=None, *, time=None, channel=None) -> pd.DataFrame:
        """Coefficient table at one sample, as lmerTest's ``summary()`` (MATLAB ``fitlme`` layout).

        Parameters
        ----------
        t, time, channel
            The sample, as for :meth:`anova`.

        Returns
        -------
        pandas.DataFrame
            Columns ``Name, Estimate, SE, tStat, DF, pValue``, one row per
            coefficient: the t test of each coefficient on its own, with the
            fit's DF method (Satterthwaite, Kenward-Roger with its adjusted
            SE, residual ``n - p``, or none: the normal distribution).
        """
        from .coefficients import coefficient_table

        return coefficient_table(self, self._sample_index(t, time, channel))

    def contrast(self, L, rhs=0, *, name="contrast", ddf=None):
        """Test ``L beta = rhs`` at every sample, as lmerTest's ``contest(model, L, rhs, joint = TRUE)``.

        Every sample is refitted with this fit's data, model, options and
        engine (``ddf`` other than the fit's may need R: Kenward-Roger).

        Parameters
        ----------
        L : str, dict, list or array-like
            Weights over ``coef_names``: an expression such as
            ``"ProductP2 - ProductP3"`` (rows separated by ``;``), a dict
            ``{coefficient: weight}``, a list of those, or a vector/matrix
            with one column per coefficient (see :mod:`clusterlmer.contrasts`).
        rhs : float or array-like
            Hypothesised value per row.
        name : str
        ddf : {"satterthwaite", "kenward-roger", "residual", "none"}, optional
            Default: the fit's.

        Returns
        -------
        clusterlmer.contrasts.ContrastTest
            ``F``, ``df1``, ``df2``, ``p`` per sample (and ``estimate``, ``t``
            for one row); ``to_frame()``.
        """
        from .contrasts import fit_contrast

        return fit_contrast(self, L, rhs, name=name, ddf=ddf)

    def model_at(self, t=None, *, time=None):
        """Open one sample's model as a fitted pymer4 ``Lmer`` for post-hoc work.

        The model is refitted by lme4/lmerTest through pymer4 with this fit's
        formula, rows (observations whose response is NaN/Inf at the sample
        left out), factor level order, coding (reference: treatment contrasts
        against the first level; effects: sum-to-zero, last level -1), REML/ML
        and optimizer, so its coefficients, named as in ``coef_names``, equal
        ``estimates`` at that sample (a warning says otherwise).

        Parameters
        ----------
        t : int or tuple of int
            Sample index (``(time, freq)`` for 2-D samples).
        time : float
            Alternatively, the time in the data's unit (nearest sample).

        Returns
        -------
        pymer4.models.Lmer
            E.g. ``model.coefs``, ``model.anova()`` (lmerTest's type III
            table), ``model.post_hoc(marginal_vars=..., grouping_vars=...)``
            (emmeans), ``model.summary()``.

        Raises
        ------
        ValueError
            When the fit holds no data (loaded from a file).
        ImportError
            When pymer4 0.8 is not installed: ``pip install
            'clusterlmer[pymer4]'`` in its own environment (pymer4 0.8 needs
            pandas < 3).
        """
        sample = self._sample_index(t, time)
        if self.source is None:
            raise ValueError("this fit holds no data (result files do not store it, so a loaded result's fit has "
                             "none): refit with cl.fit_timeseries(data, formula, ...) and call model_at on that fit.")
        from .pymer4_bridge import lmer_at

        return lmer_at(self, sample)

    def to_frame(self, coefficients=False) -> pd.DataFrame:
        """Tidy long table: one row per term and sample (with ``channel``, ``time``, ``freq`` as the data have).

        ``coefficients=True``: one row per coefficient and sample instead, with
        the columns of :meth:`coefficients`.
        """
        if coefficients:
            from .coefficients import coefficient_frame

            return coefficient_frame(self)
        n_samples = int(np.prod(self.sample_shape))
        grid = {"sample": np.tile(np.arange(n_samples), len(self.terms))}
        for axis, values in self.sample_coordinates(np.arange(n_samples)).items():
            grid[axis] = np.tile(values, len(self.terms))
        grid["Term"] = np.repeat(list(self.terms), n_samples)
        for col, arr in (("FStat", self.F), ("DF1", self.df1), ("DF2", self.df2), ("pValue", self.p), ("t", self.t)):
            grid[col] = arr.reshape(len(self.terms), n_samples).ravel()
        return pd.DataFrame(grid)

    def summary(self) -> str:
        """A text summary: model, methods, coding, fit health and peak effects."""
        return fit_summary(self)

    def __repr__(self) -> str:
        return (
            f"<TimeseriesFit | {self.formula} | {len(self.terms)} terms x "
            f"{'x'.join(map(str, self.sample_shape))} samples>"
        )


@dataclass(frozen=True, eq=False)
class PermutationClusterResult:
    """Result of :func:`clusterlmer.permutation_cluster_lmer`.

    Per-term arrays are keyed by term name and shaped like the samples
    (``([n_channels,] n_times[, n_freqs])``); nulls carry the permutation
    axis last.

    Attributes
    ----------
    fit : TimeseriesFit
        The observed fits (all terms, DF1/DF2, parametric p).
    statistic : {"F", "t"}
    terms : tuple of str
        Tested terms.
    stat : dict
        Observed statistic per tested term.
    null : dict
        Statistic under each permutation, shape ``sample_shape + (n_permutations,)``.
    p_clust : dict
        Cluster-corrected p per sample (1 outside clusters).
    cluster_info : dict
        The :class:`~clusterlmer.cluster.ClusterTestInfo` of each term
        (thresholds, clusters, null distributions of the cluster statistic).
    clusters : pandas.DataFrame
        Every cluster of every term: extent in samples and time, statistic, p.
    refit_failures : dict
        Per term, the number of permutations whose refit failed at each sample.
    n_permutations, seed : int
    schemes : dict
        How each fixed-effect variable was permuted.
    tail : int
    alpha, cluster_alpha : float
    cluster_stat, quantile_method : str
        ``cluster_stat`` is ``"max"`` for the max-statistic correction.
    run : dict
        Worker count, wall time, permutations resumed from a checkpoint.
    correction : {"cluster", "max", "tfce"}
        How samples were corrected (``p_clust``, ``clusters``).
    thresholds : tuple of float
        The cluster-forming alphas of the threshold sweep (empty: none).
    threshold_sweep : pandas.DataFrame or None
        The clusters at each of ``thresholds`` on the same null: column
        ``threshold``, then the columns of ``clusters``.
    """

    fit: TimeseriesFit
    statistic: str
    terms: tuple
    stat: dict
    null: dict
    p_clust: dict
    cluster_info: dict
    clusters: pd.DataFrame
    refit_failures: dict
    n_permutations: int
    seed: int
    schemes: dict
    tail: int
    alpha: float
    cluster_alpha: float
    cluster_stat: str
    quantile_method: str
    run: dict
    # Fields added later carry defaults, so result files written before them still load.
    correction: str = "cluster"
    thresholds: tuple = ()
    threshold_sweep: pd.DataFrame | None = None

    @property
    def h(self) -> dict:
        """Per term, where the cluster-corrected p is below ``alpha``."""
        return {term: p < self.alpha for term, p in self.p_clust.items()}

    @property
    def times(self) -> np.ndarray:
        return self.fit.times

    def to_frame(self) -> pd.DataFrame:
        """Tidy table, one row per tested term and sample: the fit's columns plus ``stat`` and ``p_clust``."""
        table = self.fit.to_frame()
        table = table[table["Term"].isin(self.terms)].reset_index(drop=True)
        n = int(np.prod(self.fit.sample_shape))
        table["stat"] = np.concatenate([self.stat[t].ravel() for t in self.terms])
        table["p_clust"] = np.concatenate([self.p_clust[t].ravel() for t in self.terms])
        table["refit_failures"] = np.concatenate([self.refit_failures[t].ravel() for t in self.terms])
        assert len(table) == n * len(self.terms)
        return table

    def summary(self) -> str:
        """Text summary: the method, its settings, the cluster table and fit health."""
        return result_summary(self)

    def save(self, path):
        """Write the result: ``.mat`` (MATLAB struct ``lme``), ``.h5`` (everything) or ``.csv`` (tidy table)."""
        from .saving import save_result

        return save_result(self, path)

    def plot(self, path=None, *, terms=None, show=False):
        """Plot each tested term's statistic with thresholds and clusters; see :func:`clusterlmer.plotting.plot_result`."""
        from .plotting import plot_result

        return plot_result(self, path, terms=terms, show=show)

    def plot_topomap(self, term, cluster=None, *, info=None, path=None, show=False):
        """Scalp maps of a term's clusters; see :func:`clusterlmer.plotting_channels.plot_topomap`."""
        from .plotting_channels import plot_topomap

        return plot_topomap(self, term, cluster, info=info, path=path, show=show)

    def plot_waveforms(self, data, term, cluster=None, *, path=None, show=False):
        """Condition waveforms at a cluster's peak channel; see :func:`clusterlmer.plotting_channels.plot_waveforms`."""
        from .plotting_channels import plot_waveforms

        return plot_waveforms(self, data, term, cluster, path=path, show=show)

    def __repr__(self) -> str:
        n_sig = int((self.clusters["p"] < self.alpha).sum()) if len(self.clusters) else 0
        return (f"<PermutationClusterResult | {self.fit.formula} | {self.statistic}, "
                f"{self.n_permutations} permutations | {n_sig} significant cluster(s)>")
