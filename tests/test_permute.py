"""Permutations that keep the random-effects structure.

Every permuted design is checked: rows keep their subject and channel, labels
move only at the level where each variable varies, group sizes stay as
observed (channels of unequal size must never trade rows). Pure Python.
"""

from collections import Counter

import numpy as np
import pandas as pd
import pytest

import clusterlmer as cl
from clusterlmer.design import build_design
from clusterlmer.io import check_one_row_per_level
from clusterlmer.permute import SCHEMES, Permutations, make_permutations

F2 = "data ~ hit_miss * region + (1|sid) + (1|sid:ch)"
F1 = "data ~ hit_miss + (1|sid) + (1|sid:ch)"
FH = "y ~ cond * cond2 + group + depth + region + (1|sid) + (1|sid:ch)"
N = 200


@pytest.fixture(scope="module")
def sim2():
    return cl.simulate_ieeg("2way", n_times=5, seed=1)


@pytest.fixture(scope="module")
def d2(sim2):
    return sim2.design


@pytest.fixture(scope="module")
def d1():
    return cl.simulate_ieeg("1way", n_times=5, seed=2).design


@pytest.fixture(scope="module")
def perms2(d2):
    return make_permutations(d2, F2, N, seed=11)


def handmade():
    """5 subjects of unequal size; channels of 1-4 rows in varying orders; a subject-level
    group, a numeric channel-level depth and a region that varies within subjects."""
    cells = [("a", "x"), ("b", "x"), ("c", "y"), ("a", "y")]
    sizes = {"A": 3, "B": 2, "C": 4, "D": 1, "E": 3}
    group = {"A": "patient", "B": "control", "C": "patient", "D": "control", "E": "control"}
    rows, n = [], 0
    for s, n_ch in sizes.items():
        for c in range(n_ch):
            n += 1
            n_rows = 3 + (n % 2)
            order = np.roll(np.arange(n_rows), n)  # different row orders per channel
            for r in order:
                rows.append({"sid": s, "ch": f"e{c + 1}", "cond": cells[r][0], "cond2": cells[r][1],
                             "group": group[s], "depth": round(0.5 + 0.37 * n, 2),
                             "region": "hc" if (n * 7) % 3 == 0 else "phrc"})
    return pd.DataFrame(rows)


def channel_key(frame):
    return list(zip(frame["sid"], frame["ch"]))


def per_unit(frame, keys, col):
    return frame.groupby(keys, sort=False)[col].agg(lambda s: tuple(sorted(s)))


def channel_values(frame, col, keys=("sid", "ch")):
    g = frame.groupby(list(keys), sort=False)[col]
    assert (g.nunique() == 1).all(), f"{col} is not constant within {keys}"
    return g.first()


# ---------------------------------------------------------------------------
# Derived schemes
# ---------------------------------------------------------------------------

def test_derived_schemes_original_formulas(d2, d1):
    p2 = make_permutations(d2, F2, 3, seed=0)
    assert p2.schemes == {"hit_miss": "within-channel", "region": "between-channel"}
    assert p2.varies == {"hit_miss": "within-channel", "region": "between-channel"}
    assert p2.channel_columns == ("sid", "ch") and p2.subject_columns == ("sid",)
    assert p2.n_channels == 169 and p2.n_subjects == 15
    p1 = make_permutations(d1, F1, 3, seed=0)
    assert p1.schemes == {"hit_miss": "within-channel"}
    assert set(p1.maps) == {"within-channel"}


def test_slash_grouping_same_as_expanded(d2):
    a = make_permutations(d2, "data ~ hit_miss * region + (1|sid/ch)", 20, seed=4)
    b = make_permutations(d2, F2, 20, seed=4)
    assert a.schemes == b.schemes and a.fingerprint() == b.fingerprint()


def test_derived_schemes_handmade():
    p = make_permutations(handmade(), FH, 3, seed=0)
    assert p.schemes == {"cond": "within-channel", "cond2": "within-channel", "group": "between-subject",
                         "depth": "between-channel", "region": "between-channel"}
    assert p.n_subjects == 5 and p.n_channels == 13


