"""Transformations a formula may apply to numeric columns, computed in Python.

A formula may write ``I(x^2)``, ``log(x)``, ``log2(x)``, ``log10(x)``,
``exp(x)``, ``sqrt(x)``, ``abs(x)``, ``scale(x)`` and ``poly(x, k)``; the
arguments may combine column names and numbers with ``+ - * / ^`` (``**``
is read as ``^``), unary minus, parentheses and the same functions (``poly``
only as the whole term). The text is read by a small parser written here,
never by ``eval`` and never by R: the values are computed with numpy and
handed to the engines as ready-made numeric columns (to R under generated
names), so nothing the user types reaches an interpreter.

What R would compute, and what is done here:

* each transformation is one model variable named as R prints it
  (``I(x^2)``, ``log(x + 1)``, ``poly(x, 2)``), so terms and coefficients
  carry R's names (``poly(x, 2)1``, ``log(x):condB``);
* ``scale(x)`` is ``(x - mean(x)) / sd(x)`` with the n - 1 standard
  deviation, and ``poly(x, k)`` R's orthogonal polynomials (the QR of the
  centred powers ``1, x, ..., x^k``, columns of unit length), one term of k
  columns and k DF. Both are computed once over every row of the design
  table, as R's ``model.frame`` computes them before it drops rows, so a
  sample whose response is missing in some rows fits the same columns,
  restricted to its rows;
* where R would produce NaN or an infinity (``log`` of a value <= 0,
  ``sqrt`` of a negative value, a division by 0), lme4 drops or refuses
  those rows; here the design is refused with the rows named.

A permutation moves a transformation's source columns; its values are
recomputed from the moved sources (:meth:`Transform.evaluate`), which for
``scale`` and ``poly`` equals moving the computed rows, since the mean, the
standard deviation and the QR of a column do not depend on the order of its
rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["FUNCTIONS", "Transform", "TransformError", "compute_columns", "parse_call", "parse_transform", "r_design",
           "recompute", "with_recomputed"]

ELEMENTWISE = {"log": np.log, "log2": np.log2, "log10": np.log10, "exp": np.exp, "sqrt": np.sqrt, "abs": np.abs}
FUNCTIONS = ("I", *ELEMENTWISE, "scale", "poly")
ALLOWED = "I(), log(), log2(), log10(), exp(), sqrt(), abs(), scale() and poly(x, k)"

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<name>[A-Za-z][A-Za-z0-9._]*|\.[A-Za-z_][A-Za-z0-9._]*)
      | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<op>\*\*|[-+*/^(),])
    )""",
    re.VERBOSE,
)
_RESERVED = {"if", "else", "repeat", "while", "function", "for", "next", "break", "in", "TRUE", "FALSE", "NULL",
             "Inf", "NaN", "NA", "NA_integer_", "NA_real_", "NA_character_", "T", "F"}


class TransformError(ValueError):
    """A transformation that cannot be read or computed."""


# Nodes: ("num", value), ("name", column), ("neg"|"pos", node), ("paren", node),
# ("bin", op, left, right), ("call", function, args).


def _r_number(value: float) -> str:
    """A number as R's ``deparse`` prints it: 15 significant digits, fixed or scientific, whichever is shorter."""
    if value == 0:
        return "0"
    mantissa, exp = f"{value:.14e}".split("e")
    digits = mantissa.replace(".", "").rstrip("0")
    sig, e = len(digits), int(exp)
    if e >= 0:
        fixed = digits[: e + 1].ljust(e + 1, "0") + ("." + digits[e + 1:] if sig > e + 1 else "")
    else:
        fixed = "0." + "0" * (-e - 1) + digits
    sci = digits[0] + ("." + digits[1:] if sig > 1 else "") + f"e{'-' if e < 0 else '+'}{abs(e):02d}"
    return fixed if len(fixed) <= len(sci) else sci


def _deparse(node) -> str:
    kind = node[0]
    if kind == "num":
        return _r_number(node[1])
    if kind == "name":
        return node[1]
    if kind in ("neg", "pos"):
        return ("-" if kind == "neg" else "+") + _deparse(node[1])
    if kind == "paren":
        return f"({_deparse(node[1])})"
    if kind == "bin":
        op = node[1]
        # R's deparse writes ^ and / without spaces, + - * with them.
        sep = op if op in ("^", "/") else f" {op} "
        return f"{_deparse(node[2])}{sep}{_deparse(node[3])}"
    return f"{node[1]}({', '.join(_deparse(a) for a in node[2])})"


