"""Parse and check lme4 model formulas before they reach R.

Only model terms are accepted: column names, the intercept markers ``0``/``1``,
the operators ``+ - * : / ^`` and ``|``/``||`` inside parentheses for random
effects, and the transformations of :mod:`clusterlmer.transforms`
(``I(x^2)``, ``log(x)``, ``poly(x, 2)``, ...), each read into one token named
as R prints it and computed in Python. Anything else (other function calls,
strings, backticks, ``;``) is refused, so no R code can travel inside a
formula string. The formula handed to R is rebuilt from the checked tokens,
with the transformations replaced by the names of their computed columns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .transforms import FUNCTIONS, TransformError, parse_call, parse_transform

__all__ = ["ModelFormula", "FixedTerms", "parse_formula", "expand_fixed_terms", "FormulaError"]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<name>[A-Za-z][A-Za-z0-9._]*|\.[A-Za-z_][A-Za-z0-9._]*)
      | (?P<number>\d+(?:\.\d*)?)
      | (?P<op>\|\||[~+\-*:/^|()])
    )""",
    re.VERBOSE,
)
_R_RESERVED = {
    "if", "else", "repeat", "while", "function", "for", "next", "break", "in",
    "TRUE", "FALSE", "NULL", "Inf", "NaN", "NA", "NA_integer_", "NA_real_",
    "NA_character_", "T", "F",
}


class FormulaError(ValueError):
    """A model formula that clusterlmer cannot accept."""


@dataclass(frozen=True)
class RandomTerm:
    """One ``(expr | group)`` term: the varying part and its grouping factors."""

    expr: str
    group: str
    variables: tuple[str, ...]
    grouping: tuple[str, ...]
    correlated: bool


@dataclass(frozen=True)
class ModelFormula:
    """A checked formula.

    Attributes
    ----------
    text : str
        The normalised formula handed to R.
    response : str
        Name on the left-hand side.
    fixed_variables : tuple of str
        Columns in the fixed-effects part, in order of appearance.
    random : tuple of RandomTerm
        The random-effects terms.
    transforms : dict of str to Transform
        The transformations the formula uses, by label (``"log(x)"``); their
        source columns are among the variables above.
    """

    text: str
    response: str
    fixed_variables: tuple[str, ...]
    random: tuple[RandomTerm, ...]
    transforms: dict = field(default_factory=dict, compare=False)  # the labels in ``text`` say it all

    def sources(self, name) -> tuple:
        """Design columns behind model variable ``name``: a transformation's sources, else ``(name,)``."""
        t = self.transforms.get(name)
        return t.sources if t is not None else (name,)

    def r_text(self, names) -> str:
        """The formula with each transformation replaced by ``names[label]`` (what R is handed)."""
        return _join([(k, names.get(t, t) if k == "call" else t) for k, t in _tokenize(self.text)])

    @property
    def grouping_variables(self) -> tuple[str, ...]:
        """Columns that define grouping factors, in order of appearance."""
        return _unique(v for term in self.random for v in term.grouping)

    @property
    def slope_variables(self) -> tuple[str, ...]:
        """Columns that appear on the left of ``|`` in random terms."""
        return _unique(v for term in self.random for v in term.variables)

    @property
    def fixed_terms(self) -> "FixedTerms":
        """The fixed part expanded into terms as R's ``terms()`` does (``a*b`` -> ``a, b, a:b``)."""
        return expand_fixed_terms(self.text)

    @property
    def model_variables(self) -> tuple[str, ...]:
        """Variables of the model matrices: plain columns and transformation labels, fixed part then slopes."""
        slopes = (v for term in self.random for v in expand_fixed_terms("y ~ " + term.expr).variables)
        return _unique((*self.fixed_terms.variables, *slopes))

    @property
    def variables(self) -> tuple[str, ...]:
        """Every design column the formula uses (response excluded)."""
        return _unique(
            (*self.fixed_variables, *self.slope_variables, *self.grouping_variables)
        )


