"""Training-step cost of the encoder-side losses and of the teacher cache, on the offline demo pair.

Measured side by side in one run, on Whisper base (teacher) -> tiny.en (student) with the demo preset's
LoRA and projections and utterances of the offline demo corpus:

1. median optimiser-step time with all five loss terms against CE + KL only (target: at most 3 % more);
2. with the teacher cache on, median step time in the second epoch against the first (target: at most 0.6x).

The batch size defaults to the demo preset's (4 utterances), the batch the main job trains with. Part
of the extra cost is fixed per step (the Riemannian step on the four 512 x 384 projections, about
60 CPU ms on a 2-core x86_64 virtual machine) and part grows with the batch (the bases of 8 layers per utterance), so smaller
batches show a larger overhead: `--batch-size 2` prints that figure.

The two configurations of (1) alternate step by step on the same batches, so that load from other
processes affects both alike. On the CPU the headline figures are process CPU seconds per step, summed
over threads, because wall time on a shared machine mostly measures the other processes. The wall-time overhead
and the median of the per-pair differences are printed too. On CUDA every figure is wall seconds after
synchronisation. The last line printed is one JSON object with the figures and targets.

Usage: python benchmarks/train_step.py [--quick] [--steps N] [--batch-size B]
"""
import argparse
import json
import logging
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


def timed_step(trainer):
    "Return the cost of one step: CPU seconds on the CPU, synchronised wall seconds on CUDA (wall time kept in WALL_TIMES)."
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    cpu_started = time.process_time()
    started = time.perf_counter()
    trainer.step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    WALL_TIMES.append(wall)
    return wall if torch.cuda.is_available() else time.process_time() - cpu_started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    demo_batch_size = preset("demo").data.batch_size
    parser.add_argument("--quick", action="store_true", help="2 measured steps of batch 1 per configuration, a smoke run of about 20 s on 2 cores; its figures are not comparable with the targets")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per configuration (default 12, quick 2)")
    parser.add_argument("--batch-size", type=int, default=None, help=f"utterances per step (default: the demo preset's {demo_batch_size}; quick 1)")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    steps = arguments.steps or (2 if arguments.quick else 12)
    batch_size = arguments.batch_size or (1 if arguments.quick else demo_batch_size)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as folder:
        # (1) All five terms against CE + KL, alternating, after one warm-up step each.
        items = batch_size * (steps + 1)
        full = make_trainer(f"{folder}/full", ALL_TERMS, steps + 1, batch_size, items)
        light = make_trainer(f"{folder}/light", CE_KL, steps + 1, batch_size, items)
        timed_step(full)
        timed_step(light)
        full_times, light_times = [], []
        first_measured = len(WALL_TIMES)
        for _ in range(steps):
            full_times.append(timed_step(full))
            light_times.append(timed_step(light))
        full_walls = WALL_TIMES[first_measured::2]
        light_walls = WALL_TIMES[first_measured + 1 :: 2]
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
    wall_overhead = statistics.median(full_walls) / statistics.median(light_walls) - 1.0
    # The first step of the first epoch includes one-time work (allocations), so both epochs drop their first step.
    first_epoch = statistics.median(epoch_times[0][1:])
    second_epoch = statistics.median(epoch_times[1][1:])
    unit = "wall s" if torch.cuda.is_available() else "CPU s"
    if unit == "CPU s":
        print("CPU s = process CPU time summed over threads; with two busy threads it is about twice the wall time")
    overhead = full_median / light_median - 1.0
    cache_ratio = second_epoch / first_epoch
    print(f"step cost, all five terms: median {full_median:.3f} {unit} over {steps} steps (batch {batch_size})")
    print(f"step cost, CE + KL only:   median {light_median:.3f} {unit} over {steps} steps (batch {batch_size})")
    print(f"overhead: {overhead:+.1%}; median paired difference {paired_difference * 1000:.0f} ms "
          f"({paired_difference / light_median:+.1%}); wall-time overhead {wall_overhead:+.1%}")
    print(f"paired differences (all terms - CE + KL), in ms: {[round(value * 1000) for value in differences]}")
    print(f"teacher cache: first epoch median {first_epoch:.3f} {unit}, second epoch median {second_epoch:.3f} {unit}")
    print(f"wall seconds of every step in order, warm-up steps and first steps of an epoch included: {[round(value, 2) for value in WALL_TIMES]}")
    batch_note = "" if batch_size == preset("demo").data.batch_size else f" (the target is set for the demo batch of {preset('demo').data.batch_size}, this run used {batch_size})"
    print(f"target overhead <= 3 %: {'met' if overhead <= 0.03 else 'not met'}{batch_note}")
    print(f"target cache ratio <= 0.6: {'met' if cache_ratio <= 0.6 else 'not met'} ({cache_ratio:.2f})")
    result = {
        "unit": unit,
        "all_terms_step_s": round(full_median, 4),
        "ce_kl_step_s": round(light_median, 4),
        "overhead": round(overhead, 4),
        "target_overhead": 0.03,
        "paired_overhead": round(paired_difference / light_median, 4),
        "wall_overhead": round(wall_overhead, 4),
        "cache_first_epoch_step_s": round(first_epoch, 4),
        "cache_second_epoch_step_s": round(second_epoch, 4),
        "cache_ratio": round(cache_ratio, 4),
        "target_cache_ratio": 0.6,
        "batch_size": batch_size,
        "steps": steps,
        "device": str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
