"""The native engine: lme4's linear mixed models without R, batched over timepoints and permutations.

Two paths, chosen per model by :func:`.support.analyse`:

* **Nested random intercepts** (``(1|sid) + (1|sid:ch)``, ``(1|sid/ch)``, a
  single ``(1|g)``, deeper nesting): the marginal covariance
  ``sigma^2 V(theta)``, ``V = I + sum_g theta_g^2 Z_g Z_g'``, is block
  diagonal by outermost group and is inverted level by level (Woodbury), so
  the criterion needs only the Gram matrix of ``[X, y]`` and its sums per
  group (:mod:`.criterion`, derivatives by forward-mode "jets",
  :mod:`.jets`). Newton in ``phi = theta^2``.
* **Every other random part lme4 fits** -- correlated and ``||`` slopes
  (numeric and factor), crossed, partially crossed and nested groupings --
  by lme4's penalized least squares with MixedModels.jl's blocked Cholesky
  (:mod:`.blocked`: the term with most levels factored level by level, the
  others as a dense block per connected component of levels) and the exact
  gradient and Hessian in lme4's theta (:mod:`.blocked_hessian`); projected
  Newton with lme4's bounds (diagonal entries >= 0), saddles on a bound
  stepped off, a column's sign reflected when only it holds a diagonal
  entry at 0 (:mod:`.general_fit`).

Both start at lme4's start or, for permutations, at the observed fit's
optimum for the same timepoint, and report what the R engine reports:

* lme4's profiled REML / ML criterion at its optimum; ``sigma``, ``beta``,
  ``vcov(beta)`` as lme4;
* lmerTest's Satterthwaite degrees of freedom with the numerical
  derivatives lmerTest uses: ``numDeriv::hessian`` (``genD``, Richardson,
  ``d = 0.1``) of ``lmerTest:::devfun_vp`` and ``numDeriv::jacobian``
  (Richardson, ``d = 1e-4``) of ``lmerTest:::get_covbeta`` at
  ``(theta, sigma)``, evaluated at exactly the same points
  (:mod:`.satterthwaite`), then ``contestMD`` (:mod:`.marginal`);
* marginal tests (identity rows per term, intercept included), Wald F with
  ``ddf="residual"`` (``n - p``) or ``"none"`` (``Inf``);
* lme4's singular-fit message, lmerTest's Hessian eigenvalue warnings,
  lme4's predictor-scale warning, grouping-factor errors and rank-deficient
  ``X`` handling (the columns ``check.rankX`` drops are dropped, with its
  message).

The optimum is exact to ~1e-12 in theta, where bobyqa (rhoend = 1e-9) stops
at ~1e-8..1e-7 on a flat criterion; the criterion at the native optimum is
never above lme4's beyond rounding. Evaluated at lme4's theta
(:func:`evaluate_at`) the statistics agree with lmerTest's to ~1e-9 (F) and
~1e-8 (DF2, whose numerical derivatives amplify the criterion's rounding).
lme4's optimizer settings have no counterpart and are refused, as is
``ddf="kenward-roger"`` (``engine="auto"`` then uses R and says why).

Modules, one job each: :mod:`.support` (what the engine fits), :mod:`.fixed`
(lme4's checks of ``X``), :mod:`.nesting`, :mod:`.jets`, :mod:`.criterion`
(the nested path), :mod:`.general` (lme4's term order and a reference
criterion), :mod:`.blocked`, :mod:`.blocked_hessian`, :mod:`.levels`, :mod:`.small`
(the general path's factorisation and derivatives), :mod:`.optimize` (Newton),
:mod:`.general_fit` (the general path's fits), :mod:`.satterthwaite`,
:mod:`.marginal`, :mod:`.engine` (``fit_block``, ``fit_blocks``,
``evaluate_at``). The model itself comes from :mod:`clusterlmer.spec`.
"""

from .engine import CHUNK_STATISTIC, evaluate_at, fit_block, fit_blocks
from .support import UnsupportedModel, describe, supports

__all__ = ["UnsupportedModel", "describe", "evaluate_at", "fit_block", "fit_blocks", "fit_method", "supports"]

# Engine properties, read through clusterlmer.engines.engine_properties.
LABEL = "native"
NEEDS_OWN_PROCESS = False  # numpy only: fits in any thread, e.g. a Dask worker's
# Most permutations per block of work: eight take ~0.15 s on the 2-way sample, too little to pay
# for a Dask task or a worker round trip; 256 take a few seconds.
BLOCK_SIZE = 256
# Fits optimised together in one call (permutations x samples): numpy's per-call costs are paid
# once per batch.
FITS_PER_BATCH = CHUNK_STATISTIC
# Not lme4 itself: observed fits are cross-checked against the reference (R) engine.
REFERENCE = False


def fit_method(options: dict) -> str:
    """How the optimum is found, for summaries."""
    return "native engine (profiled criterion optimised by batched Newton to ~1e-12 in theta)"
