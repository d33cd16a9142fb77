"""Training-loop tests on tiny random Whisper models: one step against a hand-written oracle, accumulation, groups, signals."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rc_nbkit.config import LOSS_TERMS
from rc_nbkit.trainer import (
    Trainer,
    epoch_batches,
    latest_checkpoint,
    load_metrics,
    tiny_distillation_setup,
    tiny_run_config,
)

CE_ONLY = [{"start": 0.0, "end": 1.0, "weights": {"ce": 1.0}}]
GEO_ONLY = [{"start": 0.0, "end": 1.0, "weights": {"geo": 1.0}}]
ALL_TERMS = [{"start": 0.0, "end": 1.0, "weights": {"ce": 1.0, "kl": 0.5, "geo": 0.15, "traj": 0.3, "cont": 0.3}}]


def make_trainer(folder, curriculum, total_steps=2, items=8, lora_dropout=0.0, **changes):
    pair, dataset, collate = tiny_distillation_setup(items, lora_dropout=lora_dropout)
    config = tiny_run_config(folder, total_steps=total_steps, **changes)
    config.curriculum = curriculum
    return Trainer(config, pair=pair, train_dataset=dataset, collate_fn=collate)


def test_ce_step_matches_manual_adamw(tmp_path):
    trainer = make_trainer(tmp_path, CE_ONLY, optim__max_grad_norm=0.0)
    student = trainer.student
    lora = {name: parameter for name, parameter in student.named_parameters() if parameter.requires_grad}
    expected = {name: parameter.detach().clone().requires_grad_(True) for name, parameter in lora.items()}

    # Oracle: the same first batch, cross-entropy by torch.nn.functional on the student's logits, torch AdamW.
    _, dataset, collate = tiny_distillation_setup(8)
    first = epoch_batches(len(dataset), 2, seed=trainer.config.seed, epoch=0)[0]
    batch = collate([dataset[index] for index in first])["student"]
    originals = {name: parameter.detach().clone() for name, parameter in lora.items()}
    with torch.no_grad():
        for name, parameter in lora.items():
            parameter.copy_(expected[name])
    logits = student(input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"]).logits
    loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    gradients = torch.autograd.grad(loss, list(lora.values()))
    reference = torch.optim.AdamW(list(expected.values()), lr=trainer.config.optim.lr, weight_decay=trainer.config.optim.weight_decay)
    for parameter, gradient in zip(expected.values(), gradients):
        parameter.grad = gradient.clone()
    reference.step()
    with torch.no_grad():
        for name, parameter in lora.items():
            parameter.copy_(originals[name])

    record = trainer.step()
    trainer.close()
    assert record["terms"]["ce"] == pytest.approx(float(loss.detach()), rel=1e-5)
    for name, parameter in lora.items():
        torch.testing.assert_close(parameter.detach(), expected[name].detach(), rtol=1e-5, atol=1e-7)


def test_accumulation_equals_larger_batch(tmp_path):
    large = make_trainer(tmp_path / "large", CE_ONLY, total_steps=1, data__batch_size=2)
    accumulated = make_trainer(tmp_path / "accumulated", CE_ONLY, total_steps=1, data__batch_size=1, optim__gradient_accumulation_steps=2)
    large.train()
    accumulated.train()
    for (name, expected), (_, actual) in zip(large.trainable["lora"], accumulated.trainable["lora"]):
        torch.testing.assert_close(actual.detach(), expected.detach(), rtol=1e-4, atol=1e-6, msg=name)


def test_encoder_terms_reach_only_projections(tmp_path, caplog):
    trainer = make_trainer(tmp_path, GEO_ONLY)
    lora_before = {name: parameter.detach().clone() for name, parameter in trainer.trainable["lora"]}
    projections_before = [projection.weight.detach().clone() for projection in trainer.projections]
    with caplog.at_level("WARNING"):
        summary = trainer.train()
    trainer.close()
    assert summary["reason"] == "finished"
    assert trainer.gradient_flow_warnings, "the gradient-flow audit should warn that GEO reaches only the projections"
    assert any("geo" in message.lower() for message in caplog.messages)
    # AdamW skips parameters without a gradient (weight decay included), and GEO gives LoRA none.
    for name, parameter in trainer.trainable["lora"]:
        assert torch.equal(parameter.detach(), lora_before[name]), name
    moved = [not torch.equal(projection.weight.detach(), before) for projection, before in zip(trainer.projections, projections_before)]
    assert any(moved)
    for projection in trainer.projections:
        weight = projection.weight.detach().double()
        identity = torch.eye(weight.shape[1], dtype=torch.float64)
        assert torch.linalg.matrix_norm(weight.T @ weight - identity) < 1e-5


def test_step_records_follow_schema(tmp_path):
    trainer = make_trainer(tmp_path, ALL_TERMS, total_steps=3)
    trainer.train()
    trainer.close()
    records = load_metrics(tmp_path)
    start, steps, end = records[0], records[1:-1], records[-1]
    assert start["type"] == "start"
    assert start["total_steps"] == 3
    assert start["curriculum"][0]["start_step"] == 0
    assert start["curriculum"][0]["end_step"] == 3
    assert end == {"type": "end", "step": 3, "reason": "finished"}
    for number, record in enumerate(steps, start=1):
        assert record["step"] == number
        assert set(record["terms"]) == set(LOSS_TERMS)
        assert set(record["weights"]) == set(LOSS_TERMS)
        assert set(record["lr"]) == {"adamw", "riemannian"}
        assert set(record["grad_norm"]) == {"lora", "projections", "other"}
        assert record["grad_norm"]["projections"] > 0
        angles = record["angles"]
        assert len(angles["pairs"]) == len(angles["mean_deg"]) == len(angles["latest_deg"]) == len(trainer.layer_pairs)
        assert all(0 <= value <= 90 for row in angles["latest_deg"] for value in row)
        assert record["throughput"] > 0
        assert record["memory_mb"] > 0
    # Cosine schedule: the first step runs at the base rate, later ones lower.
    assert steps[0]["lr"]["adamw"] == pytest.approx(trainer.config.optim.lr)
    assert steps[2]["lr"]["adamw"] < steps[1]["lr"]["adamw"] < steps[0]["lr"]["adamw"]


def test_curriculum_weights_logged_per_step(tmp_path):
    trainer = make_trainer(tmp_path, [
        {"start": 0.0, "end": 0.5, "weights": {"kl": 1.0}},
        {"start": 0.5, "end": 1.0, "weights": {"ce": 1.0}},
    ], total_steps=4)
    trainer.train()
    trainer.close()
    weights = [record["weights"] for record in load_metrics(tmp_path) if record["type"] == "step"]
    assert [entry["kl"] for entry in weights] == [1.0, 1.0, 0.0, 0.0]
    assert [entry["ce"] for entry in weights] == [0.0, 0.0, 1.0, 1.0]


SIGNAL_SCRIPT = textwrap.dedent(
    """
    import sys
    from rc_nbkit.trainer import Trainer, tiny_distillation_setup, tiny_run_config

    class SlowCollate:
        def __init__(self, collate):
            self.collate = collate
        def __call__(self, items):
            import time
            time.sleep(0.5)
            return self.collate(items)

    pair, dataset, collate = tiny_distillation_setup(8)
    trainer = Trainer(tiny_run_config(sys.argv[1], total_steps=1000), pair=pair, train_dataset=dataset, collate_fn=SlowCollate(collate))
    summary = trainer.train()
    trainer.close()
    print("REASON", summary["reason"], summary["steps"])
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_checkpoint_and_exits(tmp_path, signum):
    script = tmp_path / "train.py"
    script.write_text(SIGNAL_SCRIPT)
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, str(script), str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists() and any(record["type"] == "step" for record in load_metrics(metrics)):
            break
        time.sleep(0.2)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    reason, steps = stdout.split("REASON", 1)[1].split()
    assert reason == "signal"
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None
    assert checkpoint.name == f"step-{int(steps):07d}"
    assert load_metrics(run_dir)[-1] == {"type": "end", "step": int(steps), "reason": "signal"}


