"""The training loop: exact resume, metrics log, budgets, memory dumps, refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sab_mips import SABConfig, TrainConfig, Trainer
from sab_mips.errors import UserError
from sab_mips.tasks import TASKS, batch_generator
from sab_mips.training import evaluate, load_run, train
from sab_mips.training.rundir import load_checkpoint, read_metrics

TIMING = ("wall_time", "sec_per_update", "retrieval_seconds", "retrieval_fraction", "audit_seconds")


def _cfgs(model: str = "sab", steps: int = 4, **train_kw) -> tuple[SABConfig, TrainConfig]:
    extra = {"k_top": 2, "k_att": 2, "k_trunc": 3, "attn_dim": 8} if model == "sab" else {}
    model_cfg = SABConfig(model=model, hidden_size=8, **extra)
    train_kw = {"task": "copy", "T": 3, "batch_size": 2, "steps": steps, "eval_every": 2, "eval_batches": 1,
                "checkpoint_every": 2, "seed": 3, **train_kw}
    return model_cfg, TrainConfig(**train_kw)


def _lines(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir / "metrics.jsonl")]


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("model", ["sab", "tbptt"])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, model):
    model_cfg, cfg = _cfgs(model, steps=4)
    straight = train(model_cfg, cfg, tmp_path / "straight", progress=False)
    train(model_cfg, cfg.replace(steps=2), tmp_path / "split", progress=False)
    # A run killed after its checkpoint at step 2 may have logged step 3 (and a torn line): resume drops them.
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"split": "train", "step": 3, "loss": 9.0}) + "\n" + '{"split": "tr')
    resumed = train(model_cfg, cfg, tmp_path / "split", resume=True, progress=False)

    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert a["step"] == b["step"] == 4
    assert _same_state(a["model_state"], b["model_state"])
    assert _lines(tmp_path / "straight") == _lines(tmp_path / "split")
    assert straight["eval"] == resumed["eval"]
    splits = [(r["split"], r["step"]) for r in _lines(tmp_path / "split") if r["split"] != "note"]
    assert splits == [("train", 1), ("train", 2), ("eval", 2), ("train", 3), ("train", 4), ("eval", 4)]


def test_run_directory_files(tmp_path):
    model_cfg, cfg = _cfgs("lstm", steps=3, task="adding", T=4)
    summary = train(model_cfg, cfg, tmp_path, progress=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"] == cfg.to_dict()
    assert saved["model"]["input_size"] == 2 and saved["model"]["output_size"] == 1  # set by the task
    train_line = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert {"split", "step", "loss", "mse", "wall_time", "sec_per_update"} <= set(train_line)
    assert summary["steps"] == 3 and summary["stopped"] == "steps"
    generator_after_the_run = torch.get_rng_state()  # (load_run below draws the fresh model's weights)
    model, task, _, _, state = load_run(tmp_path)
    model.eval()
    # the summary's evaluation is the saved model's, on the run's fixed eval batch
    x, y = task.make_batch(4, 2, batch_generator(cfg.seed, 0, "eval"))
    with torch.no_grad():
        assert summary["eval"]["mse"] == pytest.approx(task.metrics(model(x), y)["mse"], rel=1e-6)
    # a resume continues from here: Adam's state after 3 updates of every parameter, and the generator
    assert state["step"] == 3 and len(state["optimizer_state"]["state"]) == len(list(model.parameters()))
    assert all(int(moments["step"]) == 3 for moments in state["optimizer_state"]["state"].values())
    assert torch.equal(state["rng_state"], generator_after_the_run)


def test_evaluate_at_another_T_uses_the_fixed_eval_batches_of_that_length(tmp_path):
    model_cfg, cfg = _cfgs("sab", steps=1, task="adding", T=4)
    train(model_cfg, cfg, tmp_path, progress=False)
    model, task, *_ = load_run(tmp_path)
    x, y = task.make_batch(9, 2, batch_generator(5, 0, "eval"))
    assert x.shape[1] == 9
    with torch.no_grad():
        expected = task.metrics(model(x), y)
    assert evaluate(model, task, 9, 1, 5, 2) == expected  # transfer: length 9, trained at 4


def test_time_budget_stops_the_run(tmp_path):
    model_cfg, cfg = _cfgs("lstm", steps=1000, time_budget=1e-9)
    summary = train(model_cfg, cfg, tmp_path, progress=False)
    assert summary["stopped"] == "time_budget" and summary["steps"] == 1


def test_resume_refuses_a_different_config_but_extends_steps(tmp_path):
    model_cfg, cfg = _cfgs("sab", steps=2)
    train(model_cfg, cfg, tmp_path, progress=False)
    with pytest.raises(UserError, match="k_top=2 \\(saved\\) vs 3"):
        train(model_cfg.replace(k_top=3), cfg, tmp_path, resume=True, progress=False)
    with pytest.raises(UserError, match="lr="):
        train(model_cfg, cfg.replace(lr=0.5), tmp_path, resume=True, progress=False)
    with pytest.raises(UserError, match="already holds a run"):
        train(model_cfg, cfg, tmp_path, progress=False)
    assert train(model_cfg, cfg.replace(steps=3), tmp_path, resume=True, progress=False)["steps"] == 3


def test_resume_needs_a_sound_checkpoint(tmp_path):
    model_cfg, cfg = _cfgs("lstm", steps=1)
    with pytest.raises(UserError, match="no checkpoint"):
        train(model_cfg, cfg, tmp_path, resume=True, progress=False)
    train(model_cfg, cfg, tmp_path, progress=False)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:64])
    with pytest.raises(UserError, match="corrupt"):
        train(model_cfg, cfg, tmp_path, resume=True, progress=False)


def test_record_memories_writes_the_documented_npz(tmp_path):
    model_cfg, cfg = _cfgs("sab", steps=1)
    out = tmp_path / "memories.npz"
    summary = train(model_cfg, cfg, tmp_path / "run", progress=False, record_memories=out, record_count=40)
    data = np.load(out)
    assert data["keys"].dtype == np.float32 and data["keys"].shape[1] == 8 and data["keys"].shape[0] >= 40
    assert data["queries"].dtype == np.float32 and data["queries"].ndim == 2 and data["queries"].shape[1] == 8
    assert int(data["dim"]) == 8 and int(data["T"]) == 3 and str(data["task"]) == "copy"
    assert summary["memories"]["keys"] == data["keys"].shape[0]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("model, options", [("lstm", {}), ("dense", {}), ("sab", {"scorer": "additive"})])
def test_record_memories_refuses_models_without_an_index(tmp_path, model, options):
    model_cfg, cfg = _cfgs(model, steps=1)
    with pytest.raises(UserError, match="record-memories"):
        train(model_cfg.replace(**options), cfg, tmp_path, progress=False, record_memories=tmp_path / "m.npz")
    assert not (tmp_path / "checkpoint.pt").exists()  # refused before any training


@pytest.mark.parametrize("name, value", [("lr", "1e-3"), ("grad_clip", None), ("adam_eps", "1e-8"),
                                         ("time_budget", float("nan"))])
def test_train_config_refuses_values_that_are_not_numbers(name, value):
    with pytest.raises(UserError, match=f"{name} must be a finite number"):
        TrainConfig(**{name: value})


def test_train_config_refuses_an_adam_eps_that_is_not_positive():
    with pytest.raises(UserError, match="adam_eps must be > 0"):
        TrainConfig(adam_eps=0.0)


def test_adam_runs_with_the_configured_eps(tmp_path):
    model_cfg, cfg = _cfgs("sab", steps=1)
    train(model_cfg, cfg.replace(adam_eps=1e-5), tmp_path, progress=False)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["optimizer_state"]["param_groups"][0]["eps"] == 1e-5


def test_amsgrad_keeps_the_running_maximum_of_the_second_moment(tmp_path):
    model_cfg, cfg = _cfgs("sab", steps=2)
    train(model_cfg, cfg.replace(amsgrad=True), tmp_path, progress=False)
    optimizer = load_checkpoint(tmp_path / "checkpoint.pt")["optimizer_state"]
    assert optimizer["param_groups"][0]["amsgrad"] is True
    for state in optimizer["state"].values():
        assert torch.all(state["max_exp_avg_sq"] >= state["exp_avg_sq"])


def test_train_config_refuses_an_amsgrad_that_is_not_a_bool():
    with pytest.raises(UserError, match="amsgrad must be true or false"):
        TrainConfig(amsgrad="yes")


def test_warm_start_into_amsgrad_starts_the_maximum_at_the_source_moment(tmp_path):
    model_cfg, cfg = _cfgs("sab", steps=2)
    train(model_cfg, cfg, tmp_path / "base", progress=False)
    base = load_checkpoint(tmp_path / "base" / "checkpoint.pt")["optimizer_state"]["state"]
    train(model_cfg, cfg.replace(steps=1, amsgrad=True, init_from=str(tmp_path / "base")), tmp_path / "warm",
          progress=False)
    warm = load_checkpoint(tmp_path / "warm" / "checkpoint.pt")["optimizer_state"]
    assert warm["param_groups"][0]["amsgrad"] is True
    for i, state in warm["state"].items():  # after one more update: max(source moment, updated moment)
        assert torch.all(state["max_exp_avg_sq"] >= base[i]["exp_avg_sq"] * 0.999)
        assert torch.all(state["max_exp_avg_sq"] >= state["exp_avg_sq"])


def test_every_task_trains_with_the_shared_loop(tmp_path):
    """One update of each task, logged and evaluated: the summary's metric is the saved model's on the run's
    eval batch."""
    for name, task in TASKS.items():
        model_cfg, cfg = _cfgs("tbptt", steps=1, task=name, T=task.min_T + 1)
        summary = train(model_cfg, cfg, tmp_path / name, progress=False)
        assert [r["step"] for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["split"] == "train"] == [1]
        model = load_run(tmp_path / name)[0].eval()
        x, y = task.make_batch(cfg.T, cfg.batch_size, batch_generator(cfg.seed, 0, "eval"))
        with torch.no_grad():
            expected = task.metrics(model(x), y)[task.primary]
        assert summary["eval"][task.primary] == pytest.approx(expected, rel=1e-6)


def test_warm_start_takes_weights_and_adam_state_but_its_own_hyperparameters_and_config(tmp_path):
    model_cfg, cfg = _cfgs("sab", steps=2)
    train(model_cfg, cfg, tmp_path / "base", progress=False)
    base = load_checkpoint(tmp_path / "base" / "checkpoint.pt")
    # steps=0 is not allowed: run 1 update at lr tiny enough that the weights barely move, then compare
    warm_cfg = cfg.replace(T=5, steps=1, lr=1e-12, adam_eps=1e-5, init_from=str(tmp_path / "base"))
    train(model_cfg.replace(k_top=1, retrieval="faiss:Flat"), warm_cfg, tmp_path / "warm", progress=False)
    warm = load_checkpoint(tmp_path / "warm" / "checkpoint.pt")
    assert warm["step"] == 1 and warm["train_config"]["init_from"] == str(tmp_path / "base")
    for name, value in base["model_state"].items():
        torch.testing.assert_close(warm["model_state"][name], value, rtol=0, atol=1e-9)
    assert warm["optimizer_state"]["param_groups"][0]["lr"] == 1e-12
    assert warm["optimizer_state"]["param_groups"][0]["eps"] == 1e-5  # not the source run's 1e-8
    # Adam's step counters continue from the source run's (2 updates) instead of restarting at 0
    assert all(int(s["step"]) == 3 for s in warm["optimizer_state"]["state"].values())


def test_warm_start_refuses_other_parameter_shapes(tmp_path):
    model_cfg, cfg = _cfgs("sab", steps=2)
    train(model_cfg, cfg, tmp_path / "base", progress=False)
    with pytest.raises(UserError, match="other parameter shapes: hidden_size=8 \\(saved\\) vs 9"):
        train(model_cfg.replace(hidden_size=9), cfg.replace(init_from=str(tmp_path / "base")), tmp_path / "w",
              progress=False)
    with pytest.raises(UserError, match="head_hidden=0 \\(saved\\) vs 4"):
        train(model_cfg.replace(head_hidden=4), cfg.replace(init_from=str(tmp_path / "base")), tmp_path / "w",
              progress=False)
    assert not (tmp_path / "w").exists()
    with pytest.raises(UserError, match="no checkpoint"):
        train(model_cfg, cfg.replace(init_from=str(tmp_path / "missing")), tmp_path / "w", progress=False)


# Losses of a short SAB run, pinned when the code was reorganised into layers: the training path
# (initialisation, data stream, forward, backward, Adam) must not change silently. Tolerance: float32
# rounding of other CPUs, far below what any change to the computation gives.
PINNED_LOSSES = [2.2376632690429688, 2.2511789798736572, 2.2091095447540283, 2.1399762630462646,
                 2.075542688369751, 2.11749005317688]


def test_training_trajectory_is_pinned(tmp_path):
    model_cfg = SABConfig(model="sab", preset="paper", hidden_size=16, k_top=2, k_att=2, k_trunc=3, attn_dim=8)
    cfg = TrainConfig(task="copy", T=8, batch_size=4, steps=6, eval_every=3, eval_batches=1, seed=2)
    train(model_cfg, cfg, tmp_path, progress=False)
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert losses == pytest.approx(PINNED_LOSSES, rel=1e-5)


def test_trainer_steps_evaluates_and_checkpoints(tmp_path):
    model_cfg, cfg = _cfgs("sab", steps=5)
    trainer = Trainer(model_cfg, cfg, tmp_path, progress=False)
    line = trainer.train_step()
    assert line["step"] == trainer.step == 1 and line["split"] == "train"
    assert set(trainer.evaluate()) >= {"loss", "accuracy"}
    trainer.checkpoint()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1
    summary = trainer.run()  # continues to cfg.steps
    assert summary["steps"] == 5 and trainer.saved_step == 5
    resumed = Trainer(model_cfg, cfg.replace(steps=6), tmp_path, resume=True, progress=False)
    assert resumed.step == 5 and resumed.run()["steps"] == 6


def test_learning_rate_schedules():
    from sab_mips.training.config import learning_rate

    constant = TrainConfig(lr=0.01, steps=101)
    assert [learning_rate(constant, s) for s in (0, 50, 100)] == [0.01, 0.01, 0.01]
    warm = TrainConfig(lr=0.01, steps=101, warmup=10)
    assert learning_rate(warm, 0) == pytest.approx(0.001) and learning_rate(warm, 9) == pytest.approx(0.01)
    cosine = TrainConfig(lr=0.01, steps=101, lr_schedule="cosine", min_lr=0.1)
    assert learning_rate(cosine, 0) == pytest.approx(0.01) and learning_rate(cosine, 50) == pytest.approx(0.0055)
    assert learning_rate(cosine, 100) == pytest.approx(0.001)


def test_the_schedule_reaches_the_optimizer_and_the_log(tmp_path):
    model_cfg, cfg = _cfgs("lstm", steps=4, lr_schedule="cosine", min_lr=0.5, lr=0.01)
    train(model_cfg, cfg, tmp_path, progress=False)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.005)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_variable_length_training_draws_each_update_length_from_the_seed(tmp_path):
    from sab_mips.training.config import train_length

    cfg = TrainConfig(T=9, T_min=3, seed=1)
    lengths = [train_length(cfg, s) for s in range(200)]
    assert set(lengths) == set(range(3, 10))  # every length of [T_min, T], nothing outside
    assert lengths == [train_length(TrainConfig(T=9, T_min=3, seed=1), s) for s in range(200)]
    assert lengths != [train_length(TrainConfig(T=9, T_min=3, seed=2), s) for s in range(200)]
    assert {train_length(TrainConfig(T=9), s) for s in range(20)} == {9}

    model_cfg, cfg = _cfgs("sab", steps=4, T=6, T_min=2)
    train(model_cfg, cfg, tmp_path, progress=False)
    logged = [r["T"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert logged == [train_length(cfg, s) for s in range(4)] and len(set(logged)) > 1
    evaluated = {r["T"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "eval"}
    assert evaluated == {6}  # evaluation stays at T


def test_log_uniform_lengths_follow_their_distribution():
    """Each length n of [T_min, T] comes with probability log((n+1)/n) / log((T+1)/T_min), from the seed alone."""
    import math

    from sab_mips.training.config import train_length

    cfg = TrainConfig(T=40, T_min=4, T_draw="log-uniform", seed=3)
    draws = 20000
    lengths = [train_length(cfg, s) for s in range(draws)]
    assert min(lengths) == 4 and max(lengths) == 40
    for n in (4, 5, 10, 20, 40):
        p = math.log((n + 1) / n) / math.log(41 / 4)
        observed = lengths.count(n) / draws
        assert abs(observed - p) < 5 * math.sqrt(p * (1 - p) / draws), (n, observed, p)
    assert lengths[:50] == [train_length(cfg, s) for s in range(50)]  # a resumed run draws the same
    uniform = [train_length(cfg.replace(T_draw="uniform"), s) for s in range(2000)]
    assert sum(lengths[:2000]) < 0.8 * sum(uniform)  # shorter on average: 15.5 against 22 expected


def test_length_draw_must_be_known_and_needs_variable_lengths():
    with pytest.raises(UserError, match="T_draw"):
        TrainConfig(T=6, T_min=2, T_draw="gaussian")
    with pytest.raises(UserError, match="it needs T_min"):  # not silently ignored at a fixed length
        TrainConfig(T=6, T_draw="log-uniform")


@pytest.mark.parametrize("T_min, message", [(0, "T_min"), (7, "T_min must be <= T")])
def test_variable_length_training_refuses_bad_bounds(T_min, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(T=6, T_min=T_min)


def test_variable_length_training_refuses_a_T_min_the_task_refuses(tmp_path):
    model_cfg, cfg = _cfgs("lstm", task="adding", T=6, T_min=1)
    with pytest.raises(UserError, match=r"T_min: T=1 is too small for task 'adding'"):
        train(model_cfg, cfg, tmp_path, progress=False)
