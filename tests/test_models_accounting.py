"""Parameter accounting against counts written out from the architecture and the shipped weights."""
import json

import numpy as np
import pytest

from rc_nbkit.convert import read_ctranslate2_model, resolve_model
from rc_nbkit.models import LoraSettings, parameter_accounting, params_command, reference_config, reference_pair


def whisper_parameters(d, layers, ffn, vocab, mels):
    "Count Whisper parameters from the architecture: q, v and out projections have biases, k has none."
    attention = 4 * d * d + 3 * d
    encoder_layer = attention + 2 * d * ffn + ffn + d + 4 * d
    decoder_layer = 2 * attention + 2 * d * ffn + ffn + d + 6 * d
    encoder = mels * d * 3 + d + d * d * 3 + d + 1500 * d + layers * encoder_layer + 2 * d
    decoder = vocab * d + 448 * d + layers * decoder_layer + 2 * d
    return encoder + decoder


@pytest.mark.parametrize("name", ["whisper-base", "whisper-tiny.en"])
def test_reference_config_matches_weights(name):
    "Counts from the configs written in code equal the number of weights stored in the shipped files."
    ct2 = read_ctranslate2_model(resolve_model(name).model_bin_parts)
    stored = sum(array.size for array in ct2.variables.values() if array.ndim > 0)
    config = reference_config(name)
    assert ct2.variables["decoder/embeddings/weight"].shape == (config.vocab_size, config.d_model)
    # The files store a (zero) key bias in every attention module, which transformers' k_proj lacks.
    key_biases = config.d_model * (config.encoder_layers + 2 * config.decoder_layers)
    report = parameter_accounting(reference_pair(name, name))
    assert report.student_total == stored - key_biases


@pytest.mark.parametrize(
    "teacher, student, sizes_t, sizes_s, rank, lora, projections",
    [
        ("large-v3", "medium", (1280, 32, 5120, 51866, 128), (1024, 24, 4096, 51865, 80), 64, 24 * 4 * 64 * 2048, 24 * 1024 * 1280),
        ("base", "tiny.en", (512, 6, 2048, 51865, 80), (384, 4, 1536, 51864, 80), 64, 4 * 4 * 64 * 768, 4 * 384 * 512),
    ],
)
def test_params_command_figures(capsys, teacher, student, sizes_t, sizes_s, rank, lora, projections):
    assert params_command(["--teacher", teacher, "--student", student, "--rank", str(rank), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    teacher_total, student_total = whisper_parameters(*sizes_t), whisper_parameters(*sizes_s)
    trainable = lora + projections + 1
    assert figures["teacher_total"] == teacher_total
    assert figures["student_total"] == student_total
    assert figures["groups"]["lora"]["trainable"] == lora
    assert figures["groups"]["projections"]["trainable"] == projections
    assert figures["trainable_total"] == trainable
    assert figures["trainable_used_at_inference"] == lora
    assert figures["cr_model"] == pytest.approx(1 - student_total / teacher_total, abs=1e-12)
    assert figures["cr_train"] == pytest.approx(1 - trainable / student_total, abs=1e-12)


def test_encoder_lora_counts():
    report = parameter_accounting(reference_pair("large-v3", "medium", lora=LoraSettings(rank=64, targets="decoder+encoder")))
    assert report.groups["lora"]["trainable"] == 24 * 6 * 64 * 2048
