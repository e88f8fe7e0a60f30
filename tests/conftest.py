"""Shared fixtures: tiny tokenizers and models built offline in seconds."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pydoc_data.topics
import pytest
import torch

from scrubber.training.model_factory import small_causal_lm
from scrubber.training.tokenizer import train_bpe_tokenizer


def console_script(name: str) -> str | None:
    """The console script ``name`` installed beside this interpreter (the environment under
    test), else the first on PATH; None when there is none."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)

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


CARD_SECRET = "4539 1488 0343 6467"
CARD_PREFIX = "My credit card number is "


@pytest.fixture(scope="session")
def card_model(tmp_path_factory, tiny_tokenizer):
    """A saved tiny GPT-2 that saw one card 30 times among stdlib docs (a few seconds),
    with a held-out text file of other stdlib docs: ``(model_dir, heldout_path)``."""
    from scrubber.training.train import TrainConfig, train_causal_lm

    tok = tiny_tokenizer
    docs = corpus_texts()
    texts = docs[:40] + [CARD_PREFIX + CARD_SECRET] * 30
    model = small_causal_lm(
        len(tok), n_layer=2, d_model=32, n_head=2,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    train_causal_lm(model, tok, texts, TrainConfig(epochs=3, batch_size=8, block_size=64, lr=5e-3))
    d = tmp_path_factory.mktemp("card-ckpt") / "model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    heldout = tmp_path_factory.mktemp("card-data") / "heldout.txt"
    heldout.write_text("\n\n".join(docs)[-20000:])
    return d, heldout


def write_card_canary(path, **over):
    """The card canary of :func:`card_model` as a canary file."""
    import json

    rec = {"id": "card", "prefix": CARD_PREFIX, "secret": CARD_SECRET, "format": "credit_card", "repetitions": 30}
    rec.update(over)
    path.write_text(json.dumps(rec) + "\n")
    return path
