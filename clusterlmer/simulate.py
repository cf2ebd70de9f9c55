"""Simulated datasets with known effects: iEEG in the original MAT layout,
subject x item timeseries shaped like a visual-world eye-tracking study, and
30-channel scalp ERPs of an oddball study.

Used by the demo, the tests and the benchmarks; every draw comes from
``np.random.default_rng(seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .data import TimeseriesData

__all__ = ["simulate_ieeg", "simulate_subject_item", "simulate_erp", "GroundTruth", "SubjectItemTruth", "ErpTruth",
           "EEG30"]

# 30 scalp channels of the 10-20 system (all in MNE's 10-20 montage), front to back.
EEG30 = ("Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "FC5", "FC1", "FC2", "FC6", "T7", "C3", "Cz", "C4", "T8",
         "CP5", "CP1", "CP2", "CP6", "P7", "P3", "Pz", "P4", "P8", "PO9", "O1", "Oz", "O2", "PO10")
FRONTO_CENTRAL = ("F3", "Fz", "F4", "FC1", "FC2", "C3", "Cz", "C4")


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


@dataclass(frozen=True)
class SubjectItemTruth:
    """What :func:`simulate_subject_item` put into the data.

    Attributes
    ----------
    windows : dict
        Per term (``"cond_a"``, ``"cond_b"``, ``"cond_a:cond_b"``) with a
        non-zero effect: its bin window ``(start, end)``, end exclusive.
    effects : dict
        Per term: the effect at the window's peak (see
        :func:`simulate_subject_item`); 0 for terms without one.
    subject_sd, item_sd, slope_sd, noise_sd : float
        The population standard deviations the random effects were drawn with.
    """

    windows: dict
    effects: dict
    subject_sd: float
    item_sd: float
    slope_sd: float
    noise_sd: float


def _item_lists(rng, n_subjects, n_items, n_trials):
    """Each trial's subject, item and Latin-square cell (0-3).

    The trials are dealt from one stream that runs through the items in
    order, pass after pass: subject after subject takes the next
    ``n_trials // n_subjects`` items (one more for a random few, to make up
    ``n_trials``), so every item is seen by ``n_trials / n_items`` subjects
    give or take one and no subject sees an item twice. A trial's cell is
    its position in the stream mod 4, shifted by 3 per pass when ``n_items``
    is even: consecutive trials step through the four cells (a subject
    seeing 5 or more items meets all four; a pass boundary repeats one cell)
    and an item moves to the next cell from pass to pass (it is seen in all
    four, about equally often). Labels are then shuffled, so that nothing
    depends on the order of the stream.
    """
    base, extra = divmod(n_trials, n_subjects)
    counts = np.full(n_subjects, base)
    counts[rng.permutation(n_subjects)[:extra]] += 1
    position = np.arange(n_trials)
    item = position % n_items
    shift = 0 if n_items % 2 else 3  # n_items + shift odd: an item's cell cycles through all four over the passes
    cell = (position + shift * (position // n_items)) % 4
    subject = np.repeat(np.arange(n_subjects), counts)
    seen = np.zeros((n_subjects, 4), dtype=int)
    np.add.at(seen, (subject, cell), 1)
    if (seen == 0).any():
        raise ValueError(f"with {n_trials} trials some of the {n_subjects} subjects see {base} items, which cross "
                         "from one pass through the items to the next and so miss a cell of the 2 x 2 design; "
                         "give each subject at least 5 items (n_trials >= 5 * n_subjects).")
    return rng.permutation(n_subjects)[subject], rng.permutation(n_items)[item], cell


def _bump(n_times, window):
    """A Hann bump over ``window`` (peak 1, zero outside); zeros for ``None``."""
    out = np.zeros(n_times)
    if window is not None:
        out[slice(*window)] = np.hanning(window[1] - window[0] + 2)[1:-1]
    return out


def simulate_subject_item(*, n_subjects=48, n_items=16, n_trials=360, n_times=40, seed=0, cond_a_effect=0.5,
                          cond_b_effect=0.0, interaction_effect=0.5, subject_sd=0.8, item_sd=0.5, slope_sd=0.0,
                          slope_correlation=0.0, noise_sd=1.0, ar=0.8, cond_a_window=None,
                          interaction_window=None, cond_b_window=None, return_truth=False):
    """Simulate a subject x item timeseries study shaped like a visual-world eye-tracking experiment.

    Each subject sees a subset of the items (the defaults: 7 or 8 of 16, each
    item seen by 22 or 23 of the 48 subjects), each trial in one cell of a
    2 x 2 design of the factors ``cond_a`` (``a1``/``a2``) and ``cond_b``
    (``b1``/``b2``) assigned as a Latin square: both factors vary within
    subjects and within items, and no subject sees an item twice. A trial's
    response over ``n_times`` bins is its subject's and item's random
    intercepts (constant over bins), optionally a subject random slope of
    ``cond_a``, the fixed effects in their windows and AR(1) noise.

    Parameters
    ----------
    n_subjects, n_items : int
        Levels of ``Subject`` and ``Item``.
    n_trials : int
        Rows, between ``4 * n_subjects`` and ``n_subjects * n_items``; each
        subject sees ``n_trials // n_subjects`` items or one more. Every
        subject must meet all four cells, which 5 or more items per subject
        guarantee (``ValueError`` otherwise).
    n_times : int
        Time bins.
    seed : int
        Seed of ``np.random.default_rng``. Analyse the data with a different
        permutation seed (see :func:`simulate_ieeg`).
    cond_a_effect, cond_b_effect : float
        Difference ``a2 - a1`` (``b2 - b1``) at the peak of the term's window,
        in noise SD units.
    interaction_effect : float
        Difference of differences ``(a2 - a1 | b2) - (a2 - a1 | b1)`` at its
        window's peak.
    subject_sd, item_sd : float
        Standard deviations of the subject and item random intercepts.
    slope_sd : float
        Standard deviation of the subjects' deviations from the fixed
        ``a2 - a1`` difference (0: no random slope). With effects coding
        (``a1`` = 1, ``a2`` = -1) the slope's SD is ``slope_sd / 2``.
    slope_correlation : float
        Correlation of a subject's intercept with its ``a2 - a1`` deviation.
    noise_sd, ar : float
        Residual SD and AR(1) coefficient of the noise across bins.
    cond_a_window, interaction_window, cond_b_window : tuple of int, optional
        Bin windows ``(start, end)``, end exclusive, of the effects; default
        30-55% of the bins for ``cond_a``, 60-85% for the interaction and
        10-30% for ``cond_b``. A term with a zero effect has no window.
    return_truth : bool
        Also return a :class:`SubjectItemTruth`.

    Returns
    -------
    data : TimeseriesData
        Design columns ``Subject``, ``Item`` (labels ``S01``..., ``I01``...),
        ``cond_a`` and ``cond_b`` (categorical, levels ``a1, a2`` and
        ``b1, b2`` in that order, so ``coding="effects"`` codes ``a1`` as 1
        and ``a2`` as -1, as R's ``contr.sum``); values of shape ``(n_trials, n_times)``;
        times are bin indices (0, 1, ...), the left-hand side a label.
    truth : SubjectItemTruth
        Only if ``return_truth``.

    Examples
    --------
    >>> import clusterlmer as cl
    >>> data = cl.simulate_subject_item(seed=1)
    >>> data.values.shape
    (360, 40)
    """
    if n_items < 4:
        raise ValueError(f"n_items must be at least 4 (one per cell of the 2 x 2 design), got {n_items}.")
    if not 4 * n_subjects <= n_trials <= n_subjects * n_items:
        raise ValueError(f"n_trials must be between {4 * n_subjects} (4 items per subject) and "
                         f"{n_subjects * n_items} (every subject sees every item), got {n_trials}.")
    if not -1 <= slope_correlation <= 1:
        raise ValueError(f"slope_correlation must be in [-1, 1], got {slope_correlation}.")
    rng = np.random.default_rng(seed)
    subject, item, cell = _item_lists(rng, n_subjects, n_items, n_trials)
    a = cell % 2  # 0: a1, 1: a2
    b = cell // 2
    width = len(str(max(n_subjects, n_items)))
    design = pd.DataFrame({
        "Subject": [f"S{s + 1:0{width}d}" for s in subject],
        "Item": [f"I{i + 1:0{width}d}" for i in item],
        # Categorical: the level order (a1 first, as R sorts them) does not depend on which row comes first.
        "cond_a": pd.Categorical.from_codes(a, ["a1", "a2"]),
        "cond_b": pd.Categorical.from_codes(b, ["b1", "b2"]),
    })
    # Intercept and a2 - a1 deviation per subject, correlated as asked.
    z = rng.standard_normal((n_subjects, 2))
    subj_intercept = subject_sd * z[:, 0]
    subj_slope = slope_sd * (slope_correlation * z[:, 0] + np.sqrt(1 - slope_correlation**2) * z[:, 1])
    item_intercept = rng.normal(0, item_sd, n_items)
    a_centred, b_centred = a - 0.5, b - 0.5  # -1/2, +1/2: the effect is the difference of the levels
    random_part = subj_intercept[subject] + item_intercept[item] + subj_slope[subject] * a_centred

    noise = np.empty((n_trials, n_times))
    noise[:, 0] = rng.normal(0, noise_sd, n_trials)
    innovation_sd = noise_sd * np.sqrt(1 - ar**2)
    for t in range(1, n_times):
        noise[:, t] = ar * noise[:, t - 1] + rng.normal(0, innovation_sd, n_trials)

    def window(given, effect, lo, hi):
        if effect == 0:
            return None
        return tuple(int(w) for w in given) if given is not None else (int(n_times * lo), int(n_times * hi))

    windows = {"cond_a": window(cond_a_window, cond_a_effect, 0.30, 0.55),
               "cond_b": window(cond_b_window, cond_b_effect, 0.10, 0.30),
               "cond_a:cond_b": window(interaction_window, interaction_effect, 0.60, 0.85)}
    effects = {"cond_a": cond_a_effect, "cond_b": cond_b_effect, "cond_a:cond_b": interaction_effect}
    # Contrasts of +-1/2 (+-1/4 for the product): each effect is a difference of levels (of differences).
    contrasts = {"cond_a": a_centred, "cond_b": b_centred, "cond_a:cond_b": a_centred * b_centred}
    values = random_part[:, None] + noise
    for term, effect in effects.items():
        if effect:
            values += effect * contrasts[term][:, None] * _bump(n_times, windows[term])
    data = TimeseriesData(design=design, values=values, times=np.arange(n_times, dtype=float))
    if return_truth:
        truth = SubjectItemTruth({t: w for t, w in windows.items() if w is not None}, effects, subject_sd, item_sd,
                                 slope_sd, noise_sd)
        return data, truth
    return data


@dataclass(frozen=True)
class ErpTruth:
    """Where :func:`simulate_erp`'s deviant effect is: channels, time window (seconds, inclusive), size."""

    channels: tuple
    window: tuple
    effect: float


def simulate_erp(*, n_subjects=49, n_times=231, sfreq=500.0, tmin=-0.1, seed=0, effect=0.6,
                 effect_channels=FRONTO_CENTRAL, window=(0.15, 0.28), subject_sd=1.0, noise_sd=1.0, ar=0.9,
                 common=0.5, missing=1, return_truth=False):
    """Simulate subject-average ERPs of an oddball study on 30 scalp channels.

    Each subject contributes a standard and a deviant average (``missing``
    deviant averages of the last subjects are absent, as in real data sets).
    A series is its subject's intercept (the same on every channel and
    sample), AR(1) noise in time with a part shared by all channels, and,
    for deviants, a Hann-shaped effect peaking at ``effect`` (noise SDs) on
    ``effect_channels`` over ``window``.

    Parameters
    ----------
    n_subjects : int
    n_times : int
        Samples, from ``tmin`` at ``sfreq``.
    sfreq, tmin : float
        Sampling rate (Hz) and first sample's time (s).
    seed : int
        Seed of ``np.random.default_rng`` (analyse with another permutation seed).
    effect : float
        Deviant minus standard at the window's peak; 0 for null data.
    effect_channels : sequence of str
        Channels carrying the effect (default fronto-central: F3, Fz, F4, FC1,
        FC2, C3, Cz, C4).
    window : tuple of float
        Effect window in seconds, inclusive.
    subject_sd, noise_sd, ar : float
        Subject intercept SD, residual SD and AR(1) coefficient across samples.
    common : float
        Share (0..1) of the noise variance common to all channels of a series.
    missing : int
        Deviant averages left out (the last subjects').
    return_truth : bool
        Also return an :class:`ErpTruth`.

    Returns
    -------
    data : TimeseriesData
        Design ``Subject`` (``S01``...), ``Deviant`` (``standard``/``deviant``,
        categorical in that order); values ``(n_series, 30, n_times)`` in
        volts (microvolt-sized, as MNE stores EEG); ``channels`` :data:`EEG30`;
        times in seconds; ``info`` an ``mne.Info`` with the 10-20 montage
        when MNE is installed (None otherwise: pass ``adjacency=`` then).
    truth : ErpTruth
        Only if ``return_truth``.
    """
    unknown = [c for c in effect_channels if c not in EEG30]
    if unknown:
        raise ValueError(f"effect_channels {unknown} are not among the simulated channels {list(EEG30)}.")
    if not 0 <= common <= 1:
        raise ValueError(f"common must be between 0 and 1, got {common}.")
    if not 0 <= missing < n_subjects:
        raise ValueError(f"missing must be between 0 and n_subjects - 1, got {missing}.")
    rng = np.random.default_rng(seed)
    width = len(str(n_subjects))
    design = pd.DataFrame({"Subject": [f"S{i + 1:0{width}d}" for i in range(n_subjects) for _ in range(2)],
                           "Deviant": pd.Categorical.from_codes(np.tile([0, 1], n_subjects),
                                                                ["standard", "deviant"])})
    keep = np.ones(len(design), bool)
    keep[len(design) - 2 * missing + 1::2] = False  # the last subjects' deviant averages
    design = design[keep].reset_index(drop=True)
    n, n_ch = len(design), len(EEG30)
    times = tmin + np.arange(n_times) / sfreq
    shape = (n, n_ch, n_times)
    shared = np.sqrt(common) * rng.standard_normal((n, 1, n_times))
    innovations = shared + np.sqrt(1 - common) * rng.standard_normal(shape)
    noise = np.empty(shape)
    noise[..., 0] = innovations[..., 0]
    for t in range(1, n_times):  # AR(1) with unit variance
        noise[..., t] = ar * noise[..., t - 1] + np.sqrt(1 - ar**2) * innovations[..., t]
    subject = rng.normal(0, subject_sd, n_subjects)[design["Subject"].str[1:].astype(int).to_numpy() - 1]
    values = subject[:, None, None] + noise_sd * noise
    inside = np.flatnonzero((times >= window[0]) & (times <= window[1]))
    if effect and inside.size:
        bump = np.zeros(n_times)
        bump[inside] = np.hanning(inside.size + 2)[1:-1]
        deviant = (design["Deviant"] == "deviant").to_numpy()
        cols = [EEG30.index(c) for c in effect_channels]
        values[np.ix_(deviant, cols)] += effect * bump
    data = TimeseriesData(design=design, values=values * 1e-6, times=times, channels=EEG30, info=_eeg30_info(sfreq))
    if return_truth:
        return data, ErpTruth(tuple(effect_channels), tuple(window), float(effect))
    return data


def _eeg30_info(sfreq):
    """MNE's Info for :data:`EEG30` with the 10-20 montage, or None without MNE."""
    try:
        import mne
    except ImportError:
        return None
    info = mne.create_info(list(EEG30), sfreq, "eeg")
    # The 10-20 montage is called colin27_1020 from MNE 1.13 on (standard_1020 before).
    name = "colin27_1020" if "colin27_1020" in mne.channels.get_builtin_montages() else "standard_1020"
    info.set_montage(mne.channels.make_standard_montage(name))
    return info
