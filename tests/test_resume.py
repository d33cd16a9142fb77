"""Checkpoints: exact resume on the CPU, atomic writes, pruning, and loading that never runs code from files."""
import pickle

import pytest
import torch

from rc_nbkit.trainer import (
    Trainer,
    latest_checkpoint,
    list_checkpoints,
    load_metrics,
    tiny_distillation_setup,
    tiny_run_config,
)

# Two stages, so the resumed half runs in a different stage from the first half. CONT ramps down inside the second stage.
CURRICULUM = [
    {"start": 0.0, "end": 0.4, "weights": {"kl": 0.5, "geo": 0.15, "traj": 0.3, "cont": 0.3}},
    {"start": 0.4, "end": 1.0, "weights": {"ce": 1.0, "kl": 0.05, "geo": 0.05, "traj": 0.3, "cont": 0.3},
     "weights_end": {"ce": 1.0, "kl": 0.05, "geo": 0.05, "traj": 0.3, "cont": 0.0}},
]


def build(folder, total_steps, resume=False, **changes):
    pair, dataset, collate = tiny_distillation_setup(6, lora_dropout=0.1)
    config = tiny_run_config(folder, total_steps=total_steps, **changes)
    config.curriculum = CURRICULUM
    return Trainer(config, pair=pair, train_dataset=dataset, collate_fn=collate, resume_from=folder if resume else None)


def state(trainer):
    values = {name: parameter.detach().clone() for named in trainer.trainable.values() for name, parameter in named}
    for group, optimizer in (("adamw", trainer.adamw), ("riemannian", trainer.riemannian)):
        for index, entry in enumerate(optimizer.state.values()):
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    values[f"{group}.{index}.{key}"] = value.detach().clone()
    return values


def step_losses(folder):
    return [record["loss"] for record in load_metrics(folder) if record["type"] == "step"]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_interrupted_run_resumes_bitwise(tmp_path, accumulation):
    straight = build(tmp_path / "straight", 5, optim__gradient_accumulation_steps=accumulation, optim__warmup_steps=2)
    straight.train()
    straight.close()

    first = build(tmp_path / "split", 5, optim__gradient_accumulation_steps=accumulation, optim__warmup_steps=2)
    summary = first.train(max_steps=2)
    first.close()
    assert summary["steps"] == 2
    resumed = build(tmp_path / "split", 5, resume=True, optim__gradient_accumulation_steps=accumulation, optim__warmup_steps=2)
    assert resumed.global_step == 2
    resumed.train()
    resumed.close()

    expected, actual = state(straight), state(resumed)
    assert set(expected) == set(actual)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs after resume"
    assert step_losses(tmp_path / "straight") == step_losses(tmp_path / "split")


def test_checkpoint_contents_and_pruning(tmp_path):
    trainer = build(tmp_path, 5, train__checkpoint_every=2, train__keep_checkpoints=2)
    trainer.train()
    trainer.close()
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step-0000004", "step-0000005"]
    checkpoint = latest_checkpoint(tmp_path)
    names = {path.name for path in checkpoint.iterdir()}
    assert {"adapter", "projections.safetensors", "optimizers.pt", "schedulers.pt", "rng.pt", "trainer_state.json", "config.yaml"} <= names
    assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file()
    assert (checkpoint / "adapter" / "adapter_config.json").is_file()
    assert not [path for path in (tmp_path / "checkpoints").iterdir() if path.name.startswith(".")]


class Exploit:
    "An object whose unpickling would run code."

    def __reduce__(self):
        return (print, ("code from a checkpoint ran",))


def test_loading_rejects_pickled_code(tmp_path):
    trainer = build(tmp_path, 2)
    trainer.train()
    trainer.close()
    checkpoint = latest_checkpoint(tmp_path)
    torch.save({"adamw": Exploit(), "riemannian": {}}, checkpoint / "optimizers.pt")
    with pytest.raises(pickle.UnpicklingError):
        build(tmp_path, 2, resume=True)


def test_resume_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(ValueError, match="no complete checkpoint found"):
        build(tmp_path, 2, resume=True)


def test_resume_with_teacher_cache_bitwise(tmp_path):
    # The cache is not saved in checkpoints: the resumed run recomputes the teacher for utterances it has not seen.
    straight = build(tmp_path / "straight", 5, train__teacher_cache=True)
    straight.train()
    straight.close()
    first = build(tmp_path / "split", 5, train__teacher_cache=True)
    first.train(max_steps=2)
    first.close()
    resumed = build(tmp_path / "split", 5, resume=True, train__teacher_cache=True)
    resumed.train()
    resumed.close()
    expected, actual = state(straight), state(resumed)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs after resume"
