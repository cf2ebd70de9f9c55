"""Figures (1-D time courses, 2-D time x frequency maps) and the command line.

Engine-agnostic: the runs use the default engine ("auto", native for these models, cross-checked
against R at a few timepoints); one CLI test checks that ``--engine r`` reaches the R engine.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

import clusterlmer as cl
from clusterlmer.cli import build_parser
from clusterlmer.plotting import _outline
from conftest import run_cli

FORMULA = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small():
    return cl.simulate_ieeg("2way", n_subjects=6, n_channels=24, n_times=12, seed=3)


@pytest.fixture(scope="module")
def res(small):
    return cl.permutation_cluster_lmer(small, FORMULA, n_permutations=6, seed=1, progress=False)


@pytest.fixture(scope="module")
def data2d():
    """Time x frequency data: 8 times x 4 frequencies, a hit/miss effect that grows with frequency."""
    base = cl.simulate_ieeg("2way", n_subjects=6, n_channels=24, n_times=8, seed=3, hit_miss_effect=0.0)
    rng = np.random.default_rng(5)
    hit = base.design["hit_miss"].to_numpy()[:, None]
    bump = np.array([0, 0, 0.5, 1, 1, 0.5, 0, 0])
    values = np.stack([base.values + 0.3 * rng.normal(size=base.values.shape) + 1.5 * f * hit * bump
                       for f in range(4)], axis=-1)
    return cl.TimeseriesData(design=base.design, values=values, times=base.times, freqs=np.array([4., 8., 16., 32.]))


@pytest.fixture(scope="module")
def res2d(data2d):
    return cl.permutation_cluster_lmer(data2d, FORMULA, n_permutations=4, seed=1, progress=False)


def assert_png(path, min_bytes=10_000):
    raw = Path(path).read_bytes()
    assert raw[:8] == PNG, f"{path} is not a PNG"
    assert len(raw) > min_bytes, f"{path} has only {len(raw)} bytes"


def assert_same_result(a, b):
    """Same analysis (every array, table and setting); the run's bookkeeping may differ."""
    assert (a.terms, a.statistic, a.seed, a.n_permutations, a.schemes, a.tail, a.alpha) == (
        b.terms, b.statistic, b.seed, b.n_permutations, b.schemes, b.tail, b.alpha)
    for name in ("F", "df1", "df2", "p", "t", "estimates", "se", "times"):
        np.testing.assert_array_equal(getattr(a.fit, name), getattr(b.fit, name), err_msg=name)
    for term in a.terms:
        for name in ("stat", "null", "p_clust", "refit_failures"):
            np.testing.assert_array_equal(getattr(a, name)[term], getattr(b, name)[term], err_msg=name)
    assert a.clusters.equals(b.clusters)
    pd.testing.assert_frame_equal(a.fit.diagnostics, b.fit.diagnostics)
    assert a.summary() == b.summary()


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------