def _unique(items):
    return tuple(dict.fromkeys(items))


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            bad = text[pos:].strip()[:20]
            raise FormulaError(
                f"formula {text!r}: unexpected text {bad!r}. A formula may only "
                "contain column names, 0/1, the operators + - * : / ^ and "
                "(... | group) random-effect terms."
            )
        kind = match.lastgroup
        if kind == "name" and match.group(kind) in FUNCTIONS and text[match.end():].lstrip().startswith("("):
            # A whitelisted transformation: one token, its label as R prints it.
            try:
                transform, pos = parse_call(text, match.start(kind))
            except TransformError as exc:
                raise FormulaError(f"formula {text!r}: {exc}") from None
            tokens.append(("call", transform.label))
            continue
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class _Parser:
    """Recursive-descent parser over the token list; records variables."""

    def __init__(self, text, tokens):
        self.text, self.tokens, self.i = text, tokens, 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None)

    def take(self, value=None):
        kind, tok = self.peek()
        if tok is None or (value is not None and tok != value):
            want = repr(value) if value else "more input"
            got = repr(tok) if tok else "the end of the formula"
            raise FormulaError(f"formula {self.text!r}: expected {want}, found {got}.")
        self.i += 1
        return kind, tok

    def fail(self, message):
        raise FormulaError(f"formula {self.text!r}: {message}")

    # expr := ['-'] term (('+'|'-') term)*
    # A random-effect term may only be added: lme4 silently reinterprets or
    # rejects one that is negated, multiplied, nested or raised to a power.
    def expr(self, names, randoms, depth):
        negated = self.peek()[1] == "-"
        if negated:
            self.take("-")
        self.term(names, randoms, depth, negated)
        while self.peek()[1] in ("+", "-"):
            negated = self.take()[1] == "-"
            self.term(names, randoms, depth, negated)

    # term := factor (('*'|':'|'/') factor)*
    def term(self, names, randoms, depth, negated=False):
        n_random = len(randoms)
        self.factor(names, randoms, depth)
        n_factors = 1
        while self.peek()[1] in ("*", ":", "/"):
            self.take()
            self.factor(names, randoms, depth)
            n_factors += 1
        if len(randoms) > n_random and (negated or n_factors > 1):
            self.fail("a random-effect term '(... | group)' can only be added with '+', "
                      "not negated or combined with '*', ':' or '/'.")

    # factor := atom ['^' integer]
    def factor(self, names, randoms, depth):
        n_random = len(randoms)
        self.atom(names, randoms, depth)
        if self.peek()[1] == "^":
            if len(randoms) > n_random:
                self.fail("a random-effect term '(... | group)' cannot be raised to a power.")
            self.take("^")
            kind, tok = self.take()
            if kind != "number" or not tok.isdigit():
                self.fail(f"'^' must be followed by a whole number, found {tok!r}.")

    def atom(self, names, randoms, depth):
        kind, tok = self.take()
        if kind == "name":
            if tok in _R_RESERVED:
                self.fail(f"{tok!r} is an R keyword, not a column name.")
            if self.peek()[1] == "(":
                self.fail(
                    f"function calls such as '{tok}(...)' are not allowed; "
                    "compute the transformed column in your data first."
                )
            names.append(tok)
        elif kind == "call":
            names.extend(parse_transform(tok).sources)
        elif kind == "number":
            if tok not in ("0", "1"):
                self.fail(f"the number {tok!r} is not a model term (only 0 and 1 are).")
        elif tok == "(":
            start = self.i
            inner: list[str] = []
            self.expr(inner, randoms, depth + 1)
            if self.peek()[1] in ("|", "||"):
                if depth > 0:
                    self.fail("random-effect terms '(... | group)' cannot be nested "
                              "(or a parenthesis is not closed).")
                bar = self.take()[1]
                wide = [t for k, t in self.tokens[start : self.i - 1] if k == "call" and parse_transform(t).ncol > 1]
                if wide:
                    self.fail(f"{wide[0]} has several columns and cannot be a random slope; use a "
                              "one-column transformation (e.g. I(x^2)) there.")
                expr_text = _join(self.tokens[start : self.i - 1])
                gstart = self.i
                grouping: list[str] = []
                self.grouping(grouping)
                self.take(")")
                randoms.append(
                    RandomTerm(
                        expr=expr_text,
                        group=_join(self.tokens[gstart : self.i - 1]),
                        variables=_unique(inner),
                        grouping=_unique(grouping),
                        correlated=bar == "|",
                    )
                )
            else:
                self.take(")")
                names.extend(inner)
        else:
            self.fail(f"unexpected {tok!r}.")

    # grouping := name ((':'|'/') name)*
    def grouping(self, names):
        while True:
            kind, tok = self.take()
            if kind != "name" or tok in _R_RESERVED:
                self.fail(f"a grouping factor must be a column name, found {tok!r}.")
            if self.peek()[1] == "(":
                self.fail(f"function calls such as '{tok}(...)' are not allowed.")
            names.append(tok)
            if self.peek()[1] in (":", "/"):
                self.take()
                continue
            return