def test_describe_and_repr(perms2):
    table = perms2.describe()
    assert list(table.columns) == ["variable", "varies", "scheme", "permuted_among"]
    assert table["variable"].tolist() == ["hit_miss", "region"]
    assert table["permuted_among"].tolist() == ["rows within each of 169 sid:ch groups", "169 sid:ch groups"]
    assert "200 permutations" in repr(perms2) and "seed=11" in repr(perms2)


# ---------------------------------------------------------------------------
# Structure kept on every permutation
# ---------------------------------------------------------------------------

def test_original_layout_every_permutation(d2, perms2):
    observed_region = channel_values(d2, "region")
    counts = observed_region.value_counts()
    assert counts["phrc"] != counts["hc"]  # unequal sizes: swapping the two groups' labels wholesale would change them
    observed_hm = per_unit(d2, ["sid", "ch"], "hit_miss")
    assert len(perms2) == N
    changed = 0
    for k, frame in enumerate(perms2):
        assert frame.index.equals(d2.index) and list(frame.columns) == list(d2.columns)
        assert (frame.dtypes == d2.dtypes).all()
        assert frame[["sid", "ch"]].equals(d2[["sid", "ch"]])
        pd.testing.assert_series_equal(per_unit(frame, ["sid", "ch"], "hit_miss"), observed_hm)
        region = channel_values(frame, "region")
        pd.testing.assert_series_equal(region.value_counts(), counts)
        changed += not frame["region"].equals(d2["region"])
    assert changed == N


def test_row_maps_define_the_permuted_designs(d2, perms2):
    maps = perms2.row_maps
    assert set(maps) == {"hit_miss", "region"}
    assert maps["hit_miss"].shape == (N, len(d2))
    assert not maps["region"].flags.writeable
    for k in (0, 17, N - 1):
        frame = perms2[k]
        for v, m in maps.items():
            np.testing.assert_array_equal(frame[v].to_numpy(), d2[v].to_numpy()[m[k]])
            pd.testing.assert_series_equal(perms2.column(k, v), frame[v])
    pd.testing.assert_series_equal(perms2.column(3, "sid"), d2["sid"])
    pd.testing.assert_frame_equal(perms2[-1], perms2[N - 1])


def test_apply_to_coded_frame(d2, perms2):
    coded = build_design(d2, cl.parse_formula(F2))
    for k in (0, 5):
        out = perms2.apply(k, coded)
        expected = build_design(perms2[k], cl.parse_formula(F2)).frame
        pd.testing.assert_frame_equal(out.frame, expected)
        pd.testing.assert_frame_equal(perms2.apply(k, coded.frame), expected)
    assert coded.frame["region"].equals(build_design(d2, cl.parse_formula(F2)).frame["region"])


