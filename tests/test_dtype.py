"""bf16 on CPU: loading, scoring, exposure and a scrub step agree with float32 within stated bounds.

Why: users with larger models load them in 16-bit. The figures must then be
the same figures (within a tolerance we measured), and the log-softmax that
turns logits into bits must run in float32: a bf16 log-softmax alone mis-
normalises a 400-token distribution by about 2e-3 (measured on this model),
which shows up directly in exposure ranks.

Measured on the ``card_model`` fixture (tiny GPT-2, card seen 30x), 301
candidates (secret + 300 references), 2026-12-01:
  bf16 weights vs float32: max |score gap| 0.27 bits (0.26 % relative);
  float32 weights under bf16 autocast: 0.22 bits (0.20 %);
  extrapolated exposure 8.93 bits (f32) vs 9.00 (bf16 weights) vs 8.92 (autocast).
The bounds below leave about 4x margin.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from canaries.canary import Canary
from conftest import CARD_PREFIX, CARD_SECRET, write_card_canary
from scrubber.measure.exposure.engine import measure_exposure, references_for
from scrubber.measure.exposure.scoring import score_candidates, score_token_spans
from scrubber.measure.exposure.tokens import SecretTokens
from scrubber.io.checkpoint import load_model

SCORE_ABS_BITS = 1.0
SCORE_REL = 0.01
EXPOSURE_BITS = 0.5
CANARY = Canary(id="card", prefix=CARD_PREFIX, secret=CARD_SECRET, format="credit_card", repetitions=30)


@pytest.fixture(scope="module")
def both(card_model):
    d, _ = card_model
    return load_model(d, dtype="float32"), load_model(d, dtype="bfloat16")


def test_bf16_load_really_is_bf16(both):
    f32, b16 = both
    assert f32.dtype == "float32" and b16.dtype == "bfloat16"
    assert {p.dtype for p in b16.model.parameters()} == {torch.bfloat16}


def test_log_softmax_is_float32_with_bf16_weights(both):
    """Probabilities of every next token sum to 1 within float32 precision, not bf16's.

    One-token spans use the context's last position (``_ContextRunner.first``),
    two-token spans the head path (``row_logprobs``); both must normalise.
    """
    _, b16 = both
    tok = b16.tokenizer
    ctx = tuple(tok(CARD_PREFIX)["input_ids"])
    vocab = range(len(tok))
    bits1 = score_token_spans(b16.model, [SecretTokens(ctx, (v,)) for v in vocab])
    assert abs((2.0 ** -bits1).sum() - 1) < 1e-5  # measured 4e-8; bf16 log-softmax: 1.9e-3
    first = int(np.argmin(bits1))
    bits2 = score_token_spans(b16.model, [SecretTokens(ctx, (first, v)) for v in vocab])
    assert abs((2.0 ** -bits2).sum() / 2.0 ** -bits1[first] - 1) < 1e-5  # measured 7e-7
    # The same check on a bf16 log-softmax fails by far, so the bound can tell them apart.
    with torch.no_grad():
        logits = b16.model(input_ids=torch.tensor([ctx])).logits[0, -1]
    bf16_sum = torch.log_softmax(logits.bfloat16(), dim=-1).double().exp().sum().item()
    assert abs(bf16_sum - 1) > 1e-4


@pytest.mark.parametrize("mode", ["bf16-weights", "bf16-autocast"])
def test_scores_and_exposure_match_float32(both, mode):
    f32, b16 = both
    model, dtype = (b16.model, None) if mode == "bf16-weights" else (f32.model, "bf16")
    refs = references_for(CANARY, 300)
    cands = [CARD_SECRET] + refs
    ref = score_candidates(f32.model, f32.tokenizer, CARD_PREFIX, cands)
    got = score_candidates(model, f32.tokenizer, CARD_PREFIX, cands, dtype=dtype)
    assert got.dtype == np.float64
    gap = np.abs(got - ref)
    assert 0 < gap.max() < SCORE_ABS_BITS  # > 0: the 16-bit path really ran
    assert (gap / np.abs(ref)).max() < SCORE_REL
    e32 = measure_exposure(f32.model, f32.tokenizer, CANARY, method="extrapolated", references=refs)
    e16 = measure_exposure(model, f32.tokenizer, CANARY, method="extrapolated", references=refs, dtype=dtype)
    assert e32.exposure > 5  # memorized: the comparison is on a figure that matters
    assert abs(e16.exposure - e32.exposure) < EXPOSURE_BITS


def test_bf16_scrub_step_through_pipeline(card_model, tmp_path):
    """``scrub`` with ``dtype: bfloat16`` loads, scores, updates and saves in bf16 and still scrubs."""
    from scrubber.config import ScrubConfig
    from scrubber.pipeline import save_scrubbed, scrub

    d, heldout = card_model
    canaries = write_card_canary(tmp_path / "c.jsonl")
    cfg = ScrubConfig(canaries=canaries, eval_data=heldout, n_references=200, dtype="bfloat16",
                      out=tmp_path / "out", tokenizer_scan=False)
    outcome = scrub(d, cfg, save=False)
    assert outcome.loaded.dtype == "bfloat16"
    assert {p.dtype for p in outcome.loaded.model.parameters()} == {torch.bfloat16}
    c = outcome.report.canaries[0]
    assert outcome.report.model.dtype == "bfloat16"
    assert c.before.exposure > 5
    # measured 9.96 -> 2.20 bits (float32: 2.12); before iterative kept a float32 master copy of
    # 16-bit weights, bf16 lost the small steps to rounding and ended at 3.88
    assert c.after.exposure < c.before.exposure - 2 and c.after.exposure <= 3.0, (c.before.exposure, c.after.exposure)
    save_scrubbed(outcome, tmp_path / "out", d)
    back = load_model(tmp_path / "out")
    assert back.dtype == "bfloat16"
