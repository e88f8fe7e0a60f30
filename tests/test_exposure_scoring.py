"""Secret token location and candidate scoring: the fast path must equal the obvious one."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, processors
from transformers import PreTrainedTokenizerFast

from scrubber.measure.exposure import (
    score_candidates,
    score_candidates_reference,
    score_token_spans,
    secret_tokens,
)
from scrubber.measure.exposure.head import model_parts

TOL_BITS = 1e-4


@pytest.fixture(scope="module")
def bos_tokenizer(tiny_tokenizer):
    """The tiny tokenizer, but adding a BOS token (id 1) in front of every text, as Llama's does."""
    backend = Tokenizer.from_str(tiny_tokenizer.backend_tokenizer.to_str())
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|pad|> $A", special_tokens=[("<|pad|>", 1)]),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|pad|>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )


def _decode(tok, ids) -> str:
    return tok.decode(list(ids), skip_special_tokens=True)


# -- token boundaries -------------------------------------------------------


def test_trailing_space_merges_into_secret(tiny_tokenizer):
    tok = tiny_tokenizer
    prefix, secret = "pass is ", "the1"
    (span,) = secret_tokens(tok, prefix, [secret])
    # byte-level BPE put the prefix's space into the secret's first token ...
    assert tok.convert_ids_to_tokens(span.scored[0]) == "Ġthe"
    assert _decode(tok, span.context) == "pass is"
    assert _decode(tok, span.scored) == " the1"
    # ... so counting the prefix's own tokens would misplace the secret (the context also opens
    # with the document-start EOS that training put before every document)
    assert span.context[0] == tok.eos_token_id
    assert len(tok(prefix)["input_ids"]) != len(span.context) - 1


def test_prefix_tail_merges_with_secret(tiny_tokenizer):
    tok = tiny_tokenizer
    (span,) = secret_tokens(tok, "pass is th", ["eXy"])
    # 'Ġthe' covers prefix characters and the secret's 'e': scored, not context
    assert tok.convert_ids_to_tokens(span.scored[0]) == "Ġthe"
    assert _decode(tok, span.context) == "pass is"
    assert _decode(tok, span.context + span.scored) == "pass is theXy"


def test_bos_stays_in_context_and_empty_prefix(tiny_tokenizer, bos_tokenizer):
    (with_bos,) = secret_tokens(bos_tokenizer, "pass is th", ["eXy"])
    (plain,) = secret_tokens(tiny_tokenizer, "pass is th", ["eXy"])
    # a tokenizer that adds BOS keeps it; one that adds nothing gets the document-start EOS
    assert with_bos.context == (1, *plain.context[1:]) and plain.context[0] == tiny_tokenizer.eos_token_id
    assert with_bos.scored == plain.scored
    # nothing before the secret: condition on BOS, or on EOS when no BOS is added
    (empty_bos,) = secret_tokens(bos_tokenizer, "", ["eXy"])
    assert empty_bos.context == (1,)
    (empty_plain,) = secret_tokens(tiny_tokenizer, "", ["eXy"])
    assert empty_plain.context == (tiny_tokenizer.eos_token_id,)
    assert _decode(tiny_tokenizer, empty_plain.scored) == "eXy"


def test_candidates_get_their_own_contexts(tiny_tokenizer):
    spans = secret_tokens(tiny_tokenizer, "pass is th", ["eXy", "Xyz", "ere"])
    assert spans[0].context == spans[2].context != spans[1].context


def test_empty_candidate_rejected(tiny_tokenizer):
    with pytest.raises(ValueError):
        secret_tokens(tiny_tokenizer, "p", ["ok", ""])


# -- fast vs reference --------------------------------------------------------

CANDIDATES = [
    "4532 7153 3790 1241", "0000 0000 0000 0000", "1234", "9", "eXy", "Xyz", "ere", "the1",
    "aB3dE6gH9k", "a", "EMP-004211", "  x", "é ü",
]  # fmt: skip
PREFIXES = ["My card number is ", "pass is th", "pass is", "", "value=\n"]


def _cands(n: int = 60) -> list[str]:
    rng = random.Random(0)
    extra = ["%04d %04d" % (rng.randrange(10**4), rng.randrange(10**4)) for _ in range(n)]
    return CANDIDATES + extra


