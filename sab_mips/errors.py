"""The one error the command line prints as a single line (``sab-mips: error: ...``) instead of a traceback."""
from __future__ import annotations


class UserError(ValueError):
    """A problem with what the user asked for (an option, a file, a run directory), not a bug.

    Raised where the problem is detected. It is a ``ValueError``, so Python callers that catch bad
    arguments the usual way keep working; the command line reports only these as one line and lets every
    other exception show its traceback (a bug deep in training is not the user's mistake).
    """
