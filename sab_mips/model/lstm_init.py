"""How an LSTM's gate biases start: PyTorch's initialisation, a forget-gate offset, or chrono initialisation.

* ``forget_bias`` b: adds b to the forget gate's bias (Gers et al. 2000; Jozefowicz et al. 2015): the cell
  starts by keeping its state instead of halving it at every step.
* ``chrono`` T_max (Tallec & Ollivier 2018, "Can recurrent neural networks warp time?"): forget-gate biases
  b_f ~ log(U(1, T_max − 1)) and input-gate biases b_i = −b_f, so the units start with time constants spread
  up to T_max steps; on copy tasks it lets an LSTM hold information over long gaps from the first update.

Gate order i, f, g, o, as in torch; the biases of the input and the recurrent half are summed by the cell, so
chrono sets the input half and zeroes the recurrent half of the two gates.
"""
from __future__ import annotations

import torch


def init_gate_biases(bias_ih: torch.Tensor, bias_hh: torch.Tensor, forget_bias: float, chrono: int | None) -> None:
    """Apply ``forget_bias`` or ``chrono`` (at most one is set) to an LSTM's biases (4H,), in place."""
    H = bias_ih.shape[0] // 4
    with torch.no_grad():
        if chrono:
            forget = torch.log(torch.empty(H, dtype=bias_ih.dtype).uniform_(1.0, chrono - 1.0)).to(bias_ih.device)
            bias_ih[H : 2 * H] = forget
            bias_ih[:H] = -forget
            bias_hh[: 2 * H] = 0.0
        elif forget_bias:
            bias_ih[H : 2 * H] += forget_bias
