"""One sample's model as a pymer4 ``Lmer``: the optional ``clusterlmer[pymer4]`` extra.

:meth:`clusterlmer.TimeseriesFit.model_at` calls :func:`lmer_at`. pymer4 is
imported here, inside functions, never when clusterlmer is imported: pymer4
0.8 needs pandas < 3 (its own virtual environment, see
:data:`PYMER4_INSTALL_HINT`), and importing it starts R.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import warnings

import numpy as np
import pandas as pd

__all__ = ["PYMER4_INSTALL_HINT", "lmer_at"]

PYMER4_INSTALL_HINT = (
    "TimeseriesFit.model_at needs pymer4 0.8, the optional extra: pip install 'clusterlmer[pymer4]'. "
    "pymer4 0.8 needs pandas < 3 (and 0.9 needs R packages Debian lacks), so install the extra in its own "
    "virtual environment, e.g. python3 -m venv .venv-pymer4 && .venv-pymer4/bin/pip install 'clusterlmer[pymer4]' "
    "('make test-pymer4' in the clusterlmer repository builds one), rather than downgrading pandas next to "
    "packages that want pandas 3. Its post-hoc tests (post_hoc) also need the R package emmeans "
    "(sudo apt-get install r-cran-emmeans)."
)
# A fitted model's estimates differ from the fit's by the precision of lme4's optimizer at most.
ESTIMATE_TOLERANCE = 1e-5
_R_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._]*$")

# The contrasts of clusterlmer's R engine (r_scripts/engine.R, cl_prepare_design), with the same
# column names, so that the pymer4 model's coefficients carry the names in fit.coef_names.
_CONTRASTS_R = """
function(levels, coding) {
  if (identical(coding, "effects")) {
    cm <- stats::contr.sum(levels)
    colnames(cm) <- levels[-length(levels)]
    cm
  } else if (identical(coding, "helmert")) {
    stats::contr.helmert(levels)
  } else if (identical(coding, "poly")) {
    stats::contr.poly(length(levels))
  } else stats::contr.treatment(levels)
}
"""


def _check_pymer4_installed():
    """Raise the install hint unless a pymer4 0.8 that can run here is installed (without importing it)."""
    if importlib.util.find_spec("pymer4") is None:
        raise ImportError(PYMER4_INSTALL_HINT)
    version = importlib.metadata.version("pymer4")
    if not version.startswith("0.8."):
        raise ImportError(f"model_at works with pymer4 0.8 (its Lmer API); pymer4 {version} is installed. "
                          + PYMER4_INSTALL_HINT)
    if int(pd.__version__.split(".")[0]) >= 3:
        raise ImportError(f"pymer4 {version} is installed next to pandas {pd.__version__}, but pymer4 0.8 only works "
                          "with pandas < 3. " + PYMER4_INSTALL_HINT)


def _import_lmer():
    """pymer4's ``Lmer``, imported after clusterlmer has started R its own way."""
    _check_pymer4_installed()
    from .engines.r import r_session

    # pymer4 starts R when it is imported; starting it through the R engine first restores
    # LD_LIBRARY_PATH for processes started later (see engines/r.py).
    r_session()
    try:
        from pymer4.models import Lmer
    except ImportError as exc:
        raise ImportError(f"pymer4 is installed but cannot be imported ({exc}). " + PYMER4_INSTALL_HINT) from exc
    return Lmer


def _control_text(options) -> str:
    """``lmerControl(...)`` arguments for the fit's optimizer and its controls, as R code."""
    optimizer = options["optimizer"]
    controls = options["optimizer_options"]
    if not _R_NAME.match(optimizer) or not all(_R_NAME.match(str(k)) for k in controls):
        raise ValueError(f"optimizer {optimizer!r} or its option names {list(controls)} are not R names.")
    values = ", ".join(f"{k}={float(v)!r}" for k, v in controls.items())
    return f"optimizer='{optimizer}', optCtrl=list({values}), check.rankX='message+drop.cols'"


