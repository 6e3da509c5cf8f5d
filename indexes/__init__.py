"""MIPS retrieval backends behind one contract (see ``indexes.base``); independent of ``sab_mips``."""
from .base import MIPSIndex, Param
from .exact import ExactIndex
from .factory import REGISTRY, available_backends, make_index, parse_factory_string, register

register(ExactIndex)

__all__ = [
    "MIPSIndex",
    "Param",
    "ExactIndex",
    "REGISTRY",
    "available_backends",
    "make_index",
    "parse_factory_string",
    "register",
]
