"""Build an index from a short factory string, FAISS ``index_factory`` style.

Grammar: ``backend`` or ``backend:arg,arg,...`` where each arg is ``key=value`` (a parameter) or, for
backends that take one, a leading positional descriptor (``faiss:HNSW32,efSearch=64``).
``str(make_index(s))`` gives back an equivalent string with every parameter spelled out.
"""
from __future__ import annotations

from .base import MIPSIndex

REGISTRY: dict[str, type[MIPSIndex]] = {}


def register(cls: type[MIPSIndex]) -> type[MIPSIndex]:
    """Add a backend class to the registry under ``cls.name``."""
    REGISTRY[cls.name] = cls
    return cls


def parse_factory_string(spec: str) -> tuple[str, list[str], dict[str, str]]:
    """Split ``backend:pos,key=value`` into (backend, positionals, params)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"index factory string must be a non-empty string, got {spec!r}")
    backend, _, rest = spec.strip().partition(":")
    positionals: list[str] = []
    params: dict[str, str] = {}
    for token in filter(None, (t.strip() for t in rest.split(","))):
        key, eq, value = token.partition("=")
        if not eq:
            positionals.append(token)
        elif key.strip() in params:
            raise ValueError(f"index factory string {spec!r} sets {key.strip()} twice")
        else:
            params[key.strip()] = value.strip()
    return backend.strip(), positionals, params


def make_index(spec: str) -> MIPSIndex:
    """Create an (un-reset) index from a factory string such as ``"exact"`` or ``"faiss:Flat"``."""
    backend, positionals, params = parse_factory_string(spec)
    if backend not in REGISTRY:
        raise ValueError(f"unknown index backend {backend!r}; valid backends: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[backend]
    build = getattr(cls, "from_factory", None)
    if build is not None:
        return build(positionals, params)
    if positionals:
        raise ValueError(f"index '{backend}' takes only key=value parameters, got {', '.join(positionals)}")
    return cls(**params)


def available_backends() -> dict[str, str | None]:
    """Map each registered backend to None (available) or the reason it cannot run here."""
    return {name: cls.unavailable_reason() for name, cls in sorted(REGISTRY.items())}
