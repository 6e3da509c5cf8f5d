"""The LSTM baselines against their step-by-step twin: full BPTT, and truncated BPTT at every k_trunc."""
import pytest
import torch

from sab_mips import SABConfig, build_model

from helpers import assert_same, outputs_and_grads
from reference_models import lstm_forward_reference


def make(model, k_trunc=4):
    torch.manual_seed(0)
    cfg = SABConfig(model=model, input_size=3, output_size=2, hidden_size=5, k_trunc=k_trunc)
    return build_model(cfg, dtype=torch.float64)


@pytest.mark.parametrize("model, k_trunc", [("lstm", 4), ("tbptt", 1), ("tbptt", 4), ("tbptt", 5), ("tbptt", 50)])
def test_baseline_equals_its_step_by_step_twin_float64(model, k_trunc):
    net = make(model, k_trunc)
    x = torch.randn(3, 12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fast = outputs_and_grads(net, x, net, input_grad=True)
    ref = outputs_and_grads(net, x, lambda inp: lstm_forward_reference(net, inp), input_grad=True)
    assert_same(fast, ref, 1e-12)


def test_truncation_cuts_gradient_and_keeps_outputs():
    truncated, full = make("tbptt", 4), make("lstm")
    full.load_state_dict(truncated.state_dict())
    x = torch.randn(2, 12, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(truncated(x), full(x), rtol=0, atol=1e-12)  # forward is unchanged
    truncated(x)[:, -1].sum().backward()
    assert (x.grad[:, :8] == 0).all() and (x.grad[:, 8:] != 0).all()


def test_return_attention_gives_none_record():
    logits, record = make("tbptt")(torch.randn(2, 5, 3, dtype=torch.float64), return_attention=True)
    assert record is None and logits.shape == (2, 5, 2)
