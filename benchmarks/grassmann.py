"""Benchmark GEO + TRAJ: the k × k overlap form of rc_nbkit against the naive d × d projector form.

Both forms compute the same losses from the same orthonormal bases:
GEO = projection distance of the final layer pair, TRAJ = mean over the layer pairs, each
‖UUᵀ − VVᵀ‖²_F / (k1 + k2) averaged over the batch. The naive form builds the (d, d) projectors per
utterance and pair; rc_nbkit uses k1 + k2 − 2‖UᵀV‖²_F. The script also times the extraction of the
bases from (frames, d) encoder states (exact SVD against the randomised range finder), which both
forms share, and reports how far the randomised subspace is from the exact one.

Usage:
    python benchmarks/grassmann.py            # batch 16, 1,500 frames, d = 1280, k = 64, 32 pairs
    python benchmarks/grassmann.py --quick    # smaller batch and fewer pairs, under a minute on 2 cores
    python benchmarks/grassmann.py --device cuda

Peak memory on CUDA is torch.cuda.max_memory_allocated. On CPU it is the increase of the resident
set size, sampled every millisecond by a background thread while the timed call runs. Large tensors
are allocated with mmap and returned on free, so the samples track them closely, but small ones may
be missed.
The last line printed is one JSON object with the figures and targets.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time

import torch

from rc_nbkit.losses import geo_loss, traj_loss
from rc_nbkit.subspace import orthonormal_basis, principal_angles, projection_distance

TARGET_SPEEDUP = 20.0
TARGET_MAX_ABS_DIFF = 1e-6


def resident_bytes() -> int:
    "Resident set size of this process in bytes (Linux)."
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(function, device: torch.device, repeats: int, warm_up: bool = True) -> tuple[float, float, object]:
    """Run `function` once to warm up (unless `warm_up` is False), then `repeats` times.

    Return the fastest time in seconds, the peak extra memory in MiB and the last result. The fastest
    time is reported because other processes on a shared machine only ever add to it."""
    if warm_up:
        function()
    times = []
    peak_mib = 0.0
    result = None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
            start = time.perf_counter()
            result = function()
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
            peak_mib = max(peak_mib, (torch.cuda.max_memory_allocated(device) - baseline) / 2**20)
            continue

        baseline = resident_bytes()
        peak = [baseline]
        running = threading.Event()
        running.set()

        def sample():
            while running.is_set():
                peak[0] = max(peak[0], resident_bytes())
                time.sleep(0.001)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
        running.clear()
        sampler.join()
        peak_mib = max(peak_mib, (peak[0] - baseline) / 2**20)
    return min(times), peak_mib, result


def random_bases(pairs: int, batch: int, d_model: int, k: int, dtype, device, generator) -> list[torch.Tensor]:
    "One batch of random orthonormal bases (batch, d_model, k) per layer pair."
    bases = []
    for _ in range(pairs):
        gaussian = torch.randn(batch, d_model, k, generator=generator, dtype=dtype, device="cpu").to(device)
        bases.append(torch.linalg.qr(gaussian).Q)
    return bases


def overlap_form(student_bases, teacher_bases):
    "GEO + TRAJ with rc_nbkit (k × k overlaps, all pairs in one batched product)."
    traj, _ = traj_loss(student_bases, teacher_bases)
    geo = geo_loss(student_bases[-1], teacher_bases[-1])
    return geo + traj


def projector_form(student_bases, teacher_bases):
    "GEO + TRAJ with explicit (d, d) projectors, one pair at a time."
    per_pair = []
    for student, teacher in zip(student_bases, teacher_bases):
        difference = student @ student.mT - teacher @ teacher.mT
        distance = difference.square().sum(dim=(-2, -1)) / (student.shape[-1] + teacher.shape[-1])
        per_pair.append(distance.mean())
    return per_pair[-1] + torch.stack(per_pair).mean()


def decaying_states(batch: int, frames: int, d_model: int, device, generator) -> torch.Tensor:
    "Synthetic encoder states with a power-law spectrum, as real encoder states have, (batch, frames, d_model)."
    scale = torch.arange(1, d_model + 1, dtype=torch.float32) ** -0.8
    rotation = torch.linalg.qr(torch.randn(d_model, d_model, generator=generator)).Q
    states = torch.randn(batch, frames, d_model, generator=generator) * scale
    return (states @ rotation.T).to(device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 4, 8 layer pairs and 500 extraction frames (under a minute on 2 cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: cuda when available)")
    parser.add_argument("--batch", type=int, default=None, help="utterances per batch (default 16, quick 4)")
    parser.add_argument("--pairs", type=int, default=None, help="layer pairs (default 32, quick 8)")
    parser.add_argument("--d-model", type=int, default=1280, help="hidden size of the compared space")
    parser.add_argument("--k", type=int, default=64, help="subspace rank")
    parser.add_argument("--frames", type=int, default=1500, help="encoder frames per utterance for the basis extraction (--quick uses at most 500)")
    parser.add_argument("--repeats", type=int, default=None, help="timed float32 repeats after one warm-up call; the fastest is reported (default 3, float64 runs once)")
    arguments = parser.parse_args(argv)

    device = torch.device(arguments.device)
    batch = arguments.batch or (4 if arguments.quick else 16)
    pairs = arguments.pairs or (8 if arguments.quick else 32)
    repeats = arguments.repeats or 3
    d_model, k = arguments.d_model, arguments.k
    generator = torch.Generator().manual_seed(0)
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {batch}, pairs {pairs}, d_model {d_model}, k {k}")

    # Distances from bases: the part where the two forms differ. Timed in float32, compared in float64.
    figures = {}
    for dtype in (torch.float32, torch.float64):
        # float64 serves the equality check, so one untimed-warm-up run of the slow projector form is enough.
        dtype_repeats = repeats if dtype == torch.float32 else 1
        student_bases = random_bases(pairs, batch, d_model, k, dtype, device, generator)
        teacher_bases = random_bases(pairs, batch, d_model, k, dtype, device, generator)
        overlap_seconds, overlap_mib, overlap_value = measure(lambda: overlap_form(student_bases, teacher_bases), device, dtype_repeats)
        projector_seconds, projector_mib, projector_value = measure(
            lambda: projector_form(student_bases, teacher_bases), device, dtype_repeats, warm_up=dtype == torch.float32 and not arguments.quick
        )
        name = "float32" if dtype == torch.float32 else "float64"
        pair_differences = [
            (projection_distance(student, teacher) - (student @ student.mT - teacher @ teacher.mT).square().sum(dim=(-2, -1))).abs().max()
            for student, teacher in zip(student_bases, teacher_bases)
        ]
        figures[name] = {
            "overlap_s": overlap_seconds,
            "projector_s": projector_seconds,
            "overlap_peak_mib": overlap_mib,
            "projector_peak_mib": projector_mib,
            "speedup": projector_seconds / overlap_seconds,
            "abs_diff": abs(float(overlap_value) - float(projector_value)),
            "max_pair_abs_diff": float(torch.stack(pair_differences).max()),
            "value": float(overlap_value),
        }
        print(
            f"GEO+TRAJ {name}: overlap form {overlap_seconds * 1e3:.1f} ms, peak {overlap_mib:.0f} MiB; "
            f"projector form {projector_seconds * 1e3:.1f} ms, peak {projector_mib:.0f} MiB; "
            f"speedup {projector_seconds / overlap_seconds:.1f}x; |difference| of the loss {figures[name]['abs_diff']:.2e}, "
            f"largest |difference| of one utterance's raw distance {figures[name]['max_pair_abs_diff']:.2e}"
        )
        del student_bases, teacher_bases

    # Basis extraction, shared by both forms: exact SVD against the randomised range finder.
    # The exact SVD dominates the quick run's time on a CPU, so --quick extracts from 500 frames.
    extraction_batch = 1 if arguments.quick else 2
    extraction_frames = min(arguments.frames, 500) if arguments.quick else arguments.frames
    states = decaying_states(extraction_batch, extraction_frames, d_model, device, generator)
    exact_seconds, _, exact = measure(lambda: orthonormal_basis(states, None, k, method="exact"), device, 1, warm_up=False)
    randomized_seconds, _, randomized = measure(lambda: orthonormal_basis(states, None, k, method="randomized"), device, repeats)
    centred = states - states.mean(dim=1, keepdim=True)
    captured = (centred @ randomized).square().sum() / (centred @ exact).square().sum()
    mean_angle_deg = float(principal_angles(exact.double(), randomized.double()).mean().rad2deg())
    print(
        f"basis extraction per utterance and layer ({extraction_frames} frames): exact {exact_seconds / extraction_batch * 1e3:.0f} ms, "
        f"randomised {randomized_seconds / extraction_batch * 1e3:.0f} ms; the randomised basis captures "
        f"{float(captured):.4f} of the exact basis's variance (mean principal angle {mean_angle_deg:.1f} degrees, "
        "on a power-law spectrum with a small gap at k)"
    )

    summary = {
        "speedup": round(figures["float32"]["speedup"], 2),
        "target_speedup": TARGET_SPEEDUP,
        "speedup_float64": round(figures["float64"]["speedup"], 2),
        "max_abs_diff": max(figures["float64"]["abs_diff"], figures["float64"]["max_pair_abs_diff"]),
        "target_max_abs_diff": TARGET_MAX_ABS_DIFF,
        "overlap_ms": round(figures["float32"]["overlap_s"] * 1e3, 2),
        "projector_ms": round(figures["float32"]["projector_s"] * 1e3, 2),
        "overlap_peak_mib": round(figures["float32"]["overlap_peak_mib"], 1),
        "projector_peak_mib": round(figures["float32"]["projector_peak_mib"], 1),
        "basis_exact_ms": round(exact_seconds / extraction_batch * 1e3, 1),
        "basis_randomized_ms": round(randomized_seconds / extraction_batch * 1e3, 1),
        "randomized_captured_variance": round(float(captured), 5),
        "randomized_mean_angle_deg": round(mean_angle_deg, 2),
        "extraction_frames": extraction_frames,
        "batch": batch,
        "pairs": pairs,
        "d_model": d_model,
        "k": k,
        "device": str(device),
        "quick": arguments.quick,
        "meets_target": figures["float32"]["speedup"] >= TARGET_SPEEDUP
        and max(figures["float64"]["abs_diff"], figures["float64"]["max_pair_abs_diff"]) <= TARGET_MAX_ABS_DIFF,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