def test_plot_writes_a_png_with_two_axes_per_term(res, tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = res.plot(tmp_path / "f.png")
    assert isinstance(fig, Figure)
    assert plt.get_fignums() == before  # off-screen figure: no pyplot state
    assert_png(tmp_path / "f.png")
    assert len(fig.axes) == 2 * len(res.terms) == 6  # 1-D: no colorbars
    stat_axes = fig.axes[0::2]
    assert [ax.get_title(loc="left") for ax in stat_axes] == list(res.terms)
    for ax, term in zip(stat_axes, res.terms):
        np.testing.assert_array_equal(ax.lines[0].get_ydata(), res.stat[term])  # the observed statistic
        np.testing.assert_array_equal(ax.lines[1].get_ydata(), res.cluster_info[term].threshold_upper)
    assert stat_axes[-1].get_xlabel() == "time"
    assert all(ax.get_xlabel() == "cluster sum" for ax in fig.axes[1::2])


def test_plot_selected_terms_and_unknown_term(res, tmp_path):
    fig = res.plot(terms=["hit_miss"])
    assert len(fig.axes) == 2 and fig.axes[0].get_title(loc="left") == "hit_miss"
    assert len(res.plot(terms="hit_miss:region").axes) == 2
    with pytest.raises(ValueError, match=r"not tested.*tested terms"):
        res.plot(terms=["hit_miss", "nope"])
    with pytest.raises(ValueError, match="not tested"):
        res.plot(tmp_path / "f.png", terms="(Intercept)")
    assert not (tmp_path / "f.png").exists()


def test_plot_annotates_significant_clusters(res):
    # 6 permutations cannot reach p < 0.05; a lenient alpha exercises the "significant" drawing.
    lenient = dataclasses.replace(res, alpha=0.9)
    fig = lenient.plot()
    texts = [t for ax in fig.axes[0::2] for t in ax.texts]
    assert len(texts) == len(res.clusters) and all(t.get_text().startswith("p=") for t in texts)
    assert {t.get_color() for t in texts} == {"#d62728"}  # significant: red
    # At 0.05 nothing is significant: clusters of 3+ samples still carry their p, in grey.
    grey = [t for ax in res.plot().axes for t in ax.texts]
    assert len(grey) == int((res.clusters["size"] >= 3).sum())
    assert all(t.get_color() == "dimgrey" for t in grey)


def test_plot_t_statistic_draws_both_thresholds(tmp_path):
    data = cl.simulate_ieeg("1way", n_subjects=6, n_channels=24, n_times=10, seed=4, hit_miss_effect=2.0)
    res_t = cl.permutation_cluster_lmer(data, "data ~ hit_miss + (1|sid) + (1|sid:ch)", statistic="t",
                                        n_permutations=4, seed=1, progress=False)
    fig = res_t.plot(tmp_path / "t.png")
    assert_png(tmp_path / "t.png")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "t"
    info = res_t.cluster_info["hit_miss"]
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), info.threshold_upper)
    np.testing.assert_array_equal(ax.lines[2].get_ydata(), info.threshold_lower)


