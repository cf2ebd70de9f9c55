"""The R engine: lme4 + lmerTest through rpy2.

This is the only module that imports rpy2, and only when a fit is asked for,
so ``import clusterlmer`` works on a machine without R. The R code lives in
``r_scripts/engine.R`` (shipped inside the wheel as ``clusterlmer.r_scripts``),
sourced once per process into a private environment. R is single-threaded:
call this engine from one thread per process.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import subprocess
import threading

import numpy as np

from .._checks import check_option
from ..spec import coded_design
from ..families import TRIALS_COLUMN
from ..transforms import r_design
from .base import NEEDS, BlockFit, FitOptions

__all__ = ["fit_block", "fit_blocks", "fit_method", "describe", "r_session", "supports", "warm_up", "R_INSTALL_HINT"]

# Engine properties, read through clusterlmer.engines.engine_properties.
LABEL = "R"
# R must run alone in a process's main thread, so a thread that fits (a Dask worker runs tasks
# in a pool of threads, never its main one) drives a child process of its own. Started from
# another thread, R warns "R is not initialized by the main thread" and takes over SIGINT for
# good; rpy2 keeps its converters in a ContextVar, which Dask copies afresh for every task (the
# second task fails with "Conversion rules for `rpy2.robjects` appear to be missing"); and a
# worker with several threads would call R concurrently. multiprocessing is no way out: Dask's
# nanny starts workers as daemonic processes, which may not have multiprocessing children.
NEEDS_OWN_PROCESS = True
# Most permutations per block of work: eight take ~25 s on the 2-way sample, so a worker lost
# loses little and every worker stays busy to the end.
BLOCK_SIZE = 8
# lme4 fits one model at a time: permutations gain nothing from being fitted together.
FITS_PER_BATCH = 1
# lme4 + lmerTest themselves: the numbers other engines are cross-checked against.
REFERENCE = True

R_INSTALL_HINT = (
    "On Debian/Ubuntu: sudo apt-get install r-base-core r-base-dev r-cran-lme4 r-cran-lmertest "
    "r-cran-pbkrtest, then pip install 'rpy2>=3.5.17,<3.6' (or run 'make test' in the clusterlmer "
    "repository, which does both)."
)
_R_PACKAGE_HINT = {
    "lme4": "sudo apt-get install r-cran-lme4   (or in R: install.packages('lme4'))",
    "lmerTest": "sudo apt-get install r-cran-lmertest   (or in R: install.packages('lmerTest'))",
    "pbkrtest": "sudo apt-get install r-cran-pbkrtest   (or in R: install.packages('pbkrtest'))",
    "numDeriv": "sudo apt-get install r-cran-numderiv   (or in R: install.packages('numDeriv'))",
}

_lock = threading.Lock()
_session = None


def _find_r_home():
    """R's home directory, checked before rpy2 starts R: a broken R aborts the
    whole process during start-up, which no Python exception handler can catch."""
    home = os.environ.get("R_HOME")
    if not home:
        r_bin = shutil.which("R")
        if r_bin is None:
            raise ImportError(f"R is not installed (no 'R' on PATH and R_HOME is not set). {R_INSTALL_HINT}")
        home = subprocess.run([r_bin, "RHOME"], capture_output=True, text=True, timeout=60).stdout.strip()
    if not os.path.isdir(os.path.join(home, "library", "base")):
        raise ImportError(f"R_HOME={home!r} is not an R installation (no library/base there). {R_INSTALL_HINT}")
    return home


class _RSession:
    """rpy2 handles and the environment holding clusterlmer's R functions."""

    def __init__(self):
        _find_r_home()
        # rpy2 sets LD_LIBRARY_PATH for R's libraries when it starts R; every process started afterwards
        # (worker processes, Dask workers, sbatch jobs) would inherit it and may load the system's
        # libpython instead of its own. R is loaded by then, so the original value is put back.
        saved = os.environ.get("LD_LIBRARY_PATH")
        try:
            import rpy2.robjects as ro
            from rpy2.robjects import vectors
        except Exception as exc:  # rpy2 missing, or R not found / not loadable
            raise ImportError(f"The R engine needs R and the Python package rpy2 ({exc}). {R_INSTALL_HINT}") from exc
        finally:
            if saved is None:
                os.environ.pop("LD_LIBRARY_PATH", None)
            else:
                os.environ["LD_LIBRARY_PATH"] = saved
        self.ro, self.vectors = ro, vectors
        for pkg in ("lme4", "lmerTest", "numDeriv"):
            self.require(pkg)
        self.env = ro.r["new.env"]()
        source = importlib.resources.files("clusterlmer.r_scripts").joinpath("engine.R")
        with importlib.resources.as_file(source) as path:
            ro.r["sys.source"](str(path), envir=self.env)

    def require(self, pkg):
        """Raise ImportError with the install command when an optional R package is missing."""
        if not self.ro.r["requireNamespace"](pkg, quietly=True)[0]:
            hint = _R_PACKAGE_HINT.get(pkg, f"in R: install.packages('{pkg}')")
            raise ImportError(f"The R package {pkg!r} is needed here. Install it with: {hint}")

    def call(self, name, *args, **kwargs):
        return self.env.find(name)(*args, **kwargs)

    # conversions (explicit, no global converter activation)
    def data_frame(self, frame):
        v = self.vectors
        cols = {}
        for name, col in frame.items():
            if col.dtype.kind in "fiub":
                cols[name] = v.FloatVector(col.to_numpy(dtype=float))
            else:
                cols[name] = v.StrVector([str(x) for x in col])
        return v.DataFrame(cols)

    def matrix(self, arr):
        arr = np.asarray(arr, dtype=float)
        return self.ro.r["matrix"](self.vectors.FloatVector(arr.ravel(order="F")), nrow=arr.shape[0])

    def str_list(self, mapping):
        return self.vectors.ListVector({k: self.vectors.StrVector(list(v)) for k, v in mapping.items()})

    def num_list(self, mapping):
        return self.vectors.ListVector({k: self.vectors.FloatVector([float(v)]) for k, v in mapping.items()})


