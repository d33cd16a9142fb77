"""Training-step cost of the encoder-side losses and of the teacher cache, on the offline demo pair.

Measured side by side in one run, on Whisper base (teacher) -> tiny.en (student) with the demo preset's
LoRA and projections and utterances of the offline demo corpus:

1. optimiser-step time with all five loss terms against CE + KL only (target: at most 3 % more);
2. with the teacher cache on, median step time in the second epoch against the first (target: at most 0.6x).

The batch size defaults to the demo preset's (4 utterances), the batch the main job trains with. Part
of the extra cost is fixed per step: the Riemannian step on the four 512 x 384 projections takes about
60 CPU ms on a 2-core x86_64 virtual machine. The rest grows with the batch (the bases of 8 layers per
utterance), so smaller batches show a larger overhead: `--batch-size 2` prints that figure.

The two configurations of (1) alternate step by step on the same batches, in the order full-light, then
light-full, so that load from other processes and leftovers of the previous step affect both alike.
The headline overhead is therefore the median of the paired differences (full minus light) divided by
the median CE + KL step, printed with a distribution-free 95 % interval for that median (order
statistics of the differences, from the binomial distribution). Single steps vary by about ±150 CPU ms
on a shared 2-core machine, so the ratio of the two medians, which ignores the pairing, is printed as
well but varies by a point or more from run to run. On
the CPU the headline figures are process CPU seconds per step, summed over threads, because wall time
on a shared machine mostly measures the other processes. The wall-time overhead and the median of the
per-pair differences are printed too. On CUDA every figure is wall seconds after synchronisation.
Unless `--system-malloc` is given, glibc is asked to keep freed memory (see `keep_freed_memory`), so that
page faults, whose number depends on each process's allocation history, do not decide the result. The
last line printed is one JSON object with the figures and targets.

Usage: python benchmarks/train_step.py [--quick] [--steps N] [--batch-size B] [--system-malloc]
"""
import argparse
import ctypes
import json
import logging
import math
import resource
import statistics
import tempfile
import time

import torch

from rc_nbkit.config import apply_overrides, preset
from rc_nbkit.trainer import Trainer, build_pair, build_training_data

ALL_TERMS = [{"start": 0.0, "end": 1.0, "weights": {"ce": 1.0, "kl": 0.5, "geo": 0.15, "traj": 0.3, "cont": 0.3}}]
CE_KL = [{"start": 0.0, "end": 1.0, "weights": {"ce": 1.0, "kl": 0.5}}]


def make_trainer(folder, curriculum, steps, batch_size, items, teacher_cache=False):
    config = apply_overrides(
        preset("demo"),
        [
            f"train.total_steps={steps}",
            f"data.batch_size={batch_size}",
            f"data.max_train_items={items}",
            f"train.teacher_cache={str(teacher_cache).lower()}",
            "train.checkpoint_every=0",
            "train.progress_bar=false",
            "optim.warmup_steps=0",
        ],
    )
    config.output_dir = folder
    config.curriculum = curriculum
    pair = build_pair(config)
    dataset, collate = build_training_data(config, pair)
    return Trainer(config, pair=pair, train_dataset=dataset, collate_fn=collate)


WALL_TIMES = []
PAGE_FAULTS = []


