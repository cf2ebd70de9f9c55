"""Permutation schemes named by any grouping of the formula (issue 14, item 3).

* ``within:G``, ``between:G``, ``between:G within:H`` and ``none`` for any
  grouping, crossed ones included; every permuted design keeps every row's
  groups and the counts each scheme promises;
* defaults derived for crossed subject x item designs (a within-subject,
  within-item condition within subjects; a between-subject group across
  subjects; an item-level variable across items), with notes saying so;
* the iEEG names are aliases drawing exactly the maps they always drew;
* errors name the formula's groupings, the level and the rows;
* ``--scheme VAR=SCHEME`` accepts the new names; the R engine fits them.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter

import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from clusterlmer.scheme_names import ALIASES, SCHEME_FORMS, SCHEMES, valid_schemes

from test_permute import crossed, handmade

F_SI = "y ~ cond * group + freq + (1|Subject) + (1|Item)"


def subject_item(n_subjects=12, n_items=8):
    """One row per subject x item: ``cond`` counterbalanced within subjects and items, ``group``
    between subjects, ``freq`` an item-level variable (3 of 8 items 'hi')."""
    rows = [{"Subject": f"s{s:02d}", "Item": f"i{i}", "cond": "ab"[(s + i) % 2], "group": ["ctl", "pat"][s % 2],
             "freq": "hi" if i < 3 else "lo"} for s in range(n_subjects) for i in range(n_items)]
    return pd.DataFrame(rows).sample(frac=1, random_state=0).reset_index(drop=True)  # rows in any order


def penicillin_like():
    """lme4's Penicillin layout: 24 plates x 6 samples, one diameter each (fully crossed), with a plate-level
    ``batch`` (two batches of 12 plates), a sample-level ``dose`` and a ``cond`` varying within both."""
    plates, samples = "abcdefghijklmnopqrstuvwx", "ABCDEF"
    rows = [{"plate": p, "sample": s, "batch": "b1" if i < 12 else "b2", "dose": ["low", "mid", "high"][j // 2],
             "cond": "uv"[(i + j) % 2]} for i, p in enumerate(plates) for j, s in enumerate(samples)]
    return pd.DataFrame(rows)


def cell_level():
    """``crossed()`` with ``kind`` constant within each sid:item cell but within no grouping."""
    return crossed().assign(kind=lambda f: ["k" + str((s + i) % 2) for s, i in zip(f["sid"], f["item"])])


def disconnected():
    """Two blocks of subjects x items sharing no subject or item: ``site`` is constant within both groupings."""
    return pd.DataFrame({"S": list("aabbccdd"), "I": list("xyxyzwzw"), "site": ["n"] * 4 + ["m"] * 4,
                         "cond": list("uvvuuvvu")})


def level_values(frame, keys, col):
    """Sorted values of ``col`` in every level of ``keys``."""
    return frame.groupby(keys, sort=True)[col].agg(lambda s: tuple(sorted(s)))


def constant_values(frame, keys, col):
    g = frame.groupby(keys, sort=True)[col]
    assert (g.nunique() == 1).all(), f"{col} is not constant within {keys}"
    return g.first()


def sha(a):
    return hashlib.sha256(np.ascontiguousarray(a, "<i8").tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# Derived schemes for crossed groupings
# ---------------------------------------------------------------------------

def test_subject_item_defaults_and_notes():
    d = subject_item()
    p = cl.make_permutations(d, F_SI, 200, seed=3)
    assert p.schemes == {"cond": "within:Subject", "group": "between:Subject", "freq": "between:Item"}
    assert p.varies == p.schemes
    assert p.describe()["permuted_among"].tolist() == [
        "rows within each of 12 Subject groups", "12 Subject groups", "8 Item groups"]
    notes = "\n".join(p.notes)
    assert ("'cond' varies within every grouping (Subject, Item) and each Subject:Item cell holds one row, so no "
            "shuffle keeps every row's groups: it is shuffled within each of the 12 Subject groups (the grouping "
            "with the most levels)") in notes
    assert "exchangeable only approximately" in notes
    assert "'group' is constant within each Subject group and varies within Item groups: permuted across the 12 " \
           "Subject groups (derived" in notes
    assert "'freq' is constant within each Item group and varies within Subject groups: permuted across the 8 " \
           "Item groups (derived" in notes
    cond_by_subject = level_values(d, "Subject", "cond")
    groups = constant_values(d, "Subject", "group").value_counts().sort_index()
    freqs = constant_values(d, "Item", "freq").value_counts().sort_index()
    moved, item_counts_changed = Counter(), 0
    for frame in p:
        assert frame[["Subject", "Item"]].equals(d[["Subject", "Item"]])
        # within:Subject keeps each subject's counts exactly ...
        pd.testing.assert_series_equal(level_values(frame, "Subject", "cond"), cond_by_subject)
        # ... while the items' counts are free to vary.
        item_counts_changed += not level_values(frame, "Item", "cond").equals(level_values(d, "Item", "cond"))
        # between:G keeps values constant within levels, and the number of levels per value.
        pd.testing.assert_series_equal(constant_values(frame, "Subject", "group").value_counts().sort_index(), groups)
        pd.testing.assert_series_equal(constant_values(frame, "Item", "freq").value_counts().sort_index(), freqs)
        for v in ("cond", "group", "freq"):
            moved[v] += not frame[v].equals(d[v])
    assert all(moved[v] > 150 for v in ("cond", "group", "freq")), moved
    assert item_counts_changed > 150


def test_penicillin_like_fully_crossed_defaults():
    d = penicillin_like()
    p = cl.make_permutations(d, "diameter ~ cond + batch + dose + (1|plate) + (1|sample)", 100, seed=0)
    # cond varies within plates and samples: shuffled within the grouping with more levels (24 plates > 6).
    assert p.schemes == {"cond": "within:plate", "batch": "between:plate", "dose": "between:sample"}
    doses = constant_values(d, "sample", "dose").value_counts().sort_index()
    for frame in p:
        pd.testing.assert_series_equal(level_values(frame, "plate", "cond"), level_values(d, "plate", "cond"))
        pd.testing.assert_series_equal(constant_values(frame, "sample", "dose").value_counts().sort_index(), doses)
        constant_values(frame, "plate", "batch")


def test_equal_numbers_of_levels_pick_the_first_grouping_in_the_formula():
    d = subject_item(8, 8)
    assert cl.make_permutations(d, "y ~ cond + (1|Item) + (1|Subject)", 2, seed=0).schemes == {"cond": "within:Item"}
    assert cl.make_permutations(d, "y ~ cond + (1|Subject) + (1|Item)", 2, seed=0).schemes == {
        "cond": "within:Subject"}


def test_within_cell_stays_the_default_when_cells_hold_several_rows():
    d = crossed()  # 4 sid x 3 item x 2 reps, cond varies within every cell
    p = cl.make_permutations(d, "y ~ cond + kind + (1|sid) + (1|item)", 20, seed=0)
    assert p.schemes == {"cond": "within-channel", "kind": "between:item"}
    assert p.spellings == {"within-channel": "within:sid:item", "between:item": "between:item"}
    assert any("'cond' varies within the sid:item cells: shuffled within each of them, so every row keeps its sid "
               "and item" in n for n in p.notes)


def test_nested_designs_keep_their_derived_schemes_and_notes():
    p = cl.make_permutations(handmade(), "y ~ cond * cond2 + group + depth + region + (1|sid) + (1|sid:ch)", 3,
                             seed=0)
    assert p.schemes == {"cond": "within-channel", "cond2": "within-channel", "group": "between-subject",
                         "depth": "between-channel", "region": "between-channel"}
    assert p.spellings == {"within-channel": "within:sid:ch", "between-subject": "between:sid",
                           "between-channel": "between:sid:ch"}
    assert all("derived" not in n for n in p.notes)  # the notes only name jointly permuted variables


# ---------------------------------------------------------------------------
# Aliases: the same maps as their spellings, and as always
# ---------------------------------------------------------------------------

ALIAS_CASES = [
    # (design, formula, variable, alias, spelling)
    ("sim", "data ~ hit_miss * region + (1|sid) + (1|sid:ch)", "hit_miss", "within-channel", "within:sid:ch"),
    ("sim", "data ~ hit_miss * region + (1|sid) + (1|sid:ch)", "region", "between-channel", "between:sid:ch"),
    ("sim", "data ~ hit_miss * region + (1|sid) + (1|sid:ch)", "region", "channel-within-subject",
     "between:sid:ch within:sid"),
    ("sim", "data ~ hit_miss * region + (1|sid/ch)", "region", "channel-within-subject", "between:ch:sid within:sid"),
    ("hand", "y ~ cond + group + (1|sid) + (1|sid:ch)", "group", "between-subject", "between:sid"),
    ("hand", "y ~ cond + group + (1|sid) + (1|sid:ch)", "group", "between-channel", "between:sid:ch"),
    ("site", "y ~ cond + group + (1|site) + (1|site:sid) + (1|site:sid:ch)", "group", "channel-within-subject",
     "between:site:sid:ch within:site"),
    ("crossed", "y ~ cond + kind + (1|sid) + (1|item)", "cond", "within-channel", "within:sid:item"),
    ("crossed", "y ~ cond + kind + (1|sid) + (1|item)", "kind", "between-channel", "between:item:sid"),
    ("single", "data ~ hit_miss * region + (1|chan)", "region", "between-subject", "between:chan"),
]


@pytest.fixture(scope="module")
def designs():
    sim = cl.simulate_ieeg("2way", n_subjects=4, n_channels=16, n_times=4, seed=1).design
    hand = handmade()
    return {"sim": sim, "hand": hand, "site": hand.assign(site=hand["sid"].map(dict(zip("ABCDE", "xxyyy")))),
            "crossed": crossed(), "single": sim.assign(chan=sim["sid"] + ":" + sim["ch"])}


@pytest.mark.parametrize("case", ALIAS_CASES, ids=lambda c: f"{c[3]}={c[4]}")
def test_every_alias_draws_the_maps_of_its_spelling(designs, case):
    name, formula, var, alias, spelling = case
    d = designs[name]
    a = cl.make_permutations(d, formula, 60, seed=5, schemes={var: alias})
    b = cl.make_permutations(d, formula, 60, seed=5, schemes={var: spelling})
    assert a.schemes[var] == alias and b.schemes[var] == spelling
    for v in a.row_maps:
        np.testing.assert_array_equal(a.row_maps[v], b.row_maps[v])
    assert a.spellings[alias] == b.spellings[spelling]
    assert a.describe()["permuted_among"].tolist() == b.describe()["permuted_among"].tolist()


def test_alias_and_spelling_are_one_scheme_permuted_jointly(designs):
    d = designs["sim"].assign(load=lambda f: np.where(np.arange(len(f)) % 2, "lo", "hi"))
    p = cl.make_permutations(d, "data ~ hit_miss + load + (1|sid) + (1|sid:ch)", 10, seed=0,
                             schemes={"load": "within:sid:ch"})
    assert p.schemes == {"hit_miss": "within-channel", "load": "within:sid:ch"}
    assert p.row_maps["hit_miss"] is p.row_maps["load"]
    assert any("'hit_miss', 'load' share the scheme 'within-channel' and are permuted jointly" in n for n in p.notes)


def test_seeded_maps_are_those_drawn_before_the_grouping_names(designs):
    """Digests of row maps drawn by the code before grouping-named schemes existed (37 permutations)."""
    h, site = designs["hand"], designs["site"]
    sim = cl.simulate_ieeg("2way", n_times=5, seed=1).design
    cases = [
        (sim, "data ~ hit_miss * region + (1|sid) + (1|sid:ch)", {}, 0,
         {"between-channel": "f7c474fbbd32caba", "within-channel": "37441c82f3deec29"}),
        (h, "y ~ cond * cond2 + group + depth + region + (1|sid) + (1|sid:ch)",
         {"group": "between-subject", "depth": "between-channel", "region": "channel-within-subject",
          "cond": "within-channel"}, 7,
         {"between-channel": "e754eab582295eca", "between-subject": "6c341179f127c73b",
          "channel-within-subject": "ac757398876dcf1e", "within-channel": "a54fa184f6b39c19"}),
        (site, "y ~ cond + group + depth + (1|site) + (1|site:sid) + (1|site:sid:ch)",
         {"group": "between-channel", "depth": "channel-within-subject"}, 0,
         {"between-channel": "c711cb75a1469ddd", "channel-within-subject": "c5cb94dcbe697e9b",
          "within-channel": "b521e0ca199122ce"}),
        (crossed(), "y ~ cond + kind + (1|sid) + (1|item)", {"kind": "between-channel"}, 7,
         {"between-channel": "6624fb6bf873ccfb", "within-channel": "58cfd8559ebc6f77"}),
    ]
    for d, formula, schemes, seed, digests in cases:
        p = cl.make_permutations(d, formula, 37, seed=seed, schemes=schemes)
        assert {s: sha(m) for s, m in p.maps.items()} == digests


# ---------------------------------------------------------------------------
# Explicit schemes on any grouping: what each keeps
# ---------------------------------------------------------------------------

def test_explicit_grouping_schemes_keep_their_counts():
    d = subject_item()
    p = cl.make_permutations(d, F_SI, 100, seed=1, schemes={"cond": "within:Item", "group": "none",
                                                            "freq": "none"})
    for frame in p:
        pd.testing.assert_series_equal(level_values(frame, "Item", "cond"), level_values(d, "Item", "cond"))
    # Channels permuted within subjects, spelled by grouping names.
    h = handmade()
    q = cl.make_permutations(h, "y ~ cond + region + (1|sid) + (1|sid:ch)", 100, seed=2,
                             schemes={"region": "between:sid:ch within:sid", "cond": "within:sid"})
    region = constant_values(h, ["sid", "ch"], "region").groupby(level="sid").agg(lambda s: tuple(sorted(s)))
    cond = level_values(h, "sid", "cond")
    changed = 0
    for frame in q:
        r = constant_values(frame, ["sid", "ch"], "region").groupby(level="sid").agg(lambda s: tuple(sorted(s)))
        pd.testing.assert_series_equal(r, region)
        pd.testing.assert_series_equal(level_values(frame, "sid", "cond"), cond)  # within:sid: subject counts
        changed += not level_values(frame, ["sid", "ch"], "cond").equals(level_values(h, ["sid", "ch"], "cond"))
    assert changed > 50  # rows cross channels within their subject


def test_cell_level_variable_between_cells_within_subject():
    d = cell_level()
    p = cl.make_permutations(d, "y ~ kind + (1|sid) + (1|item)", 50, seed=0,
                             schemes={"kind": "between:sid:item within:sid"})
    assert p.describe()["permuted_among"].tolist() == ["sid:item groups within each of 4 sid groups"]
    by_sid = constant_values(d, ["sid", "item"], "kind").groupby(level="sid").agg(lambda s: tuple(sorted(s)))
    for frame in p:
        cells = constant_values(frame, ["sid", "item"], "kind")
        pd.testing.assert_series_equal(cells.groupby(level="sid").agg(lambda s: tuple(sorted(s))), by_sid)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

HAND = "y ~ cond + region + (1|sid) + (1|sid:ch)"
REFUSED = [
    # unknown groupings and forms name the formula's groupings and the valid schemes
    (subject_item, F_SI, {"cond": "within:Block"},
     r"schemes\['cond'\]='within:Block': 'Block' is not a grouping of the formula; the formula's groupings are "
     r"Subject, Item and their cell Subject:Item; valid schemes for them: within:Subject, within:Item, "
     r"within:Subject:Item, between:Subject, between:Item, between:Subject:Item, between:Subject:Item "
     r"within:Subject, between:Subject:Item within:Item, none \(or an alias: within-channel, "),
    (handmade, HAND, {"cond": "between:sid:ch within:ch"},
     r"'ch' is not a grouping of the formula; the formula's groupings are sid, sid:ch;"),
    (subject_item, F_SI, {"cond": "within Subject"},
     r"Allowed values are " + ", ".join(repr(s) for s in SCHEMES) + r", but got 'within Subject' instead\. "
     r"Here the formula's groupings are Subject, Item"),
    # between:G on a variable that varies within G's levels names a level and its rows
    (crossed, "y ~ cond + (1|sid) + (1|item)", {"cond": "between:item"},
     r"schemes\['cond'\]='between:item': 'cond' varies within sid:item groups \(e.g. sid:item = 0:0\), whose "
     r"rows 0, 1 hold u, v, so it cannot be permuted as a sid:item-level value; use 'within:sid:item'"),
    # within:G for a variable constant within another grouping's levels, or within G's
    (subject_item, F_SI, {"freq": "within:Subject"},
     r"schemes\['freq'\]='within:Subject': 'freq' is constant within every Item group; shuffled within each "
     r"Subject group it would vary within them, which the observed data never do. Use 'between:Item'\."),
    (handmade, HAND, {"region": "within:sid"},
     r"'region' is constant within every sid:ch group; shuffled within each sid group .* Use 'between:sid:ch "
     r"within:sid'\."),
    (subject_item, F_SI, {"group": "within:Subject"},
     r"'group' is constant within every Subject group, so shuffling within them cannot change it; use "
     r"'between:Subject'"),
    # between:G within:H needs G nested in H
    (subject_item, F_SI, {"freq": "between:Item within:Subject"},
     r"schemes\['freq'\]='between:Item within:Subject': the Item groups are not nested in the Subject groups "
     r"\(e.g. Item = i\d lies in several\), so they cannot be permuted within them; use 'between:Item'"),
    # subject aliases on crossed groupings name the groupings instead
    (subject_item, F_SI, {"group": "between-subject"},
     r"so there is no subject level to permute at; use 'within-channel', 'between-channel' or 'none', or name a "
     r"grouping \('between:Item', 'between:Subject'\)"),
    # derived defaults that are refused: constant within two crossed groupings ...
    (disconnected, "y ~ cond + site + (1|S) + (1|I)", {},
     r"'site' is constant within each S group and within each I group, and those groupings cross: .*Pass "
     r"schemes=\{'site': '\.\.\.'\} \(CLI: --scheme site=\.\.\.\) explicitly \(e.g. 'between:S' or 'none'\)"),
    # ... and constant within cells of several rows while varying within every grouping
    (cell_level, "y ~ kind + (1|sid) + (1|item)", {},
     r"explicitly \('between:sid:item within:sid', 'between-channel' or 'none'\)"),
]


@pytest.mark.parametrize("design, formula, schemes, message", REFUSED)
def test_refused_schemes_say_why(design, formula, schemes, message):
    with pytest.raises(ValueError, match=message):
        cl.make_permutations(design(), formula, 2, seed=0, schemes=schemes)


def test_between_on_a_varying_variable_names_the_level_and_rows():
    d = subject_item()
    subject = d["Subject"].iloc[0]  # levels are numbered in order of appearance: the first is named
    first = d.index[d["Subject"] == subject][:6]
    with pytest.raises(ValueError) as err:
        cl.make_permutations(d, F_SI, 2, seed=0, schemes={"cond": "between:Subject"})
    msg = str(err.value)
    assert msg.startswith("schemes['cond']='between:Subject': 'cond' varies between the Subject:Item groups of "
                          "one Subject, so it cannot be permuted as a Subject-level value (e.g. Subject = "
                          f"{subject}, whose rows {', '.join(map(str, first))}, ... (8 in all) hold ")
    assert msg.endswith("use 'within:Subject'.")


def test_explicit_schemes_where_no_default_is_derived():
    p = cl.make_permutations(disconnected(), "y ~ cond + site + (1|S) + (1|I)", 2, seed=0,
                             schemes={"site": "between:S"})
    assert p.schemes["site"] == "between:S"


def test_constants_list_forms_then_aliases():
    assert SCHEMES == SCHEME_FORMS + tuple(ALIASES)
    assert SCHEME_FORMS == ("within:G", "between:G", "between:G within:H", "none")
    f = cl.parse_formula("y ~ x + (1|sid/ch)")
    assert valid_schemes(f) == ["within:sid", "within:sid:ch", "between:sid", "between:sid:ch",
                                "between:sid:ch within:sid", "none"]


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    return cl.simulate_ieeg(kind="2way", n_subjects=4, n_channels=12, n_times=6, seed=3)


@pytest.fixture
def mat_file(tiny, tmp_path):
    from conftest import write_small_mat

    return write_small_mat(tmp_path / "input.mat", tiny)


def run_cli(capsys, *argv):
    from conftest import run_cli

    return run_cli(capsys, argv)


@pytest.mark.filterwarnings("ignore:with 3 permutations")
def test_cli_new_names_reach_the_permutations(capsys, mat_file, tmp_path):
    out_h5 = tmp_path / "r.h5"
    code, out, err = run_cli(capsys, "run", mat_file, "--formula", "data ~ hit_miss * region + (1|sid) + (1|sid:ch)",
                             "--nperm", "3", "--engine", "native", "--cross-check", "0", "--no-progress",
                             "--scheme", "region=between:sid:ch within:sid", "--scheme", "hit_miss=within:sid:ch",
                             "--out", out_h5)
    assert code == 0, err
    assert "region: between:sid:ch within:sid (among sid:ch groups within each of 4 sid groups)" in out
    assert cl.load_result(out_h5).schemes == {"hit_miss": "within:sid:ch", "region": "between:sid:ch within:sid"}


@pytest.mark.parametrize("scheme, words", [
    ("hit_miss=within:Block", ["--scheme hit_miss=within:Block: 'Block' is not a grouping of the formula; the "
                               "formula's groupings are sid, item and their cell sid:item; valid schemes for them: "
                               "within:sid, within:item, within:sid:item, between:sid,", "between-channel"]),
    ("hit_miss=between:sid within:Block", ["--scheme 'hit_miss=between:sid within:Block': 'Block' is not a "
                                           "grouping"]),
    ("hit_miss=shuffle", ["unknown scheme 'shuffle' in 'hit_miss=shuffle'; use within:G, between:G, "
                          "between:G within:H (G, H: groupings as the formula writes them", "between-channel"]),
])
def test_cli_scheme_errors_before_loading(capsys, monkeypatch, mat_file, scheme, words):
    def refuse(*args, **kwargs):
        raise AssertionError("the data were loaded before the bad scheme was refused")

    monkeypatch.setattr(cl, "load_mat", refuse)
    code, _, err = run_cli(capsys, "run", mat_file, "--formula", "data ~ hit_miss + (1|sid) + (1|item)",
                           "--scheme", scheme)
    assert code == 2, err
    for word in words:
        assert word in err


def test_cli_help_lists_the_forms(capsys):
    with pytest.raises(SystemExit):
        cl.cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "within:G, between:G, between:G within:H (G, H: groupings as the formula writes them" in text
    assert "aliases: within-channel, between-channel, channel-within-subject, between-" in text  # wrapped there


# ---------------------------------------------------------------------------
# The full analysis with the R engine on a small crossed design
# ---------------------------------------------------------------------------

def test_crossed_schemes_reach_the_r_fits():
    d = subject_item(6, 4)
    rng = np.random.default_rng(4)
    subject = pd.factorize(d["Subject"])[0]
    values = rng.normal(size=(len(d), 2)) + rng.normal(size=6)[subject][:, None]
    data = cl.TimeseriesData(design=d, values=values, times=np.arange(2.0))
    formula = "data ~ cond + group + freq + (1|Subject) + (1|Item)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too few permutations to reach alpha
        res = cl.permutation_cluster_lmer(data, formula, n_permutations=2, seed=9, engine="r", progress=False)
    assert res.schemes == {"cond": "within:Subject", "group": "between:Subject", "freq": "between:Item"}
    assert "shuffled within each of the 6 Subject groups" in res.summary()
    perms = cl.make_permutations(d, formula, 2, seed=9)
    for k in range(2):
        refit = cl.fit_timeseries(cl.TimeseriesData(design=perms[k], values=values, times=data.times), formula,
                                  levels=res.fit.levels, engine="r")
        for term in res.terms:
            np.testing.assert_array_equal(res.null[term][:, k], refit.F[refit.terms.index(term)])
