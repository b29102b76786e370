"""Errors that name what the user got wrong: the one place they are defined.

Everything that reads user input (datasets, annotation files, images, weights, command lines)
raises ``InputError`` with a message naming the file, image or setting and what was expected.
The command lines print it as one line ``<prog>: error: <message>`` and exit with status 2;
library users get an ordinary ``ValueError`` subclass. NumPy only, imported by everything.
"""

from __future__ import annotations

from typing import Any, NoReturn


class InputError(ValueError):
    """Bad input from the user (paths, annotation files, images, arguments, settings)."""


class UnsafePathError(InputError):
    """A path read from a data file leaves the folder it must stay in."""


def fail(message: str) -> NoReturn:
    """Raise ``InputError(message)``."""
    raise InputError(message)


def one_line(text: Any) -> str:
    """Collapse a (possibly multi-line) message into one line."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
