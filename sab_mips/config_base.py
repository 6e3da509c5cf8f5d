"""What the configs share: frozen dataclasses whose fields carry their own help, validated on creation.

A field is declared with ``option(default, "help text")``; the help lives in the field's metadata, so the
command line builds a flag per field from ``help_of`` and ``value_type`` without parsing docstrings.
Validation errors are ``UserError`` (a ``ValueError``): a bad value is the caller's mistake.

Example:
    >>> @dataclass(frozen=True)
    ... class Demo(Config):
    ...     size: int = option(8, "number of things")
    >>> Demo.from_dict({"size": 3}).replace(size=4).to_dict()
    {'size': 4}
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import fields
from typing import Any

from .errors import UserError


def option(default: Any, help: str) -> Any:  # noqa: A002  (the name argparse uses)
    """A dataclass field with a default and its help text (shown by ``--help`` and ``help_of``)."""
    return dataclasses.field(default=default, metadata={"help": help})


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value: Any) -> None:
    require(is_int(value) and value >= 1, f"{name} must be an integer >= 1, got {value!r}")


def non_negative_int(name: str, value: Any, note: str = "") -> None:
    note = f" ({note})" if note else ""
    require(is_int(value) and value >= 0, f"{name} must be an integer >= 0{note}, got {value!r}")


def number(name: str, value: Any) -> None:
    """A finite int or float (a JSON string or null is refused here, not as a TypeError later)."""
    require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
            f"{name} must be a finite number, got {value!r}")


def choice(name: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    require(value in choices, f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")


class Config:
    """Shared behaviour of the frozen config dataclasses: dict and JSON round trip, ``replace``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Build from a dict; unknown keys are an error that lists the valid ones."""
        names = field_names(cls)
        unknown = sorted(set(data) - set(names))
        require(not unknown, f"unknown {cls.__name__} field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]  # type: ignore[arg-type]


def help_of(cls: type, name: str) -> str:
    """The help text declared with ``option`` for field ``name`` of ``cls``."""
    return next(f.metadata.get("help", "") for f in fields(cls) if f.name == name)  # type: ignore[arg-type]


def value_type(cls: type, name: str) -> type:
    """The type of field ``name``, without ``| None``: ``int | None`` -> ``int``."""
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return hint
