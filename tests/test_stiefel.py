"""Long-run and property tests of rc_nbkit.stiefel: drift over 10,000 steps, Cayley forms, DistributedDataParallel."""
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rc_nbkit.stiefel import (
    RiemannianAdam,
    RiemannianSGD,
    StiefelLinear,
    StiefelParameter,
    cayley_retraction_transport,
    orthogonality_error,
    stiefel_project,
    stiefel_project_tangent,
)

LONG_RUN_STEPS = 10_000


@pytest.fixture(autouse=True)
def single_thread():
    "Run on one thread: the matrices are tiny, and on a shared machine LAPACK threads mostly wait for each other."
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def run_random_gradients(optimizer_class, dtype, shape, steps=LONG_RUN_STEPS, seed=0, **options):
    "Step a Stiefel parameter with Gaussian gradients and return the parameter and optimiser."
    generator = torch.Generator().manual_seed(seed)
    parameter = StiefelParameter(torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype))
    optimizer = optimizer_class([parameter], **options)
    for _ in range(steps):
        parameter.grad = torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)
        optimizer.step()
    return parameter, optimizer


# Momentum 0.9 makes each step about ten times lr times the gradient, so ||step||_F is about 0.5.
DRIFT_CASES = [
    pytest.param(shape, every, method, id=f"{shape[0]}x{shape[1]}-every{every}-{method}")
    for shape in [(12, 4), (10, 8)]
    for every in [0, 200]
    for method in ["dense", "woodbury"]
]


@pytest.mark.parametrize("shape,every,method", DRIFT_CASES)
def test_sgd_drift_float32(shape, every, method):
    parameter, _ = run_random_gradients(
        RiemannianSGD, torch.float32, shape, lr=0.01, reorthogonalize_every=every, cayley_method=method
    )
    assert orthogonality_error(parameter) <= 1e-5


@pytest.mark.parametrize("shape,every,method", DRIFT_CASES)
def test_sgd_drift_float64(shape, every, method):
    parameter, _ = run_random_gradients(
        RiemannianSGD, torch.float64, shape, lr=0.01, reorthogonalize_every=every, cayley_method=method
    )
    assert orthogonality_error(parameter) <= 1e-12


@pytest.mark.parametrize("method", ["dense", "woodbury"])
def test_sgd_drift_float64_without_corrections(method):
    # In float64 the Cayley rotation alone keeps the point on the manifold, without any correction.
    parameter, _ = run_random_gradients(
        RiemannianSGD, torch.float64, (10, 8), lr=0.01, reorthogonalize_every=0, newton_schulz_every=0, cayley_method=method
    )
    assert orthogonality_error(parameter) <= 1e-12


