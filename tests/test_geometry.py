"""Property tests of the subspace geometry and the subspace losses against independent oracles (scipy, NumPy float64)."""
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rc_nbkit.core import InputError
from rc_nbkit.losses import DistillationLoss, LOSS_TERM_NAMES, traj_loss, uniform_layer_map
from rc_nbkit.subspace import (
    geodesic_distance,
    orthonormal_basis,
    principal_angles,
    projected_basis,
    projection_distance,
)


def random_basis(batch, d_model, k, seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(batch, d_model, k, generator=generator, dtype=dtype)).Q


def naive_projection_distance(first, second):
    first, second = first.double(), second.double()
    return (first @ first.mT - second @ second.mT).square().sum(dim=(-2, -1))


def projector(basis):
    return basis @ basis.mT


shapes = st.tuples(
    st.integers(min_value=2, max_value=40),  # d_model
    st.integers(min_value=1, max_value=8),  # k1
    st.integers(min_value=1, max_value=8),  # k2
    st.integers(min_value=0, max_value=2**31 - 1),  # seed
).filter(lambda shape: shape[1] <= shape[0] and shape[2] <= shape[0])


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_projection_distance_matches_naive(shape):
    d_model, k1, k2, seed = shape
    first, second = random_basis(2, d_model, k1, seed), random_basis(2, d_model, k2, seed + 1)
    torch.testing.assert_close(projection_distance(first, second), naive_projection_distance(first, second), atol=1e-10, rtol=0)


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_principal_angles_match_scipy(shape):
    d_model, k1, k2, seed = shape
    first, second = random_basis(2, d_model, k1, seed), random_basis(2, d_model, k2, seed + 1)
    oracle = np.stack([np.sort(scipy.linalg.subspace_angles(a, b)) for a, b in zip(first.numpy(), second.numpy())])
    # When k1 + k2 > d_model the subspaces intersect; scipy then returns the zero angles only to about 1e-8.
    tolerance = 1e-7 if k1 + k2 > d_model else 1e-10
    np.testing.assert_allclose(principal_angles(first, second).numpy(), oracle, atol=tolerance)


@settings(max_examples=30, deadline=None)
@given(shapes)
def test_distances_invariant_to_basis_rotation(shape):
    d_model, k1, k2, seed = shape
    first, second = random_basis(2, d_model, k1, seed), random_basis(2, d_model, k2, seed + 1)
    rotation = random_basis(2, k1, k1, seed + 2)
    torch.testing.assert_close(projection_distance(first @ rotation, second), projection_distance(first, second), atol=1e-12, rtol=0)
    torch.testing.assert_close(geodesic_distance(first @ rotation, second), geodesic_distance(first, second), atol=1e-9, rtol=0)


