"""Shared test helpers (importable as ``from conftest import ...`` from the test modules)."""

from __future__ import annotations

import numpy as np
import pytest

from clusterlmer.pymer4_bridge import _check_pymer4_installed

# tests/test_pymer4.py needs the pymer4 extra, which needs pandas < 3 and so its own
# venv: `make test-pymer4` builds .venv-pymer4 and runs it there (failing, not skipping,
# when pymer4 cannot be imported). Elsewhere the file is not collected at all.
try:
    _check_pymer4_installed()
except ImportError:
    collect_ignore = ["test_pymer4.py"]

# A small dataset in the original layout and its single-process permutation run, which the
# parallel back ends (workers, Dask, SLURM) must reproduce bit for bit. The run
# uses the R engine explicitly: those back ends exist to run R in their workers.
SMALL_FORMULA = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"

# R code every Rscript-run test starts with: lme4 and lmerTest loaded, `out` (the first argument, a
# directory), and numbers written as C99 hex floats (`%a`) so both sides hold identical doubles.
R_HEX_PREAMBLE = r"""
suppressPackageStartupMessages({library(lme4); library(lmerTest)})
args <- commandArgs(trailingOnly = TRUE)
out <- args[1]
hex <- function(x) sprintf("%a", as.numeric(x))
unhex <- function(d) { for (nm in names(d)) if (is.character(d[[nm]]) && all(grepl("^-?0x", d[[nm]])))
  d[[nm]] <- as.numeric(d[[nm]]); d }
write_hex <- function(d, path) { for (nm in names(d)) if (is.numeric(d[[nm]])) d[[nm]] <- hex(d[[nm]])
  utils::write.csv(d, path, row.names = FALSE) }
"""

# R code defining `data`: the data sets lme4 and lmerTest ship, as plain data frames whose
# labels cannot be read back as numbers (for tests that run lme4 through Rscript).
R_DATA_SETS = r"""
data <- list(
  sleepstudy = data.frame(Subject = paste0("S", lme4::sleepstudy$Subject), Days = lme4::sleepstudy$Days,
                          phase = ifelse(lme4::sleepstudy$Days < 5, "early", "late"),
                          Reaction = lme4::sleepstudy$Reaction),
  Penicillin = data.frame(plate = as.character(lme4::Penicillin$plate),
                          sample = as.character(lme4::Penicillin$sample), diameter = lme4::Penicillin$diameter),
  Pastes = data.frame(batch = as.character(lme4::Pastes$batch), cask = as.character(lme4::Pastes$cask),
                      strength = lme4::Pastes$strength),
  cake = data.frame(replicate = paste0("R", lme4::cake$replicate), recipe = as.character(lme4::cake$recipe),
                    temp = lme4::cake$temp, angle = lme4::cake$angle),
  TVbo = data.frame(Assessor = paste0("A", lmerTest::TVbo$Assessor), TVset = as.character(lmerTest::TVbo$TVset),
                    Picture = paste0("P", lmerTest::TVbo$Picture),
                    Coloursaturation = lmerTest::TVbo$Coloursaturation),
  carrots = data.frame(Consumer = paste0("C", lmerTest::carrots$Consumer),
                       Product = as.character(lmerTest::carrots$Product),
                       Homesize = paste0("H", lmerTest::carrots$Homesize), sens2 = lmerTest::carrots$sens2,
                       Preference = lmerTest::carrots$Preference),
  ham = data.frame(Consumer = paste0("C", lmerTest::ham$Consumer), Product = paste0("P", lmerTest::ham$Product),
                   Information = paste0("I", lmerTest::ham$Information),
                   Gender = paste0("G", lmerTest::ham$Gender),
                   Informed.liking = as.numeric(lmerTest::ham$Informed.liking)))
"""


def read_r_hex_csv(path):
    """A CSV written by R's write.csv with numbers as hex floats; NA becomes NaN (numbers) or None (text)."""
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in frame.columns:
        known = frame[col] != "NA"
        if known.any() and frame[col][known].str.match(r"^-?0x").all():
            frame[col] = [float.fromhex(v) if k else np.nan for v, k in zip(frame[col], known)]
        else:
            frame[col] = [v if k else None for v, k in zip(frame[col], known)]
    return frame


def run_rscript(code, *args, timeout=600):
    """Run R ``code`` with Rscript and ``args``, from a file.

    ``Rscript -e`` skips an expression longer than 10,000 bytes with only a
    warning and exits 0, so long scripts (those that define R_DATA_SETS) go
    through a file.
    """
    import os
    import shutil
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as f:
        f.write(code)
    try:
        return subprocess.run([shutil.which("Rscript"), f.name, *map(str, args)], capture_output=True, text=True,
                              timeout=timeout)
    finally:
        os.unlink(f.name)


SMALL = dict(kind="2way", n_subjects=6, n_channels=24, n_times=12, seed=3)
SMALL_N_PERM, SMALL_SEED = 8, 7


@pytest.fixture(scope="module")
def small():
    import clusterlmer as cl

    return cl.simulate_ieeg(**SMALL)


@pytest.fixture(scope="module")
def reference(small):
    import clusterlmer as cl

    return cl.permutation_cluster_lmer(small, SMALL_FORMULA, n_permutations=SMALL_N_PERM, seed=SMALL_SEED,
                                       progress=False, engine="r")


def assert_same_result(a, b):
    """Two permutation results are bit-identical: nulls, statistics, cluster p and the cluster table."""
    assert a.terms == b.terms and a.seed == b.seed and a.n_permutations == b.n_permutations
    for term in a.terms:
        np.testing.assert_array_equal(a.null[term], b.null[term])
        np.testing.assert_array_equal(a.stat[term], b.stat[term])
        np.testing.assert_array_equal(a.p_clust[term], b.p_clust[term])
    assert a.clusters.equals(b.clusters)


def write_small_mat(path, data):
    """Write a seed-layout MATLAB v7.3 file (sid, ch, hit_miss, region, data) of ``data``."""
    import clusterlmer as cl

    d = data.design
    cl.io.write_mat73(path, {"sid": d["sid"].tolist(), "ch": d["ch"].tolist(),
                             "hit_miss": d["hit_miss"].to_numpy(dtype=float), "region": d["region"].tolist(),
                             "data": data.values})
    return path


def where_blocks_ran(client):
    """Per clusterlmer run (Dask event topic), where each block attempt ran: "R process" or "worker thread"."""
    return {topic: [msg["in"] for _, msg in log if isinstance(msg, dict) and "in" in msg]
            for topic, log in client.get_events().items() if topic.startswith("clusterlmer-")}


def run_cli(capsys, argv):
    """``clusterlmer.cli.main(argv)`` in this process: (exit code, stdout, stderr)."""
    from clusterlmer.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err