def test_outline_follows_cell_borders():
    """A 2 x 2 block in a 4 x 3 grid: 8 unit edges, on the midpoints between sample centres."""
    fig = Figure()
    ax = fig.add_subplot()
    mask = np.zeros((4, 3), bool)
    mask[1:3, 0:2] = True
    _outline(ax, mask, np.arange(4.0), np.array([10.0, 20.0, 40.0]), colors="white")
    (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    segments = {tuple(map(tuple, s)) for s in lines.get_segments()}
    assert len(segments) == 8
    xs = {x for s in segments for x, _ in s}
    ys = {y for s in segments for _, y in s}
    assert xs == {0.5, 1.5, 2.5} and ys == {5.0, 15.0, 30.0}  # the block's border: t 0.5..2.5, f 5..30


# ---------------------------------------------------------------------------
# Time x frequency, end to end
# ---------------------------------------------------------------------------


def test_time_frequency_end_to_end(res2d, data2d, tmp_path):
    assert res2d.fit.sample_shape == (8, 4)
    for term in res2d.terms:
        assert res2d.stat[term].shape == (8, 4)
        assert res2d.null[term].shape == (8, 4, 4)
        assert res2d.p_clust[term].shape == (8, 4)
        assert res2d.refit_failures[term].shape == (8, 4)
    table = res2d.clusters
    assert {"f_start", "f_stop"} <= set(table.columns) and len(table)
    assert set(table["f_start"]) <= set(data2d.freqs) and set(table["f_stop"]) <= set(data2d.freqs)
    # The effect grows with frequency around samples 2..5: the hit_miss peak is at the top frequency.
    peak = np.unravel_index(np.argmax(res2d.stat["hit_miss"]), (8, 4))
    assert peak[1] == 3 and 2 <= peak[0] <= 5

    fig = res2d.plot(tmp_path / "tf.png")
    assert_png(tmp_path / "tf.png")
    assert len(fig.axes) == 3 * len(res2d.terms)  # map, null histogram and a colorbar per term
    map_axes = [ax for ax in fig.axes if ax.get_ylabel() == "frequency"]
    assert [ax.get_title(loc="left") for ax in map_axes] == list(res2d.terms)
    for ax, term in zip(map_axes, res2d.terms):
        outlines = [c for c in ax.collections if isinstance(c, LineCollection)]
        assert len(outlines) == len(res2d.cluster_info[term].clusters)

    res2d.save(tmp_path / "tf.h5")
    back = cl.load_result(tmp_path / "tf.h5")
    assert_same_result(res2d, back)
    np.testing.assert_array_equal(back.fit.freqs, data2d.freqs)
    for term in res2d.terms:
        for c, c2 in zip(res2d.cluster_info[term].clusters, back.cluster_info[term].clusters):
            assert c2.start == c.start and c2.stop == c.stop and isinstance(c2.start, tuple)
            np.testing.assert_array_equal(c.mask, c2.mask)

    res2d.save(tmp_path / "tf.mat")
    with h5py.File(tmp_path / "tf.mat", "r") as f:
        ds = f["lme/hit_miss/F"]
        assert ds.shape == (4, 8)  # MATLAB: 8 times x 4 freqs, stored transposed
        np.testing.assert_array_equal(ds[()].T, res2d.stat["hit_miss"])
        np.testing.assert_array_equal(f["lme/hit_miss_region/p_clust"][()].T, res2d.p_clust["hit_miss:region"])
        np.testing.assert_array_equal(f["lme/freqs"][()][:, 0], data2d.freqs)
        assert {"f_start", "f_stop"} <= set(f["lme/clusters"])
    res2d.save(tmp_path / "tf.csv")
    csv = pd.read_csv(tmp_path / "tf.csv")
    assert len(csv) == 3 * 32 and "freq" in csv.columns


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_file(small, tmp_path_factory):
    """The small dataset as a MATLAB v7.3 file in the original's layout."""
    path = tmp_path_factory.mktemp("cli") / "lme_data.mat"
    d = small.design
    cl.io.write_mat73(path, {
        "sid": d["sid"].tolist(), "ch": d["ch"].tolist(), "hit_miss": d["hit_miss"].to_numpy(dtype=float),
        "region": d["region"].tolist(), "data": small.values,
    })
    return path


LONG_OPTIONS = ["--long", "--time", "--channels", "--value", "--channel", "--series", "--design"]


def _subparser(name):
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices[name]


@pytest.mark.parametrize("command, options", [
    ("run", ["--formula", "--data-key", "--no-check-channels", "--scheme", "--nperm", "--seed", "--jobs", "--no-progress", "--statistic", "--terms",
             "--tail", "--alpha", "--cluster-alpha", "--cluster-stat", "--correction", "--thresholds", "--quantile-method", "--checkpoint", "--ml",
             "--ddf", "--coding", "--level-order", "--na-action", "--test", "--family", "--weights", "--glmm-test", "--optimizer", "--engine", "--cross-check",
             "--contrast", "--out", "--plot",
             "--scheduler", "--slurm", "--slurm-jobs", "--slurm-cores", "--slurm-memory", "--slurm-walltime", "--slurm-queue",
             "--slurm-account", "--slurm-extra", "--slurm-python", "--slurm-log-dir", "--adjacency", *LONG_OPTIONS]),
    ("fit", ["--formula", "--data-key", "--no-check-channels", "--ml", "--ddf", "--coding", "--level-order", "--na-action",
             "--test", "--family", "--weights", "--glmm-test", "--optimizer", "--engine", "--cross-check", "--contrast", "--coefficients",
             "--out",
             *LONG_OPTIONS]),
    ("demo", ["--nperm", "--seed", "--jobs", "--engine", "--out-dir", "--no-progress"]),
])
def test_help_mentions_every_option(capsys, command, options):
    code, out, err = run_cli(capsys, [command, "--help"])
    assert code == 0 and not err
    declared = {s for a in _subparser(command)._actions for s in a.option_strings if s.startswith("--")}
    assert set(options) | {"--help"} == declared  # the list above is complete ...
    for option in options:
        assert option in out, f"{command} --help does not mention {option}"  # ... and all are documented


def test_console_script_help():
    script = Path(sys.executable).with_name("clusterlmer")
    assert script.exists(), "the clusterlmer console script is not installed in this environment"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    for word in ("demo", "run", "fit", "permutation"):
        assert word in proc.stdout


def test_no_command_prints_help(capsys):
    code, out, _ = run_cli(capsys, [])
    assert code == 2 and "demo" in out and "run" in out and "fit" in out


@pytest.mark.parametrize("n, words", [("0", ["Cross-check: not run"]),
                                      ("2", ["Cross-check: R engine refit at samples [0, 11]"])])
def test_cross_check_option_reaches_the_fit(capsys, seed_file, n, words):
    code, out, err = run_cli(capsys, ["fit", seed_file, "--formula", FORMULA, "--cross-check", n])
    assert code == 0, err
    for word in words:
        assert word in out


def test_fit_prints_summary_and_anova_and_writes_csv(capsys, seed_file, tmp_path):
    out_csv = tmp_path / "fit.csv"
    code, out, err = run_cli(capsys, ["fit", seed_file, "--formula", FORMULA, "--out", out_csv])
    assert code == 0, err
    assert "Mixed-model fits per sample (clusterlmer, engine: native)" in out and "Formula:" in out
    for term in ("hit_miss", "region", "hit_miss:region"):
        assert f"ANOVA at the peak of {term} " in out
    assert "Term" in out and "FStat" in out and "DF1" in out and "DF2" in out and "pValue" in out
    assert f"Wrote {out_csv}" in out
    table = pd.read_csv(out_csv)
    fit = cl.fit_timeseries(cl.load_mat(seed_file), FORMULA)
    expected = fit.to_frame()
    assert list(table.columns) == list(expected.columns)
    assert {"Term", "FStat", "DF1", "DF2", "pValue"} <= set(table.columns)
    assert len(table) == 4 * 12
    np.testing.assert_allclose(table["FStat"], expected["FStat"], rtol=1e-15)
    np.testing.assert_allclose(table["DF2"], expected["DF2"], rtol=1e-15)


def test_run_writes_mat_h5_png_and_matches_the_api(capsys, seed_file, tmp_path):
    mat, h5, png = tmp_path / "r.mat", tmp_path / "r.h5", tmp_path / "r.png"
    code, out, err = run_cli(capsys, ["run", seed_file, "--formula", FORMULA, "--nperm", "4", "--seed", "1",
                                      "--out", mat, "--out", h5, "--plot", png, "--no-progress"])
    assert code == 0, err
    assert "Cluster-based permutation test" in out and "Permutations:  4 (seed 1)" in out
    for path in (mat, h5, png):
        assert f"Wrote {path}" in out
        assert path.exists()
    assert_png(png)
    with h5py.File(mat, "r") as f:
        assert f["lme"].attrs["MATLAB_class"] == b"struct"
        assert {"hit_miss", "region", "hit_miss_region", "settings", "times"} <= set(f["lme"])
    from_cli = cl.load_result(h5)
    expected = cl.permutation_cluster_lmer(cl.load_mat(seed_file), FORMULA, n_permutations=4, seed=1,
                                           progress=False)
    assert_same_result(from_cli, expected)


def test_fit_engine_option_reaches_the_engine(capsys, seed_file, tmp_path):
    # The default is auto (native here); --engine r fits with lme4/lmerTest, equal within bobyqa's precision.
    tables = {}
    for engine in ("r", "native", "auto"):
        out_csv = tmp_path / f"{engine}.csv"
        code, out, err = run_cli(capsys, ["fit", seed_file, "--formula", FORMULA, "--engine", engine,
                                          "--out", out_csv])
        assert code == 0, err
        assert f"(clusterlmer, engine: {'native' if engine == 'auto' else engine})" in out
        tables[engine] = pd.read_csv(out_csv)
    pd.testing.assert_frame_equal(tables["auto"], tables["native"])
    assert not tables["r"]["FStat"].equals(tables["native"]["FStat"])
    np.testing.assert_allclose(tables["r"]["FStat"], tables["native"]["FStat"], rtol=1e-5)


def test_plot_name_without_suffix_is_saved_and_reported_as_png(capsys, seed_file, tmp_path):
    code, out, err = run_cli(capsys, ["run", seed_file, "--formula", FORMULA, "--nperm", "2", "--cross-check", "0",
                                      "--plot", tmp_path / "fig", "--no-progress"])
    assert code == 0, err
    assert f"Wrote {tmp_path / 'fig.png'}" in out
    assert_png(tmp_path / "fig.png")


@pytest.mark.parametrize("argv, code, words", [
    (["run", "{data}"], 2, ["required", "--formula"]),
    (["fit", "{data}"], 2, ["required", "--formula"]),
    (["run", "{data}", "--formula", FORMULA, "--nperm", "0"], 2, ["--nperm", "positive integer", "'0'"]),
    (["run", "{data}", "--formula", FORMULA, "--nperm", "abc"], 2, ["--nperm", "positive integer", "'abc'"]),
    (["run", "{data}", "--formula", FORMULA, "--jobs", "0"], 2, ["--jobs", "'0'"]),
    (["run", "{data}", "--formula", FORMULA, "--alpha", "2"], 2, ["--alpha", "between 0 and 1", "'2'"]),
    (["run", "{data}", "--formula", FORMULA, "--out", "x.txt"], 2,
     ["clusterlmer run: error", "--out", "x.txt", ".mat", ".h5", ".csv"]),
    (["run", "{data}", "--formula", FORMULA, "--plot", "fig.txt"], 2, ["--plot", "fig.txt", ".png", ".pdf"]),
    (["run", "{data}", "--formula", FORMULA, "--out", "{tmp}/no/such/dir/r.h5"], 2, ["--out", "does not exist"]),
    (["run", "{data}", "--formula", FORMULA, "--statistic", "z"], 2, ["--statistic", "invalid choice"]),
    (["fit", "{data}", "--formula", FORMULA, "--cross-check", "-1"], 2, ["--cross-check", "'-1'"]),
    (["bogus"], 2, ["invalid choice", "bogus"]),
    (["run", "{tmp}/missing.mat", "--formula", FORMULA], 1, ["no such data file", "missing.mat"]),
    (["fit", "{tmp}/missing.mat", "--formula", FORMULA], 1, ["no such data file", "missing.mat"]),
    (["run", "{data}", "--formula", "data ~ hit_miss * foo + (1|sid) + (1|sid:ch)", "--nperm", "2"], 1,
     ["foo", "not a design column", "hit_miss", "region"]),
    (["fit", "{data}", "--formula", "data ~ hit_miss + (1|sid) + (1|sid:electrode)"], 1,
     ["electrode", "not a design column"]),
    (["run", "{tmp}/notes.mat", "--formula", FORMULA], 1, ["notes.mat", "not a MATLAB .mat file"]),
    (["fit", "{data}", "--formula", "data ~ hit_miss +"], 1, ["formula"]),
])
def test_bad_arguments_give_one_line_errors(capsys, seed_file, tmp_path, argv, code, words):
    (tmp_path / "notes.mat").write_text("these are my notes, not a MAT file\n")
    argv = [a.format(data=seed_file, tmp=tmp_path) for a in argv]
    got, out, err = run_cli(capsys, argv)
    assert got == code, err
    assert out == ""
    message = err.strip()
    assert message and "\n" not in message, f"not one line: {err!r}"
    assert message.startswith("clusterlmer") and "error:" in message
    assert "Traceback" not in err
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob("*.png"))


def test_demo_small(capsys, tmp_path):
    code, out, err = run_cli(capsys, ["demo", "--nperm", "2", "--jobs", "1", "--out-dir", tmp_path, "--no-progress"])
    assert code == 0, err
    assert "Bundled 2-way sample" in out and "338 rows x 139 timepoints" in out
    assert "Permutations: 2" in out and "417 model fits" in out
    assert "Cluster-based permutation test" in out
    assert "Significant clusters (p < 0.05):" in out  # the cluster table's header
    for term in ("hit_miss", "region", "hit_miss:region"):
        assert f"ANOVA at the peak of {term} " in out
    assert "FStat" in out and "pValue" in out
    names = ("demo_results.mat", "demo_results.h5", "demo_figure.png")
    for name in names:
        assert (tmp_path / name).exists() and f"Wrote {os.path.join(tmp_path, name)}" in out
    assert_png(tmp_path / "demo_figure.png")
    back = cl.load_result(tmp_path / "demo_results.h5")
    assert back.n_permutations == 2 and back.fit.sample_shape == (139,) and back.seed == 0
    with h5py.File(tmp_path / "demo_results.mat", "r") as f:
        assert f["lme/hit_miss_region/F"].shape == (139, 1)
