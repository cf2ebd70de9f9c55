"""Factor codings (R's contrast functions) and the order of levels read from the data.

A coding turns a factor's k levels into k - 1 model-matrix columns, as R's
contrast functions do, with R's column names:

* ``"reference"``: ``contr.treatment``, the first level is the reference
  (columns named by the other levels);
* ``"effects"``: ``contr.sum``, the last level coded -1 (columns named by the
  other levels, as clusterlmer's R engine names them);
* ``"helmert"``: ``contr.helmert``, unscaled: column j compares level j + 1
  with the mean of the levels before it, coded -1 ... -1, j (columns ``1``,
  ``2``, ...);
* ``"poly"``: ``contr.poly``, orthonormal polynomials over equally spaced
  levels taken in their level order, for ordered factors (columns ``.L``,
  ``.Q``, ``.C``, ``^4``, ...).

``coding`` is one of these for every factor, or a dict naming a coding per
variable, with ``"*"`` for the variables it does not name (default
``"reference"``), e.g. ``{"*": "effects", "dose": "poly"}`` is R's
``options(contrasts = c("contr.sum", "contr.poly"))`` with ``dose`` ordered.

Level order (for factors whose levels ``levels=`` does not give and that are
not pandas categoricals, which keep their category order):
``"appearance"`` (MATLAB's, the default) or ``"sorted"`` (R's ``factor()``):
numbers by value, text as R sorts it in a UTF-8 locale with ICU, R's default
on Linux and macOS: punctuation, then digits, then letters, letters compared
first without case and accents, then accents, then lower case before upper
case (``factor(c("b", "A", "a"))`` has levels ``a, A, b``; R in the C locale
would give ``A, a, b``).
"""

from __future__ import annotations

import unicodedata
import warnings

import numpy as np

__all__ = ["CODINGS", "LEVEL_ORDERS", "contrast", "check_coding", "coding_flag", "coding_from_flags", "coding_label",
           "coding_text", "factor_codings", "sorted_levels", "zero_sum"]

CODINGS = ("reference", "effects", "helmert", "poly")
LEVEL_ORDERS = ("appearance", "sorted")
DEFAULT = "*"  # the key of a coding dict for the variables it does not name
_ZERO_SUM = ("effects", "helmert", "poly")  # codings whose columns sum to zero over the levels

# ICU's root collation order of the printable ASCII characters other than letters and digits
# (characters that compare equal apart from case share a weight; letters follow digits).
_PUNCTUATION = " _-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$"


def _poly(k):
    """R's ``contr.poly(k)``: orthonormal polynomials of degree 1 .. k-1 over scores 1..k."""
    y = np.arange(1, k + 1, dtype=float)
    y -= y.mean()
    X = y[:, None] ** np.arange(k)[None, :]
    Q, R = np.linalg.qr(X)
    raw = Q * np.diag(R)  # each column Q_j R_jj: independent of the signs the QR chose
    Z = raw / np.sqrt((raw ** 2).sum(axis=0))
    names = [".L", ".Q", ".C"] + [f"^{d}" for d in range(4, k)]
    return Z[:, 1:], names[:k - 1]


def contrast(levels, coding, full=False):
    """Contrast matrix (levels x columns) and column suffixes of a factor, as R names the columns.

    Parameters
    ----------
    levels : list of str
    coding : {"reference", "effects", "helmert", "poly"}
    full : bool
        One indicator column per level (R's coding of the first factor of a
        model matrix without intercept), whatever the coding.
    """
    k = len(levels)
    if full:
        return np.eye(k), list(levels)
    if coding == "effects":
        return np.vstack([np.eye(k - 1), -np.ones((1, k - 1))]), list(levels[:-1])
    if coding == "helmert":
        C = np.zeros((k, k - 1))
        for j in range(k - 1):
            C[:j + 1, j] = -1.0
            C[j + 1, j] = j + 1.0
        return C, [str(j) for j in range(1, k)]
    if coding == "poly":
        return _poly(k)
    return np.eye(k)[:, 1:], list(levels[1:])


def _bad_coding(where, value):
    options = ", ".join(repr(c) for c in CODINGS)
    return ValueError(f"Invalid value for the 'coding' parameter{where}. Allowed values are {options}, but got "
                      f"{value!r} instead.")


def check_coding(coding):
    """Split ``coding`` into the default and the per-variable codings, checking every value.

    Returns
    -------
    default : str
    named : dict of str to str
    """
    if isinstance(coding, str):
        if coding not in CODINGS:
            raise _bad_coding("", coding)
        return coding, {}
    if not isinstance(coding, dict):
        raise TypeError(f"coding must be one of {', '.join(map(repr, CODINGS))} or a dict of variable to coding "
                        f"(e.g. {{'dose': 'poly'}}), got {type(coding).__name__}.")
    for name, value in coding.items():
        if not isinstance(name, str):
            raise TypeError(f"coding's keys must be variable names (or '*'), got {name!r}.")
        if value not in CODINGS:
            raise _bad_coding(f" ({name!r})", value)
    named = {k: v for k, v in coding.items() if k != DEFAULT}
    return coding.get(DEFAULT, "reference"), named


