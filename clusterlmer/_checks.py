"""Small argument checks shared by the public functions (MNE style messages)."""

from __future__ import annotations

import contextlib
import contextvars

__all__ = ["check_option", "check_type", "option_hint", "called_from_cli"]

# Set by the command line for the duration of a command, so that messages
# suggesting an option name the flag a CLI user can actually pass.
_FROM_CLI = contextvars.ContextVar("clusterlmer_from_cli", default=False)


@contextlib.contextmanager
def called_from_cli():
    """Within this block, :func:`option_hint` gives the command-line form."""
    token = _FROM_CLI.set(True)
    try:
        yield
    finally:
        _FROM_CLI.reset(token)


def option_hint(python_form, cli_form=None):
    """How to pass an option, in the words of the caller's interface.

    Parameters
    ----------
    python_form : str
        The keyword argument as written in Python, e.g.
        ``"schemes={'region': 'none'}"``.
    cli_form : str or None
        The same setting on the command line, e.g. ``"--scheme region=none"``;
        ``None`` when the command line has no such flag.

    Returns
    -------
    str
        Under the command line (:func:`called_from_cli`) the CLI form alone;
        otherwise the Python form followed by ``" (CLI: ...)"`` when a CLI
        form exists.
    """
    if _FROM_CLI.get() and cli_form:
        return cli_form
    return f"{python_form} (CLI: {cli_form})" if cli_form else python_form


def check_option(name, value, allowed):
    """Raise ``ValueError`` naming the parameter, the allowed values and the value given."""
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"Invalid value for the {name!r} parameter. Allowed values are {options}, but got {value!r} instead.")
    return value


def check_type(name, value, types, what):
    """Raise ``TypeError`` when ``value`` is not an instance of ``types``."""
    if not isinstance(value, types):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}.")
    return value
