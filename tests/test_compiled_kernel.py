"""The compiled kernel (engines/native/compiled.py) against the numpy blocked evaluation.

Two implementations of the same algebra: the numpy one
(:meth:`GeneralBlock._evaluate`, whose criterion test_blocked_derivatives.py
checks against the dense statement of lme4's criterion, and that one against
lme4's ``devfun``) and the compiled loop over fits, which every optimisation
step and every evaluation without the Hessian now uses. They must agree to
rounding at any theta (also on and below the bounds, where numDeriv's steps
go), for every layout: no dense part, nested components, crossed levels that
meet only some of the dense rows, several designs per block.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clusterlmer.engines.native.blocked import DesignParts, GeneralBlock
from test_blocked_derivatives import CASES, _block

KEYS = ("criterion", "gradient", "ldL2", "ldRX2", "pwrss", "beta", "RXinv")


def _thetas(structure, seed=0):
    """Thetas with diagonal entries inside, on and below their bound, and signed off-diagonal entries."""
    rng = np.random.default_rng(seed)
    diag = structure.lower == 0.0
    out = [np.where(diag, 0.8, 0.3), np.where(diag, 1.7, -0.6)]
    out.append(np.where(diag, np.abs(rng.normal(0.9, 0.5, diag.size)), rng.normal(0.0, 0.5, diag.size)))
    on_bound = out[-1].copy()
    on_bound[np.flatnonzero(diag)[-1]] = 0.0
    below = out[0].copy()
    below[np.flatnonzero(diag)[0]] = -1e-4
    return np.array(out + [on_bound, below])


def _assert_same(compiled, numpy_out):
    for key in KEYS:
        a, b = compiled[key], numpy_out[key]
        scale = max(np.abs(b).max(), 1.0)
        assert np.abs(a - b).max() <= 1e-10 * scale, (key, np.abs(a - b).max(), scale)


# Beyond the shared cases: a dense part of 2 x 2 blocks (an item slope), one mixing block sizes
# (Item:b nests in no other term), whose loops follow Lambda's block pattern, and a nested first
# term factored with the second beside an item slope.
EXTRA = [("crossed", "y ~ a*b + (1 + x|Subject)"), ("crossed", "y ~ a + (1|Subject) + (1 + x|Item)"),
         ("crossed", "y ~ a + (1|Subject) + (1 + x|Item) + (1|Item:b)"),
         ("crossed", "y ~ a + (1|Subject:a) + (1|Subject) + (1 + x|Item)")]


@pytest.mark.parametrize("frame_name, formula", CASES + EXTRA)
@pytest.mark.parametrize("reml", [True, False])
def test_compiled_equals_numpy(frame_name, formula, reml):
    _, structure, block, _, _ = _block(frame_name, formula, k=1)
    theta = _thetas(structure)
    idx = np.zeros(len(theta), dtype=int)  # every theta on the one response
    compiled = block.evaluate(theta, idx, reml, gradient=True)
    with np.errstate(all="ignore"):
        reference = block._evaluate(theta, idx, reml, gradient=True)
    _assert_same(compiled, reference)


def test_compiled_with_several_designs_and_a_subset():
    """Fits under different designs (a permuted X), evaluated for a subset of them in shuffled order."""
    spec, structure, _, Y, _ = _block("sample", CASES[-1][1], k=3)
    rng = np.random.default_rng(5)
    X2 = spec.X[rng.permutation(len(spec.X))]
    parts = [DesignParts(structure, structure.zt(spec), X) for X in (spec.X, X2)]
    pieces = [d.responses(structure, Y) for d in parts]
    Zy1, Zy2, Xy, yy = (np.concatenate([pc[i] for pc in pieces]) for i in range(4))
    block = GeneralBlock(structure, parts, np.repeat([0, 1], 3), Zy1, Zy2, Xy, yy, len(Y))
    idx = np.array([4, 0, 5, 2])
    theta = _thetas(structure)[:4]
    compiled = block.evaluate(theta, idx, True, gradient=True)
    reference = block._evaluate(theta, idx, True, gradient=True)
    _assert_same(compiled, reference)


def test_a_point_that_cannot_be_evaluated_fails_alone():
    """A point where the criterion is not defined (here a NaN theta) gives NaN for it, without an
    exception, and leaves the other points of the call intact."""
    _, structure, block, _, _ = _block("crossed", CASES[0][1], k=3)
    theta = np.tile(np.where(structure.lower == 0.0, 0.8, 0.3), (3, 1))
    theta[1, 0] = np.nan
    out = block.evaluate(theta, None, True, gradient=True)
    assert np.isnan(out["criterion"][1]) and np.all(np.isnan(out["gradient"][1]))
    keep = np.array([0, 2])
    reference = block._evaluate(theta[keep], keep, True, gradient=True)
    np.testing.assert_allclose(out["criterion"][keep], reference["criterion"], rtol=1e-12)
    np.testing.assert_allclose(out["gradient"][keep], reference["gradient"], rtol=1e-9, atol=1e-9)


def test_warm_started_bfgs_fits_reach_newtons_optimum():
    """Permutation fits take BFGS steps (compiled gradient) from the observed optimum and its Hessian;
    they must end where exact-Hessian Newton from the same start ends: the criterion no higher than
    Newton's beyond rounding, theta and F to ~1e-8 (lme4's bobyqa stops at ~1e-7 in theta)."""
    import clusterlmer as cl
    from clusterlmer import datasets
    from clusterlmer.design import build_design
    from clusterlmer.engines.base import FitOptions
    from clusterlmer.engines.native.engine import prepare
    from clusterlmer.engines.native.general_fit import GeneralFits
    from clusterlmer.formula import parse_formula
    from clusterlmer.spec import build_spec

    data = datasets.sample_2way()
    idx = np.arange(0, data.n_times, 7)
    formula = CASES[-1][1].replace("t0", "data")
    spec = build_spec(build_design(data.design, parse_formula(formula), coding="reference"))
    Y, options = data.values[:, idx], FitOptions()
    perms = cl.make_permutations(data.design, formula, 6, seed=11)
    specs = [spec.permuted({v: m[k] for v, m in perms.row_maps.items()}) for k in range(6)]
    x_obs, _, H_obs = GeneralFits([prepare(spec, options, len(Y))], Y).optimum(True)
    fits = GeneralFits([prepare(s, options, len(Y)) for s in specs], Y)
    start, H0 = np.tile(x_obs, (6, 1)), np.tile(H_obs, (6, 1, 1))
    x_bfgs, ok_bfgs, _ = fits.optimum(True, start, H0)
    x_newton, ok_newton, _ = fits.optimum(True, start)
    assert ok_bfgs.all() and ok_newton.all()
    D_bfgs = fits.block.evaluate(x_bfgs, None, True)["criterion"]
    D_newton = fits.block.evaluate(x_newton, None, True)["criterion"]
    assert np.all(D_bfgs <= D_newton + 1e-9 * np.abs(D_newton))
    assert np.abs(x_bfgs - x_newton).max() <= 1e-7
    F_bfgs = np.concatenate([b.F for b in fits.evaluate(x_bfgs, ok_bfgs, options, "statistic")], axis=1)
    F_newton = np.concatenate([b.F for b in fits.evaluate(x_newton, ok_newton, options, "statistic")], axis=1)
    np.testing.assert_allclose(F_bfgs, F_newton, rtol=1e-7)


def test_bound_checks_even_entries_saddles_and_reflections():
    """At the end of a warm-started fit: a diagonal entry at 0 whose column is zero below it is even
    (derivative exactly 0), and is a saddle when the criterion curves down along it (a real slope
    variance); one with entries below it is a reflection candidate, found through its gradient."""
    from clusterlmer.design import build_design
    from clusterlmer.engines.base import FitOptions
    from clusterlmer.engines.native.engine import prepare
    from clusterlmer.engines.native.general_fit import GeneralFits
    from clusterlmer.formula import parse_formula
    from clusterlmer.spec import build_spec

    rng = np.random.default_rng(3)
    g, x = np.repeat(np.arange(12), 10), np.tile(np.linspace(-1, 1, 10), 12)
    frame = pd.DataFrame({"g": [f"g{i}" for i in g], "x": x})
    frame["y"] = x * rng.normal(0, 2.0, 12)[g] + rng.normal(0, 1.0, 12)[g] + 0.3 * rng.normal(size=g.size)
    spec = build_spec(build_design(frame, parse_formula("y ~ x + (1 + x|g)"), response_column="y"))
    fits = GeneralFits([prepare(spec, FitOptions(), len(frame))], frame[["y"] * 3].to_numpy())
    theta = np.array([[0.8, 0.0, 0.0],    # slope entry at 0, nothing below it: even; a saddle here
                      [0.0, 0.3, 0.5],    # intercept entry at 0 with 0.3 below: not even
                      [0.0, 0.0, 1.5]])   # intercept entry at 0, zero below: even
    even = fits._even(theta)
    np.testing.assert_array_equal(even, [[False, False, True], [False, False, False], [True, False, False]])
    _, g_at = fits.block.criterion_gradient(theta, None, True)
    assert g_at[0, 2] == 0.0 and g_at[2, 0] == 0.0  # even: the derivative vanishes exactly
    rows, grads = fits._on_bounds(theta, True)
    np.testing.assert_array_equal(rows, [1])
    np.testing.assert_array_equal(grads, g_at[[1]])
    assert 0 in fits._saddles(theta, True)  # the slope variance is real: the criterion falls off the bound
    optimum, ok, _ = fits.optimum(True)
    assert ok.all() and np.all(optimum[:, 2] > 0.1)
