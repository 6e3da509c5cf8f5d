"""``SABConfig``: one frozen, validated dataclass for every model of the family (SAB and the baselines).

Each model reads a subset of the fields, listed in ``MODEL_FIELDS``, so that a front end can refuse an
option that would be ignored. The config is saved with every run and checkpoint.

**Presets.** ``preset="paper"`` is the paper's algorithm as written (Ke et al. 2018; steps in ``layer``); ``preset="recommended"`` (the default) switches on
the options that measurably train better (``PRESETS``; the measurements are in ``experiments/RESULTS.md``).
A field left at None takes its preset's value when the config is made, so a saved config always holds
concrete values; a field given explicitly wins over the preset:

    SABConfig(preset="paper")                       # the paper's SAB
    SABConfig(preset="paper", sparsifier="softmax")  # the paper's SAB with one option changed

Configs saved before presets existed hold no ``preset``: ``from_saved`` reads them as ``paper`` (their
semantics), so old checkpoints load unchanged.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config_base import Config, choice, non_negative_int, option, positive_int, require
from ..retrieval.factory import make_user_index

SCORERS = ("dot", "cosine", "additive", "official")
MIPS_SCORERS = ("dot", "cosine")  # inner products of a query and a stored key: an index can serve them
SPARSIFIERS = ("relu", "softmax")
SLOT_VALUES = ("h", "h_hat")
DEFAULT_TEMPERATURE = 5.0  # the cosine scorer's initial τ when ``temperature`` is not given

# The options each preset sets (a field given explicitly wins). "paper" is the paper's algorithm.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"scorer": "dot", "sparsifier": "relu", "slot_value": "h", "forget_bias": 0.0, "chrono": 0,
              "explore": 0, "summary_to_state": True, "head_hidden": 0},
    "recommended": {"scorer": "cosine", "sparsifier": "softmax", "slot_value": "h", "forget_bias": 1.0, "chrono": 0,
                    "explore": 0, "summary_to_state": True, "head_hidden": 0},
}
PRESET_FIELDS = tuple(PRESETS["paper"])

# Which SABConfig fields each model reads (besides input_size/output_size/hidden_size).
MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "sab": ("preset", "k_top", "k_att", "attend_every", "k_trunc", "scorer", "attn_dim", "eps", "retrieval", "k_cand",
            "sparsifier", "slot_value", "forget_bias", "chrono", "temperature", "explore", "summary_to_state",
            "head_hidden"),
    "dense": ("preset", "k_att", "attend_every", "scorer", "attn_dim", "slot_value", "forget_bias", "chrono", "temperature",
              "summary_to_state", "head_hidden"),
    "tbptt": ("preset", "k_trunc", "forget_bias", "chrono"),
    "lstm": ("preset", "forget_bias", "chrono"),
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
    backend = make_user_index(retrieval)
    require(scorer in MIPS_SCORERS or backend.name == "exact",
            f"retrieval {retrieval!r} needs the dot or cosine scorer (MIPS serves only inner products); "
            f"scorer {scorer!r} supports retrieval 'exact' only")


def saved_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The fields of a saved model config, read as they were meant: a config saved before presets existed
    holds no ``preset`` and has the paper's semantics."""
    return {"preset": "paper", **data}


