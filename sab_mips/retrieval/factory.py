"""Index factory strings typed by a user: a bad string is the user's mistake (``UserError``), not a bug."""
from __future__ import annotations

from indexes import make_index
from indexes.base import MIPSIndex

from ..errors import UserError


def make_user_index(spec: str) -> MIPSIndex:
    """``make_index(spec)``; its ValueError (which lists the valid backends or parameters) becomes a UserError."""
    try:
        return make_index(spec)
    except ValueError as exc:
        raise UserError(str(exc)) from None
