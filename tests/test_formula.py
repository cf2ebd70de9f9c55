"""The formula checker: what it accepts, what it reads from a formula, and
what it refuses (with which message). Pure Python, no R."""

import pytest

import clusterlmer as cl
from clusterlmer import FormulaError, parse_formula


def test_formula_error_is_a_value_error():
    assert issubclass(FormulaError, ValueError)
    assert cl.FormulaError is FormulaError
    with pytest.raises(ValueError):
        parse_formula("y ~ logit(x) + (1|g)")


# ---------------------------------------------------------------------------
# Accepted formulas
# ---------------------------------------------------------------------------

ACCEPTED = [
    # formula, text, response, fixed, grouping, slopes
    (
        "data ~ hit_miss + (1|sid) + (1|sid:ch)",
        "data ~ hit_miss + (1 | sid) + (1 | sid:ch)",
        "data", ("hit_miss",), ("sid", "ch"), (),
    ),
    (
        "data ~ hit_miss * region + (1|sid) + (1|sid:ch)",
        "data ~ hit_miss * region + (1 | sid) + (1 | sid:ch)",
        "data", ("hit_miss", "region"), ("sid", "ch"), (),
    ),
    (
        "strength ~ 1 + (1|batch/cask)",
        "strength ~ 1 + (1 | batch / cask)",
        "strength", (), ("batch", "cask"), (),
    ),
    (
        "Reaction ~ Days + (Days|Subject)",
        "Reaction ~ Days + (Days | Subject)",
        "Reaction", ("Days",), ("Subject",), ("Days",),
    ),
    (
        "y ~ x + (0 + x || g)",
        "y ~ x + (0 + x || g)",
        "y", ("x",), ("g",), ("x",),
    ),
    (
        "y ~ -1 + x + (1|g)",
        "y ~ - 1 + x + (1 | g)",
        "y", ("x",), ("g",), (),
    ),
    (
        "y ~ x - 1 + (1|g)",
        "y ~ x - 1 + (1 | g)",
        "y", ("x",), ("g",), (),
    ),
    (
        "y ~ (a+b)^2 + (1|g)",
        "y ~ (a + b)^2 + (1 | g)",
        "y", ("a", "b"), ("g",), (),
    ),
    (
        "y ~ a:b + c + (1 + a | g1:g2) + (1 | h)",
        "y ~ a:b + c + (1 + a | g1:g2) + (1 | h)",
        "y", ("a", "b", "c"), ("g1", "g2", "h"), ("a",),
    ),
    (
        # whitespace is free; dotted and underscored names are names
        "  resp.1~x_a+.x2+(1|g.h)  ",
        "resp.1 ~ x_a + .x2 + (1 | g.h)",
        "resp.1", ("x_a", ".x2"), ("g.h",), (),
    ),
    (
        # fixed part may be empty
        "y ~ (1|g)",
        "y ~ (1 | g)",
        "y", (), ("g",), (),
    ),
    (
        "y ~ 0 + x + (1|g) + (x|g)",
        "y ~ 0 + x + (1 | g) + (x | g)",
        "y", ("x",), ("g",), ("x",),
    ),
]


@pytest.mark.parametrize(
    "formula, text, response, fixed, grouping, slopes", ACCEPTED, ids=[a[0].strip() for a in ACCEPTED]
)
def test_accepted_formula(formula, text, response, fixed, grouping, slopes):
    m = parse_formula(formula)
    assert m.text == text
    assert m.response == response
    assert m.fixed_variables == fixed
    assert m.grouping_variables == grouping
    assert m.slope_variables == slopes
    # every design column the model uses, response excluded, no repeats
    assert m.variables == tuple(dict.fromkeys(fixed + slopes + grouping))
    assert response not in m.variables
    # the normalised text parses to the same model
    again = parse_formula(m.text)
    assert again == m


def test_seed_two_way_random_terms():
    m = parse_formula("data ~ hit_miss * region + (1|sid) + (1|sid:ch)")
    assert [(r.expr, r.group, r.grouping, r.variables, r.correlated) for r in m.random] == [
        ("1", "sid", ("sid",), (), True),
        ("1", "sid:ch", ("sid", "ch"), (), True),
    ]


def test_nested_grouping_shorthand():
    (term,) = parse_formula("y ~ 1 + (1|batch/cask)").random
    assert term.group == "batch / cask"
    assert term.grouping == ("batch", "cask")


def test_random_slope_is_correlated():
    (term,) = parse_formula("Reaction ~ Days + (Days|Subject)").random
    assert term.expr == "Days"
    assert term.variables == ("Days",)
    assert term.correlated is True


