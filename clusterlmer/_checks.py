"""Small argument checks shared by the public functions (MNE style messages)."""

from __future__ import annotations

__all__ = ["check_option", "check_type"]


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