@dataclass(frozen=True)
class SABConfig(Config):
    """A model of the SAB family; ``sab-mips train --help`` lists the fields with their help."""

    model: str = option("sab", "one of sab, dense, tbptt, lstm.")
    preset: str = option("recommended", "paper (the paper's algorithm as written) or recommended (options that train better); "
                                        "sets every option left unset (scorer, sparsifier, slot_value, forget_bias, chrono, explore, summary_to_state, head_hidden).")
    input_size: int = option(10, "per-step input features (set by the task).")
    output_size: int = option(10, "per-step output classes (set by the task).")
    hidden_size: int = option(128, "H, the LSTM state size.")
    k_top: int = option(5, "K, slots that receive non-zero attention weight at each attention step.")
    k_att: int = option(10, "a memory slot is written every k_att steps (steps k_att-1, 2k_att-1, ...).")
    attend_every: int = option(1, "attention happens at steps t with t % attend_every == 0.")
    k_trunc: int = option(10, "the recurrent chain (h, c) is detached every k_trunc steps.")
    scorer: str | None = option(None, "dot (the paper's) or cosine (scale-free; both MIPS-servable), additive, "
                                      "official (the released code's). None: the preset's.")
    attn_dim: int = option(64, "d_k, width of the query/key projections of the dot and additive scorers.")
    eps: float = option(1e-7, "ε in the sparsifier's normaliser Σ ReLU(a - δ) + ε.")
    retrieval: str = option("exact", "index factory string that finds the candidate slots (SAB-MIPS), e.g. exact, "
                                     "faiss:HNSW32,efSearch=64, alsh:K=8,L=16; anything but exact needs a scorer an "
                                     "index can serve (dot or cosine).")
    k_cand: int | None = option(None, "candidates retrieved per attention step, >= k_top+1 (None: k_top+1).")
    sparsifier: str | None = option(None, "relu: the paper's w = ReLU(a - δ) / (Σ ReLU(a - δ) + ε); softmax: a "
                                          "softmax over the top K scores (exactly K non-zero weights, a gradient "
                                          "bounded near ties). None: the preset's.")
    slot_value: str | None = option(None, "what a memory slot stores: h (the paper's: the state after the summary, "
                                          "h = ĥ + s) or h_hat (the provisional state ĥ, before the summary). "
                                          "None: the preset's.")
    forget_bias: float | None = option(None, "added to the LSTM's forget-gate bias at initialisation (0: PyTorch's "
                                             "initialisation). None: the preset's.")
    chrono: int | None = option(None, "chrono initialisation of the LSTM gates (Tallec & Ollivier 2018): forget "
                                      "biases log(U(1, chrono - 1)), input biases their negatives; 0: off. "
                                      "Excludes forget_bias. None: the preset's.")
    temperature: float | None = option(None, f"initial τ of the cosine scorer, learned (None: "
                                             f"{DEFAULT_TEMPERATURE}); only with scorer cosine.")
    summary_to_state: bool | None = option(None, "true: the paper's h_t = ĥ_t + s_t, the summary enters the "
                                                  "recurrent state; false: h_t = ĥ_t, the summary reaches only the "
                                                  "output head [h_t ; s_t] (attention cannot then build a chain of "
                                                  "short skips through recent slots). None: the preset's.")
    head_hidden: int | None = option(None, "the output head on [h_t ; s_t]: 0, linear (the paper's); n > 0, one "
                                           "hidden layer of n tanh units, which can read a slot's content differently "
                                           "at different steps. None: the preset's.")
    explore: int | None = option(None, "R: in training, each attention step also attends to R slots drawn at random "
                                       "from the whole memory (the softmax runs over the top K and these R), so "
                                       "slots that top-K never selects still get gradient; 0: off. Needs the "
                                       "softmax sparsifier. None: the preset's.")

    def __post_init__(self) -> None:
        choice("preset", self.preset, list(PRESETS))
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.temperature is None and self.scorer == "cosine":
            object.__setattr__(self, "temperature", DEFAULT_TEMPERATURE)
        choice("model", self.model, list(MODEL_FIELDS))
        for name in ("input_size", "output_size", "hidden_size", "k_top", "k_att", "attend_every", "k_trunc", "attn_dim"):
            positive_int(name, getattr(self, name))
        choice("scorer", self.scorer, SCORERS)
        choice("sparsifier", self.sparsifier, SPARSIFIERS)
        choice("slot_value", self.slot_value, SLOT_VALUES)
        require(isinstance(self.forget_bias, (int, float)) and not isinstance(self.forget_bias, bool),
                f"forget_bias must be a number, got {self.forget_bias!r}")
        non_negative_int("chrono", self.chrono, "0: off")
        require(self.chrono == 0 or self.chrono >= 3, f"chrono must be 0 (off) or >= 3 (T_max), got {self.chrono}")
        require(self.chrono == 0 or self.forget_bias == 0,
                f"chrono sets the forget biases itself: give forget_bias 0 with chrono={self.chrono}")
        if self.scorer == "cosine":
            require(isinstance(self.temperature, (int, float)) and self.temperature > 0,
                    f"temperature must be > 0, got {self.temperature!r}")
        else:
            require(self.temperature is None, f"temperature applies to scorer cosine only, not {self.scorer!r}")
        require(isinstance(self.eps, (int, float)) and self.eps > 0, f"eps must be > 0, got {self.eps!r}")
        non_negative_int("explore", self.explore, "0: off")
        non_negative_int("head_hidden", self.head_hidden, "0: a linear head")
        require(isinstance(self.summary_to_state, bool), f"summary_to_state must be true or false, got {self.summary_to_state!r}")
        require(self.explore == 0 or self.sparsifier == "softmax",
                f"explore={self.explore} needs the softmax sparsifier (the relu rule gives weight only to the top "
                f"K), got sparsifier {self.sparsifier!r}")
        check_retrieval(self.retrieval, self.scorer)
        if self.k_cand is not None:
            positive_int("k_cand", self.k_cand)
            require(self.k_cand >= self.k_top + 1,
                    f"k_cand must be >= k_top+1 = {self.k_top + 1} (the sparsifier needs the (K+1)-th score), "
                    f"got {self.k_cand}")

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> "SABConfig":
        """A config saved with a run (``saved_fields`` explains the one difference from ``from_dict``)."""
        return cls.from_dict(saved_fields(data))

    def replace(self, **changes: Any) -> "SABConfig":
        """A copy with ``changes``. Changing ``preset`` moves the options that followed the old preset (those
        equal to its values) to the new one's; options that differed from the old preset stay."""
        preset = changes.get("preset", self.preset)
        if preset != self.preset and preset in PRESETS:
            for name in (*PRESET_FIELDS, "temperature"):
                followed = PRESETS[self.preset].get(name, DEFAULT_TEMPERATURE if self.scorer == "cosine" else None)
                if name not in changes and getattr(self, name) == followed:
                    changes[name] = None
        elif changes.get("scorer", self.scorer) != "cosine" and "temperature" not in changes:
            changes["temperature"] = None  # τ belongs to the cosine scorer
        return dataclasses.replace(self, **changes)

    @property
    def candidates(self) -> int:
        """C, the number of candidate slots retrieved per attention step."""
        return self.k_cand if self.k_cand is not None else self.k_top + 1
