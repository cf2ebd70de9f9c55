"""TimeseriesFit.model_at where the pymer4 extra is not installed (the main environment).

The cross-validation against pymer4 itself is tests/test_pymer4.py, run by
``make test-pymer4`` in its own environment (pymer4 0.8 needs pandas < 3).
"""

from __future__ import annotations

import sys

import pytest

import clusterlmer as cl
from clusterlmer.pymer4_bridge import _control_text


@pytest.fixture(scope="module")
def native_fit(small):
    # The native engine needs no R: the checks below run before anything is fitted or started.
    return cl.fit_timeseries(small, "data ~ hit_miss * region + (1|sid) + (1|sid:ch)", engine="native",
                             cross_check=0)


def test_model_at_without_pymer4_says_how_to_install_it(native_fit, monkeypatch):
    # None in sys.modules makes pymer4 absent also in the environment that has the extra.
    monkeypatch.setitem(sys.modules, "pymer4", None)
    with pytest.raises(ImportError, match=r"pip install 'clusterlmer\[pymer4\]'.*pandas < 3.*own virtual "
                                          r"environment.*make test-pymer4"):
        native_fit.model_at(0)


def test_model_at_checks_the_sample_first(native_fit):
    with pytest.raises(IndexError, match="out of range"):
        native_fit.model_at(native_fit.sample_shape[0])
    with pytest.raises(ValueError, match="exactly one of t"):
        native_fit.model_at()


def test_optimizer_controls_become_r_code_only_as_names_and_numbers():
    text = _control_text({"optimizer": "bobyqa", "optimizer_options": {"rhoend": 1e-9, "maxfun": 2000}})
    assert text == "optimizer='bobyqa', optCtrl=list(rhoend=1e-09, maxfun=2000.0), check.rankX='message+drop.cols'"
    with pytest.raises(ValueError, match="not R names"):
        _control_text({"optimizer": "bobyqa", "optimizer_options": {"x=1); system('id'); list(y": 1}})
