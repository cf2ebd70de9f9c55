"""Command line: reading the data (MAT files, long tables with ``--long``) and channel neighbours (``--adjacency``).

The flags are checked together before anything is read (:func:`check_long_options`,
:func:`check_adjacency_file`); the table is read and pivoted by
:func:`clusterlmer.from_long`, whose errors come before any fit.
"""

from __future__ import annotations

import argparse
import os

__all__ = ["ADJACENCY_HELP", "add_long_options", "check_long_options", "check_adjacency_file", "describe_data",
           "load_data", "load_long_table", "adjacency_option"]

#: Data files read as tables: without --long they are refused with the flags to add.
TABLE_TYPES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".parquet", ".pq")
ADJACENCY_HELP = ("a FieldTrip template name MNE ships (e.g. easycap32ch-avg, biosemi64; "
                  "mne.channels.get_builtin_ch_adjacencies() lists them), 'shaft' (iEEG contacts named LA1, LA2, "
                  "...), 'none' (clusters along time within each channel), or a .npy/.npz/.csv file holding a "
                  "channel x channel 0/1 matrix (a .csv may start with a header row of channel names)")
_LONG_FLAGS = ("--time", "--channels", "--value", "--channel", "--series", "--design")


def _column_list(text):
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected column names separated by commas, got {text!r}")
    return names


def add_long_options(parser):
    """The --long flags, for ``run`` and ``fit``."""
    g = parser.add_argument_group("long tables (--long: CSV or Parquet, one row per series and time sample; see "
                                  "clusterlmer.from_long)")
    g.add_argument("--long", action="store_true", help="DATA is a long table (.csv, .csv.gz, .tsv, .parquet)")
    g.add_argument("--time", metavar="COL", help="column of sample times")
    g.add_argument("--channels", type=_column_list, metavar="COL1,COL2,...",
                   help="response columns, one per channel, named like the channels (one column: a single "
                   "response without channels)")
    g.add_argument("--value", metavar="COL", help="the one response column (instead of --channels)")
    g.add_argument("--channel", metavar="COL", help="with --value: the column naming each row's channel (channels "
                   "in order of first appearance)")
    g.add_argument("--series", metavar="COL", help="column telling apart series that share every design value "
                   "(e.g. trial or session); it is kept in the design")
    g.add_argument("--design", type=_column_list, metavar="COL1,COL2,...",
                   help="design columns (default: every column but the time, response and channel columns)")


def check_long_options(parser, args):
    """The long-table flags go together, and only with --long; checked before the data are read."""
    given = [flag for flag in _LONG_FLAGS if getattr(args, flag[2:]) is not None]
    if not args.long:
        if given:
            parser.error(f"{', '.join(given)} describe{'s' if len(given) == 1 else ''} a long table: add --long")
        if str(args.data).lower().endswith(TABLE_TYPES):
            parser.error(f"{args.data!r} is a table: read it with --long --time COL (--channels COL1,COL2,... | "
                         "--value COL [--channel COL]); only .mat files are read without --long")
        return
    for flag, value in (("--data-key", args.data_key), ("--no-check-channels", args.no_check_channels)):
        if value:
            parser.error(f"{flag} applies to .mat files, not to --long tables")
    if args.time is None:
        parser.error("--long needs --time COL, the column of sample times")
    if (args.channels is None) == (args.value is None):
        parser.error("--long needs one of --channels COL1,COL2,... (one response column per channel) and --value "
                     "COL (one response column, with --channel COL naming each row's channel)")
    if args.channel is not None and args.value is None:
        parser.error("--channel names the column of channel names and goes with --value COL; with --channels "
                     "each listed column is a channel already")


def check_adjacency_file(parser, spec):
    """An --adjacency naming a matrix file must name an existing one (checked before the data are read)."""
    from .adjacency import ADJACENCY_FILE_TYPES

    if spec and spec.lower().endswith(ADJACENCY_FILE_TYPES) and not os.path.isfile(spec):
        parser.error(f"--adjacency {spec!r}: no such file")


def load_long_table(args, response):
    """The --long table as TimeseriesData; ``response`` is the formula's left-hand side."""
    from .long_format import from_long, read_table

    data = from_long(read_table(args.data), time=args.time, values=args.channels, value=args.value,
                     channel=args.channel, series=args.series, design=args.design)
    if data.response is not None and data.response != response:
        raise ValueError(f"the formula's response {response!r} is not the response column {data.response!r}; "
                         f"write the formula as '{data.response} ~ ...'.")
    return data


def adjacency_option(args, data):
    """What ``run`` passes as ``adjacency=``: None, a template name, 'shaft', 'none', or a matrix from a file."""
    from .adjacency import ADJACENCY_FILE_TYPES, read_adjacency

    spec = args.adjacency
    if data.channels is None:
        if spec is not None:
            raise ValueError("--adjacency describes channel neighbours, but these data have no channel axis; leave "
                             "it out (or read channels: --long with --channels or --value and --channel).")
        return None
    if spec is None:
        raise ValueError(f"these data have {len(data.channels)} channels: say which are neighbours with --adjacency: "
                         f"{ADJACENCY_HELP}.")
    return read_adjacency(spec, data.channels) if spec.lower().endswith(ADJACENCY_FILE_TYPES) else spec


def load_data(args):
    """The TimeseriesData of ``args.data``: a MAT file, or a table with ``--long``."""
    import clusterlmer as cl

    if not os.path.exists(args.data):
        raise FileNotFoundError(f"no such data file: {args.data!r}")
    # The formula's left-hand side names the variable analysed: 'power ~ ...' fits the file's 'power'.
    response = cl.parse_formula(args.formula).response
    if args.long:
        return load_long_table(args, response)
    if args.data_key is not None and args.data_key != response:
        raise ValueError(f"--data-key {args.data_key!r} differs from the formula's response {response!r}; the "
                         f"formula's left-hand side names the variable analysed. Write the formula as "
                         f"'{args.data_key} ~ ...' (--data-key is then not needed).")
    return cl.load_mat(args.data, data_key=response, check_channels=not args.no_check_channels)


def describe_data(args, data):
    """Which variable was analysed (printed with the results, so a failed run prints nothing here)."""
    shape = " x ".join(str(n) for n in data.values.shape[1:])
    if not args.long:
        source = f"the variable {data.response!r}"
    else:
        column = data.response or args.value  # --value, or the one column of --channels
        source = f"the column {column!r}" if column else "one column per channel"
    channels = "" if data.channels is None else f"; channels {', '.join(data.channels)}"
    print(f"Data: {args.data}: responses from {source} ({data.n_obs} {'series' if args.long else 'rows'} x {shape} "
          f"samples{channels}); design columns {', '.join(map(str, data.design.columns))}.")
