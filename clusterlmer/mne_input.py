"""MNE-Python objects as :class:`~clusterlmer.TimeseriesData`: :func:`from_mne`.

Epochs (one observation per epoch, the design from ``epochs.metadata``),
lists of averages (``mne.Evoked`` or ``AverageTFR``, one observation per
average, the design given), and time-frequency epochs become channels x time
(x frequency) data that keep their ``mne.Info``: the analysis takes the
channel adjacency from it, and the topographic figures its positions.

MNE-Python is optional: it is imported when :func:`from_mne` is called.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .adjacency import _import_mne
from .data import TimeseriesData, _preview

__all__ = ["from_mne"]


def from_mne(inst, design=None, *, picks=None) -> TimeseriesData:
    """Build :class:`~clusterlmer.TimeseriesData` from MNE-Python epochs, averages or time-frequency data.

    Parameters
    ----------
    inst : mne.Epochs, mne.time_frequency.EpochsTFR, or list of mne.Evoked / mne.time_frequency.AverageTFR
        * Epochs (``mne.Epochs``, ``mne.EpochsArray``, concatenated epochs
          of several subjects...): one observation per epoch, values of
          shape ``(n_epochs, n_channels, n_times)``.
        * ``EpochsTFR``: one observation per epoch, values of shape
          ``(n_epochs, n_channels, n_times, n_freqs)`` (MNE stores
          frequencies before times; they are swapped so that time comes
          first, as everywhere in clusterlmer) and ``freqs`` kept.
        * A list of ``Evoked`` (or of ``AverageTFR``), e.g. one average per
          subject and condition: one observation per average. Every average
          must have the same channels (in any order: they are put in the
          first one's order) and the same times (and frequencies).
    design : pandas.DataFrame, optional
        One row per observation, in the order of the epochs or of the list.
        Epochs: defaults to ``epochs.metadata``, and is required when the
        epochs have none. A list of averages: required.
    picks : str or list of str, optional
        Channels to analyse, as MNE's ``inst.pick`` takes them (``"eeg"``,
        ``"mag"``, a list of names...). Default: the data channels (EEG,
        MEG, sEEG, ECoG, ...; not EOG, ECG, stimulus or misc channels).
        Channels marked bad (``info["bads"]``) are left out unless named
        explicitly.

    Returns
    -------
    TimeseriesData
        With ``channels`` (the picked channel names, in the data's order),
        ``times`` in seconds, ``freqs`` in Hz for time-frequency data,
        ``info`` (the picked channels' ``mne.Info``: ``adjacency=None`` in
        :func:`clusterlmer.permutation_cluster_lmer` builds the adjacency
        from it) and ``response=None`` (the formula's left-hand side is a
        label, e.g. ``"y ~ cond + (1|subject)"``).

    Raises
    ------
    ImportError
        MNE-Python is not installed (``pip install 'clusterlmer[mne]'``).
    ValueError
        Epochs without metadata and no ``design``; a design whose length is
        not the number of observations; averages whose channels, times or
        frequencies differ (the differences are named); complex
        time-frequency data.

    Notes
    -----
    Values stay in MNE's SI units: volts for EEG, sEEG and ECoG, teslas for
    magnetometers, teslas per metre for gradiometers (power in their
    squares). The fits give the same F, DF and p in any unit (see
    :func:`clusterlmer.fit_timeseries` on rescaling); estimates and standard
    errors are in these units. :meth:`PermutationClusterResult.plot_waveforms`
    shows volts as µV.

    Averages enter as they are: the model does not weight them by the number
    of epochs each averages (``evoked.nave``).
    """
    mne = _import_mne("Reading MNE objects (cl.from_mne)", "")
    from mne.time_frequency import AverageTFR, EpochsTFR

    if isinstance(inst, (list, tuple)):
        return _from_averages(mne, list(inst), design, picks)
    if isinstance(inst, EpochsTFR):
        return _from_epochs(mne, inst, design, picks, tfr=True)
    if isinstance(inst, mne.BaseEpochs):
        return _from_epochs(mne, inst, design, picks, tfr=False)
    if isinstance(inst, (mne.Evoked, AverageTFR)):
        raise TypeError(f"one {type(inst).__name__} is a single observation, which cannot be tested. Pass a list "
                        "of them, one per subject and condition, with design= (a DataFrame with one row per "
                        "average, e.g. columns subject and cond), or pass the epochs they were averaged from.")
    if isinstance(inst, mne.io.BaseRaw):
        raise TypeError("from_mne takes epochs or averages, not continuous data: cut the recording into epochs "
                        "first, e.g. mne.Epochs(raw, events, event_id, tmin, tmax, metadata=df).")
    raise TypeError(f"from_mne takes mne.Epochs, mne.time_frequency.EpochsTFR, or a list of mne.Evoked / "
                    f"AverageTFR with design=...; got {type(inst).__name__}.")


def _data_channels(mne, info, picks):
    """(indices into ``info``, names, ``mne.Info`` of those channels) of the channels to analyse."""
    # MNE's own picking rules ("data", a type, names; bad channels left out of type picks) applied to
    # a one-sample stand-in that carries only the info, so that the data are not copied to pick.
    probe = mne.EvokedArray(np.zeros((len(info.ch_names), 1)), info, verbose=False)
    probe.pick("data" if picks is None else picks, exclude="bads")
    names = list(probe.ch_names)
    kept = probe.info
    # A bad channel still here was picked by name and is analysed: the kept info does not call it bad.
    kept["bads"] = []
    return np.array([info.ch_names.index(n) for n in names], dtype=np.intp), names, kept


def _check_design(design, n_obs, what):
    if not isinstance(design, pd.DataFrame):
        raise TypeError(f"design must be a pandas DataFrame with one row per {what}, got {type(design).__name__}.")
    if len(design) != n_obs:
        raise ValueError(f"design has {len(design)} rows but there are {n_obs} {what}s: give one design row per "
                         f"{what}, in their order.")
    return design.reset_index(drop=True)


def _real(values, what):
    if np.iscomplexobj(values):
        raise ValueError(f"the {what} hold complex values (output='complex'): the mixed models need real "
                         "responses. Compute power (output='power', the default of compute_tfr) or take "
                         "abs(data) ** 2 first.")
    return np.asarray(values, dtype=float)


def _time_then_freq(values):
    """(n, channels, freqs, times) as MNE stores them -> (n, channels, times, freqs)."""
    if values.ndim != 4:
        raise ValueError(f"time-frequency data must have shape (n, n_channels, n_freqs, n_times), got "
                         f"{values.shape} (per-taper data: average the tapers' power first).")
    return np.ascontiguousarray(np.swapaxes(values, 2, 3))


def _from_epochs(mne, epochs, design, picks, tfr):
    idx, names, info = _data_channels(mne, epochs.info, picks)
    if tfr:
        values = _time_then_freq(_real(epochs.data[:, idx], "time-frequency epochs"))
    else:
        # Not preloaded epochs are read here, and epochs rejected on reading are dropped (with their
        # metadata rows), so the design is taken after the values.
        values = _real(epochs.get_data(picks=idx), "epochs")
    if design is None:
        if epochs.metadata is None:
            raise ValueError(
                f"these {len(values)} epochs have no metadata, so there is no design to fit. Give each epoch "
                "its design row, e.g. epochs.metadata = pd.DataFrame({'subject': ..., 'cond': ...}) (one row per "
                "epoch, in the epochs' order; the event codes are epochs.events[:, 2], their names "
                "epochs.event_id), or pass design=df to from_mne.")
        design = epochs.metadata
    design = _check_design(design, len(values), "epoch")
    return TimeseriesData(design, values, np.asarray(epochs.times, dtype=float),
                          freqs=np.asarray(epochs.freqs, dtype=float) if tfr else None, channels=names, info=info)


def _describe(item, i):
    comment = getattr(item, "comment", None)
    return f"item {i}" + (f" ({comment!r})" if comment else "")


def _channel_order(lists, items):
    """Per item, indices putting its channels in the first item's order; ValueError naming differences."""
    first = lists[0]
    orders = []
    for i, names in enumerate(lists):
        if names == first:
            orders.append(np.arange(len(names)))
            continue
        missing = [n for n in first if n not in names]
        extra = [n for n in names if n not in first]
        if missing or extra:
            what = "; ".join(part for part in (
                f"it lacks {_preview(missing)}" if missing else "",
                f"it has {_preview(extra)} that {_describe(items[0], 0)} lacks" if extra else "") if part)
            raise ValueError(
                f"the averages must have the same channels: {_describe(items[i], i)} differs from "
                f"{_describe(items[0], 0)}: {what} (bad channels are left out). Interpolate bad channels "
                "(inst.interpolate_bads()), or keep the channels all have with "
                "mne.channels.equalize_channels(averages), or name them with picks=[...].")
        position = {n: k for k, n in enumerate(names)}
        orders.append(np.array([position[n] for n in first], dtype=np.intp))
    return orders


def _check_axis(items, name, unit):
    """Every item's ``times`` / ``freqs`` equal the first's (to a thousandth of a step)."""
    first = np.asarray(getattr(items[0], name), dtype=float)
    step = np.min(np.diff(first)) if first.size > 1 else 1.0
    for i, item in enumerate(items[1:], 1):
        values = np.asarray(getattr(item, name), dtype=float)
        if values.shape == first.shape and np.allclose(values, first, rtol=0, atol=1e-3 * step):
            continue
        how = "crop / resample them alike (inst.crop(tmin, tmax), inst.resample(sfreq))" if name == "times" else \
            "compute them at the same frequencies"
        raise ValueError(f"the averages must have the same {name}: {_describe(item, i)} has {values.size} from "
                         f"{values[0]:g} to {values[-1]:g} {unit}, {_describe(items[0], 0)} {first.size} from "
                         f"{first[0]:g} to {first[-1]:g} {unit}; {how}.")
    return first


def _from_averages(mne, items, design, picks):
    from mne.time_frequency import AverageTFR

    if not items:
        raise ValueError("the list of averages is empty.")
    tfr = isinstance(items[0], AverageTFR)
    kind = AverageTFR if tfr else mne.Evoked
    wrong = [(i, type(x).__name__) for i, x in enumerate(items) if not isinstance(x, kind)]
    if wrong:
        i, name = wrong[0]
        raise TypeError(f"a list given to from_mne must hold only mne.Evoked or only AverageTFR objects; item 0 "
                        f"is a {type(items[0]).__name__}, item {i} a {name}.")
    if design is None:
        raise ValueError(f"a list of {len(items)} averages needs design=: a DataFrame with one row per average, in "
                         "the list's order, e.g. pd.DataFrame({'subject': [...], 'cond': [...]}).")
    design = _check_design(design, len(items), "average")
    picked = [_data_channels(mne, item.info, picks) for item in items]
    orders = _channel_order([names for _, names, _ in picked], items)
    times = _check_axis(items, "times", "s")
    freqs = _check_axis(items, "freqs", "Hz") if tfr else None
    what = "time-frequency averages" if tfr else "averages"
    values = np.stack([_real(item.data[idx[order]], what) for item, (idx, _, _), order in zip(items, picked, orders)])
    if tfr:
        values = _time_then_freq(values)
    _, names, info = picked[0]
    return TimeseriesData(design, values, times, freqs=freqs, channels=names, info=info)