def test_projection_distance_identical_and_orthogonal():
    basis = random_basis(3, 50, 7, seed=0)
    torch.testing.assert_close(projection_distance(basis, basis), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)

    frame = random_basis(3, 50, 14, seed=1)
    orthogonal = projection_distance(frame[..., :7], frame[..., 7:])
    torch.testing.assert_close(orthogonal, torch.full((3,), 14.0, dtype=torch.float64), atol=1e-12, rtol=0)
    angles = principal_angles(frame[..., :7], frame[..., 7:])
    torch.testing.assert_close(angles, torch.full((3, 7), np.pi / 2, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("angle", [1e-10, 1e-8, 1e-6, 1e-4, 1e-2])
def test_geodesic_small_angle_relative_accuracy(angle):
    frame = random_basis(1, 64, 8, seed=3)
    base, directions = frame[..., :4], frame[..., 4:]
    angles = angle * torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    rotated = base * torch.cos(angles) + directions * torch.sin(angles)
    expected = float(angles.square().sum().sqrt())
    measured = float(geodesic_distance(base, rotated))
    assert abs(measured - expected) / expected < 1e-6


def test_gradcheck_distances_float64():
    first = random_basis(2, 9, 3, seed=4).requires_grad_(True)
    second = random_basis(2, 9, 5, seed=5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: projection_distance(a, b, orthonormal=False), (first, second))
    assert torch.autograd.gradcheck(lambda a, b: geodesic_distance(a, b, squared=True), (first, second))


@pytest.mark.parametrize("frames,d_model,k", [(30, 8, 3), (6, 12, 4), (24, 10, 4)])
def test_gradcheck_exact_basis_float64(frames, d_model, k):
    generator = torch.Generator().manual_seed(frames)
    states = torch.randn(2, frames, d_model, generator=generator, dtype=torch.float64)
    states = states * torch.linspace(3, 0.3, d_model, dtype=torch.float64)
    mask = torch.arange(frames)[None] < torch.tensor([[frames], [frames - 1]])
    target = random_basis(2, d_model, k, seed=7)

    def loss(hidden):
        return projection_distance(orthonormal_basis(hidden, mask, k, method="exact"), target)

    assert torch.autograd.gradcheck(loss, (states.requires_grad_(True),), eps=1e-6, atol=1e-5)


def whisper_sized_degenerate_inputs(frames=1500, d_model=64):
    generator = torch.Generator().manual_seed(11)
    full = torch.ones(1, frames, dtype=torch.bool)
    short = torch.arange(frames)[None] < 20
    repeated = torch.randn(1, 4, d_model, generator=generator).repeat(1, frames // 4, 1)
    return {
        "silence": (torch.full((1, frames, d_model), 1e-4), full),
        "fewer valid frames than k": (torch.randn(1, frames, d_model, generator=generator), short),
        "duplicated frames": (repeated, full),
        "all zeros": (torch.zeros(1, frames, d_model), full),
        "rank one": (torch.randn(1, frames, 1, generator=generator) * torch.randn(1, 1, d_model, generator=generator), full),
    }


@pytest.mark.parametrize("method", ["exact", "randomized"])
@pytest.mark.parametrize("case", list(whisper_sized_degenerate_inputs()))
def test_degenerate_inputs_have_finite_gradients(method, case):
    states, mask = whisper_sized_degenerate_inputs()[case]
    states = states.clone().requires_grad_(True)
    projection = torch.nn.Linear(64, 96, bias=False)
    with torch.no_grad():
        projection.weight.copy_(torch.linalg.qr(torch.randn(96, 64)).Q)
    teacher = random_basis(1, 96, 32, seed=12, dtype=torch.float32)

    basis, singular_values = orthonormal_basis(states, mask, 32, method=method, return_singular_values=True)
    loss = projection_distance(projected_basis(basis, projection), teacher).sum() + singular_values.sum()
    loss.backward()
    assert torch.isfinite(basis).all()
    assert torch.isfinite(states.grad).all()
    assert torch.isfinite(projection.weight.grad).all()
    torch.testing.assert_close(basis.mT @ basis, torch.eye(32).expand(1, 32, 32), atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_basis_ignores_padding_values_and_length(method):
    generator = torch.Generator().manual_seed(13)
    states = torch.randn(2, 300, 48, generator=generator) * torch.linspace(4, 0.1, 48)
    mask = torch.arange(300)[None] < torch.tensor([[300], [120]])
    base = orthonormal_basis(states, mask, 8, method=method)

    garbage = states.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), 48, generator=generator) * 1e6
    longer = torch.cat([garbage, torch.full((2, 1200, 48), float("nan"))], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(2, 1200, dtype=torch.bool)], dim=1)
    padded = orthonormal_basis(longer, longer_mask, 8, method=method)
    torch.testing.assert_close(projector(padded), projector(base), atol=1e-5, rtol=0)


def test_randomized_matches_exact_with_a_spectral_gap():
    generator = torch.Generator().manual_seed(14)
    signal = torch.randn(2, 400, 16, generator=generator, dtype=torch.float64) @ torch.randn(16, 200, generator=generator, dtype=torch.float64)
    states = signal * 10 + torch.randn(2, 400, 200, generator=generator, dtype=torch.float64) * 0.01
    exact = orthonormal_basis(states, None, 16, method="exact")
    randomized = orthonormal_basis(states, None, 16, method="randomized")
    assert float(principal_angles(exact, randomized).max()) < 1e-6


def test_shape_and_mask_errors_name_the_tensor():
    states = torch.randn(2, 10, 8)
    with pytest.raises(InputError, match=r"hidden has shape \(2, 10\)"):
        orthonormal_basis(states[..., 0], k=2)
    with pytest.raises(InputError, match="frame mask has shape"):
        orthonormal_basis(states, torch.ones(2, 9, dtype=torch.bool), k=2)
    with pytest.raises(InputError, match="bool"):
        orthonormal_basis(states, torch.ones(2, 10, dtype=torch.int64), k=2)
    with pytest.raises(InputError, match=r"batch rows \[1\]"):
        orthonormal_basis(states, torch.tensor([[True] * 10, [False] * 10]), k=2)
    with pytest.raises(InputError, match="second basis"):
        projection_distance(random_basis(2, 8, 2, 0), random_basis(3, 8, 2, 1))
    with pytest.raises(InputError, match="first basis"):
        principal_angles(random_basis(2, 8, 2, 0)[0], random_basis(2, 8, 2, 1))


def stiefel_projections(pairs, d_student, d_teacher):
    stiefel = pytest.importorskip("rc_nbkit.stiefel")
    torch.manual_seed(15)
    return [stiefel.StiefelLinear(d_student, d_teacher).double() for _ in pairs]


@pytest.mark.parametrize("d_student,d_teacher", [(16, 24), (24, 16)])
def test_composite_with_stiefel_projections(d_student, d_teacher):
    pairs = uniform_layer_map(3, 5)
    projections = stiefel_projections(pairs, d_student, d_teacher)
    generator = torch.Generator().manual_seed(16)
    student_states = tuple(torch.randn(4, 60, d_student, generator=generator, dtype=torch.float64) for _ in range(4))
    teacher_states = tuple(torch.randn(4, 60, d_teacher, generator=generator, dtype=torch.float64) for _ in range(6))
    mask = torch.arange(60)[None] < torch.tensor([[60], [45], [30], [12]])
    weights = {"geo": 0.15, "traj": 0.3, "cont": 0.3}

    loss = DistillationLoss(pairs, projections, k=4, method="exact").double()
    output = loss(student_hidden_states=student_states, student_mask=mask, teacher_hidden_states=teacher_states, weights=weights)
    output.total.backward()
    for projection in projections:
        assert torch.isfinite(projection.weight.grad).all()

    # The oracle: bases of the projected states with the naive d × d distance, per layer pair.
    expected = []
    for (student_index, teacher_index), projection in zip(pairs, projections):
        with torch.no_grad():
            student_basis = orthonormal_basis(projection(student_states[student_index]), mask, 4, method="exact")
            teacher_basis = orthonormal_basis(teacher_states[teacher_index], mask, 4, method="exact")
        expected.append(float((naive_projection_distance(student_basis, teacher_basis) / 8).mean()))
    assert abs(float(output.terms["traj"]) - np.mean(expected)) < 1e-8
    assert abs(float(output.terms["geo"]) - expected[-1]) < 1e-8


def test_traj_accepts_whisper_layer_counts():
    pairs = uniform_layer_map(24, 32)
    assert len(pairs) == 24
    assert pairs[-1] == (24, 32)
    assert all(1 <= teacher <= 32 for _, teacher in pairs)
    assert [teacher for _, teacher in pairs] == sorted(teacher for _, teacher in pairs)


def test_models_layer_map_agrees_when_available():
    models = pytest.importorskip("rc_nbkit.models")
    if not hasattr(models, "layer_map"):
        pytest.skip("rc_nbkit.models has no layer_map yet")
    for student_layers, teacher_layers in [(24, 32), (4, 6), (6, 4), (12, 32)]:
        assert list(map(tuple, models.layer_map(student_layers, teacher_layers))) == uniform_layer_map(student_layers, teacher_layers)


@pytest.mark.slow
def test_whisper_sized_batch_is_finite_and_padding_invariant():
    """Batch 2, 1,500 frames, tiny.en (384) -> base (512) sizes: every term finite, padding changes nothing."""
    pairs = uniform_layer_map(4, 6)
    projections = stiefel_projections(pairs, 384, 512)
    projections = [projection.float() for projection in projections]
    generator = torch.Generator().manual_seed(17)
    student_states = tuple(torch.randn(2, 1500, 384, generator=generator) for _ in range(5))
    teacher_states = tuple(torch.randn(2, 1500, 512, generator=generator) for _ in range(7))
    mask = torch.arange(1500)[None] < torch.tensor([[1500], [200]])
    logits = torch.randn(2, 12, 51864, generator=generator, requires_grad=True)
    teacher_logits = torch.randn(2, 12, 51864, generator=generator)
    labels = torch.randint(0, 50000, (2, 12), generator=generator)
    labels[1, 8:] = -100
    weights = {"ce": 1.0, "kl": 0.5, "geo": 0.15, "traj": 0.3, "cont": 0.3}

    loss = DistillationLoss(pairs, projections, k=64)
    inputs = dict(student_hidden_states=student_states, student_mask=mask, student_logits=logits, labels=labels,
                  teacher_logits=teacher_logits, teacher_hidden_states=teacher_states, weights=weights)
    output = loss(**inputs, return_angles=True)
    output.total.backward()
    assert all(torch.isfinite(value) for value in output.terms.values())
    assert len(output.angles["latest_deg"]) == len(pairs)

    changed = [state.clone() for state in student_states]
    for state in changed:
        state[1, 200:] = 1e3
    teacher_changed = [state.clone() for state in teacher_states]
    for state in teacher_changed:
        state[1, 200:] = -1e3
    padded = loss(**{**inputs, "student_hidden_states": changed, "teacher_hidden_states": teacher_changed})
    for name in LOSS_TERM_NAMES:
        assert abs(float(padded.terms[name]) - float(output.terms[name])) < 1e-4, name


@pytest.mark.slow
def test_real_whisper_encoders_base_to_tiny_en():
    """Real encoders (base teacher, tiny.en student) on real speech: every term finite, exact zero for a self-pair."""
    soundfile = pytest.importorskip("soundfile")
    convert = pytest.importorskip("rc_nbkit.convert")
    stiefel = pytest.importorskip("rc_nbkit.stiefel")
    from rc_nbkit.losses import align_label_tokens, shared_vocabulary

    folder = Path(__file__).resolve().parents[1] / "data/real/librivox"
    transcripts = dict(line.split("\t", 1) for line in (folder / "transcripts.tsv").read_text().splitlines() if "\t" in line)
    names = sorted(transcripts)[:2]
    try:
        teacher, teacher_processor = convert.load_whisper("whisper-base")
        student, student_processor = convert.load_whisper("whisper-tiny.en")
    except InputError as error:
        pytest.skip(f"offline Whisper models are not available: {error}")

    audio = [soundfile.read(folder / f"{name}.wav", dtype="float32")[0] for name in names]
    mask = torch.zeros(2, 1500, dtype=torch.bool)
    for row, waveform in enumerate(audio):
        mask[row, : min(1500, math.ceil(math.ceil(len(waveform) / 160) / 2))] = True

    def labels_for(tokenizer, prefix):
        rows = [[-100] * len(prefix) + tokenizer.encode(" " + transcripts[name].strip(), add_special_tokens=False) + [tokenizer.convert_tokens_to_ids("<|endoftext|>")] for name in names]
        width = max(len(row) for row in rows)
        labels = torch.tensor([row + [-100] * (width - len(row)) for row in rows])
        decoder_inputs = torch.tensor([prefix + [max(token, 0) for token in row[len(prefix):]] for row in labels.tolist()])[:, : width]
        return labels, decoder_inputs

    def run(model, processor, prefix):
        features = processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="pt").input_features
        labels, decoder_inputs = labels_for(processor.tokenizer, prefix)
        with torch.no_grad():
            outputs = model(input_features=features, decoder_input_ids=decoder_inputs, output_hidden_states=True)
        return outputs, labels

    teacher_tokens = teacher_processor.tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])
    student_tokens = student_processor.tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    teacher_outputs, teacher_labels = run(teacher, teacher_processor, teacher_tokens)
    student_outputs, student_labels = run(student, student_processor, student_tokens)
    assert len(student_outputs.encoder_hidden_states) == 5
    assert len(teacher_outputs.encoder_hidden_states) == 7

    pairs = uniform_layer_map(4, 6)
    torch.manual_seed(0)
    loss = DistillationLoss(pairs, [stiefel.StiefelLinear(384, 512) for _ in pairs], k=64, method="exact")
    alignment = align_label_tokens(teacher_labels, student_labels, teacher_processor.tokenizer, student_processor.tokenizer)
    vocabulary = shared_vocabulary(teacher_processor.tokenizer, student_processor.tokenizer)
    logits = student_outputs.logits.clone().requires_grad_(True)
    output = loss(
        student_hidden_states=student_outputs.encoder_hidden_states, student_mask=mask, student_logits=logits,
        labels=student_labels, teacher_logits=teacher_outputs.logits, teacher_hidden_states=teacher_outputs.encoder_hidden_states,
        alignment=alignment, vocabulary=vocabulary, weights={"ce": 1, "kl": 0.5, "geo": 0.15, "traj": 0.3, "cont": 0.3},
        return_angles=True,
    )
    output.total.backward()
    assert all(torch.isfinite(value) for value in output.terms.values())
    assert all(torch.isfinite(projection.weight.grad).all() for projection in loss.projections)
    assert alignment.coverage["mismatched_rows"] == []
    assert output.diagnostics["kl_position_coverage"] > 0.5
    assert 0 < float(output.terms["geo"]) < 1

    # A student compared with itself through identity projections is at distance zero.
    identity = [torch.nn.Linear(384, 384, bias=False) for _ in range(4)]
    for layer in identity:
        torch.nn.init.eye_(layer.weight)
    self_loss = DistillationLoss([(i, i) for i in range(1, 5)], identity, k=64, method="exact")
    self_output = self_loss(
        student_hidden_states=student_outputs.encoder_hidden_states, student_mask=mask,
        teacher_hidden_states=student_outputs.encoder_hidden_states, weights={"geo": 1.0, "traj": 1.0},
    )
    assert float(self_output.terms["geo"]) < 1e-5
    assert float(self_output.terms["traj"]) < 1e-5
