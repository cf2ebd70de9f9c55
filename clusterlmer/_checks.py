"""Small argument checks shared by the public functions (MNE style messages)."""

from __future__ import annotations

import contextlib
import contextvars
import os
import tempfile

__all__ = ["check_option", "check_writable", "option_hint", "called_from_cli", "in_cli"]

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


def in_cli() -> bool:
    """Whether the call came from the command line (for messages worded differently there)."""
    return _FROM_CLI.get()


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


def check_writable(path, what):
    """Check that a file can be written at ``path`` before any long work starts.

    The folder must exist (it is not created: a mistyped folder would
    otherwise appear silently) and accept a new file, which is tested by
    creating and removing a temporary file in it; an existing ``path`` must
    be a writable file, not a folder.

    Parameters
    ----------
    path : str or path-like
    what : str
        What the file is for, to start the messages (e.g. ``"checkpoint"``,
        ``"--out"``).

    Returns
    -------
    str
        ``path`` as a string.

    Raises
    ------
    TypeError
        ``path`` is not a str or path-like.
    OSError
        (``FileNotFoundError`` for a missing folder) naming the path, the
        folder and the operating system's reason.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a file path (str or path-like), got {type(path).__name__}.")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path!r} is a folder; give the path of a file (e.g. inside that folder).")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what} {path!r}: the folder {folder!r} does not exist. Create it first, or "
                                "choose a file in an existing folder.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".clusterlmer-write-test-", dir=folder)
    except OSError as exc:
        raise OSError(f"{what} {path!r} cannot be written: creating a file in {folder!r} fails "
                      f"({exc.strerror or exc}). Choose a folder you can write to.") from None
    os.close(fd)
    os.remove(probe)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise PermissionError(f"{what} {path!r} exists and is read-only. Choose another file name, or make it "
                              "writable if it may be replaced.")
    return path
