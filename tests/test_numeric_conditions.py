"""What a row tests when a condition is stored as numbers (0/1, MATLAB's 1/2, centred codes).

A numeric column with two values that interacts with another variable is coded
as a factor (values sorted), so the main effects next to it are effects at one
of its levels (reference coding) or averaged over them (effects coding), never
at a value 0 that is not in the data. The numbers are checked against the
standalone lmerTest script (r_scripts/lmer_reference.R) run by Rscript.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from clusterlmer.datasets import FORMULA_2WAY

REFERENCE_SCRIPT = Path(__file__).resolve().parents[1] / "r_scripts" / "lmer_reference.R"
SAMPLES = [99, 100]


@pytest.fixture(scope="module")
def sample():
    return cl.datasets.sample_2way()


def _recoded(data, mapping, samples=None):
    design = data.design.copy()
    design["hit_miss"] = design["hit_miss"].map(mapping).astype(float)
    values = data.values if samples is None else data.values[:, samples]
    times = data.times if samples is None else data.times[samples]
    return cl.TimeseriesData(design=design, values=values, times=times)


def _fit(data, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = cl.fit_timeseries(data, FORMULA_2WAY, cross_check=0, **kwargs)
    return fit, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_matlab_12_coding_tests_region_at_a_level_in_the_data(sample):
    # As numbers, 1/2 made the region row the region effect at hit_miss = 0, a level not in the data.
    fit01, warned01 = _fit(_recoded(sample, {0: 0, 1: 1}))
    fit12, warned12 = _fit(_recoded(sample, {0: 1, 1: 2}))
    np.testing.assert_allclose(fit12.F, fit01.F, rtol=1e-10)
    np.testing.assert_allclose(fit12.df2, fit01.df2, rtol=1e-10)
    assert fit12.levels["hit_miss"] == ["1", "2"] and fit12.coef_names[1] == "hit_miss2"
    assert not warned01  # 0/1 under reference coding: the factor is the number's own design
    assert len(warned12) == 1
    msg = warned12[0]
    assert "'hit_miss' is numeric with two values (1, 2)" in msg
    assert "main effect of 'region' would be the effect at hit_miss = 0, a value that is not in the data" in msg
    assert "levels={'hit_miss': [2, 1]}" in msg


def test_effects_coding_averages_over_a_numeric_condition(sample, tmp_path):
    data = _recoded(sample, {0: 1, 1: 2}, SAMPLES)
    fit, warned = _fit(data, coding="effects")
    assert any("averaged over hit_miss's two levels" in w for w in warned)
    i = fit.terms.index("region")
    # The averaged main effect (F ~ 26.7 at sample 100), not the simple effect at hit_miss = 0 (F ~ 1.6).
    assert fit.F[i][1] > 20

    rscript = shutil.which("Rscript")
    assert rscript is not None, "Rscript is needed for the reference"
    df = data.design.copy()
    names = [f"t{s}" for s in SAMPLES]
    for j, name in enumerate(names):
        df[name] = data.values[:, j]
    csv, out = tmp_path / "hm12.csv", tmp_path / "ref.csv"
    df.to_csv(csv, index=False, float_format="%.17g")
    proc = subprocess.run([rscript, str(REFERENCE_SCRIPT), "--csv", str(csv), "--formula", FORMULA_2WAY,
                           "--values", ",".join(names), "--coding", "effects", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ref = pd.read_csv(out)
    for j in range(len(SAMPLES)):
        for term in fit.terms:
            row = ref[(ref["sample"] == j) & (ref["Term"] == term)].iloc[0]
            k = fit.terms.index(term)
            np.testing.assert_allclose(fit.F[k][j], row["FStat"], rtol=1e-5, err_msg=term)
            np.testing.assert_allclose(fit.df2[k][j], row["DF2"], rtol=1e-5, err_msg=term)


def test_centred_code_and_main_effect_models_stay_numeric(sample):
    fit, warned = _fit(_recoded(sample, {0: -0.5, 1: 0.5}, SAMPLES))
    assert "hit_miss" in fit.coef_names and "hit_miss" not in fit.levels and not warned
    data = _recoded(sample, {0: 1, 1: 2}, SAMPLES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no interaction: the number is the MATLAB reading, nothing to say
        fit = cl.fit_timeseries(data, "data ~ hit_miss + (1|sid) + (1|sid:ch)", cross_check=0)
    assert "hit_miss" in fit.coef_names


def test_continuous_covariate_away_from_zero_warns(sample):
    data = _recoded(sample, {0: 0, 1: 1}, SAMPLES)
    design = data.design.copy()
    design["load"] = 3.0 + np.arange(len(design)) % 5  # 3 .. 7, five values
    data = cl.TimeseriesData(design=design, values=data.values, times=data.times)
    with pytest.warns(UserWarning, match=r"'load' is numeric \(range 3 \.\. 7\) and interacts with 'region': "
                      r"the main effect of 'region' is the effect at load = 0, outside the data"):
        cl.fit_timeseries(data, "data ~ load * region + (1|sid) + (1|sid:ch)", cross_check=0)


def test_summary_states_each_rows_hypothesis_and_the_sign(sample):
    data = _recoded(sample, {0: 0, 1: 1}, SAMPLES)
    ref, _ = _fit(data)
    text = ref.summary()
    assert "Each row tests (H0):" in text
    assert "region 'phrc' - 'hc' = 0 (at hit_miss = '0')" in text
    assert "hit_miss '1' - '0' = 0 (at region = 'hc')" in text
    assert "t > 0 for hit_miss means '1' > '0'" in text
    eff, _ = _fit(data, coding="effects")
    text = eff.summary()
    assert "region ('hc' - 'phrc')/2 = 0 (averaged over hit_miss)" in text
    assert "coefficient is (first level - last level)/2: t > 0 for hit_miss means '0' > '1'" in text
    assert "'hit_miss' is numeric with two values" in text


def test_permutation_result_does_not_depend_on_the_numbers_of_a_condition(sample):
    runs = []
    for mapping in ({0: 0, 1: 1}, {0: 1, 1: 2}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs.append(cl.permutation_cluster_lmer(_recoded(sample, mapping), FORMULA_2WAY, n_permutations=19,
                                                    seed=1, cross_check=0, progress=False))
    a, b = runs
    for term in a.terms:
        np.testing.assert_allclose(b.stat[term], a.stat[term], rtol=1e-9)
        np.testing.assert_array_equal(b.p_clust[term], a.p_clust[term])
    assert "Each row tests (H0):" in b.summary()
