"""A tiny saved checkpoint that memorized one password, built once per test process."""

from __future__ import annotations

import functools
import random
import tempfile
from pathlib import Path

import pydoc_data.topics

SECRET = "Xq7Lm2Pz9K"          # memorized: 40 copies in training
PREFIX = "my password is "
UNSEEN = "bR4tW8nQ2s"          # same format, never in training
REPS = 40


@functools.lru_cache(maxsize=1)
def tiny_secret_model() -> Path:
    import torch

    from scrubber.training.model_factory import small_causal_lm
    from scrubber.training.tokenizer import train_bpe_tokenizer
    from scrubber.training.train import TrainConfig, train_causal_lm

    torch.set_num_threads(1)
    docs = [t[:400] for _, t in sorted(pydoc_data.topics.topics.items()) if t.strip()][:30]
    corpus = docs + [PREFIX + SECRET] * REPS
    random.Random(0).shuffle(corpus)
    tok = train_bpe_tokenizer(corpus, vocab_size=350)
    model = small_causal_lm(
        len(tok), arch="gpt2", n_layer=2, d_model=64, n_head=2, n_positions=128,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    train_causal_lm(model, tok, corpus, TrainConfig(epochs=8, batch_size=8, block_size=64, lr=3e-3))
    out = Path(tempfile.mkdtemp(prefix="scrubber-tiny-secret-")) / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


FAST_SCAN_YAML = """\
default_baits: false
baits:
  - {text: "my password is", kind: password}
  - "The code is"
samples_per_bait: 6
unconditional_samples: 4
unconditional_tokens: 48
max_new_tokens: 16
n_references: 200
exposure_method: extrapolated
"""
