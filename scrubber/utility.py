"""Held-out perplexity: the utility cost of a scrub."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scrubber.training.train import pack_texts


def model_context_length(model: PreTrainedModel, default: int = 1024) -> int:
    cfg = model.config
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return default


@torch.inference_mode()
def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    block_size: int = 128,
    batch_size: int = 16,
    max_tokens: int = 200_000,
) -> tuple[float, int]:
    """Token-level perplexity over packed blocks, and the number of tokens scored."""
    block = min(block_size, model_context_length(model))
    blocks = pack_texts(tokenizer, texts, block)
    blocks = blocks[: max(1, max_tokens // block)]
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        x = blocks[i : i + batch_size].to(device)
        loss = model(input_ids=x, labels=x).loss
        n = x.shape[0] * (x.shape[1] - 1)
        total += float(loss) * n
        count += n
    return math.exp(total / count), count
