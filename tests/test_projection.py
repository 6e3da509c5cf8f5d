"""``ops.projection.input_projection`` against ``F.linear``, its obvious twin, in float64."""
import pytest
import torch

from sab_mips.ops.projection import input_projection


@pytest.mark.parametrize("x_grad", [True, False])
def test_input_projection_equals_linear_with_its_gradients(x_grad):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 5, dtype=torch.float64, generator=g).transpose(0, 1)  # strided, as SAB passes it
    weight = torch.randn(8, 5, dtype=torch.float64, generator=g)
    bias = torch.randn(8, dtype=torch.float64, generator=g)
    upstream = torch.randn(3, 7, 8, dtype=torch.float64, generator=g)
    results = []
    for fn in (input_projection, torch.nn.functional.linear):
        leaves = [t.clone().requires_grad_(t is not x or x_grad) for t in (x, weight, bias)]
        out = fn(*leaves)
        out.backward(upstream)
        results.append((out.detach(), [leaf.grad for leaf in leaves]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-12)
    for mine, theirs in zip(results[0][1], results[1][1]):
        assert (mine is None) == (theirs is None)
        if mine is not None:
            torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)