def r_session() -> _RSession:
    """The process's R session, started on first use."""
    global _session
    with _lock:
        if _session is None:
            _session = _RSession()
        return _session


def _as_array(x, shape=None):
    arr = np.array(x, dtype=float)
    return arr.reshape(shape, order="F") if shape is not None else arr


def _as_strings(x):
    return [str(s) for s in x]


def _codings(s, design):
    """Each factor's coding as a named R list (``cl_prepare_design`` sets R's contrasts from it)."""
    return s.vectors.ListVector({k: s.vectors.StrVector([v]) for k, v in design.codings.items()})


def describe(model, options: FitOptions):
    """Term labels (then the names of ``options.contrasts``) and coefficient names of the fixed part, without fitting.

    Parameters
    ----------
    model : clusterlmer.spec.ModelSpec or clusterlmer.design.ModelDesign
    options : FitOptions

    Returns
    -------
    terms : tuple of str
    coef_names : tuple of str
    """
    design = coded_design(model)
    table, text, matrices, back = r_design(design)
    s = r_session()
    frame = s.data_frame(table)
    frame = s.call("cl_prepare_design", frame, s.str_list(design.factors), _codings(s, design),
                   s.str_list(matrices))
    res = s.call("cl_describe", frame, text, design.formula.response)
    terms = back(_as_strings(res.rx2("terms")))
    if options.test != "marginal":
        terms = [t for t in terms if t != "(Intercept)"]
    return tuple(terms) + tuple(c.name for c in options.contrasts), back(_as_strings(res.rx2("coef_names")))


def warm_up():
    """Start R and load lme4/lmerTest now (seconds), before the first fit needs them."""
    r_session()


def supports(model, options=None):
    """lme4 fits every model the formula parser accepts: ``(True, "")``."""
    return True, ""


