"""``SABConfig``: one frozen, validated dataclass for every model of the family (SAB and the baselines).

Each model reads a subset of the fields, listed in ``MODEL_FIELDS``, so that a front end can refuse an
option that would be ignored. The config is saved with every run and checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from indexes import make_index

from ..config_base import Config, choice, option, positive_int, require

SCORERS = ("dot", "additive", "official")
MIPS_SCORERS = ("dot",)  # scores that are inner products of a query and a stored key: an index can serve them

# Which SABConfig fields each model reads (besides input_size/output_size/hidden_size).
MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "sab": ("k_top", "k_att", "attend_every", "k_trunc", "scorer", "attn_dim", "eps", "retrieval", "k_cand"),
    "dense": ("k_att", "attend_every", "scorer", "attn_dim"),
    "tbptt": ("k_trunc",),
    "lstm": (),
}
MODEL_DOCS = {
    "sab": "LSTM with sparse attentive backtracking (top-k attention over its own past states)",
    "dense": "LSTM with dense softmax self-attention over all stored states, full BPTT and full gradients",
    "tbptt": "LSTM trained with truncated BPTT (chain cut every k_trunc steps)",
    "lstm": "fused nn.LSTM trained with full BPTT",
}


def check_retrieval(retrieval: Any, scorer: str) -> None:
    """Refuse a bad index factory string (the index's own error lists valid backends and parameters) and
    approximate retrieval with a scorer that is not an inner product."""
    require(isinstance(retrieval, str), f"retrieval must be an index factory string, got {retrieval!r}")
    try:
        backend = make_index(retrieval)
    except ValueError as exc:
        require(False, str(exc))
    require(scorer in MIPS_SCORERS or backend.name == "exact",
            f"retrieval {retrieval!r} needs the dot scorer (MIPS serves only inner products); scorer "
            f"{scorer!r} supports retrieval 'exact' only")


@dataclass(frozen=True)
class SABConfig(Config):
    """A model of the SAB family; ``sab-mips train --help`` lists the fields with their help."""

    model: str = option("sab", "one of sab, dense, tbptt, lstm.")
    input_size: int = option(10, "per-step input features (set by the task).")
    output_size: int = option(10, "per-step output classes (set by the task).")
    hidden_size: int = option(128, "H, the LSTM state size.")
    k_top: int = option(5, "K, slots that receive non-zero attention weight at each attention step.")
    k_att: int = option(10, "a memory slot is written every k_att steps (steps k_att-1, 2k_att-1, ...).")
    attend_every: int = option(1, "attention happens at steps t with t % attend_every == 0.")
    k_trunc: int = option(10, "the recurrent chain (h, c) is detached every k_trunc steps.")
    scorer: str = option("dot", "dot (MIPS-servable, default), additive or official (released code).")
    attn_dim: int = option(64, "d_k, width of the query/key projections of the dot and additive scorers.")
    eps: float = option(1e-7, "ε in the sparsifier's normaliser Σ ReLU(a - δ) + ε.")
    retrieval: str = option("exact", "index factory string that finds the candidate slots (SAB-MIPS), e.g. exact, "
                                     "faiss:HNSW32,efSearch=64, alsh:K=8,L=16; anything but exact needs the dot "
                                     "scorer.")
    k_cand: int | None = option(None, "candidates retrieved per attention step, >= k_top+1 (None: k_top+1).")

    def __post_init__(self) -> None:
        choice("model", self.model, list(MODEL_FIELDS))
        for name in ("input_size", "output_size", "hidden_size", "k_top", "k_att", "attend_every", "k_trunc", "attn_dim"):
            positive_int(name, getattr(self, name))
        choice("scorer", self.scorer, SCORERS)
        require(isinstance(self.eps, (int, float)) and self.eps > 0, f"eps must be > 0, got {self.eps!r}")
        check_retrieval(self.retrieval, self.scorer)
        if self.k_cand is not None:
            positive_int("k_cand", self.k_cand)
            require(self.k_cand >= self.k_top + 1,
                    f"k_cand must be >= k_top+1 = {self.k_top + 1} (the sparsifier needs the (K+1)-th score), "
                    f"got {self.k_cand}")

    @property
    def candidates(self) -> int:
        """C, the number of candidate slots retrieved per attention step."""
        return self.k_cand if self.k_cand is not None else self.k_top + 1