def _join(tokens) -> str:
    out = ""
    for _, tok in tokens:
        if tok in ("+", "-", "*", "/", "|", "||", "~"):
            out += f" {tok} "
        else:
            out += tok
    return re.sub(r"\s+", " ", out).replace("( ", "(").replace(" )", ")").strip()


@dataclass(frozen=True)
class FixedTerms:
    """The fixed part of a formula as R's ``terms()`` expands it.

    Attributes
    ----------
    intercept : bool
        False after ``0 +`` or ``- 1``.
    terms : tuple of tuple of str
        Each term's variables (in order of first appearance in the formula),
        terms sorted by interaction order as R does; the intercept is not listed.
    variables : tuple of str
        Fixed-effect variables in order of first appearance.
    """

    intercept: bool
    terms: tuple
    variables: tuple

    @property
    def labels(self) -> tuple:
        """R's term labels, e.g. ``("hit_miss", "region", "hit_miss:region")``."""
        return tuple(":".join(t) for t in self.terms)

    def interacting(self, name) -> tuple:
        """Variables that share a term of higher order with ``name`` (in formula order)."""
        partners = {v for t in self.terms if name in t for v in t if v != name}
        return tuple(v for v in self.variables if v in partners)


class _TermExpander:
    """R's ``terms()`` rules over the checked tokens of a fixed part.

    A term is a frozenset of variable names (the empty set is the intercept);
    random-effect terms ``(... | ...)`` are skipped, as lme4's ``nobars``.
    """

    def __init__(self, tokens):
        self.tokens, self.i = tokens, 0
        self.var_order: list = []
        self.intercept = True

    def peek(self):
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def take(self):
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    @staticmethod
    def _union(a, b):
        return a + [t for t in b if t not in a]

    @staticmethod
    def _interact(a, b):
        # R's InteractTerms: right operand in the outer loop.
        out = []
        for t in b:
            for s in a:
                if (s | t) not in out:
                    out.append(s | t)
        return out

    def sum(self):
        negate = self.peek() == "-"
        if negate:
            self.take()
        terms = self._signed([], self.prod(), negate)
        while self.peek() in ("+", "-"):
            negate = self.take()[1] == "-"
            terms = self._signed(terms, self.prod(), negate)
        return terms

    def _signed(self, terms, value, negate):
        kind, items = value
        if kind == "zero":  # '+ 0' removes the intercept, '- 0' adds it
            self.intercept = negate
            return terms
        if frozenset() in items:
            self.intercept = not negate
        return [t for t in terms if t not in items] if negate else self._union(terms, items)

    def prod(self):
        left = self.inter()
        while self.peek() in ("*", "/"):
            op = self.take()[1]
            a, b = left[1], self.inter()[1]
            if op == "*":
                left = ("terms", self._union(self._union(a, b), self._interact(a, b)))
            else:
                everything = frozenset().union(*a) if a else frozenset()
                left = ("terms", self._union(a, self._interact([everything], b)))
        return left

    def inter(self):
        left = self.power()
        while self.peek() == ":":
            self.take()
            left = ("terms", self._interact(left[1], self.power()[1]))
        return left

    def power(self):
        base = self.atom()
        if self.peek() == "^":
            self.take()
            out = list(base[1])
            for _ in range(int(self.take()[1]) - 1):
                out = self._union(out, self._interact(out, base[1]))
            base = ("terms", out)
        return base

    def atom(self):
        kind, tok = self.take()
        if kind in ("name", "call"):
            if tok not in self.var_order:
                self.var_order.append(tok)
            return ("terms", [frozenset([tok])])
        if kind == "number":
            return ("zero", []) if tok == "0" else ("terms", [frozenset()])
        # '(': a random-effect term is skipped to its closing parenthesis
        depth, j, bar = 1, self.i, False
        while depth:
            t = self.tokens[j][1]
            depth += (t == "(") - (t == ")")
            bar |= depth == 1 and t in ("|", "||")
            j += 1
        if bar:
            self.i = j
            return ("terms", [])
        inner = self.sum()
        self.take()  # ')'
        return ("terms", inner)