def test_handmade_every_permutation():
    d = handmade()
    p = make_permutations(d, FH, N, seed=5, schemes={"region": "channel-within-subject"})
    assert p.schemes["region"] == "channel-within-subject"
    pairs = d.assign(pair=list(zip(d["cond"], d["cond2"])))
    observed_pairs = per_unit(pairs, ["sid", "ch"], "pair")
    observed_depth = sorted(channel_values(d, "depth"))
    observed_group = channel_values(d, "group", ["sid"]).value_counts()
    region_ch = channel_values(d, "region")
    region_by_sid = region_ch.groupby(level="sid").agg(lambda s: tuple(sorted(s)))
    moved = Counter()
    for frame in p:
        assert frame[["sid", "ch"]].equals(d[["sid", "ch"]])
        # Two within-channel factors move jointly: each channel keeps its (cond, cond2) pairs.
        f = frame.assign(pair=list(zip(frame["cond"], frame["cond2"])))
        pd.testing.assert_series_equal(per_unit(f, ["sid", "ch"], "pair"), observed_pairs)
        # Numeric channel-level covariate over channels of 3 and 4 rows.
        assert sorted(channel_values(frame, "depth")) == observed_depth
        pd.testing.assert_series_equal(channel_values(frame, "group", ["sid"]).value_counts(), observed_group)
        r = channel_values(frame, "region").groupby(level="sid").agg(lambda s: tuple(sorted(s)))
        pd.testing.assert_series_equal(r, region_by_sid)
        for v in ("cond", "depth", "group", "region"):
            moved[v] += not frame[v].equals(d[v])
    assert all(moved[v] > N // 2 for v in ("cond", "depth", "group", "region")), moved


def test_channel_level_variables_move_jointly():
    d = handmade()
    p = make_permutations(d, FH, N, seed=6)
    assert p.row_maps["depth"] is p.row_maps["region"]
    observed = Counter(zip(channel_values(d, "depth"), channel_values(d, "region")))
    for frame in p:
        assert Counter(zip(channel_values(frame, "depth"), channel_values(frame, "region"))) == observed


def test_none_and_subject_overrides():
    d = handmade()
    p = make_permutations(d, FH, 50, seed=1, schemes={"depth": "none", "region": "none",
                                                       "group": "between-channel"})
    assert set(p.maps) == {"within-channel", "between-channel"}
    assert "depth" not in p.row_maps
    for frame in p:
        assert frame["depth"].equals(d["depth"]) and frame["region"].equals(d["region"])
        channel_values(frame, "group")  # between-channel: constant within channels


def test_categorical_dtype_kept(d2):
    d = d2.assign(region=d2["region"].astype("category"))
    frame = make_permutations(d, F2, 2, seed=0)[1]
    assert isinstance(frame["region"].dtype, pd.CategoricalDtype)
    assert list(frame["region"].cat.categories) == list(d["region"].cat.categories)


def test_timeseries_data_input(sim2, d2):
    a = make_permutations(sim2, F2, 5, seed=2)
    b = make_permutations(d2, cl.parse_formula(F2), 5, seed=2)
    assert a.fingerprint() == b.fingerprint()
    assert isinstance(a, Permutations)


# ---------------------------------------------------------------------------
# Uniformity
# ---------------------------------------------------------------------------

def test_within_channel_coin_is_fair(d2):
    n = 400
    p = make_permutations(d2, F2, n, seed=3, schemes={"region": "none"})
    m = p.row_maps["hit_miss"]
    swapped = m != np.arange(len(d2))
    assert swapped.reshape(n, -1, 2).std(axis=2).max() == 0  # both rows of a channel swap together
    trials = swapped[:, ::2]
    freq = trials.mean()
    bound = 5 * np.sqrt(0.25 / trials.size)
    assert abs(freq - 0.5) < bound
    per_channel = trials.mean(axis=0)
    assert np.abs(per_channel - 0.5).max() < 5 * np.sqrt(0.25 / n)


def test_three_row_channels_uniform_orders():
    d = handmade()
    n = 1200
    p = make_permutations(d, "y ~ cond + (1|sid) + (1|sid:ch)", n, seed=9)
    rows = np.flatnonzero((d["sid"] == "A") & (d["ch"] == "e2"))
    assert len(rows) == 3
    orders = Counter(tuple(m) for m in p.row_maps["cond"][:, rows])
    assert len(orders) == 6 and all(set(o) == set(rows) for o in orders)
    expected = n / 6
    assert max(abs(c - expected) for c in orders.values()) < 5 * np.sqrt(expected * 5 / 6)


def test_between_channel_label_frequencies(d2):
    n = 1000
    p = make_permutations(d2, F2, n, seed=8, schemes={"hit_miss": "none"})
    observed = channel_values(d2, "region")
    share = (observed == "hc").mean()
    first = np.unique(pd.factorize(d2["sid"] + ":" + d2["ch"])[0], return_index=True)[1]
    hc = d2["region"].to_numpy()[p.row_maps["region"][:, first]] == "hc"
    assert np.allclose(hc.sum(axis=1), (observed == "hc").sum())  # exact counts every time
    freq = hc.mean(axis=0)
    assert np.abs(freq - share).max() < 5 * np.sqrt(share * (1 - share) / n)


def test_subject_level_frequencies():
    d = handmade()
    n = 1000
    p = make_permutations(d, "y ~ group + (1|sid) + (1|sid:ch)", n, seed=12)
    first = d.drop_duplicates("sid").index.to_numpy()
    patient = d["group"].to_numpy()[p.row_maps["group"][:, first]] == "patient"
    assert (patient.sum(axis=1) == 2).all()
    assert np.abs(patient.mean(axis=0) - 0.4).max() < 5 * np.sqrt(0.24 / n)


# ---------------------------------------------------------------------------
# Random state
# ---------------------------------------------------------------------------

def test_same_seed_same_permutations(d2, perms2):
    again = make_permutations(d2, F2, N, seed=11)
    assert again.fingerprint() == perms2.fingerprint()
    for s in perms2.maps:
        np.testing.assert_array_equal(again.maps[s], perms2.maps[s])
    other = make_permutations(d2, F2, N, seed=12)
    assert other.fingerprint() != perms2.fingerprint()
    assert not np.array_equal(other.maps["within-channel"], perms2.maps["within-channel"])


def test_prefix_stable(d2, perms2):
    short = make_permutations(d2, F2, 30, seed=11)
    for s in short.maps:
        np.testing.assert_array_equal(short.maps[s], perms2.maps[s][:30])
    pd.testing.assert_frame_equal(short[29], perms2[29])
    assert short.fingerprint() != perms2.fingerprint()


def test_fingerprint_depends_on_schemes(d2):
    a = make_permutations(d2, F2, 5, seed=0)
    b = make_permutations(d2, F2, 5, seed=0, schemes={"region": "channel-within-subject"})
    assert a.fingerprint() != b.fingerprint()
    assert len(a.fingerprint()) == 64


def test_seed_none_is_recorded(d2):
    p = make_permutations(d2, F2, 4)
    assert isinstance(p.seed, int) and p.seed >= 0
    assert make_permutations(d2, F2, 4, seed=p.seed).fingerprint() == p.fingerprint()
    assert make_permutations(d2, F2, 4).seed != p.seed


# ---------------------------------------------------------------------------
# Groupings: single, crossed, intermediate levels
# ---------------------------------------------------------------------------

def test_single_grouping_channel_is_subject(d2):
    d = d2.assign(chan=d2["sid"] + ":" + d2["ch"])
    p = make_permutations(d, "data ~ hit_miss * region + (1|chan)", 20, seed=0)
    assert p.schemes == {"hit_miss": "within-channel", "region": "between-subject"}
    assert p.n_channels == p.n_subjects == 169
    with pytest.raises(ValueError, match=r"the formula has one grouping level \(chan\), so there are no smaller "
                                         r"units within a chan group to permute"):
        make_permutations(d, "data ~ region + (1|chan)", 2, 0, schemes={"region": "channel-within-subject"})


def crossed():
    rows = [{"sid": s, "item": i, "rep": r, "cond": ["u", "v"][(r + i) % 2], "kind": "k" + str(i % 2)}
            for s in range(4) for i in range(3) for r in range(2)]
    return pd.DataFrame(rows)


def test_crossed_groupings():
    d = crossed()
    f = "y ~ cond + (1|sid) + (1|item)"
    p = make_permutations(d, f, 30, seed=0)
    assert p.schemes == {"cond": "within-channel"} and p.channel_columns == ("sid", "item")
    assert p.subject_columns == () and p.n_channels == 12
    for frame in p:
        pd.testing.assert_series_equal(per_unit(frame, ["sid", "item"], "cond"),
                                       per_unit(d, ["sid", "item"], "cond"))
    f2 = "y ~ cond + kind + (1|sid) + (1|item)"
    # 'kind' is constant within items: permuted across them (issue 14; it used to be refused).
    derived = make_permutations(d, f2, 10, seed=0)
    assert derived.schemes == {"cond": "within-channel", "kind": "between:item"}
    for frame in derived:
        channel_values(frame, "kind", ["item"])
    # Constant within the sid:item cells but within no grouping: still refused.
    cell = d.assign(kind=["k" + str((s + i) % 2) for s, i in zip(d["sid"], d["item"])])
    with pytest.raises(ValueError, match=r"'kind' is constant within channels, but the formula's groupings "
                                         r"are crossed.*Pass schemes=\{'kind': \.\.\.\} explicitly"):
        make_permutations(cell, f2, 3, seed=0)
    q = make_permutations(d, f2, 10, seed=0, schemes={"kind": "between-channel"})
    for frame in q:
        channel_values(frame, "kind", ["sid", "item"])
    assert make_permutations(d, f2, 3, seed=0, schemes={"kind": "none"}).schemes["kind"] == "none"
    for scheme in ("between-subject", "channel-within-subject"):
        with pytest.raises(ValueError, match="no subject level"):
            make_permutations(d, f2, 3, seed=0, schemes={"kind": scheme})


def test_ch_labels_not_nested_hint(d2):
    with pytest.raises(ValueError, match=r"write \(1\|sid:ch\)"):
        make_permutations(d2, "data ~ hit_miss * region + (1|sid) + (1|ch)", 3, seed=0)


def test_intermediate_level_needs_explicit_scheme():
    d = handmade()
    d = d.assign(site=d["sid"].map({"A": "s1", "B": "s1", "C": "s2", "D": "s2", "E": "s2"}))
    f = "y ~ cond + group + (1|site) + (1|site:sid) + (1|site:sid:ch)"
    with pytest.raises(ValueError, match="constant within each 'site:sid' group, an intermediate"):
        make_permutations(d, f, 3, seed=0)
    p = make_permutations(d, f, 3, seed=0, schemes={"group": "between-channel"})
    assert p.subject_columns == ("site",) and p.channel_columns == ("site", "sid", "ch")


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, -3, 2.5, True, "10", None])
def test_bad_n_permutations(d2, n):
    with pytest.raises(ValueError, match="n_permutations must be a positive integer"):
        make_permutations(d2, F2, n, seed=0)


