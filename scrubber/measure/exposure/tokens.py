"""Which tokens of ``prefix + secret`` are the secret's, found from character offsets.

Byte-level BPE merges a prefix's trailing space (or trailing letters/digits)
into the secret's first token, so ``tokenize(prefix)`` is not a prefix of
``tokenize(prefix + secret)`` and subtracting the prefix's token count scores
the wrong tokens.  Instead we tokenize the whole string once and read the
offset mapping: the *context* is every token that ends at or before the
secret's first character, the *scored* tokens are every token that covers a
secret character (a token straddling the boundary is scored, since the model
must produce it to produce the secret).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedTokenizerBase
from scrubber.measure.context import start_ids


@dataclass(frozen=True)
class SecretTokens:
    """A candidate's token split: condition on ``context``, score ``scored``.

    Both are tuples of token ids so spans can be grouped (by context) and
    hashed (by the search's trie) cheaply.
    """

    context: tuple[int, ...]
    scored: tuple[int, ...]


def _fallback_start_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Token to condition on when nothing precedes the secret (empty prefix, no BOS added)."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ValueError(
        "the secret starts the text and the tokenizer has no BOS or EOS token to condition on"
    )


def _split(
    ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    special: Sequence[int],
    start: int,
    end: int,
) -> tuple[list[int], list[int]]:
    first = last = None
    for i, ((a, b), sp) in enumerate(zip(offsets, special)):
        if sp or b <= a:  # special tokens (BOS/EOS) and empty spans cover no character
            continue
        if a < end and b > start:
            if first is None:
                first = i
            last = i
    if first is None or last is None:
        raise ValueError("no token covers the secret (empty secret or a tokenizer without offsets)")
    return list(ids[:first]), list(ids[first : last + 1])


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list:
    """``tokenizers.Encoding`` objects for ``texts``, with the tokenizer's special tokens.

    The Rust backend is called directly when it carries no padding/truncation
    state (3x faster than building a ``BatchEncoding``); otherwise through the
    tokenizer, which resets that state for an unpadded call.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (
        backend is not None
        and backend.padding is None
        and backend.truncation is None
        and not getattr(tokenizer, "split_special_tokens", False)
    ):
        return backend.encode_batch(texts, add_special_tokens=True)
    return tokenizer(texts, add_special_tokens=True).encodings


def secret_tokens(
    tokenizer: PreTrainedTokenizerBase, prefix: str, candidates: Sequence[str]
) -> list[SecretTokens]:
    """Locate each candidate's tokens inside ``prefix + candidate`` (one batched tokenizer call).

    Special tokens the tokenizer adds (a leading BOS) stay in the context; a
    trailing EOS is dropped.  A tokenizer that adds no BOS gets the document-start
    token training put there (:func:`scrubber.measure.context.start_ids`: BOS, else EOS):
    without it a T5-style tokenizer's model scored a pin it recites about 14 bits
    too high, because it was asked about a context it never saw.  Requires a fast
    tokenizer (offset mappings).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("exposure scoring needs a fast tokenizer (offset mappings)")
    if not candidates:
        return []
    if any(not c for c in candidates):
        raise ValueError("empty candidate string")
    start = len(prefix)
    encodings = _encode(tokenizer, [prefix + c for c in candidates])
    out: list[SecretTokens] = []
    fallback: int | None = None
    head = start_ids(tokenizer)
    for cand, enc in zip(candidates, encodings):
        context, scored = _split(
            enc.ids, enc.offsets, enc.special_tokens_mask, start, start + len(cand)
        )
        context = head + list(context)
        if not context:
            if fallback is None:
                fallback = _fallback_start_token(tokenizer)
            context = [fallback]
        out.append(SecretTokens(tuple(context), tuple(scored)))
    return out
