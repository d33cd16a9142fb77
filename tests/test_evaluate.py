"""End-to-end checks of rc_nbkit.evaluate on the real clips with the offline Whisper models (base, tiny.en)."""
import json

import jiwer
import numpy as np
import pytest
import soundfile
import soxr
import torch

from rc_nbkit.audio import load_audio
from rc_nbkit.convert import assemble_ctranslate2_dir, load_whisper
from rc_nbkit.core import InputError
from rc_nbkit.evaluate import (
    FasterWhisperTranscriber,
    WhisperTranscriber,
    compare_distillation,
    evaluate_command,
    load_eval_items,
    real_clips_dir,
    transcribe_long_form,
)
from rc_nbkit.metrics import normalize_text


@pytest.fixture(scope="module")
def items():
    return load_eval_items(real_clips_dir())


@pytest.fixture(scope="module")
def tiny():
    return load_whisper("whisper-tiny.en")


@pytest.fixture(scope="module")
def base():
    return load_whisper("whisper-base")


def librivox(items):
    return [item for item in items if item.id.startswith("sense")]


def test_long_form_45_seconds_matches_clips(items, tiny):
    model, processor = tiny
    # The five LibriVox clips, then three of them again, with 0.25 s of silence after each: about 45 s.
    first_pass = librivox(items)
    order = [0, 1, 2, 3, 4, 0, 2, 3]
    gap = np.zeros(int(0.25 * 16000), dtype=np.float32)
    audio = np.concatenate([part for index in order for part in (first_pass[index].waveform, gap)])
    assert 44.0 <= len(audio) / 16000 <= 46.0, len(audio) / 16000

    # WhisperTranscriber sends audio longer than 30 s to the chunked long-form path.
    transcriber = WhisperTranscriber(model, processor, batch_size=5, long_form_batch_size=2)
    [long_form] = transcriber.transcribe([audio])

    # Oracle: each clip transcribed on its own by the short-form path, concatenated in order.
    short_form = transcriber.transcribe([item.waveform for item in first_pass])
    expected = normalize_text(" ".join(short_form[index] for index in order))
    assert jiwer.wer(expected, normalize_text(long_form)) <= 0.05, (expected, long_form)

    reference = normalize_text(" ".join(first_pass[index].text for index in order))
    assert jiwer.wer(reference, normalize_text(long_form)) <= jiwer.wer(reference, expected) + 0.05


def test_long_audio_routed_to_long_form(monkeypatch, tiny):
    import rc_nbkit.evaluate as evaluate

    calls = []

    def fake_long_form(model, processor, audio, **options):
        calls.append((len(audio), options))
        return "long"

    monkeypatch.setattr(evaluate, "transcribe_long_form", fake_long_form)
    transcriber = WhisperTranscriber(*tiny, long_form_batch_size=3)
    texts = transcriber.transcribe([np.full(31 * 16000, 0.01, dtype=np.float32)])
    assert texts == ["long"]
    assert calls[0][0] == 31 * 16000
    assert calls[0][1]["batch_size"] == 3


@pytest.fixture(scope="module")
def clean_texts(items, tiny):
    return WhisperTranscriber(*tiny, batch_size=2).transcribe([item.waveform for item in librivox(items)[:2]])


@pytest.mark.parametrize("sample_rate", [44100, 8000])
def test_resampled_input_same_transcript(items, tiny, clean_texts, tmp_path, sample_rate):
    transcriber = WhisperTranscriber(*tiny, batch_size=2)
    resampled = []
    for item in librivox(items)[:2]:
        path = tmp_path / f"{item.id}-{sample_rate}.wav"
        soundfile.write(path, soxr.resample(item.waveform, 16000, sample_rate, quality="HQ"), sample_rate, subtype="FLOAT")
        assert soundfile.info(path).samplerate == sample_rate
        resampled.append(load_audio(path))
    texts = [normalize_text(text) for text in transcriber.transcribe(resampled)]
    expected = [normalize_text(text) for text in clean_texts]
    if sample_rate > 16000:
        assert texts == expected
    else:
        # 8 kHz audio has nothing above 4 kHz, so the log-mel features differ from the 16 kHz ones and a
        # borderline word may change (tiny.en hears "ill disposed" at 8 kHz but "old sposed" at 16 kHz).
        assert jiwer.wer(expected, texts) <= 0.1, (expected, texts)


def test_language_token_is_forced(items, base):
    model, processor = base
    transcriber = WhisperTranscriber(model, processor, max_new_tokens=40)
    clip = librivox(items)[1]
    kwargs = transcriber.generate_kwargs("it")
    assert kwargs["language"] == "it"
    assert kwargs["task"] == "transcribe"
    assert "forced_decoder_ids" not in kwargs

    english, italian = transcriber.transcribe([clip.waveform, clip.waveform], ["en", "it"])
    assert jiwer.wer(normalize_text(clip.text), normalize_text(english)) < 0.2
    assert normalize_text(english) != normalize_text(italian)


def test_english_only_rejects_other_language(tiny):
    model, processor = tiny
    transcriber = WhisperTranscriber(model, processor)
    with pytest.raises(InputError, match="English-only"):
        transcriber.transcribe([np.ones(16000, dtype=np.float32) * 0.01], ["fr"])
    assert "language" not in transcriber.generate_kwargs("en")


