"""The model, the engine and the indexes on CUDA, against the same computation on the CPU.

These run only where a CUDA device is visible (``scripts/gpu_check.sh`` runs them on a GPU machine);
elsewhere each test is skipped with the reason.
"""
import pytest
import torch

from indexes import available_backends, make_index
from sab_mips import SABConfig, build_model

from helpers import assert_same, outputs_and_grads

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible (CPU-only build or no GPU)")


def make(**kwargs):
    torch.manual_seed(0)
    cfg = dict(input_size=3, output_size=4, hidden_size=6, attn_dim=5, k_top=2, k_att=1, k_trunc=4)
    return build_model(SABConfig(**{**cfg, **kwargs}), dtype=torch.float64)


@pytest.mark.parametrize("preset", ["paper", "recommended"])
def test_sab_on_cuda_equals_cpu_float64(preset):
    cpu = make(preset=preset)
    cuda = make(preset=preset).cuda()
    x = torch.randn(3, 30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    on_cpu = outputs_and_grads(cpu, x, cpu)
    on_cuda = outputs_and_grads(cuda, x.cuda(), cuda)
    assert_same((on_cuda[0].cpu(), {k: v.cpu() for k, v in on_cuda[1].items()}), on_cpu, 1e-10, relative=True)


def test_engine_on_cuda_equals_plain_autograd():
    model = make(preset="paper").cuda()
    x = torch.randn(3, 40, 3, dtype=torch.float64, device="cuda")
    y = torch.randn(3, 40, 4, dtype=torch.float64, device="cuda")
    loss = lambda logits, target: ((logits - target) ** 2).mean()  # noqa: E731
    model.zero_grad()
    loss(model(x), y).backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.forward_backward(x, y, loss, chunk=8)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], rtol=0, atol=1e-10 * max(plain[n].abs().max().item(), 1e-30))


@pytest.mark.parametrize("spec", ["exact", "faiss-gpu:Flat", "faiss-gpu:IVF16,nprobe=16"])
def test_indexes_on_cuda_match_exact_search_on_cpu(spec):
    reason = available_backends().get(spec.split(":")[0])
    if reason is not None:
        pytest.skip(f"{spec}: {reason}")
    keys = torch.randn(4, 500, 16, generator=torch.Generator().manual_seed(0))
    queries = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    reference = make_index("exact")
    reference.reset(4, 16)
    reference.add(keys)
    index = make_index(spec)
    index.reset(4, 16)
    index.add(keys.cuda())
    scores, ids = index.search(queries.cuda(), 5)
    assert ids.device.type == "cuda"
    assert torch.equal(ids.cpu(), reference.search(queries, 5)[1])