def test_double_bar_is_uncorrelated():
    (term,) = parse_formula("y ~ x + (0 + x || g)").random
    assert term.expr == "0 + x"
    assert term.group == "g"
    assert term.variables == ("x",)
    assert term.correlated is False


def test_parsed_formula_is_immutable():
    m = parse_formula("y ~ x + (1|g)")
    with pytest.raises(AttributeError):
        m.response = "z"


def test_percent_in_is_not_supported():
    with pytest.raises(FormulaError, match=r"unexpected text '%in% b.*only contain column names"):
        parse_formula("y ~ a %in% b + (1|g)")


# ---------------------------------------------------------------------------
# Refused formulas: R code, malformed formulas, non-model terms
# ---------------------------------------------------------------------------

REFUSED = [
    # function calls
    ("y ~ logit(x) + (1|g)", r"function calls such as 'logit\(\.\.\.\)' are not allowed; compute the transformed "
                             "column"),
    ("y ~ x + log(x, base) + (1|g)", r"log\(\) takes one argument here"),
    ("y ~ system(x) + (1|g)", r"function calls such as 'system\(\.\.\.\)' are not allowed"),
    ("y ~ x + (1|factor(g))", r"function calls such as 'factor\(\.\.\.\)' are not allowed"),
    # R code smuggled in: the tokenizer stops at the first character that is
    # not part of a model term
    ('y ~ system("rm -rf /") + (1|g)', r"unexpected text '\"rm -rf /\"\).*only contain column names"),
    ("y ~ x + (1|g); q()", r"unexpected text '; q\(\)'"),
    ("y ~ x + (1|g)\nq()", r"unexpected 'q'"),
    ("y ~ x + (1|g) # comment", r"unexpected text '# comment'"),
    ("y ~ x$z + (1|g)", r"unexpected text '\$z"),
    ("y ~ x[1] + (1|g)", r"unexpected text '\[1\]"),
    ("y ~ x + (1|g) && z", r"unexpected text '&& z'"),
    ("y ~ . + (1|g)", r"unexpected text '\. \+"),
    # backticks and strings
    ("y ~ `x` + (1|g)", r"unexpected text '`x` \+"),
    ("y ~ `system('ls')` + (1|g)", r"unexpected text \"`system\('ls'\)`"),
    ("y ~ 'x' + (1|g)", r"unexpected text \"'x' \+"),
    ('y ~ "x" + (1|g)', r"unexpected text '\"x\" \+"),
    # numbers other than 0/1
    ("y ~ 2 + x + (1|g)", r"the number '2' is not a model term \(only 0 and 1 are\)"),
    ("y ~ 0.5 + (1|g)", r"the number '0\.5' is not a model term"),
    ("y ~ 1.0 + (1|g)", r"the number '1\.0' is not a model term"),
    ("y ~ 01 + (1|g)", r"the number '01' is not a model term"),
    ("y ~ x + (2|g)", r"the number '2' is not a model term"),
    ("y ~ 1e3 + (1|g)", r"unexpected 'e3'"),
    ("y ~ x^a + (1|g)", r"'\^' must be followed by a whole number, found 'a'"),
    ("y ~ x^2.5 + (1|g)", r"'\^' must be followed by a whole number, found '2\.5'"),
    ("y ~ x^-1 + (1|g)", r"'\^' must be followed by a whole number, found '-'"),
    # the '~'
    ("y x + (1|g)", r"must have one '~' with the response on its left"),
    ("x + (1|g)", r"must have one '~' with the response on its left"),
    ("y ~ x ~ z + (1|g)", r"must have one '~' with the response on its left"),
    ("y ~ ~x + (1|g)", r"must have one '~' with the response on its left"),
    ("y ~", r"must have one '~' with the response on its left"),
    ("", r"formula '' must have one '~'"),
    # no random-effects term
    ("y ~ x", r"has no random-effects term; add one such as '\(1\|sid\)'"),
    ("y ~ x * z + (x + z)", r"has no random-effects term"),
    # nested bars
    ("y ~ x + ((1|g)|h)", r"random-effect terms '\(\.\.\. \| group\)' cannot be nested"),
    ("y ~ x + (x + (1|g)|h)", r"cannot be nested"),
    ("y ~ (x + (1|g))", r"cannot be nested"),
    ("y ~ x + (1|g|h)", r"expected '\)', found '\|'"),
    ("y ~ x + (1 | g) | h", r"unexpected '\|'"),
    ("y ~ x | g", r"unexpected '\|'"),
    # left-hand side
    ("log(y) ~ x + (1|g)", r"the left-hand side must be a single name"),
    ("1 ~ x + (1|g)", r"the left-hand side must be a single name"),
    ("y + z ~ x + (1|g)", r"the left-hand side must be a single name"),
    ("~ x + (1|g)", r"the left-hand side must be a single name"),
    ("cbind(a, b) ~ x + (1|g)", r"unexpected text ', b\)"),
    # R keywords and constants
    ("if ~ x + (1|g)", r"'if' is an R keyword"),
    ("T ~ x + (1|g)", r"'T' is an R keyword"),
    ("y ~ TRUE + (1|g)", r"'TRUE' is an R keyword, not a column name"),
    ("y ~ x + NA + (1|g)", r"'NA' is an R keyword, not a column name"),
    ("y ~ function + (1|g)", r"'function' is an R keyword, not a column name"),
    ("y ~ x + (1|NULL)", r"a grouping factor must be a column name, found 'NULL'"),
    ("y ~ x + (F|g)", r"'F' is an R keyword, not a column name"),
    # grouping factors must be names
    ("y ~ x + (1|0)", r"a grouping factor must be a column name, found '0'"),
    ("y ~ x + (1|(g))", r"a grouping factor must be a column name, found '\('"),
    ("y ~ x + (1|g*h)", r"expected '\)', found '\*'"),
    ("y ~ x + (1|g+h)", r"expected '\)', found '\+'"),
    ("y ~ x + (|g)", r"unexpected '\|'"),
    # unbalanced parentheses
    ("y ~ x + (1|g", r"expected '\)', found the end of the formula"),
    ("y ~ x + (1|g))", r"unexpected '\)'"),
    ("y ~ x + 1|g)", r"unexpected '\|'"),
    ("y ~ x + (1|g)) + (1|h", r"unexpected '\)'"),
    ("y ~ (x + z + (1|g)", r"cannot be nested"),  # see the report: misleading message
    ("y ~ x + () + (1|g)", r"unexpected '\)'"),
    # trailing / doubled operators
    ("y ~ x + (1|g) +", r"expected more input, found the end of the formula"),
    ("y ~ x + (1|g) *", r"expected more input, found the end of the formula"),
    ("y ~ x + (1|g) :", r"expected more input, found the end of the formula"),
    ("y ~ x + (1|g) /", r"expected more input, found the end of the formula"),
    ("y ~ x + (1|g) -", r"expected more input, found the end of the formula"),
    ("y ~ x^ + (1|g)", r"'\^' must be followed by a whole number, found '\+'"),
    ("y ~ x + (1|g) +\n", r"expected more input, found the end of the formula"),
    ("y ~ x + (1|", r"expected more input, found the end of the formula"),
    ("y ~ x + (1|g:)", r"a grouping factor must be a column name, found '\)'"),
    ("y ~ x ++ z + (1|g)", r"unexpected '\+'"),
    ("y ~ x z + (1|g)", r"unexpected 'z'"),
    ("y ~ x + (1|g)(1|h)", r"unexpected '\('"),
    # non-ASCII names are not column names here
    ("y ~ \u00e4 + (1|g)", r"unexpected text"),
]