@pytest.mark.parametrize("retraction", ["qr", "polar"])
def test_sgd_drift_other_retractions(retraction):
    # These retractions orthonormalise from scratch every step, so drift cannot accumulate and 2,000 steps suffice.
    parameter, optimizer = run_random_gradients(
        RiemannianSGD, torch.float32, (12, 4), steps=2000, lr=0.01, retraction=retraction, metric="euclidean",
        reorthogonalize_every=0,
    )
    assert orthogonality_error(parameter) <= 1e-5
    momentum = optimizer.state[parameter]["momentum_buffer"].double()
    product = parameter.detach().double().mT @ momentum
    assert float((product + product.mT).abs().max()) <= 1e-5


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_adam_drift(dtype, tolerance):
    parameter, optimizer = run_random_gradients(RiemannianAdam, dtype, (12, 4), lr=0.05, reorthogonalize_every=0)
    assert orthogonality_error(parameter) <= tolerance
    first_moment = optimizer.state[parameter]["exp_avg"]
    product = parameter.detach().mT @ first_moment
    assert float((product + product.mT).abs().max()) <= 10 * tolerance


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_keeps_float32_point(dtype):
    parameter, optimizer = run_random_gradients(RiemannianSGD, dtype, (12, 4), steps=2000, lr=0.01)
    state = optimizer.state[parameter]
    assert state["point_float32"].dtype == torch.float32
    assert state["momentum_buffer"].dtype == torch.float32
    assert orthogonality_error(state["point_float32"]) <= 1e-5
    # The parameter is the rounding of the float32 point (8 significant bits in bfloat16, 11 in float16).
    assert torch.equal(state["point_float32"].to(dtype), parameter.detach())
    assert orthogonality_error(parameter) <= 0.05


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 24),
    columns_fraction=st.floats(0.05, 1.0),
    scale=st.floats(1e-3, 3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_cayley_forms_agree(rows, columns_fraction, scale, seed):
    columns = max(1, int(rows * columns_fraction))
    generator = torch.Generator().manual_seed(seed)
    point = stiefel_project(torch.randn(rows, columns, generator=generator, dtype=torch.float64))
    tangent = scale * stiefel_project_tangent(point, torch.randn(rows, columns, generator=generator, dtype=torch.float64))
    vector = stiefel_project_tangent(point, torch.randn(rows, columns, generator=generator, dtype=torch.float64))

    dense_point, dense_vector = cayley_retraction_transport(point, tangent, vector, "dense")
    woodbury_point, woodbury_vector = cayley_retraction_transport(point, tangent, vector, "woodbury")

    torch.testing.assert_close(dense_point, woodbury_point, atol=1e-10, rtol=0)
    torch.testing.assert_close(dense_vector, woodbury_vector, atol=1e-10, rtol=0)
    assert orthogonality_error(dense_point) <= 1e-12
    product = dense_point.mT @ dense_vector
    assert float((product + product.mT).abs().max()) <= 1e-11


# DistributedDataParallel: two CPU processes with the gloo backend on 127.0.0.1.


def make_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(StiefelLinear(6, 9), nn.Tanh(), nn.Linear(9, 2)).double()


def batch_for(rank, step):
    generator = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(5, 6, generator=generator, dtype=torch.float64)


def distributed_worker(rank, world_size, port, output_dir, steps):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        # Different seeds per rank: DistributedDataParallel broadcasts rank 0's weights at construction.
        model = nn.parallel.DistributedDataParallel(make_model(seed=rank))
        optimizer = RiemannianSGD(model.parameters(), lr=0.05, reorthogonalize_every=3)
        for step in range(steps):
            optimizer.zero_grad()
            model(batch_for(rank, step)).pow(2).mean().backward()
            optimizer.step()
        torch.save([parameter.detach() for parameter in model.module.parameters()], os.path.join(output_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_distributed_data_parallel_identical_steps():
    world_size, steps = 2, 5
    with tempfile.TemporaryDirectory() as output_dir:
        mp.spawn(distributed_worker, args=(world_size, free_port(), output_dir, steps), nprocs=world_size, join=True)
        ranks = [torch.load(os.path.join(output_dir, f"rank{rank}.pt")) for rank in range(world_size)]

    for first, second in zip(*ranks):
        assert torch.equal(first, second)

    # Oracle: one process stepping on the mean of the ranks' losses, which DDP's gradient average equals.
    model = make_model(seed=0)
    optimizer = RiemannianSGD(model.parameters(), lr=0.05, reorthogonalize_every=3)
    for step in range(steps):
        optimizer.zero_grad()
        losses = [model(batch_for(rank, step)).pow(2).mean() for rank in range(world_size)]
        (sum(losses) / world_size).backward()
        optimizer.step()
    for distributed, single in zip(ranks[0], model.parameters()):
        torch.testing.assert_close(distributed, single.detach(), atol=1e-12, rtol=0)
    assert orthogonality_error(ranks[0][0]) <= 1e-12


def test_shared_momentum_batch_matches_separate():
    # The optimiser updates last step's stacked momentum in place when the states still share it.
    # The oracle is the same run with every buffer copied out after each step.
    torch.manual_seed(0)
    shared = [StiefelParameter(torch.randn(9, 3, dtype=torch.float64)) for _ in range(3)]
    separate = [StiefelParameter(parameter.detach().clone(), projection=None) for parameter in shared]
    shared_optimizer = RiemannianSGD(shared, lr=0.05)
    separate_optimizer = RiemannianSGD(separate, lr=0.05)
    for _ in range(6):
        gradients = [torch.randn(9, 3, dtype=torch.float64) for _ in shared]
        for parameter, gradient in zip(shared + separate, gradients + gradients):
            parameter.grad = gradient.clone()
        shared_optimizer.step()
        separate_optimizer.step()
        for parameter in separate:
            state = separate_optimizer.state[parameter]
            state["momentum_buffer"] = state["momentum_buffer"].clone()
    for first, second in zip(shared, separate):
        assert torch.equal(first.detach(), second.detach())
