"""LSTM baselines of the paper: full BPTT (fused ``nn.LSTM``) and truncated BPTT.

Shapes: B batch, T time, I input size, H hidden size, O output size.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import SABConfig
from .inputs import check_input
from .lstm_init import init_gate_biases


class LSTMBaseline(nn.Module):
    """Fused ``nn.LSTM`` and a linear head on h_t.

    With ``truncate=True`` the sequence runs in chunks of ``k_trunc`` steps and (h, c) is detached
    between chunks (truncated BPTT); each chunk still runs the fused kernel. With ``k_trunc >= T`` this is
    exactly full BPTT.
    """

    retrieves = False  # no memory, no attention

    def __init__(self, config: SABConfig, truncate: bool, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        self.truncate = truncate
        factory = {"device": device, "dtype": dtype}
        self.lstm = nn.LSTM(config.input_size, config.hidden_size, batch_first=True, **factory)
        self.head = nn.Linear(config.hidden_size, config.output_size, **factory)
        init_gate_biases(self.lstm.bias_ih_l0, self.lstm.bias_hh_l0, config.forget_bias, config.chrono)

    def extra_repr(self) -> str:
        return f"k_trunc={self.config.k_trunc}" if self.truncate else "full BPTT"

    def reset_parameters(self) -> None:
        self.lstm.reset_parameters()
        self.head.reset_parameters()
        init_gate_biases(self.lstm.bias_ih_l0, self.lstm.bias_hh_l0, self.config.forget_bias, self.config.chrono)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Per-step logits (B, T, O); with ``return_attention`` the record is None (no attention)."""
        check_input(self, x, self.config.input_size)
        logits, _ = self.stream(x)
        return (logits, None) if return_attention else logits

    def stream(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Logits (B, T, O) of inputs x (B, T, I) continuing ``state`` = (h, c), each (1, B, H) (None: zeros),
        and the state after the last step (in the graph: detach it between windows of a stream)."""
        check_input(self, x, self.config.input_size)
        if not self.truncate:
            out, state = self.lstm(x, state)
        else:
            chunks = []
            for chunk in x.split(self.config.k_trunc, dim=1):
                if state is not None:
                    state = (state[0].detach(), state[1].detach())  # the truncation boundary
                out, state = self.lstm(chunk, state)
                chunks.append(out)
            out = torch.cat(chunks, dim=1)
        return self.head(out), state
