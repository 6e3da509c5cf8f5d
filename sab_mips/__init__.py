"""SAB-MIPS: Sparse Attentive Backtracking with past states retrieved by maximum-inner-product search.

Shapes used throughout: B batch, T time, H hidden size, N memory slots, K = k_top, C candidates.
"""
from .config import MODEL_FIELDS, SCORERS, SABConfig, TrainConfig
from .models import MODELS, build_model
from .record import AttentionRecord
from .sab import DenseAttentionLSTM, SABLSTM
from .baselines import LSTMBaseline
from .sparsify import sparse_attention_weights

__version__ = "0.1.0"

__all__ = [
    "AttentionRecord",
    "DenseAttentionLSTM",
    "LSTMBaseline",
    "MODELS",
    "MODEL_FIELDS",
    "SABConfig",
    "SABLSTM",
    "SCORERS",
    "TrainConfig",
    "build_model",
    "sparse_attention_weights",
]