def test_bad_audio_rejected(tiny):
    transcriber = WhisperTranscriber(*tiny)
    with pytest.raises(InputError, match="1-D numpy array"):
        transcriber.transcribe([np.zeros((2, 100), dtype=np.float32)])
    with pytest.raises(InputError, match="NaN"):
        transcriber.transcribe([np.full(100, np.nan, dtype=np.float32)])
    with pytest.raises(InputError, match="empty"):
        transcriber.transcribe([np.zeros(0, dtype=np.float32)])


@pytest.mark.parametrize(
    "clip_count", [pytest.param(2, id="2-clips"), pytest.param(None, id="all-clips", marks=pytest.mark.slow)]
)
def test_comparison_report_real_clips(items, base, tmp_path, clip_count):
    from rc_nbkit.models import attach_lora

    items = items if clip_count is None else librivox(items)[:clip_count]

    teacher, teacher_processor = base
    student, student_processor = load_whisper("whisper-tiny.en")
    distilled_base, _ = load_whisper("whisper-tiny.en")
    distilled = attach_lora(distilled_base)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in distilled.named_parameters():
            if "lora_B" in name:
                parameter.copy_(1e-3 * torch.randn(parameter.shape, generator=generator))

    report = compare_distillation(
        items, teacher=teacher, teacher_processor=teacher_processor, student=student,
        student_processor=student_processor, distilled=distilled, ctranslate2=True,
    )
    names = [result["name"] for result in report.results]
    assert names == ["teacher", "student (zero-shot)", "student (distilled, LoRA merged)", "student (distilled, CTranslate2)"]
    assert report.skipped == []

    # Scores equal jiwer run on the texts the report lists, normalised by hand.
    for result in report.results:
        utterances = result["scores"]["utterances"]
        references = [normalize_text(utterance["reference"]) for utterance in utterances]
        hypotheses = [normalize_text(utterance["hypothesis"]) for utterance in utterances]
        assert result["scores"]["normalised"]["wer"] == pytest.approx(jiwer.wer(references, hypotheses), abs=1e-12)
        assert result["scores"]["normalised"]["wer"] < 0.25
        assert result["speed"]["rtfx"] > 0
        assert result["speed"]["audio_seconds"] == pytest.approx(sum(item.duration for item in items))

    # The CTranslate2 export transcribes like the merged transformers model it was exported from.
    merged = [normalize_text(u["hypothesis"]) for u in report.results[2]["scores"]["utterances"]]
    exported = [normalize_text(u["hypothesis"]) for u in report.results[3]["scores"]["utterances"]]
    assert jiwer.wer(merged, exported) <= 0.05

    table = report.to_markdown()
    for name in names:
        assert f"| {name} |" in table
    report.save(tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [result["name"] for result in saved["results"]] == names
    assert (tmp_path / "report.md").read_text() == table


def test_faster_whisper_matches_original_files(items):
    transcriber = FasterWhisperTranscriber(assemble_ctranslate2_dir("whisper-base"), name="base")
    clip = librivox(items)[1]
    [text] = transcriber.transcribe([clip.waveform], ["en"])
    assert jiwer.wer(normalize_text(clip.text), normalize_text(text)) < 0.2


def test_command_writes_report(items, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    chosen = librivox(items)[1:2]
    lines = []
    for item in chosen:
        soundfile.write(data / f"{item.id}.wav", item.waveform, 16000)
        lines.append(f"{item.id}\t{item.text}")
    (data / "transcripts.tsv").write_text("\n".join(lines) + "\n")

    code = evaluate_command(
        ["--model", "student=whisper-tiny.en", "--data", str(data), "--noise-snr", "10", "--report", str(tmp_path / "report")]
    )
    assert code == 0
    output = capsys.readouterr().out
    assert "| student |" in output
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    noise_rows = saved["results"][0]["noise"]
    assert [row["condition"] for row in noise_rows] == ["clean", "10 dB"]
    assert (tmp_path / "report" / "noise.html").exists()


def test_command_missing_data_fails(tmp_path, capsys):
    assert evaluate_command(["--model", "whisper-tiny.en", "--data", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None, reason="needs espeak-ng (apt-get install -y espeak-ng)")
def test_per_language_wer_forced_token(items, base):
    from types import SimpleNamespace

    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    from rc_nbkit.corpus import load_sentences, synthesize
    from rc_nbkit.evaluate import evaluate_model

    spoken = []
    for language, voice in (("it", "it"), ("es", "es")):
        text = load_sentences(language)[0]
        spoken.append(SimpleNamespace(id=f"{language}-0", waveform=synthesize(text, voice), text=text, language=language))
    english = librivox(items)[1]
    test_items = [english, *spoken]

    model, processor = base
    result = evaluate_model(WhisperTranscriber(model, processor, max_new_tokens=60), test_items, warmup=0)
    per_language = result["scores"]["per_language"]
    assert sorted(per_language) == ["en", "es", "it"]

    normaliser = BasicTextNormalizer()
    for item, utterance in zip(spoken, result["scores"]["utterances"][1:]):
        reference = " ".join(normaliser(item.text).split())
        hypothesis = " ".join(normaliser(utterance["hypothesis"]).split())
        expected = jiwer.wer(reference, hypothesis)
        assert per_language[item.language]["normalised"]["wer"] == pytest.approx(expected, abs=1e-12)
