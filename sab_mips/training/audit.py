"""The audits of approximate retrieval: which steps a pass audits, and how far its gradient is from the
exact one."""
from __future__ import annotations

from typing import Callable

import torch

from ..model import PassOptions
from ..tasks import Task


def audited_pass(task: Task, steps: int, audit_every: int, diagnostics: bool = False) -> PassOptions:
    """The options of a pass over sequences of ``steps`` steps that audits every ``audit_every``-th attention
    step and, with those, every step the task's metric reads (``scored_recall``); 0 audits nothing."""
    if not audit_every:
        return PassOptions(diagnostics=diagnostics)
    return PassOptions(diagnostics=diagnostics, audit_every=audit_every, audit_from=task.scored_from(steps))


def gradient_cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Cosine between two parameter gradients given as {name: tensor} (missing entries count as zero)."""
    dot = sum(float((a[n].double() * b[n].double()).sum()) for n in a if n in b)
    norm_a = sum(float(g.double().pow(2).sum()) for g in a.values()) ** 0.5
    norm_b = sum(float(g.double().pow(2).sum()) for g in b.values()) ** 0.5
    return dot / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else float("nan")


def exact_gradient_cosine(model: torch.nn.Module, exact_backward: Callable[[], object]) -> float:
    """Cosine between the gradient now in ``model``'s parameters and the one ``exact_backward()`` leaves.

    ``exact_backward`` runs the same batch with exact retrieval and backpropagates it (e.g.
    ``lambda: loss(model.run(x, PassOptions(retrieval="exact")).logits, y).backward()``, or the memory-bounded
    ``model.forward_backward(x, y, loss, options=PassOptions(retrieval="exact"))``); its gradient is compared, and the original
    gradient is put back, so the caller's update is unchanged.

    Example::

        >>> loss.backward()          # the approximate gradient
        >>> exact = PassOptions(retrieval="exact")
        >>> exact_gradient_cosine(model, lambda: task.loss(model.run(x, exact).logits, y).backward())
        0.9993
    """
    params = dict(model.named_parameters())
    approx = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
    for p in params.values():
        p.grad = None
    exact_backward()
    exact = {n: p.grad.detach() for n, p in params.items() if p.grad is not None}
    for name, p in params.items():
        p.grad = approx.get(name)
    return gradient_cosine(approx, exact)
