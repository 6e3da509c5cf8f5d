"""The pixel-by-pixel image tasks (pixels, pixels-permuted), on generated IDX files."""
from __future__ import annotations

import json

import pytest
import torch

from sab_mips import SABConfig, TrainConfig
from sab_mips.cli import main
from sab_mips.errors import UserError
from sab_mips.tasks import PixelTask, get_task, pixel_order
from sab_mips.tasks.pixels import splitmix64
from sab_mips.training import train
from sab_mips.training.rundir import load_checkpoint, read_metrics

from image_files import fashion_dir, write_image_dir  # noqa: F401  (fashion_dir is a fixture)

TIMING = ("wall_time", "sec_per_update", "retrieval_seconds", "retrieval_fraction", "audit_seconds")


def test_splitmix64_matches_the_reference_outputs():
    # the reference implementation (Vigna's splitmix64.c) seeded with 0 starts with these two outputs
    state, first = splitmix64(0)
    _, second = splitmix64(state)
    assert (first, second) == (0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4)


def test_pixel_order_is_identity_or_a_seeded_permutation():
    assert pixel_order(6, None).tolist() == list(range(6))
    order = pixel_order(784, 0)
    assert sorted(order.tolist()) == list(range(784)) and order.tolist() != list(range(784))
    assert order.equal(pixel_order(784, 0)) and not order.equal(pixel_order(784, 1))
    # Fisher–Yates from the last position: position 783 swaps with draw % 784 of the first output
    _, first = splitmix64(0)
    assert order[783].item() == first % 784 or first % 784 == 783


@pytest.mark.parametrize("name", ["pixels", "pixels-permuted"])
def test_batches_read_the_normalised_pixels_in_the_task_order(fashion_dir, name):
    task = get_task(name)
    assert isinstance(task, PixelTask) and task.min_T == 20 and task.output_size == 3 and task.input_size == 1
    assert task.order.equal(pixel_order(20, 0 if name == "pixels-permuted" else None))
    x, y = task.make_batch(20, 5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 20, 1) and y.shape == (5,) and x.dtype == torch.float32
    train_split = task.images.splits["train"]
    rows = torch.randint(len(train_split), (5,), generator=torch.Generator().manual_seed(0))
    expected = task.images.normalise(train_split.pixels[rows])[:, task.order]
    torch.testing.assert_close(x[..., 0], expected, rtol=0, atol=0)
    assert y.equal(train_split.labels[rows])


def test_evaluation_reads_the_held_out_split_in_order(fashion_dir):
    task = get_task("pixels")
    valid = task.images.splits["valid"]  # 3 images (36 // 12)
    assert task.eval_batches(2) == 2
    x0, y0 = task.eval_batch(20, 2, 0, seed=5)
    x1, y1 = task.eval_batch(20, 2, 1, seed=6)  # the seed does not matter: the split is read in order
    assert x0.shape == (2, 20, 1) and x1.shape == (1, 20, 1)  # the last batch is what is left
    assert torch.cat([y0, y1]).equal(valid.labels)
    with pytest.raises(UserError, match="past the 3 images"):
        task.eval_batch(20, 2, 2, seed=0)
    test = task.held_out("test")
    assert test.eval_batches(3) == 3 and test.eval_batch(20, 8, 0, 0)[1].equal(task.images.splits["test"].labels)


def test_loss_reads_the_last_step_and_chunks_add_up(fashion_dir):
    task = get_task("pixels")
    logits = torch.randn(4, 20, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    loss = task.loss(logits, y)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits[:, -1], y))
    parts = sum(task.chunk_loss(logits[:, a:a + 7], y, a, 20) for a in range(0, 20, 7))
    torch.testing.assert_close(parts, loss)
    metrics = task.metrics(logits, y)
    assert metrics["accuracy"] == (logits[:, -1].argmax(-1) == y).double().mean().item()


