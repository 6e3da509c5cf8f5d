"""The lowest layer: pure tensor functions and the slot memory's small autograd functions."""
from .memory import SlotMemory
from .sparsify import sparse_attention_weights, sparsity_threshold

__all__ = ["SlotMemory", "sparse_attention_weights", "sparsity_threshold"]
