"""Channel neighbour graphs for cluster tests over channels x time (x freq).

:func:`cluster_test` with ``adjacency=`` clusters supra-threshold samples over
a graph: two samples are neighbours when they are at the same time (and
frequency) on neighbouring channels, or on the same channel at adjacent times
(or adjacent frequencies). This module builds the channel part of that graph,
a symmetric boolean ``scipy.sparse.csr_array`` of shape (n_channels,
n_channels) with an empty diagonal, in the order of the user's channels:

* :func:`validate_adjacency` -- a matrix the user made (sparse or dense);
* :func:`mne_adjacency` -- an ``mne.Info`` (``mne.channels.find_ch_adjacency``)
  or the name of a FieldTrip neighbour template MNE ships
  (``mne.channels.read_ch_adjacency``), subset and reordered to the channels;
* :func:`shaft_adjacency` -- iEEG depth / strip electrodes named prefix +
  contact number (``LA1, LA2, ...``): consecutive contacts of a shaft;
* :func:`distance_adjacency` -- contacts closer than a distance (ECoG grids);
* :func:`channel_adjacency` -- one entry point for all of the above.

:func:`combine_adjacency` spells out the whole (channel, time[, freq]) graph
the way ``mne.stats.combine_adjacency`` does, for users who want to inspect it
or hand it to MNE; :func:`cluster_test` itself never builds it.

MNE-Python is optional: it is imported only by :func:`mne_adjacency`.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["channel_adjacency", "data_adjacency", "validate_adjacency", "mne_adjacency", "shaft_adjacency", "distance_adjacency",
           "combine_adjacency", "read_adjacency", "ADJACENCY_FILE_TYPES"]

#: File types :func:`read_adjacency` reads.
ADJACENCY_FILE_TYPES = (".npy", ".npz", ".csv")

# Prefix (a letter, then letters, apostrophes -- "A'" is a left-hemisphere shaft in SEEG -- or
# underscores), an optional separator, the contact number. No digit may sit in the prefix, so
# bipolar names ("LA1-LA2") and grid names with two numbers do not parse.
_CONTACT = re.compile(r"^([A-Za-z][A-Za-z'_]*?)[ _-]?(\d+)$")


def _sparse():
    # scipy.sparse is imported when first used, like scipy.ndimage in cluster.py: the package's
    # worker processes import clusterlmer but never build a graph.
    from scipy import sparse

    return sparse


def _import_mne(purpose="Building a channel adjacency from an mne.Info or a FieldTrip template",
                alternative=" (or pass your own adjacency matrix, or use 'shaft' / positions)"):
    """``import mne``, or an ImportError saying what needed it and how to install it."""
    try:
        import mne
    except ImportError:
        raise ImportError(f"{purpose} needs MNE-Python, which is not installed. Install it with: "
                          f"pip install 'clusterlmer[mne]'{alternative}.") from None
    return mne


def _finish(matrix):
    """Boolean CSR with the diagonal removed (a channel is not its own neighbour)."""
    sparse = _sparse()
    coo = sparse.coo_array(matrix)
    keep = (coo.row != coo.col) & (coo.data != 0)
    out = sparse.csr_array((np.ones(int(keep.sum()), bool), (coo.row[keep], coo.col[keep])), shape=coo.shape)
    out.sum_duplicates()  # sorts the indices too
    return out


def validate_adjacency(matrix, n_channels=None, *, name="adjacency"):
    """Check a user's channel adjacency and return it as a boolean CSR array.

    Parameters
    ----------
    matrix : scipy.sparse matrix or array, or array_like
        Square, symmetric, entries 0/1 (or bool). The diagonal is ignored.
    n_channels : int or None
        The number of channels the data have; the matrix must match it.
    name : str
        How messages call the argument.

    Returns
    -------
    scipy.sparse.csr_array of bool, shape (n_channels, n_channels)
        Symmetric, empty diagonal.

    Raises
    ------
    TypeError
        Not a matrix (e.g. a string: build it with :func:`channel_adjacency`).
    ValueError
        Not 2-D, not square, the wrong size, entries other than 0/1, or not
        symmetric; each message names the problem and the fix.
    """
    sparse = _sparse()
    if isinstance(matrix, str):
        raise TypeError(f"{name} must be a channel x channel matrix, got the string {matrix!r}. Build the matrix "
                        f"first: clusterlmer.adjacency.channel_adjacency({matrix!r}, ch_names).")
    if not sparse.issparse(matrix):
        try:
            matrix = np.asarray(matrix)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a scipy.sparse matrix or a 2-D array, got "
                            f"{type(matrix).__name__} ({err}).") from None
        if matrix.dtype == object or matrix.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a scipy.sparse matrix or a numeric / bool 2-D array, got an array of "
                            f"dtype {matrix.dtype}.")
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D channel x channel matrix, got {matrix.ndim} dimension(s) "
                         f"(shape {matrix.shape}).")
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be square (channel x channel), got shape {matrix.shape}.")
    if n_channels is not None and matrix.shape[0] != n_channels:
        raise ValueError(f"{name} is {matrix.shape[0]} x {matrix.shape[1]} but the data have {n_channels} channels "
                         f"(datobs' first axis, or len(ch_names)). Build it for the data's channels, in their order "
                         f"(e.g. channel_adjacency(spec, ch_names)).")
    values = sparse.coo_array(matrix).data if sparse.issparse(matrix) else matrix.ravel()
    if values.dtype.kind != "b":
        bad = values[(values != 0) & (values != 1)]
        if bad.size:
            raise ValueError(f"{name} must hold 0/1 (or True/False) entries; it holds {bad[0].item()!r}. If any "
                             f"nonzero weight means 'neighbours', pass ({name} != 0).")
    out = _finish(matrix)
    one_way = sparse.coo_array(out.astype(np.int8) - out.T.astype(np.int8))  # +1: set here, not mirrored
    i, j = one_way.row[one_way.data > 0], one_way.col[one_way.data > 0]
    if i.size:
        raise ValueError(f"{name} must be symmetric (neighbours both ways): entry [{i[0]}, {j[0]}] is set but "
                         f"[{j[0]}, {i[0]}] is not ({i.size} such entr{'y' if i.size == 1 else 'ies'}). Pass "
                         f"({name} + {name}.T) to make every listed neighbour mutual.")
    return out


def _reorder(adjacency, template_names, ch_names, source):
    """Rows/columns of ``adjacency`` (over ``template_names``) picked and ordered as ``ch_names``."""
    template_names = [str(n) for n in template_names]
    position = {n: i for i, n in enumerate(template_names)}
    missing = [n for n in ch_names if n not in position]
    if missing:
        lower = {n.lower(): n for n in template_names}
        near = [f"{n!r} (template has {lower[n.lower()]!r})" for n in missing if n.lower() in lower]
        hint = f" Names differing only in case: {', '.join(near)}; rename your channels to match." if near else ""
        raise ValueError(f"{len(missing)} channel(s) are not in {source}: {', '.join(map(repr, missing))}.{hint} "
                         f"Drop them from the data, choose another template, or pass your own adjacency matrix.")
    if len(set(ch_names)) != len(ch_names):
        dupes = sorted({n for n in ch_names if ch_names.count(n) > 1})
        raise ValueError(f"ch_names repeats {', '.join(map(repr, dupes))}; every channel needs its own name.")
    order = np.array([position[n] for n in ch_names], dtype=np.intp)
    return _finish(_sparse().csr_array(adjacency)[order][:, order])


def mne_adjacency(source, ch_names=None, *, ch_type=None):
    """Channel adjacency from an ``mne.Info`` or a FieldTrip neighbour template shipped with MNE.

    Parameters
    ----------
    source : mne.Info or str
        An ``Info`` with channel positions (MNE uses its template for known
        systems, else a Delaunay triangulation of the 2-D sensor layout:
        ``mne.channels.find_ch_adjacency``), or a template name such as
        ``"biosemi64"`` or ``"easycap32ch-avg"``
        (``mne.channels.get_builtin_ch_adjacencies()`` lists them;
        ``mne.channels.read_ch_adjacency``).
    ch_names : list of str or None
        The data's channels, in the data's order; the adjacency is subset and
        reordered to them. None: the channels of ``source`` in its order.
    ch_type : str or None
        For an ``Info`` holding several channel types: which one (``"eeg"``,
        ``"mag"``, ``"grad"``...), as in ``find_ch_adjacency``.

    Returns
    -------
    scipy.sparse.csr_array of bool, shape (len(ch_names), len(ch_names))

    Raises
    ------
    ImportError
        MNE-Python is not installed (``pip install 'clusterlmer[mne]'``).
    ValueError
        A channel of ``ch_names`` is not in the Info's / template's channels
        (all of them are listed).
    """
    mne = _import_mne()
    if isinstance(source, str):
        matrix, names = mne.channels.read_ch_adjacency(source)
        where = f"the MNE/FieldTrip template {source!r}"
    elif isinstance(source, mne.Info):
        # MNE logs which of its methods it used (a FieldTrip template or Delaunay triangulation of
        # the positions) on stdout at every call; the docstring says what an Info gives.
        with mne.utils.use_log_level("warning"):
            matrix, names = mne.channels.find_ch_adjacency(source, ch_type)
        where = "the mne.Info's channels" + (f" of type {ch_type!r}" if ch_type else "")
    else:
        raise TypeError(f"source must be an mne.Info or a template name, got {type(source).__name__}.")
    names = [str(n) for n in names]
    return _reorder(matrix, names, names if ch_names is None else [str(n) for n in ch_names], where)


def _parse_contacts(ch_names):
    """(prefix, number) per name; ValueError listing every name that is not prefix + number."""
    parsed, bad = [], []
    for name in ch_names:
        match = _CONTACT.match(str(name).strip())
        if match is None:
            bad.append(name)
        else:
            parsed.append((match.group(1), int(match.group(2))))
    if bad:
        shown = ", ".join(map(repr, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise ValueError(f"'shaft' adjacency needs contact names made of a shaft prefix and a contact number "
                         f"(LA1, LA2, ..., RH10, A'3, LAH_01); these do not parse: {shown}. Rename the channels, "
                         f"or pass positions (distance_adjacency) or your own adjacency matrix.")
    seen = {}
    for name, key in zip(ch_names, parsed):
        if key in seen:
            raise ValueError(f"'shaft' adjacency: {seen[key]!r} and {name!r} are both contact {key[1]} of shaft "
                             f"{key[0]!r}; each contact must appear once.")
        seen[key] = name
    return parsed


def shaft_adjacency(ch_names):
    """Neighbours along iEEG depth / strip electrodes: same shaft prefix, contact numbers differing by 1.

    Parameters
    ----------
    ch_names : list of str
        Contact names, prefix then number: ``LA1, LA2, LH1, RH10, A'2``
        (a separator ``_``, ``-`` or space before the number and leading
        zeros are allowed). Prefixes are case-sensitive.

    Returns
    -------
    scipy.sparse.csr_array of bool, shape (n, n)

    Notes
    -----
    Only consecutive numbers are neighbours: when contact 2 was removed (a
    bad channel), contacts 1 and 3 are not neighbours. Grids, whose
    neighbours are not consecutive numbers, need :func:`distance_adjacency`.
    """
    ch_names = [str(n) for n in ch_names]
    parsed = _parse_contacts(ch_names)
    index = {key: i for i, key in enumerate(parsed)}
    rows, cols = [], []
    for i, (prefix, number) in enumerate(parsed):
        j = index.get((prefix, number + 1))
        if j is not None:
            rows += [i, j]
            cols += [j, i]
    n = len(ch_names)
    return _finish(_sparse().coo_array((np.ones(len(rows), bool), (rows, cols)), shape=(n, n)))


def distance_adjacency(positions, max_distance):
    """Channels closer than ``max_distance`` (Euclidean) are neighbours.

    Parameters
    ----------
    positions : array_like, shape (n_channels, 3)
        Contact coordinates (any unit; NaN rows are nobody's neighbour).
    max_distance : float
        In the unit of ``positions``; a pair at exactly this distance counts.
        For a grid with spacing ``s``, ``1.1 * s`` links the 4 nearest
        contacts and ``1.5 * s`` adds the diagonals.

    Returns
    -------
    scipy.sparse.csr_array of bool, shape (n_channels, n_channels)
    """
    positions = np.asarray(positions, dtype=float)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_channels, 3), got {positions.shape}.")
    if isinstance(max_distance, bool) or not np.isscalar(max_distance) or not max_distance > 0:
        raise ValueError(f"max_distance must be a positive number, got {max_distance!r}.")
    distance = np.sqrt(((positions[:, None, :] - positions[None, :, :]) ** 2).sum(-1))
    with np.errstate(invalid="ignore"):
        return _finish(distance <= max_distance)  # NaN compares False


def channel_adjacency(spec, ch_names=None, *, ch_type=None, positions=None, max_distance=None):
    """Channel x channel adjacency for ``cluster_test(..., adjacency=)`` from any supported description.

    Parameters
    ----------
    spec : matrix, mne.Info, str
        * a scipy.sparse matrix or dense array: validated
          (:func:`validate_adjacency`), its size checked against ``ch_names``;
        * ``"shaft"``: iEEG contacts by name (:func:`shaft_adjacency`);
        * ``"distance"``: contacts within ``max_distance`` of each other at
          ``positions`` (:func:`distance_adjacency`);
        * an ``mne.Info`` or any other string, a FieldTrip template name MNE
          ships (:func:`mne_adjacency`).
    ch_names : list of str or None
        The data's channels in the data's order (needed for ``"shaft"``).
    ch_type, positions, max_distance :
        Passed on to :func:`mne_adjacency` / :func:`distance_adjacency`.

    Returns
    -------
    scipy.sparse.csr_array of bool, shape (n_channels, n_channels)
        Symmetric, empty diagonal, rows in the order of ``ch_names``.
    """
    if isinstance(spec, str) and spec == "shaft":
        if ch_names is None:
            raise ValueError("'shaft' adjacency reads the contacts' names: pass ch_names.")
        return shaft_adjacency(ch_names)
    if isinstance(spec, str) and spec == "distance":
        if positions is None or max_distance is None:
            raise ValueError("'distance' adjacency needs positions (n_channels x 3) and max_distance.")
        adjacency = distance_adjacency(positions, max_distance)
        if ch_names is not None and len(ch_names) != adjacency.shape[0]:
            raise ValueError(f"positions has {adjacency.shape[0]} rows but ch_names {len(ch_names)} channels.")
        return adjacency
    if isinstance(spec, str) or type(spec).__module__.split(".")[0] == "mne":
        return mne_adjacency(spec, ch_names, ch_type=ch_type)
    return validate_adjacency(spec, None if ch_names is None else len(ch_names))


def data_adjacency(data, adjacency, min_neighbours=0):
    """The channel adjacency an analysis of ``data`` clusters over, checked before anything is fitted.

    Parameters
    ----------
    data : TimeseriesData
    adjacency : matrix, mne.Info, str or None
        As :func:`channel_adjacency` takes it, ``"none"`` for no channel
        neighbours (clusters run along time within each channel), or None:
        the data's own ``info`` when they came from MNE.
    min_neighbours : int
        FieldTrip's ``minnbchan`` (see :func:`clusterlmer.cluster_test`).

    Returns
    -------
    scipy.sparse.csr_array or None
        None for data without a channel axis.
    """
    if isinstance(min_neighbours, bool) or not isinstance(min_neighbours, (int, np.integer)) or min_neighbours < 0:
        raise ValueError(f"min_neighbours must be a non-negative integer, got {min_neighbours!r}.")
    if data.channels is None:
        if adjacency is not None or min_neighbours:
            raise ValueError("adjacency and min_neighbours describe channel neighbours, but these data have no "
                             "channel axis (values of shape (n_obs, n_times[, n_freqs])). Give the data channels "
                             "(cl.from_long(..., channel=...), cl.from_mne(...), or TimeseriesData(..., "
                             "channels=[...])) or leave them out.")
        return None
    if adjacency is None:
        if data.info is None:
            raise ValueError(
                f"these data have {len(data.channels)} channels: say which are neighbours with adjacency=..., "
                "e.g. an mne.Info or a FieldTrip template name MNE ships (adjacency='biosemi64'), 'shaft' for "
                "iEEG contacts named like LA1, LA2, ..., a channel x channel 0/1 matrix, or 'none' to cluster "
                "along time within each channel.")
        adjacency = data.info
    if isinstance(adjacency, str) and adjacency == "none":
        from scipy import sparse

        return sparse.csr_array((len(data.channels), len(data.channels)), dtype=bool)
    return channel_adjacency(adjacency, list(data.channels))


def read_adjacency(path, ch_names):
    """A channel adjacency matrix saved in a file, for the data's channels.

    Parameters
    ----------
    path : str or path-like
        ``.npy`` (``numpy.save`` of a 0/1 or bool matrix), ``.npz``
        (``scipy.sparse.save_npz``, or ``numpy.savez`` of one matrix) or
        ``.csv`` (0/1 entries, optionally under one header row of channel
        names). Without names, rows and columns follow ``ch_names``; with
        names, the matrix is subset and reordered to ``ch_names``.
    ch_names : list of str
        The data's channels, in the data's order.

    Returns
    -------
    scipy.sparse.csr_array of bool, shape (len(ch_names), len(ch_names))
    """
    import os

    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in ADJACENCY_FILE_TYPES:
        raise ValueError(f"adjacency file {path!r}: use a .npy, .npz or .csv file.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such adjacency file: {path!r}")
    names = None
    if suffix == ".npy":
        matrix = np.load(path, allow_pickle=False)
    elif suffix == ".npz":
        try:
            matrix = _sparse().load_npz(path)
        except (ValueError, KeyError):  # not scipy.sparse.save_npz: numpy.savez of one array
            with np.load(path, allow_pickle=False) as arrays:
                if len(arrays.files) != 1:
                    raise ValueError(f"adjacency file {path!r} holds {len(arrays.files)} arrays "
                                     f"({', '.join(arrays.files)}); save only the channel x channel matrix.") from None
                matrix = arrays[arrays.files[0]]
    else:
        import pandas as pd

        table = pd.read_csv(path, header=None, dtype=str, skipinitialspace=True)
        numbers = table.apply(pd.to_numeric, errors="coerce")
        if numbers.iloc[0].isna().all():  # a header row of channel names
            names, numbers = table.iloc[0].str.strip().tolist(), numbers.iloc[1:]
        if numbers.isna().any().any():
            raise ValueError(f"adjacency file {path!r} must hold a channel x channel matrix of 0/1 entries, "
                             "optionally under one header row of channel names; it has empty or non-numeric "
                             "entries.")
        matrix = numbers.to_numpy()
    where = f"adjacency file {path!r}"
    if names is None:
        return validate_adjacency(matrix, len(ch_names), name=where)
    matrix = validate_adjacency(matrix, len(names), name=where)
    return _reorder(matrix, names, [str(n) for n in ch_names], f"the header of {where}")


def _lattice(n):
    """1-D chain of ``n`` nodes (i ~ i + 1), CSR bool."""
    first = np.arange(n - 1)
    rows, cols = np.concatenate([first, first + 1]), np.concatenate([first + 1, first])
    return _sparse().csr_array((np.ones(rows.size, bool), (rows, cols)), shape=(n, n))


def combine_adjacency(channel_adjacency, n_times, n_freqs=None):
    """The whole (channel, time[, freq]) sample graph, as ``mne.stats.combine_adjacency`` builds it.

    Parameters
    ----------
    channel_adjacency : matrix
        Channel x channel adjacency (validated; the diagonal is ignored).
    n_times : int
        Time samples: a 1-D lattice (t ~ t +- 1 at the same channel).
    n_freqs : int or None
        Frequencies: a second 1-D lattice, if the data have them.

    Returns
    -------
    scipy.sparse.csr_array of bool, shape (n, n)
        ``n = n_channels * n_times [* n_freqs]``; node ``(c, t[, f])`` is
        row ``np.ravel_multi_index((c, t[, f]), shape)`` (C order, the layout
        of ``datobs`` in :func:`cluster_test`). Two nodes are neighbours when
        they differ along exactly one axis and are neighbours along it. The
        diagonal is set, as in MNE (every node its own neighbour), equal to
        ``combine_adjacency(channel_adjacency, n_times[, n_freqs])`` of MNE.
    """
    sparse = _sparse()
    channel_adjacency = validate_adjacency(channel_adjacency, name="channel_adjacency")
    axes = [channel_adjacency, _lattice(_count(n_times, "n_times"))]
    if n_freqs is not None:
        axes.append(_lattice(_count(n_freqs, "n_freqs")))
    sizes = [a.shape[0] for a in axes]
    graph = sparse.csr_array((int(np.prod(sizes)),) * 2, dtype=bool)
    for k, axis in enumerate(axes):
        # Kronecker product: neighbours along axis k, identity along the others.
        term = sparse.eye_array(int(np.prod(sizes[:k])), dtype=bool)
        term = sparse.kron(sparse.kron(term, axis), sparse.eye_array(int(np.prod(sizes[k + 1:])), dtype=bool))
        graph = graph + sparse.csr_array(term, dtype=bool)
    graph = graph + sparse.eye_array(graph.shape[0], dtype=bool, format="csr")
    graph.sort_indices()
    return sparse.csr_array(graph, dtype=bool)


def _count(n, name):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive whole number, got {n!r}.")
    return int(n)
