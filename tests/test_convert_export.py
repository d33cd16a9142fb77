"""Round trip CTranslate2 → transformers → CTranslate2 on the shipped weights, checked through faster-whisper."""
from pathlib import Path

import numpy as np
import pytest
import soundfile

faster_whisper = pytest.importorskip("faster_whisper")

from rc_nbkit.convert import (
    assemble_ctranslate2_dir,
    convert_command,
    export_command,
    load_whisper,
    read_ctranslate2_model,
    resolve_model,
    transcribe_ids,
)

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "data" / "real" / "librivox"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    destination = tmp_path_factory.mktemp("export") / "tiny-ct2"
    assert export_command(["whisper-tiny.en", str(destination), "--format", "ctranslate2", "--quantization", "float16"]) == 0
    return destination


def test_export_reproduces_weights(exported):
    "Exported float16 weights equal the shipped ones bit for bit, variable by variable."
    original = read_ctranslate2_model(resolve_model("whisper-tiny.en").model_bin_parts)
    roundtrip = read_ctranslate2_model(exported / "model.bin")
    assert roundtrip.spec == original.spec
    for name, array in original.variables.items():
        if array.ndim == 0:
            continue
        assert name in roundtrip.variables, name
        assert np.array_equal(roundtrip.variables[name], array), name


def test_export_transcribes_like_original(exported):
    "faster-whisper gives the same tokens for the exported files, the shipped files and transformers."
    options = dict(beam_size=1, temperature=0.0, without_timestamps=True, condition_on_previous_text=False, vad_filter=False)
    runners = [faster_whisper.WhisperModel(str(path), device="cpu", compute_type="float32", cpu_threads=2) for path in (assemble_ctranslate2_dir("whisper-tiny.en"), exported)]
    model, processor = load_whisper("whisper-tiny.en")
    paths = sorted(CLIPS.glob("*.wav"))
    assert paths, f"no LibriVox clips in {CLIPS}"
    for path in paths:
        audio, _ = soundfile.read(path, dtype="float32")
        original, roundtrip = ([token for segment in runner.transcribe(audio, **options)[0] for token in segment.tokens] for runner in runners)
        assert roundtrip == original, path.name
        assert roundtrip == transcribe_ids(model, processor, audio), path.name


def test_convert_command_errors(capsys):
    assert convert_command(["/no/such/model"]) == 2
    assert "not a model directory" in capsys.readouterr().out


def test_export_command_merges_lora(tmp_path):
    "`rc-nbkit export --lora` writes the same weights as merging the adapter in memory."
    import torch

    from rc_nbkit.models import LoraSettings, attach_lora, merge_lora

    model, _ = load_whisper("whisper-tiny.en")
    torch.manual_seed(0)
    adapted = attach_lora(model, LoraSettings(rank=4))
    for name, parameter in adapted.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0.0, 1e-2)
    adapted.save_pretrained(tmp_path / "adapter")
    expected = merge_lora(adapted).state_dict()

    assert export_command(["whisper-tiny.en", str(tmp_path / "merged"), "--format", "transformers", "--lora", str(tmp_path / "adapter")]) == 0
    exported, _ = load_whisper(tmp_path / "merged")
    actual = exported.state_dict()
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert torch.allclose(actual[key], value, rtol=0, atol=1e-6), key