@pytest.mark.parametrize("seed", [-1, 1.5, "x", True])
def test_bad_seed(d2, seed):
    with pytest.raises(ValueError, match="seed must be a non-negative integer or None"):
        make_permutations(d2, F2, 2, seed=seed)


def test_bad_design_type_and_empty(d2):
    with pytest.raises(TypeError, match="design must be a pandas DataFrame or TimeseriesData"):
        make_permutations(d2.to_numpy(), F2, 2)
    with pytest.raises(ValueError, match="design has no rows"):
        make_permutations(d2.iloc[:0], F2, 2)


def test_missing_columns(d2):
    with pytest.raises(ValueError, match=r"grouping column\(s\) 'sid' is not in the design. "
                                         r"Available columns: ch, hit_miss, region"):
        make_permutations(d2.drop(columns="sid"), F2, 2, seed=0)
    with pytest.raises(ValueError, match=r"fixed-effect column\(s\) 'hit_miss', 'region' are not in the design"):
        make_permutations(d2[["sid", "ch"]], F2, 2, seed=0)


def test_missing_values(d2):
    d = d2.copy()
    d.loc[4, "ch"] = None
    with pytest.raises(ValueError, match=r"column 'ch' has 1 missing value\(s\) \(rows 4\)"):
        make_permutations(d, F2, 2, seed=0)
    d = d2.copy()
    d.loc[[2, 9], "hit_miss"] = np.nan
    with pytest.raises(ValueError, match=r"column 'hit_miss' has 2 missing value\(s\) \(rows 2, 9\)"):
        make_permutations(d, F2, 2, seed=0)


