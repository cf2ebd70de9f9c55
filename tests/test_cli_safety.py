"""Options, outputs and checkpoints checked before any fit; hints that name the interface in use."""

from __future__ import annotations

import os
import re

import h5py
import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from clusterlmer._checks import called_from_cli, option_hint
from clusterlmer.checkpoint import CheckpointError
from clusterlmer.io import MatFileError

FORMULA = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"


def test_option_hint_names_the_cli_flag_under_the_cli():
    python, cli = "schemes={'region': 'none'}", "--scheme region=none"
    assert option_hint(python, cli) == "schemes={'region': 'none'} (CLI: --scheme region=none)"
    with called_from_cli():
        assert option_hint(python, cli) == "--scheme region=none"
        assert option_hint("optimizer_options={...}") == "optimizer_options={...}"  # no CLI flag: Python form
    assert option_hint(python, cli).startswith("schemes=")  # the flag is reset after the block


# ---------------------------------------------------------------- checkpoints and outputs, from Python

@pytest.fixture(scope="module")
def tiny():
    return cl.simulate_ieeg(kind="2way", n_subjects=4, n_channels=12, n_times=6, seed=3)


@pytest.fixture
def no_fit(monkeypatch):
    """Make reaching the observed fit an error: the checks under test must come before it."""
    import clusterlmer.analysis

    def refuse(*args, **kwargs):
        raise AssertionError("the observed fit started before the bad argument was refused")

    monkeypatch.setattr(clusterlmer.analysis, "fit_plan", refuse)


def run(data, **kwargs):
    return cl.permutation_cluster_lmer(data, FORMULA, n_permutations=2, seed=1, progress=False, engine="native",
                                       cross_check=0, **kwargs)


def test_checkpoint_on_a_mat_file_is_refused_without_advising_deletion(tiny, tmp_path, no_fit):
    from conftest import write_small_mat

    mat = write_small_mat(tmp_path / "input.mat", tiny)
    before = mat.read_bytes()
    with pytest.raises(CheckpointError) as info:
        run(tiny, checkpoint=mat)
    message = str(info.value)
    assert "is not a clusterlmer checkpoint" in message and "MATLAB v7.3" in message
    assert "Pass another checkpoint path" in message and "delete" not in message.lower()
    assert mat.read_bytes() == before


def test_damaged_checkpoint_is_called_damaged_and_another_path_comes_first(tiny, tmp_path):
    path = tmp_path / "run.h5"
    run(tiny, checkpoint=path)
    with h5py.File(path, "a") as f:
        del f["values"]
    with pytest.raises(CheckpointError, match=r"cannot be read .*probably damaged.*Pass another checkpoint path "
                                              r"to start afresh \(the old checkpoint may be deleted"):
        run(tiny, checkpoint=path)


def test_checkpoint_of_a_newer_format_is_refused(tiny, tmp_path, no_fit):
    path = tmp_path / "run.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "clusterlmer-checkpoint"
        f.attrs["version"] = 99
    with pytest.raises(CheckpointError, match="written by a newer clusterlmer"):
        run(tiny, checkpoint=path)


def test_checkpoint_in_a_missing_folder_is_refused_before_the_fit(tiny, tmp_path, no_fit):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match=f"checkpoint .*the folder '{missing}' does not exist"):
        run(tiny, checkpoint=missing / "run.h5")
    assert not missing.exists()  # not created behind the user's back


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_checkpoint_in_an_unwritable_folder_is_refused_before_the_fit(tiny, no_fit):
    with pytest.raises(OSError, match=r"checkpoint '/proc/run.h5' cannot be written: creating a file in '/proc' "
                                      r"fails \(.+\)"):
        run(tiny, checkpoint="/proc/run.h5")


def test_checkpoint_that_is_a_folder_is_refused(tiny, tmp_path, no_fit):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        run(tiny, checkpoint=tmp_path)


@pytest.mark.parametrize("name, value, message", [
    ("quantile_method", "foo", "'quantile_method' parameter"),
    ("engine", "fast", "'engine' parameter"),
    ("terms", "nope", "terms nope are not in the model"),
    ("terms", 3, "terms must be a term name"),
    ("schemes", "none", "schemes must be a dict"),
    ("levels", ["a"], "levels must be a dict"),
    ("optimizer_options", [1], "optimizer_options must be a dict"),
    ("cross_check", -1, "cross_check must be 0 or a positive"),
    ("progress", "yes", "progress must be True or False"),
    ("checkpoint", 3, "checkpoint must be a file path"),
])
def test_every_option_is_checked_before_the_observed_fit(tiny, no_fit, name, value, message):
    kwargs = {"engine": "native", "cross_check": 0, name: value}
    with pytest.raises((ValueError, TypeError), match=message):
        cl.permutation_cluster_lmer(tiny, FORMULA, n_permutations=2, seed=1,
                                    **{"progress": False, **kwargs})


