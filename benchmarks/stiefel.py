"""Benchmark rc_nbkit's RiemannianSGD against geoopt's RiemannianSGD on the Stiefel manifold.

Both optimisers use momentum 0.9 and the Cayley retraction (geoopt's default canonical Stiefel
manifold). The script measures, side by side in one run:

- the time of one optimiser step for a batch of St(1280, 1024) and of St(1280, 256) matrices
  (32 of each by default, float32), as the ratio ours / geoopt;
- the orthogonality error max ||WᵀW - I||_F after 10,000 float32 steps with Gaussian gradients.

On a CPU the run uses one torch thread unless `--threads` sets another count, because on a shared
2-core machine two LAPACK threads mostly wait for each other (there the St(1280, 256) ratio rose from
0.32 with one thread to 0.38 with two).

`--quick` (under a minute on 2 CPU cores) times 2 matrices of each shape and measures the drift on
St(64, 51) and St(64, 13), the same column ratios at a twentieth of the rows. The full run times
32 matrices and measures the drift on the full shapes, which needs a GPU to finish in minutes.
The last line printed is one JSON object with the figures and their targets.

Usage: python benchmarks/stiefel.py [--quick] [--device cpu|cuda] [--matrices N] [--repeats N] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import geoopt
import torch

from rc_nbkit.stiefel import RiemannianSGD, StiefelParameter, cayley_method_for_shape, orthogonality_error

TIMING_SHAPES = [(1280, 1024), (1280, 256)]
TARGET_RATIOS = {(1280, 1024): 1.0, (1280, 256): 0.33}
TARGET_DRIFT = 1e-5
LEARNING_RATE = 1e-3


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_parameters(kind: str, shape: tuple[int, int], count: int, device: torch.device, seed: int) -> list[torch.Tensor]:
    "Return `count` float32 points of St(*shape), as ours or geoopt's parameters, with fixed Gaussian gradients."
    generator = torch.Generator().manual_seed(seed)
    parameters = []
    for _ in range(count):
        start = torch.linalg.qr(torch.randn(*shape, generator=generator, dtype=torch.float64))[0].float().to(device)
        if kind == "ours":
            parameter = StiefelParameter(start, projection=None)
        else:
            parameter = geoopt.ManifoldParameter(start, manifold=geoopt.Stiefel())
        parameter.grad = torch.randn(*shape, generator=generator).to(device)
        parameters.append(parameter)
    return parameters


def make_optimizer(kind: str, parameters: list[torch.Tensor]):
    if kind == "ours":
        return RiemannianSGD(parameters, lr=LEARNING_RATE, momentum=0.9)
    return geoopt.optim.RiemannianSGD(parameters, lr=LEARNING_RATE, momentum=0.9)


def time_steps(shape, count, repeats, device) -> dict[str, float]:
    "Median seconds per step for each optimiser; the two are timed alternately so load changes hit both."
    setups = {}
    for kind in ("ours", "geoopt"):
        parameters = make_parameters(kind, shape, count, device, seed=0)
        optimizer = make_optimizer(kind, parameters)
        optimizer.step()  # warm-up: allocates the momentum buffers
        setups[kind] = (parameters, optimizer)

    times = {"ours": [], "geoopt": []}
    for _ in range(repeats):
        for kind, (_, optimizer) in setups.items():
            synchronize(device)
            start = time.perf_counter()
            optimizer.step()
            synchronize(device)
            times[kind].append(time.perf_counter() - start)
    return {kind: statistics.median(values) for kind, values in times.items()}


def measure_drift(kind: str, shape: tuple[int, int], steps: int, device: torch.device) -> float:
    "Orthogonality error after `steps` float32 steps with fresh Gaussian gradients and momentum 0.9."
    (parameter,) = make_parameters(kind, shape, 1, device, seed=1)
    optimizer = make_optimizer(kind, [parameter])
    generator = torch.Generator(device=device).manual_seed(2)
    for _ in range(steps):
        parameter.grad = torch.randn(*shape, generator=generator, device=device)
        optimizer.step()
    return orthogonality_error(parameter.detach())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 matrices per shape and scaled drift shapes (under a minute on 2 CPU cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device to run on")
    parser.add_argument("--matrices", type=int, default=None, help="matrices per shape in the timing (default 32, quick 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per optimiser (default 10, quick 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, so that the ratio measures the algorithms, not thread scheduling on a shared CPU)")
    parser.add_argument("--drift-steps", type=int, default=10_000, help="float32 steps before the orthogonality error is measured")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    matrices = args.matrices or (2 if args.quick else 32)
    repeats = args.repeats or (3 if args.quick else 10)
    drift_shapes = [(64, 51), (64, 13)] if args.quick else TIMING_SHAPES
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    print(f"device {device}, torch threads {torch.get_num_threads()}, geoopt {geoopt.__version__}, float32, momentum 0.9, lr {LEARNING_RATE}")

    result = {"device": str(device), "matrices": matrices, "repeats": repeats, "drift_steps": args.drift_steps}
    for rows, columns in TIMING_SHAPES:
        seconds = time_steps((rows, columns), matrices, repeats, device)
        ratio = seconds["ours"] / seconds["geoopt"]
        name = f"{rows}x{columns}"
        print(
            f"St({rows}, {columns}) x {matrices}: ours {seconds['ours'] * 1e3:.1f} ms "
            f"({cayley_method_for_shape(rows, columns)} Cayley), geoopt {seconds['geoopt'] * 1e3:.1f} ms, "
            f"ratio {ratio:.3f} (target <= {TARGET_RATIOS[(rows, columns)]})"
        )
        result[f"step_ms_ours_{name}"] = round(seconds["ours"] * 1e3, 3)
        result[f"step_ms_geoopt_{name}"] = round(seconds["geoopt"] * 1e3, 3)
        result[f"step_time_ratio_{name}"] = round(ratio, 4)
        result[f"target_step_time_ratio_{name}"] = TARGET_RATIOS[(rows, columns)]

    for rows, columns in drift_shapes:
        name = f"{rows}x{columns}"
        for kind in ("ours", "geoopt"):
            drift = measure_drift(kind, (rows, columns), args.drift_steps, device)
            settings = "defaults" if kind == "ours" else "stabilize=None, its default"
            print(f"St({rows}, {columns}) {kind} ({settings}): ||WᵀW - I||_F = {drift:.2e} after {args.drift_steps} float32 steps")
            result[f"drift_{kind}_{name}"] = drift
    result["target_drift"] = TARGET_DRIFT
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
