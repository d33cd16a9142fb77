"""Inference speed: untouched student vs distilled student with LoRA merged, transformers vs faster-whisper.

Run: python benchmarks/inference.py [--quick] [--device cpu|cuda] [--dtype float32|float16|bfloat16]

All RTFx figures (audio seconds / wall seconds for features + generate + decoding, after warm-up,
CUDA synchronised) are measured in this one run on the same real clips with Whisper tiny.en from the
offline wheels. The models are timed clip by clip in alternation and each keeps its fastest run per
clip, so load from other processes affects all rows alike. A merged LoRA adds no parameters
and no modules, so the target is RTFx(distilled, merged) / RTFx(untouched) >= 0.99.
The last printed line is one JSON object with the figures and targets.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time

import torch

from rc_nbkit.convert import assemble_ctranslate2_dir, load_whisper
from rc_nbkit.evaluate import (
    FasterWhisperTranscriber,
    WhisperTranscriber,
    hardware_description,
    load_eval_items,
    measure_rtfx,
    real_clips_dir,
)
from rc_nbkit.metrics import error_rates, normalize_text
from rc_nbkit.models import LoraSettings, attach_lora, merge_lora

TARGET_RATIO = 0.99
STUDENT = "whisper-tiny.en"


def distilled_student(device: str, dtype: torch.dtype):
    "Return tiny.en with reference-sized LoRA adapters (rank 64, decoder q/v) set to non-zero values, then merged."
    model, _ = load_whisper(STUDENT, dtype=torch.float32)
    peft_model = attach_lora(model, LoraSettings())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(1e-4 * torch.randn(parameter.shape, generator=generator))
    return merge_lora(peft_model).to(device=device, dtype=dtype).eval()


def interleaved_best_times(transcribers: dict, audios: list, repeats: int) -> dict:
    """Time every transcriber on every clip `repeats` times, alternating between transcribers clip by clip.

    Each transcriber keeps its fastest time per clip, and its RTFx is total audio seconds over the sum of
    those times. Alternating at clip level spreads bursts of load from other processes over all rows.
    """
    for transcriber in transcribers.values():
        measure_rtfx(transcriber, audios[:1], warmup=1)

    fastest = {name: [math.inf] * len(audios) for name in transcribers}
    texts = {name: [""] * len(audios) for name in transcribers}
    memory = {name: 0.0 for name in transcribers}
    settings = {}
    for index, audio in enumerate(audios):
        for repeat in range(repeats):
            # Reverse the order on every other repeat so no model always runs right after another.
            order = list(transcribers.items())
            if repeat % 2 == 1:
                order.reverse()
            for name, transcriber in order:
                measured = measure_rtfx(transcriber, [audio], warmup=0)
                fastest[name][index] = min(fastest[name][index], measured["wall_seconds"])
                texts[name][index] = measured["texts"][0]
                memory[name] = max(memory[name], measured["peak_memory_mb"])
                settings[name] = measured["settings"]

    audio_seconds = sum(len(audio) for audio in audios) / 16000
    return {
        name: {
            "audio_seconds": audio_seconds,
            "wall_seconds": sum(fastest[name]),
            "rtfx": audio_seconds / sum(fastest[name]),
            "texts": texts[name],
            "peak_memory_mb": memory[name],
            "settings": settings[name],
        }
        for name in transcribers
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 clips, 3 repeats (under a minute on 2 idle cores)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per clip and model (default: 3 quick, 5 full)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="transformers dtype")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    dtype = getattr(torch, arguments.dtype)
    repeats = arguments.repeats or (3 if arguments.quick else 5)

    items = load_eval_items(real_clips_dir())
    if arguments.quick:
        items = [item for item in items if item.id.startswith("sense")][:2]
    audios = [item.waveform for item in items]
    references = [item.text for item in items]
    start = time.perf_counter()

    model, processor = load_whisper(STUDENT, device=arguments.device, dtype=dtype)
    merged = distilled_student(arguments.device, dtype)
    # Merging leaves the architecture unchanged: same parameter count and no LoRA modules.
    same_parameters = sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in model.parameters())
    lora_modules = [name for name, _ in merged.named_modules() if "lora" in name]
    transformers_rows = {
        "untouched": WhisperTranscriber(model, processor, name="student (untouched)"),
        "distilled_merged": WhisperTranscriber(merged, processor, name="student (distilled, LoRA merged)"),
    }
    compute_type = "float32" if arguments.dtype == "float32" else arguments.dtype
    faster = FasterWhisperTranscriber(
        assemble_ctranslate2_dir(STUDENT), device=arguments.device, compute_type=compute_type, name="student (faster-whisper)"
    )
    measured = interleaved_best_times({**transformers_rows, "faster_whisper": faster}, audios, repeats)

    print(f"{len(items)} clips, {measured['untouched']['audio_seconds']:.1f} s of audio, fastest of {repeats} runs per clip, "
          f"{hardware_description(arguments.device)}, transformers dtype {arguments.dtype}, greedy, batch 1")
    print("| model | RTFx | wall s | WER % | peak memory MB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    wers = {}
    for name, result in measured.items():
        wers[name] = error_rates(references, result["texts"]).wer
        print(f"| {result['settings']['model']} | {result['rtfx']:.2f} | {result['wall_seconds']:.2f} "
              f"| {100 * wers[name]:.2f} | {result['peak_memory_mb']:.0f} |")

    ratio = measured["distilled_merged"]["rtfx"] / measured["untouched"]["rtfx"]
    speedup = measured["faster_whisper"]["rtfx"] / measured["untouched"]["rtfx"]
    agreement = error_rates(
        [normalize_text(text) for text in measured["untouched"]["texts"]],
        [normalize_text(text) for text in measured["faster_whisper"]["texts"]],
    ).wer
    summary = {
        "clips": len(items),
        "audio_seconds": round(measured["untouched"]["audio_seconds"], 3),
        "repeats": repeats,
        "device": arguments.device,
        "dtype": arguments.dtype,
        "rtfx_untouched": round(measured["untouched"]["rtfx"], 3),
        "rtfx_distilled_merged": round(measured["distilled_merged"]["rtfx"], 3),
        "merged_over_untouched": round(ratio, 4),
        "target_merged_over_untouched": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "merged_same_parameter_count": same_parameters,
        "merged_lora_modules": len(lora_modules),
        "rtfx_faster_whisper": round(measured["faster_whisper"]["rtfx"], 3),
        "faster_whisper_over_transformers": round(speedup, 3),
        "wer_untouched": round(wers["untouched"], 4),
        "wer_distilled_merged": round(wers["distilled_merged"], 4),
        "wer_faster_whisper": round(wers["faster_whisper"], 4),
        "wer_faster_whisper_vs_transformers": round(agreement, 4),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
