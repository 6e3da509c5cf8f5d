"""The error the command line reports as one clean line (``sab-mips: error: ...``) instead of a traceback."""
from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for (a bad run directory, checkpoint or option), not a bug."""