class _Reader:
    """Recursive descent over one call's text with R's precedences (``^`` over unary minus over ``* /`` over ``+ -``)."""

    def __init__(self, text, pos):
        self.text, self.pos = text, pos

    def fail(self, message):
        raise TransformError(message)

    def peek(self):
        match = _TOKEN.match(self.text, self.pos)
        if match is None or match.end() == self.pos:
            rest = self.text[self.pos:].strip()
            return ("end", None, self.pos) if not rest else ("bad", rest[:20], self.pos)
        kind = match.lastgroup
        tok = match.group(kind)
        return kind, "^" if tok == "**" else tok, match.end()

    def take(self, want=None):
        kind, tok, end = self.peek()
        if kind == "bad":
            self.fail(f"unexpected text {tok!r} inside a transformation; it may only contain column names, "
                      f"numbers, + - * / ^, parentheses and {ALLOWED}.")
        if want is not None and tok != want:
            self.fail(f"expected {want!r} inside a transformation, found "
                      f"{repr(tok) if tok is not None else 'the end of the formula'}.")
        if kind == "end":
            self.fail("a transformation is not closed: expected ')'.")
        self.pos = end
        return kind, tok

    def sum(self):
        node = self.prod()
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            node = ("bin", op, node, self.prod())
        return node

    def prod(self):
        node = self.unary()
        while self.peek()[1] in ("*", "/"):
            op = self.take()[1]
            node = ("bin", op, node, self.unary())
        return node

    def unary(self):
        if self.peek()[1] in ("-", "+"):
            op = self.take()[1]
            return ("neg" if op == "-" else "pos", self.unary())
        return self.power()

    def power(self):
        base = self.atom()
        if self.peek()[1] == "^":
            self.take()
            return ("bin", "^", base, self.unary())  # right-associative, as in R
        return base

    def atom(self):
        kind, tok = self.take()
        if kind == "number":
            return ("num", float(tok))
        if kind == "name":
            if self.peek()[1] == "(":
                return self.call(tok)
            if tok in _RESERVED:
                self.fail(f"{tok!r} is an R keyword, not a column name.")
            return ("name", tok)
        if tok == "(":
            node = ("paren", self.sum())
            self.take(")")
            return node
        self.fail(f"unexpected {tok!r} inside a transformation.")

    def call(self, fn):
        if fn not in FUNCTIONS:
            self.fail(f"function calls such as '{fn}(...)' are not allowed (the transformations clusterlmer "
                      f"computes are {ALLOWED}); compute the transformed column in your data first.")
        self.take("(")
        args = [self.sum()]
        while self.peek()[1] == ",":
            self.take()
            args.append(self.sum())
        self.take(")")
        if fn == "poly":
            if len(args) != 2 or args[1][0] != "num" or args[1][1] != int(args[1][1]) or args[1][1] < 1:
                self.fail("poly() takes a variable and a whole number of degrees, e.g. poly(x, 2) (orthogonal "
                          "polynomials, as R's default; raw=TRUE and other arguments are not available).")
        elif len(args) != 1:
            self.fail(f"{fn}() takes one argument here, e.g. {fn}(x); found {len(args)}"
                      + (" (scale()'s center= and scale= are not available)." if fn == "scale" else "."))
        return ("call", fn, tuple(args))


def _names(node, out):
    if node[0] == "name":
        out.append(node[1])
    elif node[0] in ("neg", "pos", "paren"):
        _names(node[1], out)
    elif node[0] == "bin":
        _names(node[2], out)
        _names(node[3], out)
    elif node[0] == "call":
        for a in node[2]:
            _names(a, out)
    return out


def _nested_poly(node, top=True):
    if node[0] == "call":
        return (node[1] == "poly" and not top) or any(_nested_poly(a, False) for a in node[2])
    if node[0] in ("neg", "pos", "paren"):
        return _nested_poly(node[1], False)
    if node[0] == "bin":
        return _nested_poly(node[2], False) or _nested_poly(node[3], False)
    return False


@dataclass(frozen=True)
class Transform:
    """One transformation: a model variable computed from design columns.

    Attributes
    ----------
    label : str
        The call as R prints it, e.g. ``"I(x^2)"`` or ``"poly(x, 2)"``: the
        variable's name in terms and coefficient names.
    node : tuple
        The parsed call.
    sources : tuple of str
        Design columns it reads, in order of appearance.
    ncol : int
        Columns it yields: the degree of ``poly``, otherwise 1.
    """

    label: str
    node: tuple
    sources: tuple
    ncol: int

    @property
    def suffixes(self) -> tuple:
        """Coefficient-name suffixes of its columns: ``("1", ..., "k")`` for poly, ``("",)`` otherwise."""
        return tuple(str(j) for j in range(1, self.ncol + 1)) if self.node[1] == "poly" else ("",)

    @property
    def columns(self) -> tuple:
        """Names of its columns in a coded design table (R's coefficient names of the term alone)."""
        return tuple(self.label + s for s in self.suffixes)

    def evaluate(self, columns) -> np.ndarray:
        """The values, shape (n,), or (n, k) for ``poly``, from ``columns`` (name -> float array)."""
        with np.errstate(all="ignore"):
            return _value(self.node, columns, self.label)