# ---------------------------------------------------------------- the command line

@pytest.fixture
def mat_file(tiny, tmp_path):
    from conftest import write_small_mat

    return write_small_mat(tmp_path / "input.mat", tiny)


def cli(capsys, *argv):
    from conftest import run_cli

    return run_cli(capsys, argv)


def no_load(monkeypatch):
    """Make loading the data an error: the path checks under test must come before it."""
    import clusterlmer

    def refuse(*args, **kwargs):
        raise AssertionError("the data were loaded before the bad path was refused")

    monkeypatch.setattr(clusterlmer, "load_mat", refuse)


@pytest.mark.parametrize("flag, name", [("--out", "{input}"), ("--out", "{link}"), ("--checkpoint", "{input}"),
                                        ("--plot", "{dir}/fig.png")])
def test_cli_refuses_an_output_that_is_the_input(capsys, monkeypatch, mat_file, flag, name):
    link = mat_file.with_name("link.mat")
    link.symlink_to(mat_file.name)
    path = name.format(input=mat_file, link=link, dir=mat_file.parent)
    data = mat_file
    if flag == "--plot":  # a figure named like the data file (which here is a .png)
        data = mat_file.parent / "fig.png"
        mat_file.rename(data)
    before = data.read_bytes()
    no_load(monkeypatch)
    code, out, err = cli(capsys, "run", data, "--formula", FORMULA, "--nperm", "2", flag, path)
    assert code == 2 and out == ""
    assert f"{flag} {path!r} is the input data file" in err and "would destroy the data" in err
    assert data.read_bytes() == before


def test_cli_fit_refuses_a_csv_that_is_the_input(capsys, monkeypatch, mat_file):
    no_load(monkeypatch)
    code, _, err = cli(capsys, "fit", mat_file, "--formula", FORMULA, "--out", mat_file)
    assert code == 2 and "is the input data file" in err


def test_cli_refuses_two_outputs_in_one_file(capsys, monkeypatch, mat_file, tmp_path):
    no_load(monkeypatch)
    code, _, err = cli(capsys, "run", mat_file, "--formula", FORMULA, "--out", tmp_path / "r.h5",
                       "--checkpoint", tmp_path / "r.h5")
    assert code == 2 and "are the same file" in err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
@pytest.mark.parametrize("flag, path, words", [
    ("--out", "/proc/r.h5", ["--out '/proc/r.h5' cannot be written", "creating a file in '/proc' fails ("]),
    ("--plot", "/proc/fig.png", ["--plot '/proc/fig.png' cannot be written"]),
    ("--checkpoint", "/proc/c.h5", ["--checkpoint '/proc/c.h5' cannot be written"]),
    ("--checkpoint", "{tmp}/no_such_folder/c.h5", ["--checkpoint", "no_such_folder' does not exist"]),
    ("--checkpoint", "{tmp}/notes.h5", ["is not a clusterlmer checkpoint", "it is not an HDF5 file"]),
])
def test_cli_checks_every_output_before_loading(capsys, monkeypatch, mat_file, tmp_path, flag, path, words):
    (tmp_path / "notes.h5").write_text("my notes")
    no_load(monkeypatch)
    code, out, err = cli(capsys, "run", mat_file, "--formula", FORMULA, flag, path.format(tmp=tmp_path))
    assert code == 2 and out == ""
    for word in words:
        assert word in err
    assert "delete" not in err.lower()
    assert (tmp_path / "notes.h5").read_text() == "my notes"


def test_cli_quantile_method_is_refused_by_the_parser(capsys, monkeypatch, mat_file):
    no_load(monkeypatch)
    code, _, err = cli(capsys, "run", mat_file, "--formula", FORMULA, "--quantile-method", "foo")
    assert code == 2 and "--quantile-method: invalid choice: 'foo'" in err and "'hazen'" in err


