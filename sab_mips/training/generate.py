"""Sampling text from a trained character-level model, its memory filled by the prompt.

    text = generate(model, vocabulary, prompt="In the beginning", chars=200, temperature=0.8, seed=0)

The prompt is streamed through the model first, in windows of ``window`` characters, with the state and the
memory carried as in training; then each sampled character is fed back, one step at a time, so a SAB model
attends to slots written while it read the prompt and while it wrote.

Shapes: V vocabulary size.
"""
from __future__ import annotations

import torch

from ..corpora import Vocabulary
from ..model import SABLSTM
from .stream import one_hot


@torch.no_grad()
def generate(model: torch.nn.Module, vocabulary: Vocabulary, prompt: str, chars: int, temperature: float = 1.0,
             seed: int = 0, top_k: int = 0, window: int = 200) -> str:
    """``chars`` characters sampled after ``prompt`` (the prompt not included).

    temperature: logits are divided by it (smaller: more conservative); top_k: sample among the k likeliest
    characters only (0: all); seed: the sampling generator's seed (the same seed gives the same text).
    """
    if not prompt:
        raise ValueError("the prompt must hold at least one character")
    if chars < 0 or temperature <= 0 or top_k < 0:
        raise ValueError(f"need chars >= 0, temperature > 0, top_k >= 0; got {chars}, {temperature}, {top_k}")
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    V = len(vocabulary)
    generator = torch.Generator().manual_seed(seed)
    ids = vocabulary.encode(prompt).unsqueeze(0)  # (1, P)
    state, logits = None, None
    if isinstance(model, SABLSTM):
        state = model.layer.initial_state(1, device=param.device, dtype=param.dtype, steps=ids.shape[1] + chars)
    for start in range(0, ids.shape[1], window):
        x = one_hot(ids[:, start : start + window], V, param.dtype).to(param.device)
        logits, state = model.stream(x, state)
    out = []
    for _ in range(chars):
        last = logits[0, -1].double().cpu() / temperature
        if top_k:
            cut = last.topk(min(top_k, V)).values[-1]
            last = last.masked_fill(last < cut, float("-inf"))
        last[0] = float("-inf")  # never the unknown character
        char = int(torch.multinomial(last.softmax(dim=0), 1, generator=generator))
        out.append(char)
        logits, state = model.stream(one_hot(torch.tensor([[char]]), V, param.dtype).to(param.device), state)
    model.train(was_training)
    return vocabulary.decode(out)
