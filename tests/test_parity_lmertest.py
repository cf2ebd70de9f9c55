"""Parity of ``clusterlmer.fit_timeseries`` with plain lmerTest, run through Rscript.

The reference is ``r_scripts/lmer_reference.R``: a standalone script that reads
a CSV, fits every response column with ``lmerTest::lmer`` and tabulates
``anova`` (plus ``contestMD`` for the intercept row of the marginal test). It
runs in a separate ``Rscript`` process and shares no code with clusterlmer's
engine (which builds the model once per design and refits through lme4's
internals via rpy2), so agreement checks the whole Python -> R engine path
against the textbook lme4/lmerTest route.

Both sides read the same CSV, and every case first checks that R's
``read.csv`` and pandas parse its numbers to identical doubles: R's decimal
parser is not always correctly rounded (1 of the 1352 values of a seed-1
CSV written with shortest round-trip digits came back 1 ulp off), and that
1-ulp change moved bobyqa's stopping point enough to shift Satterthwaite DF2
by 6e-7, close to the tolerance. Simulated
responses are therefore written on a 2**-16 grid as exact decimals, which
both parsers read exactly. Each case compares, for every sample and term,
FStat, DF2 and pValue to a relative tolerance of 1e-6 (DF2 = Inf for
ddf='none' is compared for equality), and requires identical term sets and
equal DF1. Run with ``pytest -s`` to see the largest relative difference per
case.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from conftest import run_rscript

pytest.importorskip("rpy2")
RSCRIPT = shutil.which("Rscript")
pytestmark = pytest.mark.skipif(RSCRIPT is None, reason="Rscript is not on PATH")

REFERENCE_SCRIPT = Path(__file__).resolve().parents[1] / "r_scripts" / "lmer_reference.R"
RTOL = 1e-6
N_TIMES = 4
VALUES = [f"t{i}" for i in range(N_TIMES)]
GRID = 2.0**16
FORMULA_2WAY = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"
FORMULA_1WAY = "data ~ hit_miss + (1|sid) + (1|sid:ch)"
FORMULAS = {"2way": FORMULA_2WAY, "1way": FORMULA_1WAY}

# Rows and sample blanked in the NaN case: both rows of one channel (so a
# sid:ch level disappears at that sample) plus two single rows.
NAN_ROWS = [4, 5, 100, 201]
NAN_SAMPLE = 2


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def _wide_frame(data: cl.TimeseriesData) -> pd.DataFrame:
    """Design columns plus one column t0..t{n-1} per sample, on a 2**-16 grid."""
    df = data.design.copy()
    for i, name in enumerate(VALUES):
        df[name] = np.round(data.values[:, i] * GRID) / GRID
    return df


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write grid values as their exact decimal expansion (at most 19 significant digits for |x| < 1000)."""
    assert (df[VALUES].abs().fillna(0) < 1000).all().all()
    df.to_csv(path, index=False, float_format="%.16f")
    return path


_R_PARSE = (
    "d <- utils::read.csv(commandArgs(TRUE)[1], stringsAsFactors = FALSE, check.names = FALSE); "
    "for (nm in names(d)) if (is.numeric(d[[nm]])) cat(nm, sprintf('%a', as.numeric(d[[nm]])), '\\n')"
)


def assert_same_parse(csv: Path, df: pd.DataFrame):
    """R's read.csv gives bit-identical numbers (NaN for NA) to pandas' read_csv."""
    proc = run_rscript(_R_PARSE, str(csv), timeout=120)
    assert proc.returncode == 0, proc.stderr
    r_cols = {}
    for line in proc.stdout.strip().splitlines():
        name, *vals = line.split()
        r_cols[name] = np.array([np.nan if v == "NA" else float.fromhex(v) for v in vals])
    py_cols = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
    assert sorted(r_cols) == sorted(py_cols), f"numeric columns differ: R {sorted(r_cols)}, pandas {sorted(py_cols)}"
    for name in py_cols:
        np.testing.assert_array_equal(df[name].to_numpy(float), r_cols[name],
                                      err_msg=f"{csv.name}: R and pandas parse column {name!r} differently")