@pytest.mark.parametrize("schemes, words", [
    (["region"], ["--scheme: expected VAR=SCHEME", "'region'"]),
    (["region=foo"], ["unknown scheme 'foo'", "between-channel"]),
    (["region=none", "region=between-channel"], ["'region' two schemes"]),
])
def test_cli_scheme_syntax_errors(capsys, monkeypatch, mat_file, schemes, words):
    no_load(monkeypatch)
    argv = [a for s in schemes for a in ("--scheme", s)]
    code, _, err = cli(capsys, "run", mat_file, "--formula", FORMULA, *argv)
    assert code == 2
    for word in words:
        assert word in err


def test_cli_scheme_reaches_the_permutations(capsys, mat_file, tmp_path):
    out_h5 = tmp_path / "r.h5"
    code, out, err = cli(capsys, "run", mat_file, "--formula", FORMULA, "--nperm", "3", "--engine", "native",
                         "--cross-check", "0", "--no-progress", "--scheme", "region=none", "--terms", "hit_miss",
                         "--out", out_h5)
    assert code == 0, err
    assert re.search(r"region: (none|not permuted)", out)
    assert cl.load_result(out_h5).schemes == {"hit_miss": "within-channel", "region": "none"}


# ---------------------------------------------------------------- the formula's response names the variable

@pytest.fixture
def two_vars(tiny, tmp_path):
    """A MAT file holding two response variables: ``data`` (the simulation) and ``power`` (other values)."""
    d = tiny.design
    power = np.random.default_rng(0).normal(size=tiny.values.shape) ** 2
    path = tmp_path / "two_vars.mat"
    cl.io.write_mat73(path, {"sid": d["sid"].tolist(), "ch": d["ch"].tolist(),
                             "hit_miss": d["hit_miss"].to_numpy(dtype=float), "region": d["region"].tolist(),
                             "data": tiny.values, "power": power})
    return path, power


POWER = "power ~ hit_miss + (1|sid) + (1|sid:ch)"


def test_cli_fits_the_variable_the_formula_names(capsys, two_vars, tmp_path):
    path, power = two_vars
    code, out, err = cli(capsys, "fit", path, "--formula", POWER, "--cross-check", "0", "--out", tmp_path / "f.csv")
    assert code == 0, err
    assert "responses from the variable 'power'" in out and "Formula:     power ~" in out
    from_cli = pd.read_csv(tmp_path / "f.csv")
    expected = cl.fit_timeseries(cl.load_mat(path, data_key="power"), POWER, cross_check=0).to_frame()
    np.testing.assert_array_equal(from_cli["FStat"], expected["FStat"])
    on_data = cl.fit_timeseries(cl.load_mat(path), POWER.replace("power", "data"), cross_check=0).to_frame()
    assert not np.allclose(from_cli["FStat"], on_data["FStat"])  # it really is another variable


@pytest.mark.parametrize("argv, words", [
    (["--formula", POWER.replace("power", "data"), "--data-key", "power"],
     ["--data-key 'power' differs from the formula's response 'data'", "'power ~ ...'"]),
    (["--formula", POWER.replace("power", "y")],
     ["has no variable 'y'", "power (", "on the formula's left-hand side, e.g. 'data ~ ...'"]),
])
def test_cli_refuses_a_response_mismatch_naming_both(capsys, two_vars, argv, words):
    code, out, err = cli(capsys, "fit", two_vars[0], *argv)
    assert code == 1 and out == ""
    for word in words:
        assert word in err
    assert "data_key=" not in err  # no Python-only advice on the command line


def test_python_refuses_a_formula_naming_another_variable(two_vars):
    data = cl.load_mat(two_vars[0])
    assert data.response == "data"
    with pytest.raises(ValueError, match=r"the formula's response 'power' is not the data's: the values were loaded "
                                         r"from 'data'.*data_key='power'"):
        cl.fit_timeseries(data, POWER)
    with pytest.raises(ValueError, match="the formula's response 'power' is not the data's"):
        cl.permutation_cluster_lmer(data, POWER, n_permutations=2, progress=False)
    power = cl.load_mat(two_vars[0], data_key="power")
    assert power.response == "power"
    np.testing.assert_array_equal(power.values, two_vars[1])
    with pytest.raises(MatFileError, match=r"has no variable 'y'.*Pass data_key='data'"):
        cl.load_mat(two_vars[0], data_key="y")


