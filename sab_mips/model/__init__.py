"""The model layer: SAB, its baselines and their config; nothing of training or the CLI.

``layer`` (``SABLayer``: SAB as a recurrent layer, features and a state), ``state`` (``SABState``, carried
across calls), ``options`` (``PassOptions``: what one pass measures) and ``recorder`` (where it is kept),
``sab`` (SAB-LSTM = layer + head, and the dense baseline), ``compiled_path`` (when a pass runs on the
compiled recurrence of ``sab_mips.kernel``), ``engine`` (the memory-bounded training step), ``scorers``, ``record`` (what a pass attended to), ``diagnostics``, ``baselines`` (full and
truncated BPTT), ``registry`` (``build_model``), ``config`` (``SABConfig``). The slow twins the tests
compare against are in ``tests/reference_models.py``.
"""
from .baselines import LSTMBaseline
from .compiled_path import KERNELS, use_kernel
from .config import MIPS_SCORERS, MODEL_DOCS, MODEL_FIELDS, PRESETS, SCORERS, SABConfig, check_retrieval
from .layer import SABLayer
from .options import PassOptions
from .record import AttentionRecord
from .registry import MODELS, build_model
from .sab import DenseAttentionLSTM, SABLSTM, SABOutput
from .state import SABState

__all__ = ["KERNELS", "AttentionRecord", "DenseAttentionLSTM", "LSTMBaseline", "MIPS_SCORERS", "MODELS", "MODEL_DOCS", "MODEL_FIELDS", "PassOptions", "PRESETS",
           "SABConfig", "SABLSTM", "SABLayer", "SABOutput", "SABState", "SCORERS", "build_model", "check_retrieval", "use_kernel"]
