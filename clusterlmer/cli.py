"""Command line: ``clusterlmer demo``, ``clusterlmer run``, ``clusterlmer fit``."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from contextlib import contextmanager

import numpy as np

from ._checks import called_from_cli, check_writable
from ._cli_tables import (ADJACENCY_HELP, add_long_options, adjacency_option, check_adjacency_file,
                          check_long_options, describe_data, load_data)
from ._cli_model import add_fit_options, checked, contrasts_dict, fit_kwargs
from .engines import ENGINE_CHOICES
from .cluster import CLUSTER_STATS, QUANTILE_METHODS, TAILS
from .corrections import CORRECTIONS
from .scheme_names import ALIASES, NONE, SCHEME_FORMS, check_scheme_names, parse_scheme
from .results import STATISTICS
from .run import available_cores
from .run.dask import DASK_HINT

DEMO_NPERM = 200


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage is one ``--help`` away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _print_table(frame):
    print(frame.to_string(index=False, float_format=lambda x: f"{x:.6g}"))


def _print_peaks(fit, terms, coefficients=False):
    for term in terms:
        i = fit.terms.index(term)
        f = fit.F[i].ravel()
        if np.all(np.isnan(f)):
            continue
        peak = int(np.nanargmax(f))
        idx = np.unravel_index(peak, fit.sample_shape)
        where = ", ".join(f"{axis} {value:g}" if axis != "channel" else f"channel {value}"
                          for axis, value in fit.sample_coordinates(peak).items())
        print(f"\nANOVA at the peak of {term} (sample {tuple(map(int, idx)) if len(idx) > 1 else int(idx[0])}, "
              f"{where}):")
        _print_table(fit.anova(idx if len(idx) > 1 else idx[0]))
        if coefficients:
            print("Coefficients there (lmerTest summary):")
            _print_table(fit.coefficients(idx if len(idx) > 1 else idx[0]))


def _plot_path(plot):
    # matplotlib's default format: check and report the name the figure really gets.
    return plot + ".png" if plot and not os.path.splitext(plot)[1] else plot


def _write_outputs(result, outs, plot):
    for out in outs or []:
        result.save(out)
        print(f"Wrote {out}")
    if plot:
        plot = _plot_path(plot)
        result.plot(plot)
        print(f"Wrote {plot}")


def _demo(args) -> int:
    import clusterlmer as cl
    from clusterlmer import datasets

    data = datasets.sample_2way()
    truth = datasets.ground_truth("2way")
    n_ch = (data.design["sid"] + ":" + data.design["ch"]).nunique()
    print(f"Bundled 2-way sample ({datasets.sample_path('2way')}): {data.n_obs} rows x {data.n_times} "
          f"timepoints, {data.design['sid'].nunique()} subjects, {n_ch} channels.")
    for w in truth.windows.values():
        print(f"Known effect (simulated): {w.name} in samples {w.first}-{w.last} ({w.first_time:g} to "
              f"{w.last_time:g} s), peak {w.effect:g} noise SD.")
    os.makedirs(args.out_dir, exist_ok=True)  # the demo's own folder; made and checked before the run
    check_writable(os.path.join(args.out_dir, "demo_results.h5"), "--out-dir")
    print(f"Model: {datasets.FORMULA_2WAY}; REML, Satterthwaite DF; F tests, cluster 'sum', upper tail; "
          f"engine '{args.engine}'.")
    why = (" (the demo's default, to finish quickly; the original uses 1000 - pass --nperm 1000 for a publication "
           "run)" if args.nperm == DEMO_NPERM else "")
    print(f"Permutations: {args.nperm}{why}, seed {args.seed}, {args.jobs} worker(s).")
    start = time.perf_counter()
    res = cl.permutation_cluster_lmer(data, datasets.FORMULA_2WAY, n_permutations=args.nperm, seed=args.seed,
                                      n_jobs=args.jobs, progress=not args.no_progress, engine=args.engine)
    elapsed = time.perf_counter() - start
    n_fits = (args.nperm + 1) * data.n_times
    print(f"Done: {n_fits} model fits in {elapsed:.0f} s ({1000 * elapsed / n_fits:.1f} ms per fit, "
          f"{args.jobs} worker(s)).\n")
    print(res.summary())
    _print_peaks(res.fit, res.terms)
    print()
    _write_outputs(res, [os.path.join(args.out_dir, n) for n in ("demo_results.mat", "demo_results.h5")],
                   os.path.join(args.out_dir, "demo_figure.png"))
    return 0


def _run(args) -> int:
    import clusterlmer as cl

    data = load_data(args)
    adjacency = adjacency_option(args, data)
    with _dask_client(args) as client:
        res = cl.permutation_cluster_lmer(
            data, args.formula, n_permutations=args.nperm, seed=args.seed, statistic=args.statistic,
            terms=args.terms, tail=args.tail, alpha=args.alpha, cluster_alpha=args.cluster_alpha,
            cluster_stat=args.cluster_stat, correction=args.correction, thresholds=args.thresholds,
            quantile_method=args.quantile_method, schemes=args.schemes,
            n_jobs=args.jobs, adjacency=adjacency,
            checkpoint=args.checkpoint, progress=not args.no_progress, client=client, **fit_kwargs(args))
    describe_data(args, data)
    print(res.summary())
    _write_outputs(res, args.out, args.plot)
    return 0


_SLURM_DEFAULTS = dict(slurm_jobs=1, slurm_cores=1, slurm_memory="4GB", slurm_walltime="01:00:00")


@contextmanager
def _dask_client(args):
    """None (local workers), the --scheduler address, or a client of SLURM jobs started for --slurm."""
    if args.scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise ImportError(f"--scheduler needs Dask's distributed package: {DASK_HINT}") from None
        with Client(args.scheduler, set_as_default=False) as client:  # connect before the observed fit
            yield client
        return
    if not args.slurm:
        yield None
        return
    try:
        from dask_jobqueue import SLURMCluster
        from distributed import Client
    except ImportError:
        raise ImportError(f"--slurm needs dask-jobqueue: {DASK_HINT}") from None
    if shutil.which("sbatch") is None:
        raise OSError("--slurm needs SLURM's sbatch on PATH (run on a login node of a SLURM cluster).")
    options = {key: getattr(args, key) for key in _SLURM_DEFAULTS}
    # One Dask worker process per core, one thread each: one R per core (clusterlmer.run.dask_worker).
    cluster = SLURMCluster(
        cores=options["slurm_cores"], processes=options["slurm_cores"], memory=options["slurm_memory"],
        walltime=options["slurm_walltime"], queue=args.slurm_queue, account=args.slurm_account,
        python=args.slurm_python or sys.executable, log_directory=args.slurm_log_dir,
        job_extra_directives=args.slurm_extra or [], job_name="clusterlmer")
    try:
        _submit_jobs(cluster, options["slurm_jobs"])
        print(f"clusterlmer: submitted {options['slurm_jobs']} SLURM job(s) of {options['slurm_cores']} core(s), "
              f"{options['slurm_memory']}, walltime {options['slurm_walltime']}; Dask scheduler "
              f"{cluster.scheduler_address}.", file=sys.stderr)
        with Client(cluster, set_as_default=False) as client:
            yield client
    finally:
        cluster.close()


def _submit_jobs(cluster, n_jobs, timeout=120):
    """Submit the jobs now, before R starts in this process.

    Starting R adds R's library folders to LD_LIBRARY_PATH in this process's environment, and
    sbatch passes the environment on to the jobs: a worker Python then may load another Python's
    library. Jobs submitted first carry the environment as it was.
    """
    cluster.scale(jobs=n_jobs)
    deadline = time.monotonic() + timeout
    while sum(getattr(job, "job_id", None) is not None for job in cluster.workers.values()) < n_jobs:
        if time.monotonic() > deadline:
            raise OSError(f"SLURM did not accept {n_jobs} job(s) within {timeout} s (sbatch failed?).")
        time.sleep(0.1)


def _fit(args) -> int:
    import clusterlmer as cl

    data = load_data(args)
    fit = cl.fit_timeseries(data, args.formula, **fit_kwargs(args))
    describe_data(args, data)
    print(fit.summary())
    _print_peaks(fit, [t for t in fit.terms if t != "(Intercept)"], args.coefficients is not None)
    for path, table in ((args.out, fit.to_frame), (args.coefficients, lambda: fit.to_frame(coefficients=True))):
        if path:
            table().to_csv(path, index=False)
            print(f"Wrote {path}")
    return 0


def _add_data_options(p):
    p.add_argument("data", metavar="DATA", help="MATLAB .mat file (v7.3 or v5) in the original's layout: "
                   "sid, ch, hit_miss[, region], data (rows x timepoints); or, with --long, a CSV or Parquet table "
                   "with one row per series and time sample")
    p.add_argument("--formula", required=True,
                   help="lme4 formula, e.g. 'data ~ hit_miss * region + (1|sid) + (1|sid:ch)'")
    p.add_argument("--data-key", metavar="NAME",
                   help="variable holding the responses; the formula's response names it (default), and a "
                   "different --data-key is refused")
    p.add_argument("--no-check-channels", action="store_true",
                   help="allow several rows per channel and condition (e.g. single trials); by default every "
                   "channel (sid, ch) must have exactly one row per hit_miss level")
    add_long_options(p)


def _add_method_options(p, nperm):
    g = p.add_argument_group("permutation cluster test")
    g.add_argument("--nperm", type=_positive_int, default=nperm, help=f"number of permutations (default {nperm})")
    g.add_argument("--seed", type=int, default=0, help="seed of the permutations (default 0)")
    g.add_argument("--jobs", type=_jobs, default=1, help="worker processes, at most one per core (-1: every core; default 1)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


_positive_int = checked(int, lambda v: v >= 1, "a positive integer")
_jobs = checked(int, lambda v: v >= 1 or v == -1, "a positive number of workers or -1 (every core)")
_unit_interval = checked(float, lambda v: 0 < v < 1, "a number between 0 and 1")


def _scheme(text):
    """``VAR=SCHEME`` of --scheme as a (variable, scheme) pair."""
    name, sep, scheme = (part.strip() for part in text.partition("="))
    if not sep or not name or not scheme:
        raise argparse.ArgumentTypeError(f"expected VAR=SCHEME, e.g. region=none, got {text!r}")
    try:
        parse_scheme(scheme)
    except ValueError:
        raise argparse.ArgumentTypeError(f"unknown scheme {scheme!r} in {text!r}; use {_SCHEME_CHOICES}") from None
    return name, scheme


_SCHEME_CHOICES = (f"{', '.join(SCHEME_FORMS[:-1])} (G, H: groupings as the formula writes them, e.g. "
                   f"within:sid:ch, between:Item) or {NONE} (not permuted); aliases: {', '.join(ALIASES)}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clusterlmer",
        description="Linear mixed models (lme4/lmerTest) at every timepoint of iEEG data, with a cluster-based "
        "permutation test that keeps channels nested in subjects.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser(
        "demo", help="run the 2-way method on the bundled sample data",
        description="Run 'data ~ hit_miss * region + (1|sid) + (1|sid:ch)' with a cluster-based permutation "
        "test on the bundled simulated 2-way sample (338 rows x 139 timepoints), print the ANOVA at the "
        "peak timepoints and the cluster table, and write results (.mat, .h5) and a figure (.png).")
    demo.add_argument("--nperm", type=_positive_int, default=DEMO_NPERM,
                      help=f"number of permutations (default {DEMO_NPERM})")
    demo.add_argument("--seed", type=int, default=0, help="seed of the permutations (default 0)")
    demo.add_argument("--jobs", type=_jobs, default=available_cores(),
                      help="worker processes (default: every core)")
    demo.add_argument("--engine", default="auto", choices=ENGINE_CHOICES,
                      help="auto (default): the native engine for this model, cross-checked against lme4/lmerTest "
                      "at 3 timepoints; r: lme4/lmerTest at every fit (about 20 ms per fit: use --nperm 50)")
    demo.add_argument("--out-dir", default="clusterlmer-demo", help="folder for the outputs (default clusterlmer-demo)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo, command_parser=demo)

    run = sub.add_parser(
        "run", help="fit every timepoint and run the cluster-based permutation test",
        description="Fit the formula at every timepoint of DATA, refit it for each permutation of the "
        "condition labels (channels stay in their subjects), and correct across time with a cluster test.")
    _add_data_options(run)
    _add_method_options(run, 1000)
    g = run.add_argument_group("cluster test")
    g.add_argument("--statistic", default="F", choices=STATISTICS,
                   help="F (upper-tailed; the 2-way original) or signed t (two-tailed; the 1-way original)")
    g.add_argument("--terms", nargs="+", metavar="TERM", help="terms to test (default: all but the intercept)")
    g.add_argument("--tail", type=int, choices=TAILS, help="1, 0 or -1 (default 1 for F, 0 for t)")
    g.add_argument("--alpha", type=_unit_interval, default=0.05, help="cluster significance level (default 0.05)")
    g.add_argument("--cluster-alpha", type=_unit_interval, default=0.05,
                   help="per-sample threshold quantile (default 0.05)")
    g.add_argument("--cluster-stat", choices=CLUSTER_STATS,
                   help="cluster statistic (default sum; tfce means --correction tfce)")
    g.add_argument("--correction", choices=CORRECTIONS,
                   help="across samples, on the same permutations: cluster (default), max (each sample against "
                   "the largest statistic of each permutation) or tfce")
    g.add_argument("--thresholds", nargs="+", type=_unit_interval, metavar="ALPHA",
                   help="also run the cluster test at these cluster-forming alphas on the same permutations "
                   "(e.g. 0.05 0.01 0.001); the summary compares them")
    other_methods = ", ".join(m for m in QUANTILE_METHODS if m not in ("hazen", "linear"))
    g.add_argument("--quantile-method", default="hazen", choices=QUANTILE_METHODS, metavar="METHOD",
                   help="numpy quantile method for thresholds: hazen (default, MATLAB's quantile), linear (the "
                   f"Python notebook) or another of {other_methods}")
    g.add_argument("--adjacency", metavar="SPEC", help="channel neighbours, for data with channels: "
                   f"{ADJACENCY_HELP}".replace("%", "%%"))
    g.add_argument("--checkpoint", metavar="FILE.h5", help="keep finished permutations here; rerun to resume")
    g.add_argument("--scheme", action="append", type=_scheme, metavar="VAR=SCHEME", dest="schemes",
                   help="permutation scheme of a fixed-effect variable, overriding the one derived from the design: "
                   f"{_SCHEME_CHOICES.replace('%', '%%')}; e.g. --scheme region=none, --scheme "
                   "'region=between:sid:ch within:sid'; repeatable")
    add_fit_options(run)
    d = run.add_argument_group(
        "Dask and SLURM (pip install 'clusterlmer[dask]'; instead of --jobs; same result for the same seed)")
    d.add_argument("--scheduler", metavar="ADDRESS",
                   help="fit the permutations on the workers of this Dask scheduler, e.g. tcp://host:8786")
    d.add_argument("--slurm", action="store_true",
                   help="submit SLURM jobs running Dask workers (dask-jobqueue) and fit the permutations there")
    d.add_argument("--slurm-jobs", type=_positive_int, metavar="N",
                   help=f"number of SLURM jobs (default {_SLURM_DEFAULTS['slurm_jobs']})")
    d.add_argument("--slurm-cores", type=_positive_int, metavar="N",
                   help=f"cores per job, one worker (one R) per core (default {_SLURM_DEFAULTS['slurm_cores']})")
    d.add_argument("--slurm-memory", metavar="SIZE",
                   help=f"memory per job, e.g. 8GB (default {_SLURM_DEFAULTS['slurm_memory']})")
    d.add_argument("--slurm-walltime", metavar="HH:MM:SS",
                   help=f"time limit per job (default {_SLURM_DEFAULTS['slurm_walltime']})")
    d.add_argument("--slurm-queue", metavar="PARTITION", help="SLURM partition (default: the cluster's)")
    d.add_argument("--slurm-account", metavar="ACCOUNT", help="SLURM account to charge")
    d.add_argument("--slurm-extra", action="append", metavar="OPTION",
                   help="more sbatch options, e.g. --slurm-extra=--qos=short; repeatable")
    d.add_argument("--slurm-python", metavar="PYTHON",
                   help="Python on the compute nodes, with clusterlmer installed (default: this one)")
    d.add_argument("--slurm-log-dir", metavar="DIR", help="folder for the jobs' output files")
    o = run.add_argument_group("outputs")
    o.add_argument("--out", action="append", metavar="FILE",
                   help="results file: .mat (MATLAB struct lme), .h5 (everything) or .csv; repeatable")
    o.add_argument("--plot", metavar="FIG.png", help="write a figure (.png, .pdf, .svg)")
    run.set_defaults(func=_run, command_parser=run)

    fit = sub.add_parser("fit", help="observed statistics only (no permutations)",
                         description="Fit the formula at every timepoint of DATA and print the fit summary "
                         "and the ANOVA at each term's peak; --out writes the per-timepoint table as CSV.")
    _add_data_options(fit)
    add_fit_options(fit)
    fit.add_argument("--out", metavar="FILE.csv", help="write Term, FStat, DF1, DF2, pValue per timepoint")
    fit.add_argument("--coefficients", nargs="?", const="", metavar="FILE.csv",
                     help="also print each coefficient's t test at the peaks (lmerTest summary: Estimate, SE, tStat, "
                     "DF, pValue); with FILE.csv write them per timepoint")
    fit.set_defaults(func=_fit, command_parser=fit)
    return parser


def _figure_formats():
    from matplotlib.figure import Figure

    return set(Figure().canvas.get_supported_filetypes())


def _check_dask_options(parser, args):
    slurm_only = [f"--{name.replace('_', '-')}" for name in vars(args)
                  if name.startswith("slurm_") and getattr(args, name) is not None]
    if args.scheduler and args.slurm:
        parser.error("use either --scheduler or --slurm, not both")
    if slurm_only and not args.slurm:
        parser.error(f"{', '.join(slurm_only)} only apply with --slurm")
    if (args.scheduler or args.slurm) and args.jobs != 1:
        parser.error("--jobs sets local worker processes; with --scheduler or --slurm the Dask workers fit "
                     "the permutations (size them with --slurm-jobs/--slurm-cores)")
    for key, value in _SLURM_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _same_file(a, b) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)  # also through links and other spellings of the path
    return os.path.realpath(a) == os.path.realpath(b)


def _check_paths(parser, args):
    """Outputs, figure and checkpoint, before the data are loaded.

    A bad name found after hours of permutations would lose them, and an
    output that is the input file would overwrite the user's data.
    """
    out = getattr(args, "out", None)  # a list for run, one CSV for fit, absent for demo
    outs = out if isinstance(out, list) else [out] if out else []
    named = [("--out", p) for p in outs]
    if getattr(args, "plot", None):
        named.append(("--plot", _plot_path(args.plot)))
    if getattr(args, "checkpoint", None):
        named.append(("--checkpoint", args.checkpoint))
    if getattr(args, "coefficients", None):
        named.append(("--coefficients", args.coefficients))
    for i, (flag, path) in enumerate(named):
        suffix = os.path.splitext(path)[1].lower()
        if flag == "--out" and args.command == "run" and suffix not in (".mat", ".h5", ".hdf5", ".csv"):
            parser.error(f"--out {path!r}: use a name ending in .mat, .h5 or .csv")
        if flag == "--plot" and suffix[1:] not in _figure_formats():
            parser.error(f"--plot {path!r}: use a name ending in one of "
                         f"{', '.join('.' + f for f in sorted(_figure_formats()))}")
        if _same_file(path, args.data):
            parser.error(f"{flag} {path!r} is the input data file {args.data!r}; writing it would destroy the "
                         "data. Choose another file name")
        for other_flag, other in named[:i]:
            if _same_file(path, other):
                parser.error(f"{flag} {path!r} and {other_flag} {other!r} are the same file; give each output "
                             "its own name")
        try:
            check_writable(path, flag)
            if flag == "--checkpoint":
                from .checkpoint import check_checkpoint_path

                check_checkpoint_path(path)
        except (OSError, ValueError, TypeError) as exc:
            parser.error(str(exc).rstrip("."))


def _schemes_dict(parser, pairs):
    schemes = {}
    for name, scheme in pairs or []:
        if schemes.get(name, scheme) != scheme:
            parser.error(f"--scheme gives {name!r} two schemes ({schemes[name]!r} and {scheme!r})")
        schemes[name] = scheme
    return schemes or None


def _check_scheme_groupings(parser, args):
    """Groupings named by --scheme must be the formula's; checked before the data are loaded."""
    import clusterlmer as cl

    if not args.schemes:
        return
    try:
        formula = cl.parse_formula(args.formula)
    except ValueError:
        return  # the run reports the formula's own error
    try:
        with called_from_cli():
            check_scheme_names(args.schemes, formula)
    except ValueError as exc:
        parser.error(str(exc).rstrip("."))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    parser = args.command_parser  # errors below name the subcommand: "clusterlmer run: error: ..."
    if args.command != "demo":
        check_long_options(parser, args)
        args.contrasts = contrasts_dict(parser, args.contrasts)
    _check_paths(parser, args)
    if args.command == "run":
        check_adjacency_file(parser, args.adjacency)
        _check_dask_options(parser, args)
        args.schemes = _schemes_dict(parser, args.schemes)
        _check_scheme_groupings(parser, args)
    try:
        with called_from_cli():  # option hints in messages name CLI flags
            return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ImportError, ValueError, TypeError, KeyError, OSError) as exc:
        print(f"clusterlmer: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