@pytest.mark.parametrize("formula, message", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_formula(formula, message):
    with pytest.raises(FormulaError, match=message):
        parse_formula(formula)


@pytest.mark.parametrize("formula", [r[0] for r in REFUSED if r[0].strip()], ids=[r[0] for r in REFUSED if r[0].strip()])
def test_refusal_quotes_the_formula(formula):
    # Every message names the formula it is about.
    with pytest.raises(FormulaError) as info:
        parse_formula(formula)
    assert str(info.value).startswith(f"formula {formula.strip()!r}")


@pytest.mark.parametrize("formula", [None, 3, b"y ~ x + (1|g)", ["y ~ x + (1|g)"]])
def test_non_string_formula(formula):
    with pytest.raises(FormulaError, match=r"formula must be a string such as 'data ~ cond \+ \(1\|sid\)', got "):
        parse_formula(formula)


@pytest.mark.parametrize(
    "formula",
    ["y ~ x * (1|g)", "y ~ x:(1|g)", "y ~ (1|g)^2", "y ~ x + (1|g)/h", "y ~ -(1|g)", "y ~ x + (1|g) - (1|h)"],
)
def test_random_term_outside_a_sum_is_refused(formula):
    # lme4 would silently reinterpret or reject these.
    with pytest.raises(FormulaError, match=r"random-effect term '\(\.\.\. \| group\)' can(not| only)"):
        parse_formula(formula)
