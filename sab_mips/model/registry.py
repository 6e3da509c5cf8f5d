"""The model registry: one name per model of the family, built from a ``SABConfig``."""
from __future__ import annotations

from typing import Callable

from torch import nn

from .baselines import LSTMBaseline
from .config import MODEL_DOCS, SABConfig
from .sab import DenseAttentionLSTM, SABLSTM

MODELS: dict[str, Callable[..., nn.Module]] = {
    "sab": SABLSTM,
    "dense": DenseAttentionLSTM,
    "tbptt": lambda config, **kw: LSTMBaseline(config, truncate=True, **kw),
    "lstm": lambda config, **kw: LSTMBaseline(config, truncate=False, **kw),
}
assert set(MODELS) == set(MODEL_DOCS)


def build_model(config: SABConfig, device=None, dtype=None) -> nn.Module:
    """The model named by ``config.model``."""
    return MODELS[config.model](config, device=device, dtype=dtype)
