"""Errors raised for bad input. The CLI turns each into one line and exit code 2.

Messages follow one form: the rule, the bad value, the way out.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["GansweepError", "ConfigError", "UnknownNameError", "DataUnavailableError", "first_line", "reason",
           "failure_reason"]


def first_line(error: BaseException) -> str:
    """What an error says, in one line: its message's first line, or its type where it says nothing."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def reason(error: BaseException) -> str:
    """How a run that an interrupt or an unexpected error ended says why, in one line: with the error's type,
    which says more than a bug's message alone."""
    if isinstance(error, KeyboardInterrupt):
        return str(error) or "interrupted by the user"
    return f"{type(error).__name__}: {error}".splitlines()[0]


def failure_reason(error: BaseException) -> str:
    """Why a run that an error ended failed, in one line: gansweep's own errors say it themselves; anything else
    names its type (`reason`)."""
    return first_line(error) if isinstance(error, GansweepError) else reason(error)


class GansweepError(Exception):
    """Base of every error caused by what a user asked for, not by a bug."""


class ConfigError(GansweepError):
    """A parameter value outside its allowed range, or a combination that has no meaning."""


class UnknownNameError(GansweepError):
    """A variant, dataset, study or part name that is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str], listing: str | None = None):
        known = sorted(known)
        message = f"unknown {kind} {name!r}"
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        if close:
            message += f"; did you mean {close[0]!r}?"
        else:
            message += f"; known: {', '.join(known)}"
        if listing:
            message += f" (see: {listing})"
        super().__init__(message)
        self.kind, self.name = kind, name


class DataUnavailableError(GansweepError):
    """A dataset that is neither under the data root nor downloadable."""
