"""The general native path's blocked criterion and its exact derivatives.

The criterion of :class:`~clusterlmer.engines.native.blocked.GeneralBlock`
must equal the plain dense statement of lme4's criterion
(:func:`~clusterlmer.engines.native.general.profiled_criterion`, itself
checked against lme4's ``devfun`` in test_general_criterion.py) to rounding,
for several thetas per model and both REML and ML; its exact gradient must
equal central differences of the criterion, and its exact Hessian central
differences of the gradient (both to the differences' own error, ~1e-8).
Models: crossed intercepts, correlated and ``||`` slopes beside a crossed
intercept, a single slope term, a three-column factor, and the bundled
sample's nested slope model (15 components).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clusterlmer import datasets
from clusterlmer.design import build_design
from clusterlmer.engines.native.blocked import DesignParts, GeneralBlock, GeneralStructure
from clusterlmer.engines.native.general import profiled_criterion
from clusterlmer.formula import parse_formula
from clusterlmer.spec import build_spec


def _crossed_frame(seed=1):
    rng = np.random.default_rng(seed)
    rows = [dict(Subject=f"s{s}", Item=f"i{i}", a=rng.choice(["x", "y"]), b=rng.choice(["u", "v"]),
                 x=rng.normal())
            for s in range(12) for i in range(8) if rng.random() < 0.8]
    frame = pd.DataFrame(rows)
    frame["y"] = rng.normal(size=len(frame))
    return frame


def _sample_frame():
    data = datasets.sample_2way()
    frame = data.design.copy()
    frame["t0"] = data.values[:, 0]
    return frame


CASES = [
    ("crossed", "y ~ a*b + (1|Subject) + (1|Item)"),
    ("crossed", "y ~ a + x + (1 + x|Subject) + (1|Item)"),
    ("crossed", "y ~ a + (1 + a|Subject)"),
    ("crossed", "y ~ a + (x||Subject) + (1|Item)"),
    ("crossed", "y ~ a + (1 + a + x|Subject) + (1|Item)"),
    ("crossed", "y ~ a + (1|Subject:a) + (1|Subject) + (1|Item)"),
    ("sample", "t0 ~ hit_miss*region + (1 + hit_miss|sid) + (1|sid:ch)"),
]


def _block(frame_name, formula, k=3, seed=2):
    frame = _crossed_frame() if frame_name == "crossed" else _sample_frame()
    model = parse_formula(formula)
    spec = build_spec(build_design(frame, model, response_column=model.response))
    structure = GeneralStructure(spec)
    parts = DesignParts(structure, structure.zt(spec), spec.X)
    rng = np.random.default_rng(seed)
    Y = frame[model.response].to_numpy()[:, None] + 0.3 * rng.normal(size=(len(frame), k))
    block = GeneralBlock(structure, [parts], np.zeros(k, int), *parts.responses(structure, Y), len(frame))
    theta = np.where(structure.lower == 0, 0.8, 0.3)[None] * np.array([1.0, 1.3, 0.6])[:k, None]
    return spec, structure, block, Y, theta


@pytest.mark.parametrize("frame_name, formula", CASES)
@pytest.mark.parametrize("reml", [True, False])
def test_blocked_criterion_gradient_and_hessian(frame_name, formula, reml):
    spec, structure, block, Y, theta = _block(frame_name, formula)
    out = block.evaluate(theta, reml=reml, hessian=True)
    plain = np.array([profiled_criterion(spec, Y[:, j], theta[j], reml=reml)["criterion"][0]
                      for j in range(Y.shape[1])])
    np.testing.assert_allclose(out["criterion"], plain, rtol=1e-12)
    h = 1e-6
    grad_fd = np.empty_like(theta)
    hess_fd = np.empty(out["hessian"].shape)
    for i in range(structure.n_theta):
        up, down = theta.copy(), theta.copy()
        up[:, i] += h
        down[:, i] -= h
        at_up, at_down = block.evaluate(up, reml=reml, gradient=True), block.evaluate(down, reml=reml, gradient=True)
        grad_fd[:, i] = (at_up["criterion"] - at_down["criterion"]) / (2 * h)
        hess_fd[:, :, i] = (at_up["gradient"] - at_down["gradient"]) / (2 * h)
    scale = np.abs(grad_fd).max()
    assert np.abs(out["gradient"] - grad_fd).max() <= 1e-7 * max(scale, 1.0)
    assert np.abs(out["hessian"] - hess_fd).max() <= 1e-7 * np.abs(hess_fd).max()
    np.testing.assert_array_equal(out["hessian"], np.swapaxes(out["hessian"], 1, 2))


def test_components_of_a_nested_model():
    """The sample's sid:ch levels nest in sid: one component per subject, its channels one segment."""
    _, structure, _, _, _ = _block("sample", CASES[-1][1])
    sid = datasets.sample_2way().design["sid"]
    assert structure.n_components == sid.nunique()
    assert structure.m2 == 2  # one subject's intercept and slope
    assert structure.n_levels1 == len(sid) // 2  # every channel once, no padding
    sizes = np.diff(np.append(structure.segments, structure.n_levels1))
    np.testing.assert_array_equal(np.sort(sizes), np.sort(sid.groupby(sid).size().to_numpy() // 2))


def test_nested_first_term_factored_with_the_second():
    """``(1|Subject:a)`` nests in ``(1|Subject)``: the two are factored subject by subject (blocks of
    one intercept and two nested ones) and the dense part keeps only the items. A subject seen at one
    level of ``a`` fills its second place with the zero row; the criterion equals the plain statement's."""
    frame = _crossed_frame()
    frame = frame[~((frame["Subject"] == "s3") & (frame["a"] == "y"))].reset_index(drop=True)
    formula = "y ~ a + (1|Subject:a) + (1|Subject) + (1|Item)"
    model = parse_formula(formula)
    spec = build_spec(build_design(frame, model, response_column=model.response))
    structure = GeneralStructure(spec)
    assert (structure.k1, structure.n_levels1, structure.m2) == (3, 12, 8)
    assert np.sum(structure.idx1 == structure.q) == 1  # s3's missing Subject:a level
    parts = DesignParts(structure, structure.zt(spec), spec.X)
    Y = frame[["y"]].to_numpy()
    block = GeneralBlock(structure, [parts], np.zeros(1, int), *parts.responses(structure, Y), len(frame))
    for theta in ([0.8, 0.5, 0.3], [0.0, 1.2, 0.7], [1.5, 0.0, 0.2]):
        for reml in (True, False):
            got = block.evaluate(np.array([theta]), reml=reml)["criterion"][0]
            want = profiled_criterion(spec, Y[:, 0], np.array(theta), reml=reml)["criterion"][0]
            assert abs(got - want) <= 1e-12 * abs(want)