def _levels_arg(levels: dict) -> str:
    return ";".join(f"{name}={','.join(str(v) for v in lev)}" for name, lev in levels.items())


def run_reference(csv: Path, formula: str, out: Path, *, values=None, reml=True, ddf="satterthwaite",
                  coding="reference", test="marginal", levels=None) -> pd.DataFrame:
    """Run lmer_reference.R in its own Rscript process and read its CSV output."""
    cmd = [RSCRIPT, str(REFERENCE_SCRIPT), "--csv", str(csv), "--formula", formula,
           "--reml", "TRUE" if reml else "FALSE", "--ddf", ddf, "--coding", coding, "--test", test,
           "--out", str(out)]
    if values is not None:
        cmd += ["--values", ",".join(values)]
    if levels:
        cmd += ["--levels", _levels_arg(levels)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"lmer_reference.R failed ({proc.returncode}):\n{proc.stderr}"
    return pd.read_csv(out)


def _rel_diff(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = np.where(b == 0, 1.0, np.abs(b))
    return np.abs(a - b) / scale


def compare_with_reference(fit: cl.TimeseriesFit, ref: pd.DataFrame, label: str, samples=None, rtol=RTOL) -> dict:
    """Assert parity of ``fit.to_frame()`` with the script's table; return max relative differences.

    ``rtol``: 1e-6 for lme4 against lme4; the native engine's own optimum differs from bobyqa's
    (which stops within ~1e-7 of a flat optimum) by up to a few 1e-6 end to end.
    """
    ours = fit.to_frame()
    if samples is not None:
        ours = ours[ours["sample"].isin(samples)]
        ref = ref[ref["sample"].isin(samples)]
    assert set(ours["Term"]) == set(ref["Term"]), f"{label}: terms differ: {set(ours['Term'])} vs {set(ref['Term'])}"
    assert set(ours["sample"]) == set(ref["sample"]), f"{label}: samples differ"
    assert len(ours) == len(ref), f"{label}: {len(ours)} rows vs {len(ref)} in the reference"

    m = ours.merge(ref, on=["sample", "Term"], suffixes=("", "_ref"), validate="one_to_one")
    assert len(m) == len(ref)
    assert np.array_equal(m["DF1"].to_numpy(float), m["DF1_ref"].to_numpy(float)), f"{label}: DF1 differs"

    diffs = {}
    for col in ("FStat", "DF2", "pValue"):
        a, b = m[col].to_numpy(float), m[f"{col}_ref"].to_numpy(float)
        assert not np.isnan(a).any(), f"{label}: clusterlmer gave NaN {col}"
        assert not np.isnan(b).any(), f"{label}: the reference gave NaN {col}"
        inf = np.isinf(b)
        assert np.array_equal(a[inf], b[inf]) and not np.isinf(a[~inf]).any(), f"{label}: {col} Inf mismatch"
        rel = _rel_diff(a[~inf], b[~inf])
        diffs[col] = float(rel.max()) if rel.size else 0.0
        bad = np.flatnonzero(rel > rtol)
        assert bad.size == 0, (
            f"{label}: {col} differs by more than rtol={rtol}:\n"
            + m.loc[~inf].iloc[bad][["sample", "Term", col, f"{col}_ref"]].to_string()
        )
    print(f"[parity] {label}: max rel diff " + ", ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
    return diffs


def check_parity(csv: Path, formula: str, values, outdir: Path, label: str, *, levels=None, samples=None,
                 rtol=RTOL, **options) -> cl.TimeseriesFit:
    """Fit ``csv`` with clusterlmer and with the reference script under the same options and compare."""
    df = pd.read_csv(csv)
    assert_same_parse(csv, df)
    # engine="r" explicitly: this checks the R engine (the default, "auto", would fit natively).
    fit = cl.fit_timeseries(cl.from_dataframe(df, values=values), formula, levels=levels, engine="r", **options)
    assert not fit.diagnostics["failed"].any(), fit.diagnostics["error"].tolist()
    ref = run_reference(csv, formula, outdir / "reference.csv",
                        values=None if isinstance(values, str) else values, levels=levels, **options)
    compare_with_reference(fit, ref, label, samples=samples, rtol=rtol)
    return fit


# --------------------------------------------------------------------------
# data fixtures
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def simulated_csv(tmp_path_factory):
    """Factory: path of a wide CSV of ``simulate_ieeg(kind, n_times=4, seed=seed)`` (cached)."""
    root = tmp_path_factory.mktemp("simulated")
    cache = {}

    def make(kind, seed):
        if (kind, seed) not in cache:
            path = root / f"{kind}_seed{seed}.csv"
            cache[kind, seed] = _write_csv(_wide_frame(cl.simulate_ieeg(kind, n_times=N_TIMES, seed=seed)), path)
        return cache[kind, seed]

    return make


_EXPORT_R = r"""
suppressPackageStartupMessages(library(lme4))
out <- commandArgs(trailingOnly = TRUE)[1]
utils::write.csv(data.frame(replicate = paste0("R", as.character(cake$replicate)),
                            recipe = as.character(cake$recipe),
                            temperature = paste0("T", as.character(cake$temperature)),
                            angle = cake$angle),
                 file.path(out, "cake.csv"), row.names = FALSE)
utils::write.csv(data.frame(batch = as.character(Pastes$batch), cask = as.character(Pastes$cask),
                            strength = Pastes$strength),
                 file.path(out, "Pastes.csv"), row.names = FALSE)
utils::write.csv(data.frame(Subject = paste0("S", as.character(sleepstudy$Subject)),
                            Days = sleepstudy$Days, Reaction = sleepstudy$Reaction),
                 file.path(out, "sleepstudy.csv"), row.names = FALSE)
utils::write.csv(data.frame(plate = as.character(Penicillin$plate), sample = as.character(Penicillin$sample),
                            diameter = Penicillin$diameter),
                 file.path(out, "Penicillin.csv"), row.names = FALSE)
utils::write.csv(data.frame(Assessor = paste0("A", lmerTest::TVbo$Assessor), TVset = as.character(lmerTest::TVbo$TVset),
                            Picture = paste0("P", lmerTest::TVbo$Picture),
                            Coloursaturation = lmerTest::TVbo$Coloursaturation),
                 file.path(out, "TVbo.csv"), row.names = FALSE)
utils::write.csv(data.frame(Consumer = paste0("C", lmerTest::carrots$Consumer),
                            Product = as.character(lmerTest::carrots$Product),
                            Homesize = paste0("H", lmerTest::carrots$Homesize), sens2 = lmerTest::carrots$sens2,
                            Preference = lmerTest::carrots$Preference),
                 file.path(out, "carrots.csv"), row.names = FALSE)
"""


@pytest.fixture(scope="module")
def r_datasets(tmp_path_factory):
    """lme4's cake, Pastes, sleepstudy, Penicillin and lmerTest's TVbo, carrots exported to CSV by
    Rscript; labels as text."""
    root = tmp_path_factory.mktemp("r_datasets")
    proc = run_rscript(_EXPORT_R, str(root), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {name: root / f"{name}.csv" for name in ("cake", "Pastes", "sleepstudy", "Penicillin", "TVbo", "carrots")}


# --------------------------------------------------------------------------
# 1. simulated data in the original layout
# --------------------------------------------------------------------------

# Every ddf, coding, reml and test value appears at least twice (KR only with REML).
SIMULATED_CASES = [
    # kind, seed, ddf, coding, reml, test
    ("2way", 1, "satterthwaite", "reference", True, "marginal"),
    ("2way", 2, "satterthwaite", "effects", False, "type3"),
    ("2way", 3, "residual", "reference", False, "marginal"),
    ("2way", 4, "residual", "effects", True, "type3"),
    ("2way", 5, "kenward-roger", "reference", True, "type3"),
    ("2way", 6, "kenward-roger", "effects", True, "marginal"),
    ("2way", 7, "none", "effects", False, "marginal"),
    ("1way", 8, "none", "reference", True, "type3"),
    ("1way", 9, "satterthwaite", "reference", False, "marginal"),
    ("1way", 10, "kenward-roger", "reference", True, "marginal"),
    ("1way", 11, "residual", "reference", False, "type3"),
]


@pytest.mark.parametrize(
    "kind, seed, ddf, coding, reml, test",
    [pytest.param(*c, id=f"{c[0]}-seed{c[1]}-{c[2]}-{c[3]}-{'REML' if c[4] else 'ML'}-{c[5]}")
     for c in SIMULATED_CASES],
)
def test_simulated(simulated_csv, tmp_path, kind, seed, ddf, coding, reml, test):
    csv = simulated_csv(kind, seed)
    check_parity(csv, FORMULAS[kind], VALUES, tmp_path, f"{kind} seed{seed} {ddf}/{coding}/reml={reml}/{test}",
                 ddf=ddf, coding=coding, reml=reml, test=test)


# --------------------------------------------------------------------------
# 2. datasets shipped with lme4
# --------------------------------------------------------------------------

REAL_CASES = [
    # dataset, formula, response, ddf, coding, reml, test
    ("cake", "angle ~ recipe * temperature + (1|recipe:replicate)", "angle",
     "satterthwaite", "reference", True, "marginal"),
    ("cake", "angle ~ recipe * temperature + (1|recipe:replicate)", "angle",
     "residual", "effects", False, "marginal"),
    ("cake", "angle ~ recipe * temperature + (1|recipe:replicate)", "angle",
     "kenward-roger", "effects", True, "type3"),
    ("Pastes", "strength ~ 1 + (1|batch/cask)", "strength",
     "satterthwaite", "reference", True, "marginal"),
    ("Pastes", "strength ~ 1 + (1|batch/cask)", "strength",
     "none", "reference", False, "marginal"),
    ("Pastes", "strength ~ 1 + (1|batch/cask)", "strength",
     "kenward-roger", "reference", True, "marginal"),
    ("sleepstudy", "Reaction ~ Days + (Days|Subject)", "Reaction",
     "satterthwaite", "reference", True, "marginal"),
    ("sleepstudy", "Reaction ~ Days + (Days|Subject)", "Reaction",
     "residual", "reference", False, "type3"),
    ("sleepstudy", "Reaction ~ Days + (Days|Subject)", "Reaction",
     "kenward-roger", "effects", True, "marginal"),
    # Crossed, partially crossed (three terms) and a random slope of a numeric covariate beside a
    # crossed intercept, through the R engine (the native engine's parity on them:
    # test_native_general_parity.py).
    ("Penicillin", "diameter ~ 1 + (1|plate) + (1|sample)", "diameter",
     "satterthwaite", "reference", True, "marginal"),
    ("TVbo", "Coloursaturation ~ TVset * Picture + (1|Assessor) + (1|Assessor:TVset) + (1|Assessor:Picture)",
     "Coloursaturation", "satterthwaite", "effects", True, "type3"),
    ("carrots", "Preference ~ sens2 + Homesize + (1 + sens2|Consumer) + (1|Product)", "Preference",
     "satterthwaite", "reference", True, "marginal"),
]


# lme4 itself does not reproduce these to 1e-6: the same standalone lmerTest run on Penicillin,
# repeated, ends at one of two optima of its flat criterion (F 807.17399 or 807.17369, DF2 5.487093
# or 5.487090, p 3.619203e-7 or 3.619233e-7: 3.8e-7, 6.3e-7 and 8.2e-6 apart), with one BLAS thread
# too. The tolerance covers lme4's own spread.
LME4_SPREAD = {"Penicillin": 2e-5}


@pytest.mark.parametrize(
    "dataset, formula, response, ddf, coding, reml, test",
    [pytest.param(*c, id=f"{c[0]}-{c[3]}-{c[4]}-{'REML' if c[5] else 'ML'}-{c[6]}") for c in REAL_CASES],
)
def test_r_dataset(r_datasets, tmp_path, dataset, formula, response, ddf, coding, reml, test):
    fit = check_parity(r_datasets[dataset], formula, response, tmp_path,
                       f"{dataset} {ddf}/{coding}/reml={reml}/{test}", rtol=LME4_SPREAD.get(dataset, RTOL),
                       ddf=ddf, coding=coding, reml=reml, test=test)
    assert fit.sample_shape == (1,)


# --------------------------------------------------------------------------
# 3. non-finite responses: rows left out at one sample only
# --------------------------------------------------------------------------

@pytest.mark.parametrize("ddf", ["satterthwaite", "residual"])
def test_nan_rows_excluded(tmp_path, ddf):
    data = cl.simulate_ieeg("2way", n_times=N_TIMES, seed=21)
    df = _wide_frame(data)
    df.loc[NAN_ROWS, VALUES[NAN_SAMPLE]] = np.nan
    # NaN is written as an empty field: read.csv reads NA and lmer's default
    # na.action (na.omit) drops those rows for that column's fit only.
    csv = _write_csv(df, tmp_path / "with_nan.csv")

    fit = check_parity(csv, FORMULA_2WAY, VALUES, tmp_path, f"2way NaN rows {ddf}", ddf=ddf)

    diag = fit.diagnostics.set_index("sample")
    expected = np.zeros(N_TIMES, dtype=int)
    expected[NAN_SAMPLE] = len(NAN_ROWS)
    np.testing.assert_array_equal(diag["n_excluded"].to_numpy(), expected)
    np.testing.assert_array_equal(diag["n_obs"].to_numpy(), data.n_obs - expected)
    if ddf == "residual":
        n_coef = 4  # (Intercept), hit_miss, regionX, hit_miss:regionX
        df2 = fit.df2[:, NAN_SAMPLE]
        np.testing.assert_array_equal(df2, data.n_obs - len(NAN_ROWS) - n_coef)

    # The rows-dropped CSV gives the same table at that sample.
    dropped = _write_csv(df.drop(index=NAN_ROWS), tmp_path / "dropped.csv")
    ref = run_reference(dropped, FORMULA_2WAY, tmp_path / "dropped_ref.csv",
                        values=[VALUES[NAN_SAMPLE]], ddf=ddf)
    ref["sample"] = NAN_SAMPLE
    compare_with_reference(fit, ref, f"2way NaN rows {ddf} (rows dropped)", samples=[NAN_SAMPLE])


# --------------------------------------------------------------------------
# 4. level-order override
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "levels, coding, test",
    [
        pytest.param({"region": ["phrc", "hc"]}, "reference", "marginal", id="region-reference"),
        pytest.param({"region": ["phrc", "hc"], "hit_miss": ["1", "0"]}, "effects", "type3",
                     id="region+hit_miss-effects"),
    ],
)
def test_levels_override(simulated_csv, tmp_path, levels, coding, test):
    csv = simulated_csv("2way", 1)
    first_seen = list(dict.fromkeys(pd.read_csv(csv)["region"]))
    assert first_seen != levels["region"], "the override must change the default (first-appearance) order"

    fit = check_parity(csv, FORMULA_2WAY, VALUES, tmp_path, f"levels {levels} {coding}/{test}",
                       levels=levels, coding=coding, test=test)
    for name, lev in levels.items():
        assert fit.levels[name] == lev