def factor_codings(default, named, factors) -> dict:
    """Each factor's coding: its own from ``named``, else ``default``."""
    return {v: named.get(v, default) for v in factors}


def zero_sum(coding) -> bool:
    """Whether the coding's columns sum to zero over the levels (a main effect next to an
    interaction is then averaged over the other factor's levels)."""
    return coding in _ZERO_SUM


def _collation_key(text):
    """Sort key of ``text`` in ICU's root collation (primary, then accents, then case)."""
    primary, accents, case = [], [], []
    for ch in unicodedata.normalize("NFD", text):
        if unicodedata.combining(ch):
            if accents:
                accents[-1] += (ord(ch),)
            continue
        low = ch.lower()
        if ch in _PUNCTUATION:
            primary.append((0, _PUNCTUATION.index(ch)))
        elif ch.isdigit() and ch.isascii():
            primary.append((1, int(ch)))
        elif low.isascii() and low.isalpha():
            primary.append((2, ord(low)))
        else:
            primary.append((3, ord(low)))
        accents.append(())
        case.append(0 if ch == low else 1)
    return tuple(primary), tuple(accents), tuple(case)


def sorted_levels(name, raw, texts, stacklevel=5) -> list:
    """The distinct ``texts`` in R's ``factor()`` order (see the module notes).

    ``raw`` are the values the texts were made from: when every one is a
    number the levels sort by value, as R sorts a numeric column.
    """
    distinct = list(dict.fromkeys(texts))
    first = dict(zip(texts, raw))
    values = [first[t] for t in distinct]
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
           for v in values):
        return [t for _, t in sorted(zip(values, distinct), key=lambda pair: float(pair[0]))]
    unusual = [t for t in distinct if any(k[0] == 3 for k in _collation_key(t)[0])]
    if unusual:
        warnings.warn(f"level_order='sorted': the levels of {name!r} have characters beyond ASCII letters, digits "
                      f"and punctuation ({', '.join(map(repr, unusual[:3]))}), whose order may differ from R's; "
                      f"give levels={{{name!r}: [...]}} to be sure.", UserWarning, stacklevel=stacklevel)
    return sorted(distinct, key=_collation_key)


def coding_text(codings, factors, default) -> str:
    """The summary's description of the codings, e.g. ``"helmert (R's contr.helmert); levels: ..."``."""
    names = {"reference": "reference (treatment)", "effects": "effects (sum to zero, last level -1)",
             "helmert": "helmert (R's contr.helmert: each level - mean of the levels before it)",
             "poly": "poly (R's contr.poly: orthogonal polynomial trends over the levels in order)"}
    if not factors:
        return f"{names[default]}; no factors"
    used = sorted(set(codings.values()), key=CODINGS.index)
    if used == ["reference"]:
        return "reference (treatment); reference levels: " + ", ".join(
            f"{k} = {v[0]!r}" for k, v in factors.items())
    if len(used) == 1:
        return f"{names[used[0]]}; levels: " + ", ".join(f"{k} = {v}" for k, v in factors.items())
    return "; ".join(f"{k}: {codings[k]} {v}" for k, v in factors.items())


def coding_label(default, codings) -> str:
    """One string for the fit's options and saved settings: ``"effects"``, or ``"reference; dose: poly"``."""
    other = {k: v for k, v in codings.items() if v != default}
    return default + "".join(f"; {k}: {v}" for k, v in other.items())


def coding_flag(text):
    """One ``--coding`` value, ``CODING`` or ``VAR=CODING``, as a (variable or ``"*"``, coding) pair."""
    import argparse

    name, sep, value = (part.strip() for part in text.partition("="))
    if not sep:
        name, value = DEFAULT, name
    if not name or value not in CODINGS:
        raise argparse.ArgumentTypeError(f"expected CODING or VAR=CODING with CODING one of {', '.join(CODINGS)}, "
                                         f"got {text!r}")
    return name, value


def coding_from_flags(pairs):
    """The ``coding=`` argument of repeated ``--coding`` flags (None: ``"reference"``).

    Raises ``ValueError`` when a variable (or the default) is given two codings.
    """
    out = {}
    for name, value in pairs or []:
        if out.get(name, value) != value:
            what = "the default coding" if name == DEFAULT else f"{name!r}"
            raise ValueError(f"--coding gives {what} two codings ({out[name]!r} and {value!r}).")
        out[name] = value
    if not out:
        return "reference"
    return out[DEFAULT] if list(out) == [DEFAULT] else out
