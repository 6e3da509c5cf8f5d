"""The model layer: SAB, its baselines, their slow twin and their config; nothing of training or the CLI.

``scorers`` (attention scores), ``record`` (what a pass attended to), ``sab`` (SAB-LSTM and the dense
baseline), ``baselines`` (full and truncated BPTT), ``reference`` (the slow twin), ``registry``
(``build_model``), ``config`` (``SABConfig``).
"""
from .baselines import LSTMBaseline
from .config import MODEL_DOCS, MODEL_FIELDS, SCORERS, SABConfig, check_retrieval
from .record import AttentionRecord
from .registry import MODELS, build_model
from .sab import DenseAttentionLSTM, SABLSTM, SABOutput

__all__ = ["AttentionRecord", "DenseAttentionLSTM", "LSTMBaseline", "MODELS", "MODEL_DOCS", "MODEL_FIELDS",
           "SABConfig", "SABLSTM", "SABOutput", "SCORERS", "build_model", "check_retrieval"]
