"""Shared fixtures: tiny tokenizers and models built offline in seconds."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pydoc_data.topics
import pytest
import torch

from scrubber.training.model_factory import small_causal_lm
from scrubber.training.tokenizer import train_bpe_tokenizer

# Tiny models gain nothing from intra-op threads, and two threads on a shared
# 2-core machine measured up to 15x slower (the CLI makes the same choice for
# models under 20M parameters: scrubber.pipeline.set_threads).
torch.set_num_threads(1)


def corpus_texts() -> list[str]:
    return [t for t in pydoc_data.topics.topics.values() if t.strip()]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A 400-token byte-level BPE trained on the stdlib docs corpus."""
    return train_bpe_tokenizer(corpus_texts()[:60], vocab_size=400)


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_tokenizer):
    tok = tiny_tokenizer
    model = small_causal_lm(
        len(tok), arch="gpt2", n_layer=2, d_model=32, n_head=2,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return model.eval()


@pytest.fixture(scope="session")
def tiny_llama(tiny_tokenizer):
    tok = tiny_tokenizer
    model = small_causal_lm(
        len(tok), arch="llama", n_layer=2, d_model=32, n_head=2,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return model.eval()


@pytest.fixture
def saved_tiny_model(tmp_path, tiny_gpt2, tiny_tokenizer):
    """A checkpoint directory as users have them: save_pretrained of model + tokenizer."""
    d = tmp_path / "model"
    tiny_gpt2.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d
