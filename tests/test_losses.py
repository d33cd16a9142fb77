"""Token losses, InfoNCE and the composite loss against float64 references."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from rc_nbkit.core import InputError
from rc_nbkit.losses import (
    DistillationLoss,
    InfoNCE,
    LOSS_TERM_NAMES,
    cross_entropy_loss,
    distillation_kl_report,
    kl_distillation,
    uniform_layer_map,
)

WHISPER_VOCAB = 51_865


def log_softmax(values):
    shifted = values - values.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def reference_kl(student, teacher, labels, temperature, shared=None):
    "T²·KL(p_teacher ‖ p_student) over the labelled tokens, float64 NumPy."
    shared = shared or min(student.shape[-1], teacher.shape[-1])
    valid = labels.numpy() != -100
    log_q = log_softmax(student.double().numpy()[valid][:, :shared] / temperature)
    log_p = log_softmax(teacher.double().numpy()[valid][:, :shared] / temperature)
    return temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(-1).mean()


@pytest.fixture(scope="module")
def whisper_logits():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(3, 7, WHISPER_VOCAB, generator=generator) * 4
    teacher = 0.7 * student + torch.randn(3, 7, WHISPER_VOCAB, generator=generator) * 2
    labels = torch.randint(0, 50_000, (3, 7), generator=generator)
    labels[0, 5:] = -100
    labels[2, 1:] = -100
    return student, teacher, labels


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kl_matches_float64_reference(whisper_logits, temperature):
    student, teacher, labels = whisper_logits
    value = float(kl_distillation(student, teacher, labels, temperature))
    assert value == pytest.approx(reference_kl(student, teacher, labels, temperature), rel=1e-5)


def test_kl_float64_input_matches_reference(whisper_logits):
    student, teacher, labels = whisper_logits
    value = float(kl_distillation(student.double(), teacher.double(), labels, 2.0))
    # The loss computes in float32 at least; float64 input stays within float32 rounding of the reference.
    assert value == pytest.approx(reference_kl(student, teacher, labels, 2.0), rel=1e-5)


def test_kl_of_identical_distributions_is_zero(whisper_logits):
    student, _, labels = whisper_logits
    for temperature in (1.0, 2.0, 4.0):
        assert abs(float(kl_distillation(student, student.clone(), labels, temperature))) < 1e-5


def test_kl_gradient_matches_reference_formula():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(2, 3, 13, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 13, generator=generator, dtype=torch.float64)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    loss = kl_distillation(student, teacher, labels, 2.0)
    loss.backward()
    # d/dz_s of T²·mean KL = T · (q − p) / N at each labelled position.
    p = torch.softmax(teacher / 2, dim=-1)
    q = torch.softmax(student.detach() / 2, dim=-1)
    expected = 2 * (q - p) / 3 * (labels != -100)[..., None]
    torch.testing.assert_close(student.grad, expected, atol=1e-6, rtol=0)


def test_kl_shared_prefix_renormalises_teacher(whisper_logits):
    student, teacher, labels = whisper_logits
    larger = torch.cat([teacher, torch.full((3, 7, 1), 3.0)], dim=-1)  # large-v3 has one more token than medium
    value = float(kl_distillation(student, larger, labels, 2.0))
    assert value == pytest.approx(reference_kl(student, teacher, labels, 2.0), rel=1e-5)

    report = distillation_kl_report(student, larger, labels, 2.0)
    valid = labels != -100
    expected_dropped = torch.softmax(larger[valid].double(), dim=-1)[:, -1].mean()
    assert report["teacher_mass_dropped"] == pytest.approx(float(expected_dropped), rel=1e-4)
    assert report["kl_at_1"] == pytest.approx(reference_kl(student, teacher, labels, 1.0), rel=1e-5)
    assert report["kl_scaled"] == pytest.approx(4 * report["kl_at_t"], rel=1e-9)

    prefix = float(kl_distillation(student, larger, labels, 2.0, shared_vocab_size=50_358))
    assert prefix == pytest.approx(reference_kl(student, larger, labels, 2.0, shared=50_358), rel=1e-5)


def test_token_losses_ignore_padding(whisper_logits):
    student, teacher, labels = whisper_logits
    noisy_student, noisy_teacher = student.clone(), teacher.clone()
    noisy_student[labels == -100] = 1e4
    noisy_teacher[labels == -100] = -1e4
    assert float(kl_distillation(noisy_student, noisy_teacher, labels)) == pytest.approx(float(kl_distillation(student, teacher, labels)), rel=1e-6)
    assert float(cross_entropy_loss(noisy_student, labels)) == pytest.approx(float(cross_entropy_loss(student, labels)), rel=1e-6)


def test_cross_entropy_matches_reference(whisper_logits):
    student, _, labels = whisper_logits
    valid = labels != -100
    log_q = log_softmax(student.double().numpy()[valid.numpy()])
    expected = -log_q[np.arange(int(valid.sum())), labels[valid].numpy()].mean()
    assert float(cross_entropy_loss(student, labels)) == pytest.approx(expected, rel=1e-5)


def test_token_loss_errors_are_clear(whisper_logits):
    student, teacher, labels = whisper_logits
    with pytest.raises(InputError, match="teacher logits has shape"):
        kl_distillation(student, teacher[:2], labels)
    with pytest.raises(InputError, match="labels has shape"):
        kl_distillation(student, teacher, labels[:, :6])
    with pytest.raises(InputError, match="shared_vocab_size"):
        kl_distillation(student, teacher, labels, shared_vocab_size=WHISPER_VOCAB + 1)
    with pytest.raises(InputError, match="outside"):
        cross_entropy_loss(student[..., :100], labels)


def test_info_nce_gradcheck_and_learning():
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    contrastive = InfoNCE(0.2).double()
    assert torch.autograd.gradcheck(lambda values: contrastive(values, teacher), (student,))

    # Matched pairs get easier to tell apart when the temperature is learned: the loss goes down.
    aligned = teacher + 0.1 * torch.randn(5, 6, generator=generator, dtype=torch.float64)
    optimizer = torch.optim.SGD(contrastive.parameters(), lr=0.5)
    with torch.no_grad():
        first = float(contrastive(aligned, teacher))
    for _ in range(20):
        optimizer.zero_grad()
        loss = contrastive(aligned, teacher)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert float(contrastive(aligned, teacher)) < first
    assert contrastive.temperature < 0.2


def orthonormal_linear(d_in, d_out, seed):
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.linalg.qr(torch.randn(d_out, d_in, generator=generator)).Q)
    return layer


@pytest.fixture()
def composite_inputs():
    generator = torch.Generator().manual_seed(3)
    pairs = uniform_layer_map(3, 4)
    loss = DistillationLoss(pairs, [orthonormal_linear(16, 20, seed) for seed in range(3)], k=4, method="randomized")
    inputs = {
        "student_hidden_states": tuple(torch.randn(4, 50, 16, generator=generator) for _ in range(4)),
        "teacher_hidden_states": tuple(torch.randn(4, 50, 20, generator=generator) for _ in range(5)),
        "student_mask": torch.arange(50)[None] < torch.tensor([[50], [40], [30], [20]]),
        "student_logits": torch.randn(4, 6, 40, generator=generator, requires_grad=True),
        "teacher_logits": torch.randn(4, 6, 40, generator=generator),
        "labels": torch.randint(0, 40, (4, 6), generator=generator),
    }
    return loss, inputs


def test_composite_zero_weights_logged_without_gradient(composite_inputs):
    loss, inputs = composite_inputs
    weights = {"ce": 0.0, "kl": 0.5, "geo": 0.15, "traj": 0.3, "cont": 0.3}
    output = loss(**inputs, weights=weights)
    assert set(output.terms) == set(LOSS_TERM_NAMES)
    assert output.terms["ce"] is not None
    output.total.backward()
    # CE has weight 0, KL does not: the student logits get exactly the KL gradient.
    kl_only = kl_distillation(inputs["student_logits"], inputs["teacher_logits"], inputs["labels"])
    (expected,) = torch.autograd.grad(0.5 * kl_only, inputs["student_logits"])
    torch.testing.assert_close(inputs["student_logits"].grad, expected)
    record = json.dumps(output.term_values())
    assert set(json.loads(record)) == set(LOSS_TERM_NAMES)
    assert {"kl_at_1", "kl_at_t", "cont_temperature", "short_utterances"} <= set(output.diagnostics)


def test_composite_cached_targets_subset_rows(composite_inputs):
    loss, inputs = composite_inputs
    weights = {"geo": 1.0, "traj": 1.0, "cont": 1.0}
    targets = loss.teacher_targets(inputs["teacher_hidden_states"], inputs["student_mask"])
    rows = [2, 0]
    subset = {
        "student_hidden_states": tuple(state[rows] for state in inputs["student_hidden_states"]),
        "student_mask": inputs["student_mask"][rows],
    }
    from_cache = loss(**subset, teacher_targets=targets.index_select(rows), weights=weights)
    direct = loss(**subset, teacher_hidden_states=tuple(state[rows] for state in inputs["teacher_hidden_states"]), weights=weights)
    for name in ("geo", "traj", "cont"):
        assert float(from_cache.terms[name]) == pytest.approx(float(direct.terms[name]), abs=1e-6)


def test_composite_bfloat16_autocast_stays_finite(composite_inputs):
    loss, inputs = composite_inputs
    bf16_states = {
        "student_hidden_states": tuple(state.bfloat16() for state in inputs["student_hidden_states"]),
        "teacher_hidden_states": tuple(state.bfloat16() for state in inputs["teacher_hidden_states"]),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = loss(**{**inputs, **bf16_states}, weights={"ce": 1, "kl": 0.5, "geo": 0.15, "traj": 0.3, "cont": 0.3})
    output.total.backward()
    assert all(torch.isfinite(value) for value in output.terms.values())
    assert all(torch.isfinite(projection.weight.grad).all() for projection in loss.projections)


def test_single_utterance_cache_needs_frames(composite_inputs):
    loss, inputs = composite_inputs
    single = {"student_hidden_states": tuple(state[:1] for state in inputs["student_hidden_states"]), "student_mask": inputs["student_mask"][:1]}
    teacher = tuple(state[:1] for state in inputs["teacher_hidden_states"])
    without_frames = loss.teacher_targets(teacher, inputs["student_mask"][:1])
    with pytest.raises(InputError, match="include_frames=True"):
        loss(**single, teacher_targets=without_frames, weights={"cont": 1.0})
    with_frames = loss.teacher_targets(teacher, inputs["student_mask"][:1], include_frames=True)
    cached = loss(**single, teacher_targets=with_frames, weights={"cont": 1.0})
    direct = loss(**single, teacher_hidden_states=teacher, weights={"cont": 1.0})
    assert float(cached.terms["cont"]) == pytest.approx(float(direct.terms["cont"]), abs=1e-6)


def test_composite_degenerate_utterances_stay_finite(composite_inputs):
    loss, inputs = composite_inputs
    silent = tuple(state.clone() for state in inputs["student_hidden_states"])
    for state in silent:
        state[0] = 0.0  # an all-zero utterance
        state[1, :] = state[1, :1]  # one frame repeated
    mask = inputs["student_mask"].clone()
    mask[3, 3:] = False  # fewer valid frames than k
    output = loss(**{**inputs, "student_hidden_states": silent, "student_mask": mask},
                  weights={"ce": 1, "kl": 0.5, "geo": 0.15, "traj": 0.3, "cont": 0.3}, return_angles=True)
    output.total.backward()
    assert all(torch.isfinite(value) for value in output.terms.values())
    assert all(torch.isfinite(projection.weight.grad).all() for projection in loss.projections)
    assert loss.contrastive.log_temperature.grad is not None
    assert output.diagnostics["short_utterances"] == 1.0
    assert all(np.isfinite(output.angles["mean_deg"]))