def test_unknown_scheme_variable_and_name(d2):
    with pytest.raises(ValueError, match="schemes names 'age', which is not a fixed-effect variable of the "
                                         "formula. Fixed-effect variables: hit_miss, region"):
        make_permutations(d2, F2, 2, seed=0, schemes={"age": "none"})
    allowed = ", ".join(repr(s) for s in SCHEMES)
    with pytest.raises(ValueError, match=r"schemes\['region'\].*Allowed values are " + allowed
                       + r", but got 'shuffle' instead"):
        make_permutations(d2, F2, 2, seed=0, schemes={"region": "shuffle"})


def test_impossible_schemes(d2):
    with pytest.raises(ValueError, match=r"schemes\['hit_miss'\]='between-channel': 'hit_miss' varies "
                                         r"within sid:ch groups \(e.g. sid:ch = S01:ch1\).*use 'within-channel'"):
        make_permutations(d2, F2, 2, seed=0, schemes={"hit_miss": "between-channel"})
    with pytest.raises(ValueError, match="'region' is constant within every sid:ch group, so shuffling within "
                                         "them cannot change it; use 'between-channel'"):
        make_permutations(d2, F2, 2, seed=0, schemes={"region": "within-channel"})
    with pytest.raises(ValueError, match="'region' varies between the sid:ch groups of one sid, so it cannot "
                                         "be permuted as a sid-level value"):
        make_permutations(d2, F2, 2, seed=0, schemes={"region": "between-subject"})
    with pytest.raises(ValueError, match="'group' is constant within every sid group, so permuting sid:ch "
                                         "groups within them cannot change it; use 'between-subject'"):
        make_permutations(handmade(), FH, 2, seed=0, schemes={"group": "channel-within-subject"})