def _value(node, columns, label):
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "name":
        return columns[node[1]]
    if kind == "neg":
        return -_value(node[1], columns, label)
    if kind in ("pos", "paren"):
        return _value(node[1], columns, label)
    if kind == "bin":
        a, b = _value(node[2], columns, label), _value(node[3], columns, label)
        op = node[1]
        return a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b if op == "/" \
            else np.power(a, b)
    fn, args = node[1], [_value(a, columns, label) for a in node[2]]
    x = np.asarray(args[0], dtype=float)
    if fn == "I":
        return x
    if fn in ELEMENTWISE:
        return ELEMENTWISE[fn](x)
    if fn == "scale":
        # R's scale(): centred on the mean, divided by the root mean square of the centred values over n - 1.
        c = x - x.mean()
        return c / np.sqrt((c * c).sum() / (x.size - 1))
    return _poly(x, int(node[2][1][1]), label)


def _poly(x, degree, label):
    """R's ``poly(x, degree)``: the columns of Q times the sign of R's diagonal, of the centred powers' QR."""
    if np.unique(x).size <= degree:
        raise TransformError(f"{label}: the degree must be less than the number of distinct values "
                             f"({np.unique(x).size}), as in R.")
    X = np.vander(x - x.mean(), degree + 1, increasing=True)
    Q, R = np.linalg.qr(X)
    return (Q * np.sign(np.diag(R)))[:, 1:]


@lru_cache(maxsize=256)
def parse_transform(text: str) -> Transform:
    """Read one whitelisted call, e.g. ``"log(x + 1)"``.

    Raises
    ------
    TransformError
        Anything but one whitelisted call over column names and numbers.
    """
    transform, end = parse_call(text, 0)
    if text[end:].strip():
        raise TransformError(f"unexpected text {text[end:].strip()[:20]!r} after {transform.label!r}.")
    return transform


def parse_call(text: str, pos: int):
    """Read the whitelisted call that starts at ``text[pos]`` (its function's name).

    Returns
    -------
    transform : Transform
    end : int
        Position just after its closing parenthesis.
    """
    reader = _Reader(text, pos)
    kind, fn = reader.take()
    if kind != "name" or reader.peek()[1] != "(":
        raise TransformError(f"expected a function call at {text[pos:pos + 20]!r}.")
    try:
        node = reader.call(fn)
    except RecursionError:
        raise TransformError(f"the transformation at {text[pos:pos + 20]!r} is nested too deeply.") from None
    if _nested_poly(node):
        raise TransformError("poly() must be a whole term, e.g. poly(x, 2), not part of another expression.")
    sources = tuple(dict.fromkeys(_names(node, [])))
    label = _deparse(node)
    if not sources:
        raise TransformError(f"{label} uses no column: a constant is not a model variable.")
    ncol = int(node[2][1][1]) if fn == "poly" else 1
    return Transform(label, node, sources, ncol), reader.pos


