"""Utility cost of a scrub: bits per byte on whole documents, beside token perplexity.

Why bits per byte: the tokenizer clean-up changes how text is tokenized, and
token perplexity is a per-token average, so two tokenizations of the same text
give different perplexities for the same model quality. Total bits over total
UTF-8 bytes is comparable across tokenizations of the same documents.

Why whole documents: a plain-text file split on blank lines turns one document
into many paragraphs, and packing them with an EOS after each asks the model to
predict end-of-document where training never put one (on the demo's held-out
file, 1.6% of targets were such EOS). Here each document is scored on its own,
its first token predicted from the start token (BOS, or EOS for GPT-2-style
models, which is what preceded every document in training), and no EOS target
is counted. A document longer than the model's context is scored in
overlapping windows: each token exactly once, with at least ``window - stride``
tokens of left context after the first window.

:func:`perplexity` (packed blocks, EOS between texts) is kept for existing callers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scrubber.training.train import pack_texts

_LN2 = math.log(2.0)


def model_context_length(model: PreTrainedModel, default: int = 1024) -> int:
    cfg = model.config
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return default


@dataclass(frozen=True)
class UtilityResult:
    """Language-model quality on a fixed set of whole documents."""

    bits_per_byte: float
    """Total NLL of the document tokens (bits) over their total UTF-8 bytes."""
    token_perplexity: float
    """exp(mean NLL per scored token, nats): depends on the tokenizer."""
    n_bytes: int
    n_tokens: int
    """Scored targets: every document token, no EOS."""
    n_documents: int
    total_bits: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Segment:
    ids: list[int]
    first_target: int
    """Positions ``first_target..len(ids)-1`` are scored (each predicted from the position before)."""


def start_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """What precedes a document: BOS if the tokenizer has one, else EOS (GPT-2 packing)."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ValueError("tokenizer has neither a BOS nor an EOS token to start a document with")


def document_segments(ids: Sequence[int], start: int, window: int, stride: int) -> list[_Segment]:
    """Windows over ``[start] + ids`` scoring every document token exactly once.

    The first window scores positions 1..window-1; each next window starts
    ``window - stride`` tokens before the previous end, so it keeps that much context.
    """
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    if not 1 <= stride <= window - 1:
        raise ValueError(f"stride must be in [1, window-1], got {stride} for window {window}")
    seq = [start, *ids]
    n = len(seq)
    segments: list[_Segment] = []
    begin, scored_to = 0, 1
    while scored_to < n:
        end = min(begin + window, n)
        segments.append(_Segment(seq[begin:end], scored_to - begin))
        scored_to = end
        begin = end - (window - stride)
    return segments


def select_documents(
    tokenizer: PreTrainedTokenizerBase, documents: Sequence[str], max_tokens: int | None
) -> tuple[list[str], list[list[int]]]:
    """Documents in order, whole, until ``max_tokens`` document tokens are reached (at least one)."""
    docs = [d for d in documents if d.strip()]
    encoded = tokenizer(docs, add_special_tokens=False)["input_ids"] if docs else []
    kept_docs, kept_ids, total = [], [], 0
    for d, ids in zip(docs, encoded):
        if not ids:
            continue
        if max_tokens is not None and kept_ids and total + len(ids) > max_tokens:
            break
        kept_docs.append(d)
        kept_ids.append(list(ids))
        total += len(ids)
    return kept_docs, kept_ids


@torch.inference_mode()
def document_utility(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    documents: Sequence[str],
    *,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = 200_000,
) -> UtilityResult:
    """Bits per byte and token perplexity of ``model`` on whole ``documents``.

    ``window`` defaults to the model's context (capped at 1024), ``stride`` to
    half of it. ``max_tokens`` keeps whole documents, in order, up to that many
    tokens. The result does not depend on ``batch_size``: rows are right-padded
    and padding is masked out of attention and targets.
    """
    window = window or min(1024, model_context_length(model))
    window = min(window, model_context_length(model))
    stride = stride or max(1, window // 2)
    docs, encoded = select_documents(tokenizer, documents, max_tokens)
    if not docs:
        raise ValueError("no non-empty document to score")
    start = start_token_id(tokenizer)
    segments = [s for ids in encoded for s in document_segments(ids, start, window, stride)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nats, n_tokens = 0.0, 0
    try:
        for b in range(0, len(segments), batch_size):
            batch = segments[b : b + batch_size]
            width = max(len(s.ids) for s in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            scored = torch.zeros((len(batch), width), dtype=torch.bool)
            for r, s in enumerate(batch):
                ids[r, : len(s.ids)] = torch.tensor(s.ids)
                mask[r, : len(s.ids)] = 1
                scored[r, s.first_target : len(s.ids)] = True
            ids, mask, scored = ids.to(device), mask.to(device), scored.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
            keep = scored[:, 1:]
            total_nats += float(nll[keep].double().sum())
            n_tokens += int(keep.sum())
    finally:
        model.train(was_training)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    bits = total_nats / _LN2
    return UtilityResult(
        bits_per_byte=bits / n_bytes,
        token_perplexity=math.exp(total_nats / n_tokens),
        n_bytes=n_bytes,
        n_tokens=n_tokens,
        n_documents=len(docs),
        total_bits=bits,
    )


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
    """Token-level perplexity over packed blocks (EOS between texts, counted as targets),
    and the number of tokens scored. Kept for existing callers; prefer :func:`document_utility`."""
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
