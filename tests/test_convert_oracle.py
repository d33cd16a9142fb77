"""Converted CTranslate2 Whisper models against ctranslate2 running the original files."""
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

ctranslate2 = pytest.importorskip("ctranslate2")

from rc_nbkit.convert import assemble_ctranslate2_dir, load_whisper, transcribe_ids

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "data" / "real" / "librivox"

# Encoder outputs of ctranslate2 (float32 compute) and torch differ by rounding only. On the first
# clip the measured maximum absolute difference is 2.7e-5 (tiny.en) and 5.5e-4 (base), for
# activations up to 24 in magnitude. A tolerance of 5e-3 leaves headroom and still catches a wrong weight.
ENCODER_ATOL = 5e-3


def clips():
    paths = sorted(CLIPS.glob("*.wav"))
    assert paths, f"no LibriVox clips in {CLIPS}"
    return paths


@pytest.fixture(scope="module", params=["whisper-tiny.en", "whisper-base"])
def pair(request):
    model, processor = load_whisper(request.param)
    oracle = ctranslate2.models.Whisper(str(assemble_ctranslate2_dir(request.param)), device="cpu", compute_type="float32", intra_threads=2)
    return request.param, model, processor, oracle


def oracle_prompt(name, processor):
    tokens = ["<|startoftranscript|>", "<|notimestamps|>"]
    if name == "whisper-base":
        tokens = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    return processor.tokenizer.convert_tokens_to_ids(tokens)


def test_greedy_ids_match_ctranslate2(pair):
    name, model, processor, oracle = pair
    options = {"language": "en", "task": "transcribe"} if name == "whisper-base" else {}
    for path in clips():
        audio, rate = soundfile.read(path, dtype="float32")
        assert rate == 16000
        features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="np").input_features
        expected = oracle.generate(ctranslate2.StorageView.from_array(features), [oracle_prompt(name, processor)], beam_size=1)[0].sequences_ids[0]
        actual = transcribe_ids(model, processor, audio, **options)
        assert actual == expected, f"{name} {path.name}: {processor.tokenizer.decode(actual)!r} vs {processor.tokenizer.decode(expected)!r}"


def test_encoder_outputs_match_ctranslate2(pair):
    name, model, processor, oracle = pair
    audio, _ = soundfile.read(clips()[0], dtype="float32")
    features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="np").input_features
    expected = np.array(oracle.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    with torch.inference_mode():
        actual = model.model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    assert actual.shape == expected.shape
    difference = float(np.abs(actual - expected).max())
    print(f"{name}: max |encoder difference| = {difference:.2e}, max |activation| = {float(np.abs(expected).max()):.1f}")
    assert difference < ENCODER_ATOL
