"""Shared fixtures: tiny Hugging Face classifiers built from configs (no download)."""

from __future__ import annotations

import pyro
import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

VOCAB = 64


def tiny_hf_model(arch: str = "bert", num_labels: int = 2, seed: int = 0, hidden: int = 32):
    """A two-layer classifier of the given architecture, in eval mode, seeded."""
    torch.manual_seed(seed)
    common = {
        "vocab_size": VOCAB,
        "hidden_size": hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 2 * hidden,
        "num_labels": num_labels,
    }
    if arch == "bert":
        model = BertForSequenceClassification(BertConfig(**common))
    elif arch == "roberta":
        model = RobertaForSequenceClassification(
            RobertaConfig(**common, max_position_embeddings=40, pad_token_id=1)
        )
    elif arch == "llama":
        model = LlamaForSequenceClassification(
            LlamaConfig(**common, num_key_value_heads=2, pad_token_id=0)
        )
    else:
        raise ValueError(arch)
    return model.eval()


def token_batch(batch: int = 4, length: int = 7, seed: int = 1) -> torch.Tensor:
    """Random token ids that avoid the pad ids 0 and 1."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (batch, length), generator=generator)


@pytest.fixture(autouse=True)
def _fresh_pyro():
    """Each test starts with an empty param store, seeded, with validation on."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