def test_within_channel_with_single_rows(d2):
    one = d2[d2["hit_miss"] == 1].reset_index(drop=True).assign(hm=lambda f: np.arange(len(f)) % 2)
    with pytest.raises(ValueError, match="every sid:ch group has a single row, so shuffling within them "
                                         "cannot change labels"):
        make_permutations(one, "data ~ hm + (1|sid) + (1|sid:ch)", 2, seed=0, schemes={"hm": "within-channel"})
    # Derived: the same variable is channel-level there.
    assert make_permutations(one, "data ~ hm + (1|sid) + (1|sid:ch)", 2, seed=0).schemes == {
        "hm": "between-channel"}


def test_nothing_to_permute(d2):
    with pytest.raises(ValueError, match=r"variable 'hit_miss' takes a single value \(1\) in every row"):
        make_permutations(d2[d2["hit_miss"] == 1], F1, 2, seed=0)
    with pytest.raises(ValueError, match="every fixed-effect variable has scheme 'none'"):
        make_permutations(d2, F2, 2, seed=0, schemes={"hit_miss": "none", "region": "none"})
    with pytest.raises(ValueError, match="has no fixed-effect variable: there is nothing to permute"):
        make_permutations(d2, "data ~ 1 + (1|sid) + (1|sid:ch)", 2, seed=0)
    # A constant covariate left unpermuted is accepted.
    d = d2.assign(const=1.0)
    p = make_permutations(d, "data ~ hit_miss + const + (1|sid) + (1|sid:ch)", 2, 0, schemes={"const": "none"})
    assert p.varies["const"] == "constant"


def test_grouping_column_as_fixed_effect(d2):
    with pytest.raises(ValueError, match=r"'sid' is also a grouping column.*schemes=\{'sid': 'none'\}"):
        make_permutations(d2, "data ~ hit_miss + sid + (1|sid) + (1|sid:ch)", 2, seed=0)


def test_bad_indexing_and_apply(perms2, d2):
    with pytest.raises(IndexError, match="permutation 200 out of range for 200 permutations"):
        perms2[N]
    with pytest.raises(TypeError, match="permutation index must be an integer"):
        perms2["0"]
    with pytest.raises(ValueError, match="frame has 10 rows but the design has 338"):
        perms2.apply(0, d2.iloc[:10])
    with pytest.raises(TypeError, match="frame must be a pandas DataFrame or ModelDesign"):
        perms2.apply(0, d2.to_numpy())
    with pytest.raises(KeyError, match="'nope' is not a design column"):
        perms2.column(0, "nope")