def fit_method(options: dict) -> str:
    """How the optimum is found, for summaries (``options``: a fit's ``options`` record)."""
    ctrl = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in options.get("optimizer_options", {}).items())
    return f"optimizer {options['optimizer']} ({ctrl})"


def fit_blocks(specs, Y, options: FitOptions, need: str = "all", start_from=None) -> list:
    """:func:`fit_block` under each of ``specs`` (one lme4 model per specification and response).

    ``start_from`` is accepted for the engine interface and not used: lme4 starts at theta = 1.
    """
    return [fit_block(spec, Y, options, need) for spec in specs]


def fit_block(model, Y, options: FitOptions, need: str = "all") -> BlockFit:
    """Fit every column of ``Y`` under one model with lme4/lmerTest.

    Parameters
    ----------
    model : clusterlmer.spec.ModelSpec or clusterlmer.design.ModelDesign
        The model on the rows of ``Y`` (R refits from its coded table).
    Y : ndarray, shape (n_obs, k)
        Responses, all finite.
    options : FitOptions
    need : {"all", "statistic"}
        ``"statistic"`` (permutations): the same F without Satterthwaite's
        numerical derivatives (DF2 and p NaN, lmerTest's Hessian warnings
        not looked for). With ``ddf="kenward-roger"``, whose F depends on
        its DF, everything is computed either way.

    Returns
    -------
    BlockFit
    """
    check_option("need", need, NEEDS)
    design = coded_design(model)
    s = r_session()
    if options.ddf == "kenward-roger":
        s.require("pbkrtest")
    Y = np.asarray(Y, dtype=float)
    k = Y.shape[1]
    # Transformations reach R as computed columns under generated names (see clusterlmer.transforms).
    table, text, matrices, back = r_design(design)
    common = (s.data_frame(table), s.matrix(Y), text, design.formula.response, s.str_list(design.factors))
    shared = dict(matrices=s.str_list(matrices), coding=_codings(s, design), test=options.test,
                  optimizer=options.optimizer, opt_ctrl=s.num_list(options.resolved_optimizer_options()), need=need)
    if options.family != "gaussian":
        res = s.call("cl_fit_glmm_block", *common, family=options.family,
                     weights=TRIALS_COLUMN if options.weights is not None else s.ro.NULL,
                     lrt=options.glmm_test == "lrt", **shared)
    else:
        user = s.vectors.ListVector({c.name: s.vectors.ListVector({"L": s.matrix(c.L),
                                                                  "rhs": s.vectors.FloatVector(c.rhs)})
                                    for c in options.contrasts})
        res = s.call("cl_fit_block", *common, reml=bool(options.reml), ddf=options.ddf, user=user, **shared)
    return _block_fit(res, k, back)


def _block_fit(res, k, back) -> BlockFit:
    """The BlockFit of one R engine result list for ``k`` responses (``back``: R's names to ours)."""
    terms = back(_as_strings(res.rx2("terms")))
    coefs = back(_as_strings(res.rx2("coef_names")))
    nt, nc = len(terms), len(coefs)
    return BlockFit(
        terms=terms,
        coef_names=coefs,
        F=_as_array(res.rx2("F"), (nt, k)),
        df1=_as_array(res.rx2("df1"), (nt, k)),
        df2=_as_array(res.rx2("df2"), (nt, k)),
        p=_as_array(res.rx2("p"), (nt, k)),
        contrast_estimate=_as_array(res.rx2("contrast_estimate"), (nt, k)),
        estimate=_as_array(res.rx2("estimate"), (nc, k)),
        se=_as_array(res.rx2("se"), (nc, k)),
        coef_df=_as_array(res.rx2("coef_df"), (nc, k)),
        coef_se=_as_array(res.rx2("coef_se"), (nc, k)),
        sigma=_as_array(res.rx2("sigma")),
        deviance=_as_array(res.rx2("deviance")),
        converged=np.array(res.rx2("converged"), dtype=bool),
        singular=_as_array(res.rx2("singular")),
        messages=_as_strings(res.rx2("messages")),
        errors=_as_strings(res.rx2("error")),
    )