def test_gradient_checkpointing_same_step(tmp_path):
    plain = make_trainer(tmp_path / "plain", ALL_TERMS, total_steps=1)
    checkpointed = make_trainer(tmp_path / "checkpointed", ALL_TERMS, total_steps=1, train__gradient_checkpointing=True)
    base = checkpointed.student.get_base_model()
    assert base.is_activation_checkpointing if hasattr(base, "is_activation_checkpointing") else base.is_gradient_checkpointing
    plain_record = plain.step()
    checkpointed_record = checkpointed.step()
    assert checkpointed_record["loss"] == pytest.approx(plain_record["loss"], rel=1e-6)
    for (name, expected), (_, actual) in zip(plain.trainable["lora"], checkpointed.trainable["lora"]):
        torch.testing.assert_close(actual.detach(), expected.detach(), rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_autocast_step_is_finite(tmp_path):
    trainer = make_trainer(tmp_path, ALL_TERMS, total_steps=1, train__precision="bf16")
    record = trainer.step()
    assert not record["skipped"]
    assert all(math.isfinite(value) for value in record["terms"].values())
    # Parameters and optimiser state stay float32 under autocast.
    assert all(parameter.dtype == torch.float32 for named in trainer.trainable.values() for _, parameter in named)


def test_evaluation_records_and_callback(tmp_path):
    from rc_nbkit.trainer import TrainerCallback

    class Collect(TrainerCallback):
        def __init__(self):
            self.metrics = []

        def on_evaluate(self, trainer, metrics):
            self.metrics.append(metrics)

    collector = Collect()
    pair, dataset, collate = tiny_distillation_setup(8, lora_dropout=0.0)
    config = tiny_run_config(tmp_path, total_steps=4, train__eval_every=2)
    trainer = Trainer(config, pair=pair, train_dataset=dataset, collate_fn=collate, callbacks=[collector],
                      evaluate_fn=lambda trainer: {"wer": 0.5, "step_seen": trainer.global_step})
    trainer.train()
    trainer.close()
    assert [entry["step"] for entry in collector.metrics] == [2, 4]
    assert [entry["step_seen"] for entry in collector.metrics] == [2, 4]
    evals = [record for record in load_metrics(tmp_path) if record["type"] == "eval"]
    assert evals == collector.metrics


def test_invalid_batch_is_counted_skip(tmp_path):
    from rc_nbkit.core import InputError

    pair, dataset, collate = tiny_distillation_setup(8, lora_dropout=0.0)

    def collate_with_bad_item(items):
        if any(item["id"] == "tiny-003" for item in items):
            raise InputError("utterance tiny-003 has an empty transcript; fix or drop it")
        return collate(items)

    trainer = Trainer(tiny_run_config(tmp_path, total_steps=4), pair=pair, train_dataset=dataset, collate_fn=collate_with_bad_item)
    summary = trainer.train()
    trainer.close()
    steps = [record for record in load_metrics(tmp_path) if record["type"] == "step"]
    skipped = [record for record in steps if record["skipped"]]
    assert summary["reason"] == "finished"
    assert summary["skipped"] == len(skipped) == 1
    assert "tiny-003" in skipped[0]["skip_reason"]
    assert skipped[0]["skip_reason"].startswith("invalid batch")


def test_nonfinite_teacher_states_skip_step(tmp_path):
    pair, dataset, collate = tiny_distillation_setup(8, lora_dropout=0.0)
    config = tiny_run_config(tmp_path, total_steps=3)
    config.curriculum = ALL_TERMS
    trainer = Trainer(config, pair=pair, train_dataset=dataset, collate_fn=collate)
    calls = []

    def put_nan_in_final_state(module, args):
        calls.append(1)
        if len(calls) == 2:
            # A NaN in a valid frame of utterance 0, at the input of the encoder's final layer norm.
            args[0][0, 0, 0] = float("nan")

    trainer.teacher.get_encoder().layer_norm.register_forward_pre_hook(put_nan_in_final_state)
    summary = trainer.train()
    trainer.close()
    steps = [record for record in load_metrics(tmp_path) if record["type"] == "step"]
    assert summary["reason"] == "finished"
    assert [record["skipped"] for record in steps] == [False, True, False]
    assert "NaN or infinite values in the valid frames of batch rows [0]" in steps[1]["skip_reason"]


def test_crash_writes_checkpoint(tmp_path):
    pair, dataset, collate = tiny_distillation_setup(8, lora_dropout=0.0)
    calls = []

    def collate_then_crash(items):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk vanished")
        return collate(items)

    trainer = Trainer(tiny_run_config(tmp_path, total_steps=4), pair=pair, train_dataset=dataset, collate_fn=collate_then_crash)
    with pytest.raises(RuntimeError, match="disk vanished"):
        trainer.train()
    trainer.close()
    assert latest_checkpoint(tmp_path).name == "step-0000002"
