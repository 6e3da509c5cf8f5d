"""``python -m indexes``: which retrieval backends can run here, why not, and their parameters.

Example::

    $ python -m indexes
    exact        available
    ...
    faiss        available
      faiss:HNSW<M>
        efSearch=64        search time  candidate list size of the graph search
    ...
"""
from __future__ import annotations

import sys

import torch

from . import REGISTRY
from ._faiss import faiss_missing_reason, load_faiss
from .base import Param


def _versions() -> str:
    faiss = "not installed" if faiss_missing_reason() else load_faiss().__version__
    cuda = torch.version.cuda if torch.cuda.is_available() else "not available"
    return f"torch {torch.__version__}, faiss {faiss}, CUDA {cuda}"


def _param_lines(params: dict[str, Param], indent: str) -> list[str]:
    if not params:
        return [f"{indent}(no parameters)"]
    lines = []
    for key, spec in params.items():
        when = "search time" if spec.search_time else "build time"
        setting = f"{key}={spec.default}"
        lines.append(f"{indent}{setting:<18} {when:<11}  {spec.doc}")
    return lines


def describe() -> str:
    """The listing printed by ``python -m indexes``."""
    lines = [f"MIPS index backends ({_versions()})", ""]
    for name, cls in sorted(REGISTRY.items()):
        reason = cls.unavailable_reason()
        lines.append(f"{name:<12} {'available' if reason is None else 'unavailable: ' + reason}")
        variants = getattr(cls, "variants", None)
        if variants:
            for variant in variants.values():
                if cls.on_gpu and not variant.gpu_ok:
                    continue
                lines.append(f"  {name}:{variant.descriptor_help}")
                lines.extend(_param_lines(variant.params, "    "))
        else:
            lines.extend(_param_lines(cls.params, "  "))
    return "\n".join(lines)


def main() -> int:
    print(describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
