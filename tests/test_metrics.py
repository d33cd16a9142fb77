"""Property and policy checks of rc_nbkit.metrics against jiwer run independently."""
import math

import jiwer
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

from rc_nbkit.core import InputError
from rc_nbkit.metrics import english_spelling_mapping, error_rates, normalize_text, transcript_report

WORDS = ["the", "colour", "cat's", "Mr.", "sat", "on", "twenty", "five", "£3", "won't", "um", "mat", "Neighbour", "!"]
sentences = st.lists(st.sampled_from(WORDS), min_size=0, max_size=8).map(" ".join)


def oracle_normalise(texts, english=True):
    normaliser = EnglishTextNormalizer(english_spelling_mapping()) if english else BasicTextNormalizer()
    return [" ".join(normaliser(text).split()) for text in texts]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(sentences, sentences), min_size=1, max_size=6))
def test_error_rates_equal_jiwer(pairs):
    references = [reference for reference, _ in pairs]
    hypotheses = [hypothesis for _, hypothesis in pairs]
    oracle_references = oracle_normalise(references)
    oracle_hypotheses = oracle_normalise(hypotheses)
    scores = error_rates(references, hypotheses)

    words = jiwer.process_words(oracle_references, oracle_hypotheses)
    characters = jiwer.process_characters(oracle_references, oracle_hypotheses)
    assert scores.substitutions == words.substitutions
    assert scores.deletions == words.deletions
    assert scores.insertions == words.insertions
    assert scores.char_insertions == characters.insertions

    reference_words = sum(len(text.split()) for text in oracle_references)
    if reference_words == 0:
        assert math.isnan(scores.wer)
    else:
        assert scores.wer == pytest.approx(jiwer.wer(oracle_references, oracle_hypotheses), abs=1e-12)
        assert scores.cer == pytest.approx(jiwer.cer(oracle_references, oracle_hypotheses), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(sentences, sentences), min_size=1, max_size=6))
def test_corpus_wer_is_pooled(pairs):
    references = [reference for reference, _ in pairs]
    hypotheses = [hypothesis for _, hypothesis in pairs]
    total = error_rates(references, hypotheses)
    errors = 0
    words = 0
    for reference, hypothesis in pairs:
        single = error_rates([reference], [hypothesis])
        errors += single.substitutions + single.deletions + single.insertions
        words += single.reference_words
    assert total.reference_words == words
    assert total.substitutions + total.deletions + total.insertions == errors


def test_hallucinations_listed_and_counted():
    scores = error_rates(
        ["he was not an ill disposed young man", "", "[music]"],
        ["he was not an ill disposed young man", "thank you for watching", ""],
        ids=["a", "silence", "music"],
    )
    assert scores.hallucinations == [{"index": 1, "id": "silence", "hypothesis": "thank you for watching"}]
    assert scores.insertions == 4
    assert scores.hallucination_words == 4
    assert scores.wer == pytest.approx(4 / 8)
    assert scores.empty_references == 2


def test_orthographic_keeps_case_and_punctuation():
    scores = error_rates(["Hello, world."], ["hello world"], normalize=False)
    assert scores.wer == pytest.approx(jiwer.wer("Hello, world.", "hello world"))
    assert error_rates(["Hello, world."], ["hello world"]).wer == 0.0


def test_basic_normaliser_for_other_languages():
    references = ["Perché no? È vero.", "l'été"]
    hypotheses = ["perche no e vero", "l'ete"]
    scores = error_rates(references, hypotheses, language="it")
    oracle = jiwer.wer(oracle_normalise(references, english=False), oracle_normalise(hypotheses, english=False))
    assert scores.wer == pytest.approx(oracle)
    assert scores.wer > 0  # diacritics are kept by the basic normaliser


def test_per_language_report_uses_each_normaliser():
    report = transcript_report(["the colour", "la couleur"], ["the color", "la couleur"], languages=["en", "fr"])
    assert report["per_language"]["en"]["normalised"]["wer"] == 0.0
    assert report["per_language"]["fr"]["normalised"]["wer"] == 0.0
    assert report["utterances"][1]["reference_normalised"] == normalize_text("la couleur", "fr")


def test_mismatched_inputs_rejected():
    with pytest.raises(InputError, match="languages"):
        error_rates(["a", "b"], ["a", "b"], language=["en"])
    with pytest.raises(InputError, match="ids"):
        error_rates(["a"], ["a"], ids=["x", "y"])
