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
    clips = first_pass + [first_pass[0], first_pass[2], first_pass[3]]
    gap = np.zeros(int(0.25 * 16000), dtype=np.float32)
    audio = np.concatenate([part for item in clips for part in (item.waveform, gap)])
    assert 44.0 <= len(audio) / 16000 <= 46.0, len(audio) / 16000

    long_form = transcribe_long_form(model, processor, audio, chunk_length_s=30.0, stride_length_s=5.0, batch_size=2)

    # Oracle: each clip transcribed on its own by the short-form path, concatenated in order.
    short_form = WhisperTranscriber(model, processor, batch_size=5).transcribe([item.waveform for item in clips])
    expected = normalize_text(" ".join(short_form))
    assert jiwer.wer(expected, normalize_text(long_form)) <= 0.05, (expected, long_form)

    reference = normalize_text(" ".join(item.text for item in clips))
    short_form_wer = jiwer.wer(reference, expected)
    assert jiwer.wer(reference, normalize_text(long_form)) <= short_form_wer + 0.05


def test_transcriber_routes_long_audio(items, tiny):
    model, processor = tiny
    clips = librivox(items)
    audio = np.concatenate([item.waveform for item in clips] * 2)
    assert len(audio) / 16000 > 30
    transcriber = WhisperTranscriber(model, processor)
    [text] = transcriber.transcribe([audio])
    routed = transcribe_long_form(model, processor, audio, batch_size=transcriber.long_form_batch_size)
    assert normalize_text(text) == normalize_text(routed)


@pytest.mark.parametrize("sample_rate", [44100, 8000])
def test_resampled_input_same_transcript(items, tiny, tmp_path, sample_rate):
    model, processor = tiny
    transcriber = WhisperTranscriber(model, processor, batch_size=3)
    clips = librivox(items)[:3]
    reference_texts = transcriber.transcribe([item.waveform for item in clips])

    resampled = []
    for item in clips:
        path = tmp_path / f"{item.id}-{sample_rate}.wav"
        soundfile.write(path, soxr.resample(item.waveform, 16000, sample_rate, quality="HQ"), sample_rate, subtype="FLOAT")
        assert soundfile.info(path).samplerate == sample_rate
        resampled.append(load_audio(path))
    texts = transcriber.transcribe(resampled)
    assert [normalize_text(text) for text in texts] == [normalize_text(text) for text in reference_texts]


def test_language_token_is_forced(items, base):
    model, processor = base
    transcriber = WhisperTranscriber(model, processor, max_new_tokens=40)
    clip = librivox(items)[1]
    kwargs = transcriber.generate_kwargs("it")
    assert kwargs["language"] == "it" and kwargs["task"] == "transcribe"
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


def test_comparison_report_real_clips(items, base, tmp_path):
    from rc_nbkit.models import attach_lora

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
    chosen = librivox(items)[:2]
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
