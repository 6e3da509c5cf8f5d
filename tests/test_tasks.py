"""The synthetic tasks produce exactly the documented format (docs/algorithm.md, "Tasks"), and their metrics
are sane."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sab_mips.tasks import TASKS, get_task


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("T", [1, 2, 7])
def test_copy_format(T):
    task = TASKS["copy"]
    x, y = task.make_batch(T, 4, _gen())
    L = T + 20
    assert x.shape == (4, L, 10) and x.dtype == torch.float32
    assert y.shape == (4, L) and y.dtype == torch.int64
    assert torch.equal(x.sum(-1), torch.ones(4, L))  # one-hot
    symbols = x.argmax(-1)  # (B, L)
    digits = symbols[:, :10]
    assert ((digits >= 1) & (digits <= 8)).all()
    assert (symbols[:, 10:T + 9] == 0).all()  # T - 1 blanks
    assert (symbols[:, T + 9] == 9).all()  # the marker
    assert (symbols[:, T + 10:] == 0).all()  # 10 blanks while the answer is due
    assert (y[:, :T + 10] == 0).all()
    assert torch.equal(y[:, T + 10:], digits)


@pytest.mark.parametrize("T", [2, 3, 9])
def test_adding_format(T):
    task = TASKS["adding"]
    x, y = task.make_batch(T, 8, _gen(1))
    assert x.shape == (8, T, 2) and y.shape == (8,)
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values <= 1)).all()
    assert set(markers.unique().tolist()) <= {0.0, 1.0}
    half = T // 2
    assert (markers[:, :half].sum(1) == 1).all() and (markers[:, half:].sum(1) == 1).all()
    assert torch.allclose(y, (values * markers).sum(1))


@pytest.mark.parametrize("name", list(TASKS))
def test_batches_are_a_pure_function_of_the_generator(name):
    task = TASKS[name]
    T = task.min_T + 3
    a, b = task.make_batch(T, 3, _gen(5)), task.make_batch(T, 3, _gen(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, task.seq_len(T), task.input_size)
    assert not torch.equal(a[0], task.make_batch(T, 3, _gen(6))[0])


def test_copy_metrics_on_perfect_and_wrong_logits():
    task = TASKS["copy"]
    x, y = task.make_batch(4, 3, _gen())
    perfect = 50.0 * F.one_hot(y, 10).float()
    metrics = task.metrics(perfect, y)
    assert metrics["accuracy"] == 1.0
    assert metrics["loss"] == metrics["ce_all"] < 1e-6 and metrics["ce_last10"] < 1e-6
    wrong = perfect.clone()
    wrong[:, -10:] = 50.0 * F.one_hot((y[:, -10:] % 8) + 1, 10).float()  # a different digit everywhere
    assert task.metrics(wrong, y)["accuracy"] == 0.0
    assert torch.isclose(task.loss(perfect, y), torch.tensor(metrics["ce_all"]))


def test_adding_metrics_on_perfect_logits():
    task = TASKS["adding"]
    x, y = task.make_batch(6, 5, _gen())
    logits = torch.randn(5, 6, 1)
    logits[:, -1, 0] = y
    assert task.metrics(logits, y) == {"loss": 0.0, "mse": 0.0}
    logits[:, -1, 0] = y + 0.5
    assert task.metrics(logits, y)["mse"] == pytest.approx(0.25)


@pytest.mark.parametrize("name", list(TASKS))
def test_too_small_T_is_refused(name):
    task = TASKS[name]
    with pytest.raises(ValueError, match=f"too small for task '{name}'"):
        task.make_batch(task.min_T - 1, 2, _gen())


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="valid choices: copy, adding"):
        get_task("nope")


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("bounds", [[0, 40], [0, 7, 8, 33, 40], [0, 39, 40]], ids=str)
def test_chunk_losses_sum_to_the_loss(name, bounds):
    """The shares of consecutive chunks (what the engine takes in its sweep) add up to the loss, with its
    gradient; a share computed over the wrong steps or with the wrong normaliser would not."""
    task = TASKS[name]
    x, y = task.make_batch(task.min_T + 38 if name == "adding" else 20, 3, torch.Generator().manual_seed(2))
    steps = x.shape[1]
    assert steps == 40
    logits = torch.randn(3, steps, task.output_size, dtype=torch.float64, requires_grad=True)
    y = y.double() if y.is_floating_point() else y
    whole = task.loss(logits, y)
    (grad_whole,) = torch.autograd.grad(whole, logits)
    shares = sum(task.chunk_loss(logits[:, a:b], y, a, steps) for a, b in zip(bounds, bounds[1:]))
    (grad_shares,) = torch.autograd.grad(shares, logits)
    assert shares.item() == pytest.approx(whole.item(), rel=1e-12)
    torch.testing.assert_close(grad_shares, grad_whole, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_scored_steps_are_the_steps_the_metric_reads(name):
    """Logits changed before ``scored_from`` leave the primary metric as it is; the right answer at that step
    moves it."""
    task = TASKS[name]
    x, y = task.make_batch(20, 4, torch.Generator().manual_seed(5))
    steps = x.shape[1]
    first = task.scored_from(steps)
    assert first == steps - (10 if name == "copy" else 1)
    logits = torch.randn(4, steps, task.output_size, generator=torch.Generator().manual_seed(6))
    before, earlier, at = logits.clone(), logits.clone(), logits.clone()
    noise = torch.Generator().manual_seed(7)
    earlier[:, :first] = torch.randn(4, first, task.output_size, generator=noise)
    if name == "copy":  # the right answer at the first scored step
        at[:, first] = F.one_hot(y[:, first], task.output_size).float() * 100
    else:
        at[:, first, 0] = y
    primary = task.primary
    assert task.metrics(earlier, y)[primary] == task.metrics(before, y)[primary]
    if name == "copy":  # accuracy over the 10 scored steps, the first one now right in every sequence
        right = before[:, first:].argmax(-1) == y[:, first:]
        assert not right[:, 0].all()  # some sequence was wrong there: the change must show
        right[:, 0] = True
        expected = right.double().mean().item()
    else:  # the MSE of the last step alone, which now holds the answer
        expected = 0.0
    assert task.metrics(at, y)[primary] == pytest.approx(expected, abs=1e-7)