@pytest.mark.parametrize("arch", ["tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize("prefix", PREFIXES)
def test_fast_matches_reference(request, tiny_tokenizer, arch, prefix):
    model = request.getfixturevalue(arch)
    assert model_parts(model).split  # the fast head path is the one under test
    cands = _cands(8)
    fast = score_candidates(model, tiny_tokenizer, prefix, cands, batch_size=7)
    ref = score_candidates_reference(model, tiny_tokenizer, prefix, cands)
    assert fast.dtype == np.float64 and fast.shape == (len(cands),)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=TOL_BITS)
    assert np.all(fast > 0)


def test_fast_matches_reference_with_bos(tiny_llama, bos_tokenizer):
    cands = _cands(10)
    for prefix in ("My card number is ", ""):
        fast = score_candidates(tiny_llama, bos_tokenizer, prefix, cands, batch_size=4)
        ref = score_candidates_reference(tiny_llama, bos_tokenizer, prefix, cands)
        np.testing.assert_allclose(fast, ref, rtol=0, atol=TOL_BITS)


def test_full_logits_fallback_matches(tiny_gpt2, tiny_tokenizer, monkeypatch):
    # a soft-capping config means lm_head(hidden) is not the logits: the split is refused
    monkeypatch.setattr(tiny_gpt2.config, "final_logit_softcapping", 30.0, raising=False)
    assert not model_parts(tiny_gpt2).split
    cands = _cands(10)
    fast = score_candidates(tiny_gpt2, tiny_tokenizer, "pass is th", cands, batch_size=5)
    ref = score_candidates_reference(tiny_gpt2, tiny_tokenizer, "pass is th", cands)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=TOL_BITS)


def test_peft_lora_model_matches(tiny_gpt2, tiny_tokenizer):
    peft = pytest.importorskip("peft")
    import copy

    config = peft.LoraConfig(r=4, target_modules=["c_attn", "c_fc"], init_lora_weights=False, fan_in_fan_out=True)
    wrapped = peft.get_peft_model(copy.deepcopy(tiny_gpt2), config).eval()
    assert model_parts(wrapped).split
    cands = _cands(8)
    fast = score_candidates(wrapped, tiny_tokenizer, "pin: ", cands)
    ref = score_candidates_reference(wrapped, tiny_tokenizer, "pin: ", cands)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=TOL_BITS)
    # the adapters are live (random B): scores differ from the base model's
    base = score_candidates(tiny_gpt2, tiny_tokenizer, "pin: ", cands)
    assert np.abs(fast - base).max() > 1e-3


def test_batch_size_order_and_progress(tiny_gpt2, tiny_tokenizer):
    cands = _cands(30)
    calls: list[tuple[int, int]] = []
    a = score_candidates(tiny_gpt2, tiny_tokenizer, "pin: ", cands, batch_size=1000)
    b = score_candidates(
        tiny_gpt2, tiny_tokenizer, "pin: ", cands, batch_size=3,
        progress=lambda done, total: calls.append((done, total)),
    )  # fmt: skip
    np.testing.assert_allclose(a, b, rtol=0, atol=TOL_BITS)
    assert calls[-1] == (len(cands), len(cands))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    # results come back in input order, not in batching order
    rev = score_candidates(tiny_gpt2, tiny_tokenizer, "pin: ", cands[::-1], batch_size=3)
    np.testing.assert_allclose(rev[::-1], a, rtol=0, atol=TOL_BITS)


def test_score_is_minus_log2_probability(tiny_gpt2, tiny_tokenizer):
    """One-token secret by hand: -log2 softmax(logits at the context's last position)."""
    prefix, secret = "The value is", "9"
    (span,) = secret_tokens(tiny_tokenizer, prefix, [secret])
    assert len(span.scored) == 1
    with torch.no_grad():
        logits = tiny_gpt2(torch.tensor([span.context])).logits[0, -1]
    expected = -torch.log_softmax(logits.double(), -1)[span.scored[0]].item() / np.log(2)
    got = score_candidates(tiny_gpt2, tiny_tokenizer, prefix, [secret])[0]
    assert got == pytest.approx(expected, abs=TOL_BITS)


def test_bf16_close_and_mode_restored(tiny_gpt2, tiny_tokenizer):
    cands = _cands(10)
    full = score_candidates(tiny_gpt2, tiny_tokenizer, "pin: ", cands)
    tiny_gpt2.train()
    try:
        half = score_candidates(tiny_gpt2, tiny_tokenizer, "pin: ", cands, dtype="bf16")
        assert tiny_gpt2.training  # scoring ran in eval mode and put the mode back
    finally:
        tiny_gpt2.eval()
    np.testing.assert_allclose(half, full, rtol=0.03)
    with pytest.raises(ValueError):
        score_candidates(tiny_gpt2, tiny_tokenizer, "pin: ", cands, dtype="int8")


def test_token_span_api_and_bad_input(tiny_gpt2, tiny_tokenizer):
    spans = secret_tokens(tiny_tokenizer, "pin: ", ["1234", "99"])
    np.testing.assert_allclose(
        score_token_spans(tiny_gpt2, spans),
        score_candidates(tiny_gpt2, tiny_tokenizer, "pin: ", ["1234", "99"]),
        atol=TOL_BITS,
    )
    assert score_candidates(tiny_gpt2, tiny_tokenizer, "pin: ", []).shape == (0,)
    with pytest.raises(ValueError):
        score_candidates(tiny_gpt2, tiny_tokenizer, "pin: ", ["1"], batch_size=0)
