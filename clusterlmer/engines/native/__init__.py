"""The native engine: closed-form, batched Gaussian LMMs with nested random intercepts.

For models whose random part is random intercepts of nested grouping factors
(``(1|sid) + (1|sid:ch)``, ``(1|sid/ch)``, a single ``(1|g)``, or deeper
nesting such as ``(1|a) + (1|a:b) + (1|a:b:c)``), the marginal covariance
``sigma^2 V(theta)`` with ``V = I + sum_g theta_g^2 Z_g Z_g'`` is block
diagonal by outermost group and can be inverted level by level (Woodbury).
Everything lme4's profiled criterion needs is then ``[X, y]' V^-1 [X, y]``
and ``log det V``, computed from the Gram matrix of ``[X, y]`` and sums of
``[X, y]`` per group, for a whole block of responses at once with numpy.

What is computed, and how it matches the R engine (lme4 + lmerTest):

* The profiled REML / ML criterion of lme4 (``deviance``/REML criterion as
  ``opt$fval``), minimised over ``theta >= 0`` per response by a batched
  projected Newton method in ``phi = theta^2`` with exact first and second
  derivatives (forward-mode "jets" through the nested recursion), started at
  lme4's ``theta = 1``. A component whose derivative at 0 is positive stays
  exactly at 0, as bobyqa ends on its lower bound.
* ``sigma``, ``beta``, ``vcov(beta)`` as lme4.
* lmerTest's Satterthwaite degrees of freedom with the same numerical
  derivatives lmerTest uses: ``numDeriv::hessian`` (``genD``, Richardson,
  ``d = 0.1``) of ``lmerTest:::devfun_vp`` and ``numDeriv::jacobian``
  (Richardson, ``d = 1e-4``) of ``lmerTest:::get_covbeta`` at
  ``(theta, sigma)``, evaluated at exactly the same points (replicated step
  for step), then ``contest1D`` / ``contestMD`` formulas as the R engine's
  ``cl_satterthwaite_F``.
* Marginal tests (identity rows per term, intercept included), Wald F with
  ``ddf="residual"`` (``n - p``) or ``"none"`` (``Inf``).

Agreement with the R engine: evaluated at the theta lme4 reports, every
statistic agrees to ~1e-9 relative or better (numDeriv's own rounding). The
native optimum is exact to ~1e-12 in theta, bobyqa's (rhoend = 1e-9) only to
~1e-8..1e-7 because the criterion is flat at the optimum and bobyqa sees only
rounded values; F and DF2 inherit that difference (typically 1e-7, at most a
few 1e-6 relative, more for values near zero). The criterion at the native
optimum is never above lme4's beyond rounding. lme4's optimizer settings
have no counterpart here: an ``optimizer`` other than ``"bobyqa"`` (the
default, whose optimum the native one matches) or any ``optimizer_options``
is refused. Messages mirror lme4's singular-fit message, lmerTest's Hessian
eigenvalue warnings and lme4's predictor-scale warning and grouping-factor
errors; lme4's gradient check (which flags bobyqa stopping early) has no
counterpart.

Not supported (``supports`` says why; ``fit_block`` raises ``ValueError``):
random slopes, crossed or non-nested groupings, fixed parts without an
intercept or not hierarchical (an interaction without all its lower-order
terms), ``test="type3"``, ``ddf="kenward-roger"``, lme4 optimizer settings.
A rank-deficient fixed design (e.g. an interaction with empty cells, in the
observed design, a permutation or the rows left for one sample) is fitted as
lme4 fits it: the columns lme4's ``check.rankX`` drops are dropped, with its
message, and terms are tested on their remaining coefficients.

Modules, one job each: :mod:`.support` (what the engine fits: ``supports``,
``describe``), :mod:`.fixed` (lme4's checks of ``X``), :mod:`.nesting` (the
nested groupings), :mod:`.jets` and :mod:`.criterion`
(the profiled criterion with its derivatives), :mod:`.optimize` (Newton),
:mod:`.satterthwaite` (numDeriv's derivatives as lmerTest takes them),
:mod:`.marginal` (the term tests), :mod:`.engine` (``fit_block``, ``fit_blocks``) and
:mod:`.general` (lme4's profiled criterion for any random part, by penalized least
squares; a building block of the general engine, not yet used to fit). The model itself (``X``,
the groupings) comes from :mod:`clusterlmer.spec`.
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