def _lmer_class(Lmer):
    """A pymer4 ``Lmer`` that codes clusterlmer's factors as clusterlmer's fit did."""

    class ClusterlmerLmer(Lmer):
        """pymer4 ``Lmer`` opened by :meth:`clusterlmer.TimeseriesFit.model_at`.

        Its first fit codes the factors as the clusterlmer fit did (treatment
        or sum-to-zero contrasts, clusterlmer's level order and coefficient
        names); any later ``fit(factors=...)`` call behaves as pymer4
        documents.
        """

        def _make_factors(self, factor_dict, ordered=False):
            contrasts, df = super()._make_factors(factor_dict, ordered)
            if factor_dict is not self._clusterlmer_factors or ordered:
                return contrasts, df
            import rpy2.robjects as ro

            make = ro.r(_CONTRASTS_R)
            codes = {name: make(ro.StrVector(levels), self._clusterlmer_coding[name])
                     for name, levels in factor_dict.items()}
            self.contrast_codes = {name: np.asarray(cm) for name, cm in codes.items()}
            return ro.ListVector(codes), df

        def post_hoc(self, *args, **kwargs):
            """pymer4's ``post_hoc`` (emmeans), after checking that R has emmeans."""
            from .engines.r import r_session

            session = r_session()
            if not session.ro.r["requireNamespace"]("emmeans", quietly=True)[0]:
                raise ImportError("post_hoc needs the R package emmeans: sudo apt-get install r-cran-emmeans "
                                  "(or in R: install.packages('emmeans')).")
            return super().post_hoc(*args, **kwargs)

    return ClusterlmerLmer


def _sample_frame(source, flat_index):
    """The rows the fit used at one sample: the design columns plus the response, NaN/Inf rows left out."""
    design = source.design
    y = np.asarray(source.values[:, flat_index], dtype=float)
    rows = np.isfinite(y)
    frame = design.frame.loc[rows].reset_index(drop=True)
    frame[design.formula.response] = y[rows]
    return frame


def _warn_if_estimates_differ(model, fit, sample):
    """The safety net for what pymer4 cannot be told (e.g. a random slope on an effects-coded factor)."""
    ours = fit.estimates[(slice(None),) + sample]
    theirs = model.coefs["Estimate"].to_numpy(dtype=float)
    if not np.all(np.isfinite(ours)) or theirs.shape != ours.shape:
        return
    diff = float(np.max(np.abs(theirs - ours) / np.maximum(np.abs(ours), 1.0)))
    if diff > ESTIMATE_TOLERANCE:
        warnings.warn(f"the pymer4 model's fixed effects differ from fit.estimates at sample {sample} by up to "
                      f"{diff:.2g} (relative): it is not the model clusterlmer fitted there.", RuntimeWarning,
                      stacklevel=4)  # the caller of fit.model_at


def lmer_at(fit, sample):
    """Fit the model of one sample of ``fit`` with pymer4.

    Parameters
    ----------
    fit : TimeseriesFit
        A fit that holds its data (``fit.source``).
    sample : tuple of int
        The sample's index, as from ``TimeseriesFit._sample_index``.

    Returns
    -------
    pymer4.models.Lmer
        Fitted (lmerTest) with the fit's formula, rows, level order, coding,
        REML/ML and optimizer.
    """
    source = fit.source
    if source.design.formula.transforms:
        # pymer4 hands R the formula text, so R would evaluate the calls itself (scale() and poly() on this
        # sample's rows only): not the model clusterlmer fitted, and against the rule that R evaluates no call.
        raise ValueError(f"the pymer4 model is not available for a formula with transformations "
                         f"({', '.join(source.design.formula.transforms)}); compute those columns in the design "
                         "table and use their names in the formula to get one.")
    Lmer = _import_lmer()
    flat_index = int(np.ravel_multi_index(sample, fit.sample_shape))
    model = _lmer_class(Lmer)(source.design.formula.text, data=_sample_frame(source, flat_index))
    model._clusterlmer_factors = {name: list(levels) for name, levels in source.design.factors.items()}
    model._clusterlmer_coding = source.design.codings
    model.fit(factors=model._clusterlmer_factors or None, REML=bool(fit.options["reml"]),
              control=_control_text(fit.options), summarize=False)
    _warn_if_estimates_differ(model, fit, sample)
    return model
