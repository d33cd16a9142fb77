"""Gradient-flow audit on the real offline pair base → tiny.en."""
import logging

import pytest
import torch
from torch import nn

from rc_nbkit.models import LoraSettings, gradient_flow_audit, load_pair, warn_on_gradient_flow

WEIGHTS = {"ce": 1.0, "kl": 0.05, "geo": 0.05, "traj": 0.3, "cont": 0.3}


@pytest.fixture(scope="module")
def pair():
    return load_pair("whisper-base", "whisper-tiny.en", lora=LoraSettings(rank=8))


def test_decoder_lora_encoder_terms_warn(pair, caplog):
    temperature = nn.Parameter(torch.zeros(()))
    with caplog.at_level(logging.WARNING, logger="rc_nbkit.models"):
        messages = warn_on_gradient_flow(pair, WEIGHTS, temperature=temperature)
    assert len(messages) == 3
    for term in ("geo", "traj", "cont"):
        assert any(f"'{term}'" in message for message in messages)
    assert len(caplog.records) == 3


def test_decoder_lora_reach(pair):
    audit = gradient_flow_audit(pair, WEIGHTS)
    flows = {flow.term: flow for flow in audit.terms}
    lora_total = sum(parameter.numel() for parameter in pair.lora_parameters())
    assert flows["ce"].reached["lora"] == lora_total
    assert flows["ce"].reached["projections"] == 0
    assert flows["geo"].reached == {"lora": 0, "student": 0, "projections": 384 * 512, "temperature": 0}
    assert flows["traj"].reached["projections"] == 4 * 384 * 512
    assert not flows["cont"].used_at_inference


def test_zero_weight_terms_skipped(pair):
    audit = gradient_flow_audit(pair, [{"ce": 1.0, "geo": 0.0}, {"ce": 0.5, "kl": 0.0}])
    assert [flow.term for flow in audit.terms] == ["ce"]
    assert audit.warnings == []


def test_unknown_term_rejected(pair):
    with pytest.raises(ValueError, match="not known"):
        gradient_flow_audit(pair, {"mse": 1.0})
