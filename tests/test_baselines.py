"""The LSTM baselines: truncated BPTT reduces to full BPTT when k_trunc >= T, and truncates otherwise."""
import torch

from sab_mips import SABConfig, build_model


def grads(model, x):
    model.zero_grad()
    x = x.clone().requires_grad_()
    logits = model(x)
    (logits * torch.linspace(-1, 1, logits.numel(), dtype=x.dtype).reshape(logits.shape)).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, x.grad


def pair(k_trunc):
    cfg = SABConfig(model="tbptt", input_size=3, output_size=2, hidden_size=5, k_trunc=k_trunc)
    truncated = build_model(cfg, dtype=torch.float64)
    full = build_model(cfg.replace(model="lstm"), dtype=torch.float64)
    full.load_state_dict(truncated.state_dict())
    return truncated, full


def test_truncated_equals_full_when_k_trunc_covers_T():
    x = torch.randn(3, 12, 3, dtype=torch.float64)
    for k_trunc in (12, 50):
        truncated, full = pair(k_trunc)
        a, b = grads(truncated, x), grads(full, x)
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-12)
        for name in a[1]:
            torch.testing.assert_close(a[1][name], b[1][name], rtol=0, atol=1e-12)
        torch.testing.assert_close(a[2], b[2], rtol=0, atol=1e-12)


def test_truncation_cuts_gradient_and_keeps_outputs():
    truncated, full = pair(4)
    x = torch.randn(2, 12, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(truncated(x), full(x), rtol=0, atol=1e-12)  # forward is unchanged
    truncated(x)[:, -1].sum().backward()
    assert (x.grad[:, :8] == 0).all() and (x.grad[:, 8:] != 0).all()


def test_return_attention_gives_none_record():
    truncated, _ = pair(4)
    logits, record = truncated(torch.randn(2, 5, 3, dtype=torch.float64), return_attention=True)
    assert record is None and logits.shape == (2, 5, 2)