def test_length_and_options_are_checked(fashion_dir, capsys, tmp_path):
    with pytest.raises(UserError, match=r"every pixel of a 4x5 image: T must be 20, got 7 \(leave --T out\)"):
        get_task("pixels").check_T(7)
    run = str(tmp_path / "r")
    for argv, message in ((["--task", "pixels", "--T", "7"], "T must be 20"),
                          (["--task", "pixels", "--permutation-seed", "3"], "only pixels-permuted reads it"),
                          (["--task", "copy", "--data", "x"], "data applies to tasks"),
                          (["--task", "pixels", "--data", str(tmp_path / "none")], "neither a dataset name")):
        assert main(["train", "--model", "lstm", "--hidden-size", "4", *argv, "--run-dir", run]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("sab-mips: error:") and message in err and "\n" not in err, err


@pytest.mark.parametrize("model", ["sab", "lstm"])
def test_training_resumes_exactly(fashion_dir, tmp_path, model):
    extra = {"k_top": 2, "k_att": 3, "k_trunc": 4, "attn_dim": 8} if model == "sab" else {}
    model_cfg = SABConfig(model=model, hidden_size=8, **extra)
    cfg = TrainConfig(task="pixels-permuted", T=20, batch_size=4, steps=4, eval_every=2, eval_batches=1,
                      checkpoint_every=2, seed=1, permutation_seed=3)
    train(model_cfg, cfg, tmp_path / "straight", progress=False)
    train(model_cfg, cfg.replace(steps=2), tmp_path / "split", progress=False)
    train(model_cfg, cfg, tmp_path / "split", resume=True, progress=False)
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("straight", "split"))
    assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])
    lines = [[{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(tmp_path / run / "metrics.jsonl")]
             for run in ("straight", "split")]
    assert lines[0] == lines[1]
    assert json.loads((tmp_path / "split" / "config.json").read_text())["train"]["permutation_seed"] == 3


def test_cli_train_eval_test_split_and_plots(fashion_dir, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--task", "pixels-permuted", "--model", "sab", "--hidden-size", "8", "--k-top", "2", "--k-att", "3",
            "--k-trunc", "4", "--batch-size", "4", "--steps", "2", "--eval-every", "2", "--eval-batches", "1",
            "--checkpoint-every", "2", "--no-progress", "--threads", "1", "--run-dir", str(run)]
    assert main(argv) == 0
    assert "done: pixels-permuted T=20 model=sab steps=2" in capsys.readouterr().out
    assert main(["eval", "--run", str(run), "--split", "test", "--batch-size", "3"]) == 0
    assert "pixels-permuted test split T=20" in capsys.readouterr().out
    test = [r for r in read_metrics(run / "metrics.jsonl") if r.get("data") == "test"]
    assert len(test) == 1 and test[0]["batches"] == 3  # all 8 test images, in batches of 3
    assert main(["eval", "--run", str(run), "--split", "train"]) == 2
    assert "valid or test" in capsys.readouterr().err
    out = tmp_path / "plots"
    assert main(["plot", "--run", str(run), "--out", str(out)]) == 0
    for name in ("learning_curves.png", "attention.png", "pixel_attention.png"):
        assert (out / name).stat().st_size > 0


def test_a_directory_of_idx_files_is_data(tmp_path, capsys):
    directory = write_image_dir(tmp_path / "idx", rows=3, cols=3, classes=2, gz=False)
    run = tmp_path / "run"
    assert main(["train", "--task", "pixels", "--data", str(directory), "--model", "tbptt", "--hidden-size", "4",
                 "--k-trunc", "3", "--batch-size", "2", "--steps", "1", "--eval-every", "1", "--eval-batches", "1",
                 "--checkpoint-every", "1", "--no-progress", "--run-dir", str(run)]) == 0
    assert "done: pixels T=9 model=tbptt" in capsys.readouterr().out
    model_cfg = json.loads((run / "config.json").read_text())["model"]
    assert model_cfg["input_size"] == 1 and model_cfg["output_size"] == 2
