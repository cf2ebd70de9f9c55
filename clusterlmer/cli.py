"""Command line: ``clusterlmer demo``, ``clusterlmer run``, ``clusterlmer fit``."""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

DEMO_NPERM = 50


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage is one ``--help`` away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _print_table(frame):
    print(frame.to_string(index=False, float_format=lambda x: f"{x:.6g}"))


def _print_peaks(fit, terms):
    for term in terms:
        i = fit.terms.index(term)
        f = fit.F[i].ravel()
        if np.all(np.isnan(f)):
            continue
        peak = int(np.nanargmax(f))
        idx = np.unravel_index(peak, fit.sample_shape)
        print(f"\nANOVA at the peak of {term} (sample {idx[0]}, time {fit.times[idx[0]]:g}):")
        _print_table(fit.anova(idx if len(idx) > 1 else idx[0]))


def _fit_kwargs(args) -> dict:
    return dict(reml=not args.ml, ddf=args.ddf, coding=args.coding, test=args.test, optimizer=args.optimizer)


def _write_outputs(result, outs, plot):
    for out in outs or []:
        result.save(out)
        print(f"Wrote {out}")
    if plot:
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
    print(f"Model: {datasets.FORMULA_2WAY}; REML, Satterthwaite DF; F tests, cluster 'sum', upper tail.")
    print(f"Permutations: {args.nperm} (the demo's small default to finish in minutes; the original uses "
          f"1000 - pass --nperm 1000 for a publication run), seed {args.seed}, {args.jobs} worker(s).")
    start = time.perf_counter()
    res = cl.permutation_cluster_lmer(data, datasets.FORMULA_2WAY, n_permutations=args.nperm, seed=args.seed,
                                      n_jobs=args.jobs, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    n_fits = (args.nperm + 1) * data.n_times
    print(f"Done: {n_fits} model fits in {elapsed:.0f} s ({1000 * elapsed / n_fits:.1f} ms per fit, "
          f"{args.jobs} worker(s)).\n")
    print(res.summary())
    _print_peaks(res.fit, res.terms)
    os.makedirs(args.out_dir, exist_ok=True)
    print()
    _write_outputs(res, [os.path.join(args.out_dir, n) for n in ("demo_results.mat", "demo_results.h5")],
                   os.path.join(args.out_dir, "demo_figure.png"))
    return 0


def _load(args):
    import clusterlmer as cl

    if not os.path.exists(args.data):
        raise FileNotFoundError(f"no such data file: {args.data!r}")
    return cl.load_mat(args.data, data_key=args.data_key)


def _run(args) -> int:
    import clusterlmer as cl

    data = _load(args)
    res = cl.permutation_cluster_lmer(
        data, args.formula, n_permutations=args.nperm, seed=args.seed, statistic=args.statistic,
        terms=args.terms, tail=args.tail, alpha=args.alpha, cluster_alpha=args.cluster_alpha,
        cluster_stat=args.cluster_stat, quantile_method=args.quantile_method, n_jobs=args.jobs,
        checkpoint=args.checkpoint, progress=not args.no_progress, **_fit_kwargs(args))
    print(res.summary())
    _write_outputs(res, args.out, args.plot)
    return 0


def _fit(args) -> int:
    import clusterlmer as cl

    data = _load(args)
    fit = cl.fit_timeseries(data, args.formula, **_fit_kwargs(args))
    print(fit.summary())
    _print_peaks(fit, [t for t in fit.terms if t != "(Intercept)"])
    if args.out:
        fit.to_frame().to_csv(args.out, index=False)
        print(f"Wrote {args.out}")
    return 0


def _add_fit_options(p):
    g = p.add_argument_group("model fit (as lmerTest; see clusterlmer.fit_timeseries)")
    g.add_argument("--ml", action="store_true", help="fit by ML (MATLAB fitlme's default) instead of REML")
    g.add_argument("--ddf", default="satterthwaite", choices=["satterthwaite", "residual", "kenward-roger", "none"],
                   help="denominator degrees of freedom (default satterthwaite; MATLAB's default is residual)")
    g.add_argument("--coding", default="reference", choices=["reference", "effects"],
                   help="factor coding (default reference, as MATLAB)")
    g.add_argument("--test", default="marginal", choices=["marginal", "type3"],
                   help="marginal F per term as MATLAB's anova (default) or lmerTest's type III")
    g.add_argument("--optimizer", default="bobyqa", choices=["bobyqa", "nloptwrap", "Nelder_Mead"],
                   help="lme4 optimizer (default bobyqa with rhoend 1e-9)")


def _add_data_options(p):
    p.add_argument("data", metavar="DATA.mat", help="MATLAB .mat file (v7.3 or v5) in the original's layout: "
                   "sid, ch, hit_miss[, region], data (rows x timepoints)")
    p.add_argument("--formula", required=True,
                   help="lme4 formula, e.g. 'data ~ hit_miss * region + (1|sid) + (1|sid:ch)'")
    p.add_argument("--data-key", default="data", help="variable holding the responses (default 'data')")


def _add_method_options(p, nperm):
    g = p.add_argument_group("permutation cluster test")
    g.add_argument("--nperm", type=_positive_int, default=nperm, help=f"number of permutations (default {nperm})")
    g.add_argument("--seed", type=int, default=0, help="seed of the permutations (default 0)")
    g.add_argument("--jobs", type=_jobs, default=1, help="worker processes (-1: every core; default 1)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _checked(convert, ok, what):
    """An argparse ``type`` converting with ``convert`` and accepting values where ``ok(value)``."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_jobs = _checked(int, lambda v: v >= 1 or v == -1, "a positive number of workers or -1 (every core)")
_unit_interval = _checked(float, lambda v: 0 < v < 1, "a number between 0 and 1")


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
                      help=f"number of permutations (default {DEMO_NPERM}, small to finish in minutes)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the permutations (default 0)")
    demo.add_argument("--jobs", type=_jobs, default=os.cpu_count() or 1,
                      help="worker processes (default: every core)")
    demo.add_argument("--out-dir", default="clusterlmer-demo", help="folder for the outputs (default clusterlmer-demo)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)

    run = sub.add_parser(
        "run", help="fit every timepoint and run the cluster-based permutation test",
        description="Fit the formula at every timepoint of DATA.mat, refit it for each permutation of the "
        "condition labels (channels stay in their subjects), and correct across time with a cluster test.")
    _add_data_options(run)
    _add_method_options(run, 1000)
    g = run.add_argument_group("cluster test")
    g.add_argument("--statistic", default="F", choices=["F", "t"],
                   help="F (upper-tailed; the 2-way original) or signed t (two-tailed; the 1-way original)")
    g.add_argument("--terms", nargs="+", metavar="TERM", help="terms to test (default: all but the intercept)")
    g.add_argument("--tail", type=int, choices=[1, 0, -1], help="1, 0 or -1 (default 1 for F, 0 for t)")
    g.add_argument("--alpha", type=_unit_interval, default=0.05, help="cluster significance level (default 0.05)")
    g.add_argument("--cluster-alpha", type=_unit_interval, default=0.05,
                   help="per-sample threshold quantile (default 0.05)")
    g.add_argument("--cluster-stat", default="sum", choices=["sum", "size", "tfce"], help="cluster statistic")
    g.add_argument("--quantile-method", default="hazen",
                   help="numpy quantile method for thresholds (default hazen = MATLAB; linear = the notebook)")
    g.add_argument("--checkpoint", metavar="FILE.h5", help="keep finished permutations here; rerun to resume")
    _add_fit_options(run)
    o = run.add_argument_group("outputs")
    o.add_argument("--out", action="append", metavar="FILE",
                   help="results file: .mat (MATLAB struct lme), .h5 (everything) or .csv; repeatable")
    o.add_argument("--plot", metavar="FIG.png", help="write a figure (.png, .pdf, .svg)")
    run.set_defaults(func=_run)

    fit = sub.add_parser("fit", help="observed statistics only (no permutations)",
                         description="Fit the formula at every timepoint of DATA.mat and print the fit summary "
                         "and the ANOVA at each term's peak; --out writes the per-timepoint table as CSV.")
    _add_data_options(fit)
    _add_fit_options(fit)
    fit.add_argument("--out", metavar="FILE.csv", help="write Term, FStat, DF1, DF2, pValue per timepoint")
    fit.set_defaults(func=_fit)
    return parser


def _figure_formats():
    from matplotlib.figure import Figure

    return set(Figure().canvas.get_supported_filetypes())


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    # Check the outputs before the run: a bad name found after hours of permutations would lose them.
    for name in ("out", "plot"):
        paths = getattr(args, name, None)
        for path in ([paths] if isinstance(paths, str) else paths or []):
            suffix = os.path.splitext(path)[1].lower()
            if name == "out" and args.command == "run" and suffix not in (".mat", ".h5", ".hdf5", ".csv"):
                parser.error(f"--out {path!r}: use a name ending in .mat, .h5 or .csv")
            if name == "plot" and suffix and suffix[1:] not in _figure_formats():
                parser.error(f"--plot {path!r}: use a name ending in one of "
                             f"{', '.join('.' + f for f in sorted(_figure_formats()))}")
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                parser.error(f"--{name} {path!r}: the folder {folder!r} does not exist")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ImportError, ValueError, TypeError, KeyError, OSError) as exc:
        print(f"clusterlmer: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
