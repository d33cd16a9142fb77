"""LoRA on real Whisper weights: merged and unmerged adapters decode the same ids, also after CTranslate2 export."""
import copy
from pathlib import Path

import pytest
import soundfile
import torch

from rc_nbkit.convert import export_ctranslate2, load_whisper, transcribe_ids
from rc_nbkit.models import LoraSettings, attach_lora, merge_lora

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "data" / "real" / "librivox"


def clip_audio(count):
    paths = sorted(CLIPS.glob("*.wav"))[:count]
    assert paths, f"no LibriVox clips in {CLIPS}"
    return [soundfile.read(path, dtype="float32")[0] for path in paths]


def perturbed_adapter(model, settings, seed=0):
    "Attach LoRA and give B small random values, so the adapter really changes the weights."
    torch.manual_seed(seed)
    adapted = attach_lora(copy.deepcopy(model), settings)
    for name, parameter in adapted.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0.0, 2e-3)
    return adapted.eval()


@pytest.fixture(scope="module")
def base():
    return load_whisper("whisper-base")


def test_merged_generate_language_task(base):
    model, processor = base
    adapted = perturbed_adapter(model, LoraSettings(rank=64, targets="decoder+encoder"))
    merged = merge_lora(adapted)
    audios = clip_audio(2)
    for audio in audios:
        unmerged_ids = transcribe_ids(adapted, processor, audio, language="en", task="transcribe")
        merged_ids = transcribe_ids(merged, processor, audio, language="en", task="transcribe")
        assert merged_ids == unmerged_ids

    # The adapter must act, or the comparison above would be empty.
    features = processor.feature_extractor(audios[0], sampling_rate=16000, return_tensors="pt").input_features
    decoder_input_ids = torch.tensor([processor.tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])])
    with torch.inference_mode():
        adapted_logits = merged(input_features=features, decoder_input_ids=decoder_input_ids).logits
        original_logits = model(input_features=features, decoder_input_ids=decoder_input_ids).logits
    assert (adapted_logits - original_logits).abs().max() > 1e-3


def test_merge_keeps_original_model(base):
    model, _ = base
    before = model.model.decoder.layers[0].self_attn.q_proj.weight.clone()
    adapted = perturbed_adapter(model, LoraSettings(rank=4))
    merge_lora(adapted)
    assert torch.equal(adapted.get_base_model().model.decoder.layers[0].self_attn.q_proj.base_layer.weight, before)


def test_lora_only_trainable(base):
    model, _ = base
    adapted = attach_lora(copy.deepcopy(model), LoraSettings(rank=64))
    trainable = {name for name, parameter in adapted.named_parameters() if parameter.requires_grad}
    assert trainable
    assert all("lora_" in name for name in trainable)
    targeted = {name.split(".lora_")[0] for name in trainable}
    assert len(targeted) == 6 * 4  # six decoder layers, four attention projections each
    assert all(".decoder." in name and name.endswith(("q_proj", "v_proj")) for name in targeted)


def test_export_merged_ctranslate2_ids(tmp_path):
    "The exported merged student decodes the same ids in ctranslate2 as in transformers, on the same features."
    # faster-whisper 1.2.1 pads the log-mel features with zeros to 3,000 frames (audio.pad_or_trim),
    # while transformers pads the audio with silence, so the padded frames differ. A perturbed model
    # can then break a near-tie differently, so both engines get the same features here.
    ctranslate2 = pytest.importorskip("ctranslate2")
    model, processor = load_whisper("whisper-tiny.en")
    merged = merge_lora(perturbed_adapter(model, LoraSettings(rank=16)))
    destination = export_ctranslate2(merged, tmp_path / "ct2", processor=processor, quantization="float32")
    runner = ctranslate2.models.Whisper(str(destination), device="cpu", compute_type="float32", intra_threads=2)
    prompt = processor.tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    for audio in clip_audio(5):
        features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="np").input_features
        exported = runner.generate(ctranslate2.StorageView.from_array(features), [prompt], beam_size=1)[0].sequences_ids[0]
        assert exported == transcribe_ids(merged, processor, audio)
