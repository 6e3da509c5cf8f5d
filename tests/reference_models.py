"""The slow, obvious twins of the models: the references the tests trust (only the tests use them).

One plain loop over time steps with the model's own parameters: the memory is a Python list of slot
tensors stacked in full at every attention step, every slot is scored with the scorer's textbook formula,
and the sparsifier is the row-by-row twin in ``reference_ops``. It costs O(N) time and graph memory per
step; the fast path must match its outputs and gradients.

With ``replay`` (the candidate ids an earlier pass recorded, ``AttentionRecord.candidate_ids``) only those
candidates compete at each attention step, padding (-1) included: the twin of SAB-MIPS with any index,
exact or not, and of the fast path's masked (padded-candidate) branch.
"""
from __future__ import annotations

import torch

from sab_mips.model.baselines import LSTMBaseline
from sab_mips.model.sab import DenseAttentionLSTM, SABLSTM

from reference_ops import softmax_topk_weights_reference, sparse_attention_weights_reference


def sab_forward_reference(model: SABLSTM, x: torch.Tensor, replay: torch.Tensor | None = None) -> torch.Tensor:
    """Per-step logits (B, T, O) of ``model`` on x (B, T, I), computed the obvious way.

    replay: (S, B, C) candidate ids per attention step (-1 pads); None scores every slot. A model in
    training mode with ``explore`` = R > 0 draws random candidates, so it needs ``replay``: its last R
    columns are the exploration candidates, which always take part in the softmax.
    """
    cfg = model.config
    dense = isinstance(model, DenseAttentionLSTM)
    explore = cfg.explore if model.training and not dense else 0
    if explore and replay is None:
        raise ValueError("a model exploring at random (training mode, explore > 0) needs the replayed candidates")
    B, T, _ = x.shape
    h = c = x.new_zeros(B, cfg.hidden_size)
    slots: list[torch.Tensor] = []
    features = []
    step = 0
    for t in range(T):
        if not dense and t % cfg.k_trunc == 0:
            h, c = h.detach(), c.detach()
        h, c = model.layer.cell(x[:, t], (h, c))
        h_hat, s = h, torch.zeros_like(h)
        if t % cfg.attend_every == 0 and slots:
            memory = torch.stack(slots, dim=1)  # (B, N, H), the whole memory, in the graph
            scores = model.layer.scorer(h, memory)  # (B, N)
            if dense:
                weights = torch.softmax(scores, dim=1)
            else:
                if explore:
                    weights = _explored_softmax(scores, replay[step], cfg.k_top, explore)
                else:
                    if replay is not None:
                        scores = _only_candidates(scores, replay[step])
                    if cfg.sparsifier == "softmax":
                        weights = softmax_topk_weights_reference(scores, cfg.k_top)
                    else:
                        weights = sparse_attention_weights_reference(scores, cfg.k_top, cfg.eps)
            s = (weights.unsqueeze(2) * memory).sum(dim=1)
            h = h + s if cfg.summary_to_state else h
            step += 1
        features.append(torch.cat([h, s], dim=1))
        if (t + 1) % cfg.k_att == 0:
            slots.append(h_hat if cfg.slot_value == "h_hat" else h)
    return model.head(torch.stack(features, dim=1))


def _explored_softmax(scores: torch.Tensor, candidate_ids: torch.Tensor, k: int, explore: int) -> torch.Tensor:
    """Weights (B, N): a softmax over the K best of the searched candidates (the first C − R ids) and the R
    exploration candidates (the last R ids), each row on its own."""
    searched = candidate_ids.shape[1] - explore
    rows = []
    for b in range(scores.shape[0]):
        found = [i for i in candidate_ids[b, :searched].tolist() if i >= 0]
        best = sorted(found, key=lambda i: -float(scores[b, i].detach()))[:k]
        chosen = best + [i for i in candidate_ids[b, searched:].tolist() if i >= 0]
        weights = torch.softmax(scores[b, chosen], dim=0)
        rows.append(torch.zeros_like(scores[b]).index_put((torch.tensor(chosen, dtype=torch.long),), weights))
    return torch.stack(rows)


def _only_candidates(scores: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
    """Scores (B, N) with every slot that is not among ``candidate_ids`` (B, C) set to -inf."""
    rows = []
    for b in range(scores.shape[0]):
        keep = torch.zeros(scores.shape[1], dtype=torch.bool)
        for i in candidate_ids[b].tolist():
            if i >= 0:
                keep[i] = True
        rows.append(scores[b].masked_fill(~keep.to(scores.device), float("-inf")))
    return torch.stack(rows)


def lstm_forward_reference(model: LSTMBaseline, x: torch.Tensor) -> torch.Tensor:
    """Per-step logits (B, T, O) of an LSTM baseline, one textbook LSTM step at a time with the fused
    layer's weights; (h, c) detached every ``k_trunc`` steps when the baseline truncates."""
    lstm, H = model.lstm, model.config.hidden_size
    h = c = x.new_zeros(x.shape[0], H)
    outputs = []
    for t in range(x.shape[1]):
        if model.truncate and t % model.config.k_trunc == 0:
            h, c = h.detach(), c.detach()
        gates = x[:, t] @ lstm.weight_ih_l0.t() + lstm.bias_ih_l0 + h @ lstm.weight_hh_l0.t() + lstm.bias_hh_l0
        i, f, g, o = gates.split(H, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return model.head(torch.stack(outputs, dim=1))
