"""What several test files share: a loss that weighs every output differently, and its gradients."""
from __future__ import annotations

import torch


def outputs_and_grads(model, x, forward, input_grad: bool = False):
    """(outputs, {parameter name: gradient}[, input gradient]) of a fixed weighted sum of ``forward(x)``.

    Every output gets its own weight (a ramp from -1 to 1), so a wrong gradient anywhere shows.
    """
    model.zero_grad()
    if input_grad:
        x = x.clone().requires_grad_()
    logits = forward(x)
    weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).reshape(logits.shape)
    (logits * weights).sum().backward()
    # a parameter that got no gradient at all (None) counts as a zero gradient
    grads = {name: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for name, p in model.named_parameters()}
    return (logits.detach(), grads, x.grad) if input_grad else (logits.detach(), grads)


def assert_same(fast, ref, atol: float, relative: bool = False) -> None:
    """Outputs equal to ``atol`` and every gradient equal to ``atol`` (times its scale when ``relative``)."""
    torch.testing.assert_close(fast[0], ref[0], rtol=0, atol=atol)
    assert fast[1].keys() == ref[1].keys()
    for name in fast[1]:
        scale = max(ref[1][name].abs().max().item(), 1e-30) if relative else 1.0
        torch.testing.assert_close(fast[1][name], ref[1][name], rtol=0, atol=atol * scale, msg=name)
    if len(fast) > 2:
        torch.testing.assert_close(fast[2], ref[2], rtol=0, atol=atol)
