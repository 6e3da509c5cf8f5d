"""SAB-MIPS: Sparse Attentive Backtracking with past states retrieved by maximum-inner-product search.

Shapes used throughout: B batch, T time, H hidden size, N memory slots, K = k_top, C candidates.

Layers, lowest first (``scripts/import_graph.py`` checks that imports only point down): ``ops`` (pure
tensor functions), ``retrieval`` (measuring retrieval), ``model`` and ``tasks``, ``training``, then the
offline index tools ``offline_retrieval`` and the applications ``bench`` and ``cli``. ``indexes`` (the retrieval backends) is a package of its own.
"""
from .errors import UserError
from .model import (MODEL_FIELDS, MODELS, SCORERS, AttentionRecord, DenseAttentionLSTM, LSTMBaseline, PassOptions,
                    SABConfig, SABLayer, SABLSTM, SABOutput, SABState, build_model)
from .ops import sparse_attention_weights
from .tasks import TASKS, get_task
from .training import Trainer, TrainConfig, evaluate, load_run, train

__version__ = "0.1.0"

__all__ = [
    "AttentionRecord",
    "DenseAttentionLSTM",
    "LSTMBaseline",
    "MODELS",
    "MODEL_FIELDS",
    "PassOptions",
    "SABConfig",
    "SABLSTM",
    "SABLayer",
    "SABOutput",
    "SABState",
    "SCORERS",
    "TASKS",
    "TrainConfig",
    "Trainer",
    "UserError",
    "build_model",
    "evaluate",
    "get_task",
    "load_run",
    "sparse_attention_weights",
    "train",
]