def expand_fixed_terms(text: str) -> FixedTerms:
    """Expand the fixed part of a checked formula (see :class:`FixedTerms`)."""
    expander = _TermExpander(_tokenize(text)[2:])
    raw = [t for t in expander.sum() if t]
    raw.sort(key=len)  # R's terms(): stable sort by interaction order
    order = expander.var_order
    terms = tuple(tuple(v for v in order if v in t) for t in raw)
    return FixedTerms(expander.intercept, terms, tuple(order))


def parse_formula(formula: str) -> ModelFormula:
    """Parse an lme4 formula and refuse anything that is not a model term.

    Parameters
    ----------
    formula : str
        For example ``"data ~ hit_miss * region + (1|sid) + (1|sid:ch)"``.

    Returns
    -------
    ModelFormula
        The checked formula, its response and the variables it uses.

    Raises
    ------
    FormulaError
        If the formula is malformed, contains anything that is not a model
        term, or has no random-effects term.
    """
    if not isinstance(formula, str):
        raise FormulaError(
            f"formula must be a string such as 'data ~ cond + (1|sid)', got "
            f"{type(formula).__name__}."
        )
    text = formula.strip()
    tokens = _tokenize(text)
    if sum(tok == "~" for _, tok in tokens) != 1 or len(tokens) < 3:
        raise FormulaError(
            f"formula {text!r} must have one '~' with the response on its left, "
            "e.g. 'data ~ hit_miss + (1|sid)'."
        )
    kind, response = tokens[0]
    if kind != "name" or tokens[1][1] != "~":
        raise FormulaError(
            f"formula {text!r}: the left-hand side must be a single name, e.g. 'data ~ ...'."
        )
    if response in _R_RESERVED:
        raise FormulaError(f"formula {text!r}: {response!r} is an R keyword.")
    parser = _Parser(text, tokens[2:])
    fixed: list[str] = []
    randoms: list[RandomTerm] = []
    parser.expr(fixed, randoms, depth=0)
    if parser.i != len(parser.tokens):
        parser.fail(f"unexpected {parser.peek()[1]!r}.")
    if not randoms:
        raise FormulaError(
            f"formula {text!r} has no random-effects term; add one such as "
            "'(1|sid)' (clusterlmer fits mixed models)."
        )
    return ModelFormula(
        text=_join(tokens),
        response=response,
        fixed_variables=_unique(fixed),
        random=tuple(randoms),
        transforms={tok: parse_transform(tok) for kind, tok in tokens if kind == "call"},
    )