def test_formula_errors_pass_through(d2):
    with pytest.raises(cl.FormulaError):
        make_permutations(d2, "data ~ hit_miss", 2, seed=0)


# ---------------------------------------------------------------------------
# check_one_row_per_level (an original-layout rule, in clusterlmer.io; the
# within-channel swaps rely on it)
# ---------------------------------------------------------------------------

def test_one_row_per_level_ok(sim2, d2):
    assert check_one_row_per_level(d2, "hit_miss") is None
    assert check_one_row_per_level(sim2, "hit_miss", ("sid", "ch")) is None


def test_one_row_per_level_errors(d2):
    missing = d2.drop(index=[0])
    with pytest.raises(ValueError, match=r"each channel needs one row per level of 'hit_miss' \(one row each "
                                         r"for 0, 1, i.e. one hit and one miss row\); 1 of 169 channels do not: "
                                         r"S01:ch1 has 1 row\(s\) \(0\)\. Drop or fix"):
        check_one_row_per_level(missing, "hit_miss")
    doubled = pd.concat([d2, d2.iloc[[2]]], ignore_index=True)
    with pytest.raises(ValueError, match=r"S01:ch2 has 3 row\(s\) \(1, 0, 1\)"):
        check_one_row_per_level(doubled, "hit_miss")
    same = d2.copy()
    same.loc[1, "hit_miss"] = 1.0
    with pytest.raises(ValueError, match=r"S01:ch1 has 2 row\(s\) \(1, 1\)"):
        check_one_row_per_level(same, "hit_miss")
    many = d2[d2["hit_miss"] == 1]
    many = pd.concat([many, d2[(d2["hit_miss"] == 0) & (d2["sid"] != "S01")]])
    n_s01 = d2.loc[d2["sid"] == "S01", "ch"].nunique()
    with pytest.raises(ValueError, match=rf"\.\.\. \({n_s01} channels in all\)\. Drop"):
        check_one_row_per_level(many, "hit_miss")


def test_one_row_per_level_names_the_channel_with_a_stray_level(d2):
    """An extra row of a new level in one channel is that channel's fault, not the others' (issue 12, item 15)."""
    extra = d2.iloc[[6]].assign(hit_miss=2.0)
    odd = pd.concat([d2.iloc[:7], extra, d2.iloc[7:]], ignore_index=True)
    label = f"{extra['sid'].iloc[0]}:{extra['ch'].iloc[0]}"
    with pytest.raises(ValueError, match=rf"one row each for 1, 0, .*; 1 of 169 channels do not: hit_miss = 2 occurs "
                                         rf"only in channel {label} \(0-based row 7\)\. Drop or fix those rows\.$"):
        check_one_row_per_level(odd, "hit_miss")
    # In two channels, and one of them also lacks a level: both named, the rest not.
    odd.loc[100, "hit_miss"] = 2.0
    with pytest.raises(ValueError, match=r"2 of 169 channels do not: hit_miss = 2 occurs only in channels "
                                         r"\S+, \S+ \(0-based rows 7, 100\); \S+ has 2 row\(s\) \(\d, 2\)\."):
        check_one_row_per_level(odd, "hit_miss")


def test_one_row_per_level_bad_input(d2):
    with pytest.raises(ValueError, match=r"'hit_miss' has a single level \('1'\)"):
        check_one_row_per_level(d2[d2["hit_miss"] == 1], "hit_miss")
    with pytest.raises(ValueError, match=r"column\(s\) 'cond' is not in the design"):
        check_one_row_per_level(d2, "cond")
    with pytest.raises(ValueError, match=r"column\(s\) 'chan' is not in the design"):
        check_one_row_per_level(d2, "hit_miss", ("sid", "chan"))


def test_pickles_for_workers(perms2):
    import pickle

    back = pickle.loads(pickle.dumps(perms2))
    assert back.fingerprint() == perms2.fingerprint()
    pd.testing.assert_frame_equal(back[7], perms2[7])
