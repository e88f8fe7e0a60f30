"""Bits per byte on whole documents: the utility number every scrub is judged by must be exact."""

from __future__ import annotations

import math

import pytest
import torch

from scrubber.measure.utility import document_segments, document_utility, perplexity

DOCS = [
    "The quick brown fox jumps over the lazy dog.\n\nA second paragraph of the same document.",
    "Short one.",
    "Unicode counts in bytes: naïve café — déjà vu.",
    "the value of x " * 30,  # 151 tokens: longer than the 64-token windows below, scored in windows
]


def _hand_bits(model, tok, doc: str) -> float:
    """One full forward over [EOS] + doc, no windows: summed NLL of the document tokens, in bits."""
    ids = [tok.eos_token_id, *tok(doc, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return -sum(float(logp[i - 1, ids[i]]) for i in range(1, len(ids))) / math.log(2)


def test_bits_per_byte_equals_a_hand_computed_value(tiny_gpt2, tiny_tokenizer):
    docs = DOCS[:3]
    r = document_utility(tiny_gpt2, tiny_tokenizer, docs, window=256)
    bits = sum(_hand_bits(tiny_gpt2, tiny_tokenizer, d) for d in docs)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    n_tokens = sum(len(tiny_tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs)
    assert r.n_bytes == n_bytes and n_bytes > sum(len(d) for d in docs)  # UTF-8 bytes, not characters
    assert r.n_tokens == n_tokens and r.n_documents == 3
    assert r.bits_per_byte == pytest.approx(bits / n_bytes, rel=1e-5)
    assert r.token_perplexity == pytest.approx(2 ** (bits / n_tokens), rel=1e-5)


def test_invariant_to_batch_size_and_padding(tiny_gpt2, tiny_tokenizer):
    """Right padding with a mask: rows of different lengths in one batch change nothing."""
    one = document_utility(tiny_gpt2, tiny_tokenizer, DOCS, window=64, batch_size=1)
    many = document_utility(tiny_gpt2, tiny_tokenizer, DOCS, window=64, batch_size=16)
    assert many.n_tokens == one.n_tokens
    assert many.bits_per_byte == pytest.approx(one.bits_per_byte, rel=1e-5)


def test_eos_targets_are_not_counted(tiny_gpt2, tiny_tokenizer):
    """The total is the document tokens' bits alone: scoring an EOS after the document (what
    packing does) would add that EOS's bits, which on this model are more than one bit."""
    tok = tiny_tokenizer
    doc = DOCS[1]
    r = document_utility(tiny_gpt2, tok, [doc], window=256)
    ids = [tok.eos_token_id, *tok(doc, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        last = torch.log_softmax(tiny_gpt2(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)
    eos_bits = -float(last[tok.eos_token_id]) / math.log(2)
    assert eos_bits > 1
    assert r.n_tokens == len(ids) - 1
    assert r.total_bits == pytest.approx(_hand_bits(tiny_gpt2, tok, doc), rel=1e-6)
    assert abs(r.total_bits - (_hand_bits(tiny_gpt2, tok, doc) + eos_bits)) > 1
    both = document_utility(tiny_gpt2, tok, DOCS[:2], window=256)  # documents do not leak into each other
    assert both.total_bits == pytest.approx(
        sum(document_utility(tiny_gpt2, tok, [d], window=256).total_bits for d in DOCS[:2]), rel=1e-6)


def test_windows_score_every_token_once_with_context():
    segs = document_segments(list(range(10, 30)), start=0, window=8, stride=4)
    scored = [tok for s in segs for tok in s.ids[s.first_target:]]
    assert scored == list(range(10, 30))
    assert all(len(s.ids) <= 8 for s in segs)
    assert all(s.first_target >= 4 for s in segs[1:])  # at least window - stride tokens of context


def test_long_document_windows_agree_with_one_pass_when_context_suffices(tiny_gpt2, tiny_tokenizer):
    """A 64-token window with stride 32 loses some context: bits close to, not equal to, one pass."""
    long_doc = DOCS[3]
    full = document_utility(tiny_gpt2, tiny_tokenizer, [long_doc], window=256)
    windowed = document_utility(tiny_gpt2, tiny_tokenizer, [long_doc], window=64, stride=32)
    assert windowed.n_tokens == full.n_tokens > 64
    assert full.total_bits == pytest.approx(_hand_bits(tiny_gpt2, tiny_tokenizer, long_doc), rel=1e-5)
    assert windowed.bits_per_byte == pytest.approx(full.bits_per_byte, rel=0.05)


def test_max_tokens_keeps_documents_whole(tiny_gpt2, tiny_tokenizer):
    first = len(tiny_tokenizer(DOCS[0], add_special_tokens=False)["input_ids"])
    r = document_utility(tiny_gpt2, tiny_tokenizer, DOCS, window=256, max_tokens=first + 1)
    assert r.n_documents == 1 and r.n_tokens == first


def test_packed_perplexity_still_works(tiny_gpt2, tiny_tokenizer):
    ppl, n = perplexity(tiny_gpt2, tiny_tokenizer, DOCS, block_size=32)
    assert n > 0 and 1 < ppl < len(tiny_tokenizer) * 2