def test_unnamed_responses_take_the_formula_label(tiny):
    assert tiny.response is None  # simulated (and wide from_dataframe) data: the left-hand side is a label
    fit = cl.fit_timeseries(tiny, POWER, engine="native", cross_check=0)
    assert fit.formula.startswith("power ~")


# ---------------------------------------------------------------- trial-level data

@pytest.fixture
def trial_file(tmp_path):
    """3 trials per channel and hit_miss level (4 subjects x 4 channels), hit_miss effect in samples 2-4."""
    rng = np.random.default_rng(1)
    rows = [(f"s{s:02d}", f"ch{c}", hm, "hc" if c % 2 else "phrc", t + 1.0)
            for s in range(4) for c in range(4) for hm in (0.0, 1.0) for t in range(3)]
    sid, ch, hm, region, trial = map(list, zip(*rows))
    data = rng.normal(size=(len(rows), 8)) + np.asarray(hm)[:, None] * np.r_[0, 0, 2, 2, 2, 0, 0, 0]
    path = tmp_path / "trials.mat"
    cl.io.write_mat73(path, {"sid": sid, "ch": ch, "hit_miss": np.asarray(hm), "region": region,
                             "trial": np.asarray(trial), "data": data})
    return path


def test_trial_level_file_runs_end_to_end_from_the_cli(capsys, trial_file, tmp_path):
    code, out, err = cli(capsys, "run", trial_file, "--formula", FORMULA, "--nperm", "9", "--seed", "2",
                         "--engine", "native", "--cross-check", "0", "--no-progress")
    assert code == 1 and out == ""
    assert "single trials?" in err and "--no-check-channels" in err and "check_channels=False" not in err
    h5 = tmp_path / "trials.h5"
    code, out, err = cli(capsys, "run", trial_file, "--formula", FORMULA, "--nperm", "9", "--seed", "2",
                         "--engine", "native", "--cross-check", "0", "--no-progress", "--no-check-channels",
                         "--out", h5)
    assert code == 0, err
    assert "(96 rows x 8 samples)" in out and "hit_miss: within-channel" in out
    from_cli = cl.load_result(h5)
    expected = cl.permutation_cluster_lmer(cl.load_mat(trial_file, check_channels=False), FORMULA,
                                           n_permutations=9, seed=2, engine="native", cross_check=0,
                                           progress=False)
    for term in expected.terms:
        np.testing.assert_array_equal(from_cli.null[term], expected.null[term])
        assert np.isfinite(expected.null[term]).all()  # every permuted trial-level design was fitted
    # hit_miss is shuffled among each channel's 6 trials: every channel keeps 3 trials per level, and
    # trials move between levels (not only whole channels swapping their labels).
    design = cl.load_mat(trial_file, check_channels=False).design
    perms = cl.make_permutations(design, FORMULA, 5, seed=2)
    moved = 0
    for permuted in perms:
        counts = permuted.groupby(["sid", "ch"])["hit_miss"].agg(["sum", "size"])
        assert (counts["sum"] == 3).all() and (counts["size"] == 6).all()
        moved += int((permuted["hit_miss"] != design["hit_miss"]).sum())
    assert moved > 0


# ---------------------------------------------------------------- hints name the CLI flag from the CLI

@pytest.mark.parametrize("argv, cli_words, python_words", [
    (["run", "--statistic", "F", "--tail", "0", "--nperm", "2"], ["only --tail 1 makes sense", "use --statistic t"],
     ["tail=1 (CLI: --tail 1)"]),
    (["fit", "--ml", "--ddf", "kenward-roger"], ["leave out --ml"], ["use reml=True (CLI: leave out --ml)"]),
])
def test_hints_name_the_cli_flag_from_the_cli(capsys, mat_file, tiny, argv, cli_words, python_words):
    code, out, err = cli(capsys, argv[0], mat_file, "--formula", FORMULA, *argv[1:])
    assert code == 1 and out == ""
    for word in cli_words:
        assert word in err
    assert "=" not in err.split("error:", 1)[1].replace("ddf='kenward-roger'", "")  # no Python keyword left
    kwargs = dict(statistic="F", tail=0) if argv[0] == "run" else dict(reml=False, ddf="kenward-roger")
    call = cl.permutation_cluster_lmer if argv[0] == "run" else cl.fit_timeseries
    with pytest.raises(ValueError) as info:
        call(tiny, FORMULA, **kwargs)
    for word in python_words:
        assert word in str(info.value)
