"""Simulated iEEG datasets in the original MAT layout, with known effects.

Used by the demo, the tests and the benchmarks; every draw comes from
``np.random.default_rng(seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .data import TimeseriesData

__all__ = ["simulate_ieeg", "GroundTruth"]


@dataclass(frozen=True)
class GroundTruth:
    """Where the simulated effects are (sample index windows, end exclusive)."""

    hit_miss_window: tuple
    interaction_window: tuple | None
    hit_miss_effect: float
    interaction_effect: float


def _channel_counts(rng, n_subjects, n_channels):
    """Unequal channel counts per subject (at least 2 each) summing to ``n_channels``."""
    weights = rng.gamma(2.0, 1.0, n_subjects)
    counts = 2 + np.floor(weights / weights.sum() * (n_channels - 2 * n_subjects)).astype(int)
    for i in rng.permutation(n_subjects)[: n_channels - counts.sum()]:
        counts[i] += 1
    return counts


def simulate_ieeg(kind="2way", *, n_subjects=15, n_channels=None, n_times=139, seed=0,
                  hit_miss_effect=0.6, interaction_effect=0.8, subject_sd=1.0, channel_sd=0.7,
                  noise_sd=1.0, ar=0.85, return_truth=False):
    """Simulate a dataset shaped like the original sample files (two rows per channel: hit, miss).

    Parameters
    ----------
    kind : {"2way", "1way"}
        ``"2way"`` adds a between-channel ``region`` factor (``phrc``/``hc``,
        unequal sizes) and an interaction window.
    n_subjects : int
    n_channels : int, optional
        Total channels; defaults to 169 (2-way, 338 rows) or 93 (1-way, 186 rows).
    n_times : int
    seed : int
        Seed of ``np.random.default_rng``. :func:`make_permutations` seeds the
        same generator, so analyse simulated data with a different permutation
        seed: with the same one, the permutations' draws would be the very
        random numbers that made the noise, not independent of the data.
    hit_miss_effect, interaction_effect : float
        Effect sizes (in noise SD units) inside their windows.
    subject_sd, channel_sd, noise_sd : float
        Random-intercept and residual standard deviations.
    ar : float
        AR(1) coefficient of the noise over time.
    return_truth : bool
        Also return a :class:`GroundTruth`.

    Returns
    -------
    data : TimeseriesData
    truth : GroundTruth
        Only if ``return_truth``.
    """
    if kind not in ("2way", "1way"):
        raise ValueError(f"kind must be '2way' or '1way', got {kind!r}.")
    rng = np.random.default_rng(seed)
    n_channels = n_channels or (169 if kind == "2way" else 93)
    counts = _channel_counts(rng, n_subjects, n_channels)
    rows = []
    for s, n_ch in enumerate(counts):
        regions = rng.choice(["phrc", "hc"], size=n_ch, p=[0.6, 0.4])
        for c in range(n_ch):
            for hit in (1, 0):
                row = {"sid": f"S{s + 1:02d}", "ch": f"ch{c + 1}", "hit_miss": float(hit)}
                if kind == "2way":
                    row["region"] = regions[c]
                rows.append(row)
    design = pd.DataFrame(rows)
    n = len(design)
    sid_code = pd.factorize(design["sid"])[0]
    ch_code = pd.factorize(design["sid"] + ":" + design["ch"])[0]
    subject = rng.normal(0, subject_sd, sid_code.max() + 1)[sid_code]
    channel = rng.normal(0, channel_sd, ch_code.max() + 1)[ch_code]

    noise = np.empty((n, n_times))
    noise[:, 0] = rng.normal(0, noise_sd, n)
    innovation_sd = noise_sd * np.sqrt(1 - ar**2)
    for t in range(1, n_times):
        noise[:, t] = ar * noise[:, t - 1] + rng.normal(0, innovation_sd, n)

    hit_win = (int(n_times * 0.30), int(n_times * 0.50))
    int_win = (int(n_times * 0.65), int(n_times * 0.85)) if kind == "2way" else None
    bump = np.zeros(n_times)
    bump[slice(*hit_win)] = np.hanning(hit_win[1] - hit_win[0] + 2)[1:-1]
    values = (subject + channel)[:, None] + noise
    values += hit_miss_effect * design["hit_miss"].to_numpy()[:, None] * bump
    if kind == "2way":
        bump_int = np.zeros(n_times)
        bump_int[slice(*int_win)] = np.hanning(int_win[1] - int_win[0] + 2)[1:-1]
        contrast = design["hit_miss"].to_numpy() * np.where(design["region"] == "hc", 1.0, -1.0)
        values += interaction_effect * contrast[:, None] * bump_int
    times = np.round(np.arange(n_times) * 0.01 - 0.2, 10)
    data = TimeseriesData(design=design, values=values, times=times)
    if return_truth:
        return data, GroundTruth(hit_win, int_win, hit_miss_effect, interaction_effect)
    return data
