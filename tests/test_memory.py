"""SlotMemory's hand-written autograd against stacking slots the obvious way (gradcheck in float64)."""
import torch

from sab_mips.ops.memory import SlotMemory


def slot_program(h_seq, use_memory, read_plan):
    """Write h_seq[:, t] as slot t, then after each write read the planned slots and mix them in."""
    B, T, H = h_seq.shape
    memory = SlotMemory(B, H, dtype=h_seq.dtype, capacity=2)  # capacity 2 forces the buffer to grow
    stacked = []
    out = h_seq.new_zeros(())
    carry = h_seq.new_zeros(B, H)
    for t in range(T):
        h = h_seq[:, t] + 0.5 * torch.tanh(carry)  # later slots depend on earlier reads
        memory.write(h, t) if use_memory else None
        stacked.append(h)
        ids = read_plan[t]  # (B, C) ids into slots 0..t
        if use_memory:
            slots = memory.read(ids)
        else:
            all_slots = torch.stack(stacked, dim=1)
            slots = all_slots[torch.arange(B).unsqueeze(1), ids]
        carry = slots.sum(dim=1)
        out = out + (slots ** 2).sum() * (t + 1)
    return out + carry.sum()


def make_plan(B, T, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, t + 1, (B, C), generator=g) for t in range(T)]


def test_memory_gradients_equal_stacked_slots():
    B, T, H, C = 3, 7, 4, 3
    plan = make_plan(B, T, C)
    h = torch.randn(B, T, H, dtype=torch.float64)
    a = h.clone().requires_grad_()
    b = h.clone().requires_grad_()
    out_a = slot_program(a, True, plan)
    out_b = slot_program(b, False, plan)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-12)
    out_a.backward()
    out_b.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)


def test_gradcheck_memory_float64():
    B, T, H, C = 2, 5, 3, 2
    plan = make_plan(B, T, C, seed=1)
    h = torch.randn(B, T, H, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: slot_program(x, True, plan), (h,))


def test_second_backward_with_retained_graph_is_not_doubled():
    B, T, H, C = 2, 4, 3, 2
    plan = make_plan(B, T, C, seed=2)
    h = torch.randn(B, T, H, dtype=torch.float64, requires_grad=True)
    out = slot_program(h, True, plan)
    (first,) = torch.autograd.grad(out, h, retain_graph=True)
    (second,) = torch.autograd.grad(out, h)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_no_grad_reads_are_plain_copies():
    memory = SlotMemory(2, 3)
    with torch.no_grad():
        for t in range(5):
            memory.write(torch.full((2, 3), float(t)), t)
        out = memory.read(torch.tensor([[4, 0], [1, -1]]))
    assert out[:, :, 0].tolist() == [[4.0, 0.0], [1.0, 0.0]]
    assert memory.size == 5 and memory.times == [0, 1, 2, 3, 4]


def test_finished_pass_is_freed_without_garbage_collection():
    """No reference cycle through the autograd contexts: a finished pass's buffers die with the graph."""
    import gc
    import weakref

    gc.disable()
    try:
        h = torch.randn(2, 4, 3, requires_grad=True)
        memory = SlotMemory(2, 3)
        for t in range(4):
            memory.write(h[:, t] * 2, t)
        out = memory.read(torch.tensor([[0, 3], [1, 2]])).sum()
        buffers = weakref.ref(memory._buffers)
        out.backward()
        del memory, out
        assert buffers() is None
    finally:
        gc.enable()
