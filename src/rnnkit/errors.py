"""The one exception type the command line turns into a one-line message.

Library code raises :class:`RnnkitError` for input a user can fix (a missing file, a flag out of
range, a checkpoint that does not match); the CLI prints its message on stderr without a traceback
and exits with status 1. Programming errors keep their usual exception types and tracebacks.
"""

from __future__ import annotations

__all__ = ["RnnkitError"]


class RnnkitError(ValueError):
    """A user-facing error: the message says what is wrong and what to do about it.

    A ``ValueError`` too, so configuration dataclasses can raise it for out-of-range values.
    """