def timed_step(trainer):
    "Return the cost of one step: CPU seconds on the CPU, synchronised wall seconds on CUDA (wall time kept in WALL_TIMES)."
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cpu_started = time.process_time()
    started = time.perf_counter()
    trainer.step()
    PAGE_FAULTS.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    WALL_TIMES.append(wall)
    return wall if torch.cuda.is_available() else time.process_time() - cpu_started


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory instead of handing it back to the kernel.

    By default glibc serves large blocks with mmap and trims the heap, so every training step faults its
    activation memory in again (about 80,000 minor page faults per teacher forward at batch 4 on the demo
    pair, on a 2-core x86_64 virtual machine). How many faults a step takes depends on the allocator's
    history in that process, which made whole runs differ by several points of overhead. Returns False
    where glibc is not the allocator."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
    return all(mallopt(option, value) == 1 for option, value in ((m_mmap_max, 0), (m_trim_threshold, 2**31 - 1), (m_arena_max, 1)))


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Return a distribution-free interval for the median of `values`, from their order statistics.

    The number of values below the true median is Binomial(n, 1/2), so the interval from the (j+1)-th
    smallest to the (j+1)-th largest value covers it with probability 1 - 2 P(B <= j). The largest j
    that keeps the coverage at `confidence` is used; with too few values the interval is the whole range."""
    ordered = sorted(values)
    count = len(ordered)
    below, cumulative = 0, 0.0
    for j in range(count // 2):
        cumulative += math.comb(count, j) / 2.0**count
        if 1.0 - 2.0 * cumulative < confidence:
            break
        below = j
    return ordered[below], ordered[count - 1 - below]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    demo_batch_size = preset("demo").data.batch_size
    parser.add_argument("--quick", action="store_true", help="2 measured steps of batch 1 per configuration, a smoke run of about 20 s on 2 cores; its figures are not comparable with the targets")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per configuration (default 32, quick 2)")
    parser.add_argument("--batch-size", type=int, default=None, help=f"utterances per step (default: the demo preset's {demo_batch_size}; quick 1)")
    parser.add_argument("--system-malloc", action="store_true", help="leave glibc's malloc settings alone (see keep_freed_memory)")
    arguments = parser.parse_args()
    allocator = "glibc default"
    if not arguments.system_malloc:
        allocator = "glibc, freed memory kept" if keep_freed_memory() else "default (glibc settings not available)"
    print(f"allocator: {allocator}")
    logging.basicConfig(level=logging.WARNING)
    steps = arguments.steps or (2 if arguments.quick else 32)
    batch_size = arguments.batch_size or (1 if arguments.quick else demo_batch_size)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as folder:
        # (1) All five terms against CE + KL, alternating, after one warm-up step each. The order inside a
        # pair alternates too (full-light, then light-full), so that whatever the first step of a pair
        # leaves behind (caches, freed memory) favours neither configuration.
        items = batch_size * (steps + 1)
        full = make_trainer(f"{folder}/full", ALL_TERMS, steps + 1, batch_size, items)
        light = make_trainer(f"{folder}/light", CE_KL, steps + 1, batch_size, items)
        timed_step(full)
        timed_step(light)
        full_times, light_times, full_walls, light_walls, full_faults, light_faults = [], [], [], [], [], []
        for pair in range(steps):
            order = [(full, full_times, full_walls, full_faults), (light, light_times, light_walls, light_faults)]
            for trainer, times, walls, faults in order if pair % 2 == 0 else reversed(order):
                times.append(timed_step(trainer))
                walls.append(WALL_TIMES[-1])
                faults.append(PAGE_FAULTS[-1])
        full.close()
        light.close()
        del full, light

        # (2) Teacher cache: two epochs over the same utterances.
        batches_per_epoch = max(2, steps)
        cached = make_trainer(f"{folder}/cached", ALL_TERMS, 2 * batches_per_epoch, batch_size, batch_size * batches_per_epoch, teacher_cache=True)
        epoch_times = [[], []]
        for step in range(2 * batches_per_epoch):
            epoch_times[step // batches_per_epoch].append(timed_step(cached))
        cached.close()

    full_median = statistics.median(full_times)
    light_median = statistics.median(light_times)
    differences = [full - light for full, light in zip(full_times, light_times)]
    paired_difference = statistics.median(differences)
    low, high = median_interval(differences)
    wall_differences = [full - light for full, light in zip(full_walls, light_walls)]
    wall_overhead = statistics.median(wall_differences) / statistics.median(light_walls)
    # The first step of the first epoch includes one-time work (allocations), so both epochs drop their first step.
    first_epoch = statistics.median(epoch_times[0][1:])
    second_epoch = statistics.median(epoch_times[1][1:])
    unit = "wall s" if torch.cuda.is_available() else "CPU s"
    if unit == "CPU s":
        print("CPU s = process CPU time summed over threads; with two busy threads it is about twice the wall time")
    overhead = paired_difference / light_median
    interval = (low / light_median, high / light_median)
    ratio_of_medians = full_median / light_median - 1.0
    cache_ratio = second_epoch / first_epoch
    print(f"step cost, all five terms: median {full_median:.3f} {unit} over {steps} steps (batch {batch_size})")
    print(f"step cost, CE + KL only:   median {light_median:.3f} {unit} over {steps} steps (batch {batch_size})")
    print(f"overhead (median paired difference / CE + KL median): {paired_difference * 1000:.0f} ms, {overhead:+.1%}; "
          f"95 % interval {low * 1000:.0f} to {high * 1000:.0f} ms ({interval[0]:+.1%} to {interval[1]:+.1%})")
    print(f"ratio of the two medians: {ratio_of_medians:+.1%}; wall-time overhead (paired): {wall_overhead:+.1%}")
    print(f"minor page faults per step, median: all terms {statistics.median(full_faults):.0f}, CE + KL {statistics.median(light_faults):.0f}")
    print(f"paired differences (all terms - CE + KL), in ms: {[round(value * 1000) for value in differences]}")
    print(f"teacher cache: first epoch median {first_epoch:.3f} {unit}, second epoch median {second_epoch:.3f} {unit}")
    print(f"wall seconds of every step in order, warm-up steps and first steps of an epoch included: {[round(value, 2) for value in WALL_TIMES]}")
    batch_note = "" if batch_size == demo_batch_size else f" (the target is set for the demo batch of {demo_batch_size}, this run used {batch_size})"
    if interval[1] <= 0.03:
        certainty = "the whole 95 % interval is below the target"
    elif interval[0] > 0.03:
        certainty = "the whole 95 % interval is above the target"
    else:
        certainty = "the 95 % interval includes the target; run more --steps to decide"
    print(f"target overhead <= 3 %: {'met' if overhead <= 0.03 else 'not met'} ({overhead:+.1%}; {certainty}){batch_note}")
    print(f"target cache ratio <= 0.6: {'met' if cache_ratio <= 0.6 else 'not met'} ({cache_ratio:.2f})")
    result = {
        "unit": unit,
        "all_terms_step_s": round(full_median, 4),
        "ce_kl_step_s": round(light_median, 4),
        "overhead": round(overhead, 4),
        "overhead_interval_95": [round(interval[0], 4), round(interval[1], 4)],
        "target_overhead": 0.03,
        "ratio_of_medians_overhead": round(ratio_of_medians, 4),
        "wall_overhead": round(wall_overhead, 4),
        "cache_first_epoch_step_s": round(first_epoch, 4),
        "cache_second_epoch_step_s": round(second_epoch, 4),
        "cache_ratio": round(cache_ratio, 4),
        "target_cache_ratio": 0.6,
        "batch_size": batch_size,
        "steps": steps,
        "device": str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "threads": torch.get_num_threads(),
        "allocator": allocator,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