def compute_columns(transforms, design, levels=None) -> dict:
    """Each transformation's values over the rows of ``design`` (label -> (n,) or (n, k) floats).

    Parameters
    ----------
    transforms : iterable of Transform
    design : pandas.DataFrame
        The user's design table: the sources must be numeric columns without missing values.
    levels : dict, optional
        The ``levels=`` argument: naming a source there (making it a factor) is refused.

    Raises
    ------
    TransformError
        A source that is not a numeric column, a missing value, or a result
        that is not finite in some rows.
    """
    import pandas as pd

    from .data import _preview

    out, values = {}, {}
    for t in transforms:
        for s in t.sources:
            if s in values:
                continue
            if s not in design.columns:
                raise TransformError(f"{t.label} uses {s!r}, which is not a design column. "
                                     f"Available columns: {_preview(list(design.columns))}.")
            col = design[s]
            if levels and s in levels:
                raise TransformError(f"levels names {s!r}, which {t.label} uses as numbers; a transformed "
                                     "column cannot be a factor.")
            if isinstance(col.dtype, pd.CategoricalDtype) or not (
                    pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
                raise TransformError(f"{t.label} needs numbers, but column {s!r} holds labels "
                                     f"(e.g. {_preview(col.unique(), 3)}).")
            v = col.to_numpy(dtype=float)
            bad = np.flatnonzero(~np.isfinite(v))
            if bad.size:
                raise TransformError(f"column {s!r} (used in {t.label}) has {bad.size} missing or non-finite "
                                     f"value(s) (rows {_preview(bad, 6)}). Fill them or drop those rows.")
            values[s] = v
        result = np.asarray(t.evaluate(values), dtype=float)
        bad = np.flatnonzero(~np.isfinite(result).reshape(len(design), -1).all(axis=1))
        if bad.size:
            raise TransformError(
                f"{t.label} is not finite in {bad.size} of {len(design)} rows (rows {_preview(bad, 6)}, where "
                f"{', '.join(f'{s} = ' + _preview([f'{v:g}' for v in values[s][bad]], 4) for s in t.sources)}): R would give NaN or "
                "an infinity there, which lme4 drops or refuses. Drop those rows or transform the column "
                "another way (e.g. log(x + 1)).")
        out[t.label] = result
    return out


def recompute(design, maps) -> dict:
    """The transformations of ``design`` whose sources ``maps`` moves, recomputed (label -> values).

    ``maps``: variable -> row map (row ``i`` takes the values of row ``maps[v][i]``) over the rows of
    ``design`` (a :class:`clusterlmer.design.ModelDesign`).
    """
    moved = [t for t in design.formula.transforms.values() if any(s in maps for s in t.sources)]
    if not moved:
        return {}
    sources = {s: (a[maps[s]] if s in maps else a) for s, a in design.sources.items()}
    return {t.label: t.evaluate(sources) for t in moved}


def with_recomputed(design, computed, maps):
    """``design`` with the columns of the transformations in ``computed`` replaced, sources moved by ``maps``."""
    if not computed:
        return design
    from dataclasses import replace

    frame = design.frame.copy()
    for label, values in computed.items():
        values = values.reshape(len(frame), -1)
        for j, col in enumerate(design.formula.transforms[label].columns):
            frame[col] = values[:, j]
    sources = {s: (a[maps[s]] if s in maps else a) for s, a in design.sources.items()}
    return replace(design, frame=frame, sources=sources)


def r_names(transforms, taken) -> dict:
    """Syntactic R names for the transformations: label -> name.

    R receives these names in place of the calls, so it fits columns and
    never evaluates a transformation. No name, nor a name followed by a
    poly column's number, is in ``taken`` (the design's column names and
    factor coefficient names), so names map back without ambiguity.
    """
    taken = set(taken)
    stem = "cl_tr"
    while True:
        names = {t.label: f"{stem}{i}_" for i, t in enumerate(transforms, start=1)}
        if not any(names[t.label] + s in taken for t in transforms for s in ("", *t.suffixes)):
            return names
        stem += "_"


def rename_back(names, mapping, transforms) -> tuple:
    """Term or coefficient names R gave under :func:`r_names`, with the transformations' labels put back."""
    parts = {}
    for t in transforms:
        safe = mapping[t.label]
        parts[safe] = t.label
        for s in t.suffixes:
            parts[safe + s] = t.label + s
    return tuple(":".join(parts.get(p, p) for p in name.split(":")) for name in names)


def r_design(design):
    """What the R engine hands R for a coded design: transformations as plain columns under generated names.

    Parameters
    ----------
    design : clusterlmer.design.ModelDesign

    Returns
    -------
    frame : pandas.DataFrame
        ``design.frame`` with each transformation's column(s) renamed.
    text : str
        The formula with each transformation replaced by its name.
    matrices : dict of str to list of str
        Per ``poly`` term: its name and the columns R binds into one matrix
        variable (one term, k columns, as R's ``poly`` gives).
    back : callable
        Maps R's term or coefficient names back to the labels.
    """
    formula = design.formula
    transforms = list(formula.transforms.values())
    if not transforms:
        return design.frame, formula.text, {}, tuple
    taken = {*design.frame.columns, formula.response,
             *(f + str(lev) for f, levels in design.factors.items() for lev in levels)}
    names = r_names(transforms, taken)
    rename, matrices = {}, {}
    for t in transforms:
        safe = names[t.label]
        if t.ncol == 1:
            rename[t.label] = safe
        else:
            rename.update({col: safe + s for col, s in zip(t.columns, t.suffixes)})
            matrices[safe] = [safe + s for s in t.suffixes]
    return (design.frame.rename(columns=rename), formula.r_text(names), matrices,
            lambda out: rename_back(out, names, transforms))
