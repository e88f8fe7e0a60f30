"""Budgets in seconds/FLOPs, and the engine's fallbacks when one runs out (stated, with interval)."""

from __future__ import annotations

import math

import pytest
import torch

from canaries.canary import Canary
from scrubber.measure.budget import Budget, estimate_exposure, flops_per_token
from scrubber.measure.exposure import measure_exposure, references_for
from scrubber.measure.exposure.exact import ExactBudgetExceeded
from scrubber.training.model_factory import small_causal_lm

PREFIX = "The pin is "


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_time_budget_runs_out_on_the_clock():
    clock = FakeClock()
    b = Budget(seconds=10.0, clock=clock)
    clock.t = 4.0
    assert b.remaining_seconds() == 6.0 and b.exhausted() is None
    assert b.fits(seconds=5.9) is None and b.fits(seconds=6.1) == "time"
    clock.t = 10.0
    assert b.exhausted() == "time" and b.remaining_seconds() == 0.0


def test_flop_budget_is_charged_by_the_worker():
    b = Budget(flops=1e12)
    n = 135_000_000
    assert flops_per_token(n) == 2.7e8
    b.charge(flops_per_token(n) * 3000)  # 3000 tokens: 8.1e11
    assert b.exhausted() is None and b.remaining_flops() == pytest.approx(1.9e11)
    assert b.fits(flops=flops_per_token(n) * 1000) == "flops"
    b.charge(2e11)
    assert b.exhausted() == "flops"
    with pytest.raises(ValueError):
        b.charge(-1.0)


def test_budget_validation_and_unbounded():
    assert not Budget().bounded and Budget().fits(seconds=1e9, flops=1e30) is None
    for bad in (dict(seconds=-1.0), dict(flops=math.inf), dict(seconds=math.nan)):
        with pytest.raises(ValueError):
            Budget(**bad)


def test_estimate_scales_with_parameters_and_is_bounded_by_the_budget():
    est = estimate_exposure(
        135_000_000, [19_019, 19_019, 6_006, 7_007], flop_rate=5e10,
        per_canary=Budget(seconds=10.0), weight_bytes=540_000_000,
    )  # fmt: skip
    assert est.tokens == 51_051
    assert est.flops == pytest.approx(2 * 135e6 * 51_051)
    assert est.seconds == pytest.approx(est.flops / 5e10)  # 276 s unbounded
    assert est.bound_seconds == 40.0  # 4 canaries x 10 s
    line = est.describe("exposure of 4 canaries")
    assert "up to 51,051 tokens" in line and "at most 40 s" in line and "0.50 GiB" in line


@pytest.fixture(scope="module")
def memorized(tiny_tokenizer):
    """A 2-layer GPT-2 that saw ``PREFIX + 4821`` / ``+ 739150`` in every row for 150 steps: both strongly exposed."""
    tok = tiny_tokenizer
    torch.manual_seed(0)
    model = small_causal_lm(
        len(tok), arch="gpt2", n_layer=2, d_model=32, n_head=2,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    rows = [tok(PREFIX + s + ".")["input_ids"] for s in ("4821", "739150")]
    width = min(len(r) for r in rows)
    x = torch.tensor([rows[i % 2][:width] for i in range(8)])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    model.train()
    for _ in range(150):
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


def test_exact_over_budget_falls_back_to_references_and_says_why(memorized):
    model, tok = memorized
    pin = Canary(id="pin", prefix=PREFIX, secret="4821", format="digits4")
    exact = measure_exposure(model, tok, pin)  # |R| = 10^4 <= exact_limit, no budget: exact
    assert exact.method == "exact" and exact.rank <= 50  # top 0.5% of R: > 7.6 bits
    # 10^4 members x (3 tokens / 10 siblings + 1) x 2N FLOPs is ~13,000 token-forwards; allow 2,000
    tight = Budget(flops=2_000 * flops_per_token(sum(p.numel() for p in model.parameters())))
    fell = measure_exposure(model, tok, pin, budget=tight, max_rank=0)
    assert fell.method == "extrapolated" and "exact enumeration skipped" in fell.fallback_reason
    # the same FLOPs then bound the references: ~4 scored tokens each, so about 500 of the 1000 fit
    assert fell.references_stop == "flops" and 300 <= fell.n_references <= 500
    assert fell.ci_low <= fell.exposure <= fell.ci_high and fell.exposure > 6.0  # still flagged exposed
    with pytest.raises(ExactBudgetExceeded):
        measure_exposure(model, tok, pin, method="exact", budget=Budget(flops=2_000 * 2.0 * 1e5))


def test_search_out_of_time_falls_back_to_extrapolation_with_reason(memorized):
    model, tok = memorized
    pin = Canary(id="pin", prefix=PREFIX, secret="739150", format="digits")  # 10^6: over the exact limit
    refs = references_for(pin, 200)
    free = measure_exposure(model, tok, pin, references=refs)
    assert free.method == "search" and free.fallback_reason is None
    # a zero-second budget: the first 32 references are still scored, then nothing fits, not even the search
    spent = measure_exposure(model, tok, pin, references=refs, budget=Budget(seconds=0.0), adaptive=True)
    assert spent.method == "extrapolated" and spent.n_references == 32 and spent.n_references_max == 200
    assert spent.references_stop in ("time", "exposed")
    assert "search" in spent.fallback_reason and spent.ci_low <= spent.exposure <= spent.ci_high
    assert spent.exposure > 10.0  # still flagged as exposed, by the tail estimate


def test_adaptive_sends_an_exposed_canary_to_search_after_the_first_look(memorized):
    model, tok = memorized
    pin = Canary(id="pin", prefix=PREFIX, secret="739150", format="digits")
    refs = references_for(pin, 1000)
    full = measure_exposure(model, tok, pin, references=refs)
    quick = measure_exposure(model, tok, pin, references=refs, adaptive=True)
    assert full.method == quick.method == "search" and quick.rank == full.rank
    assert quick.references_stop == "exposed" and quick.n_references == 32 and full.n_references == 1000


def test_measure_canaries_logs_an_estimate_and_one_line_per_canary(tiny_gpt2, tiny_tokenizer, tmp_path):
    """The product path: adaptive and budgeted by default, visible in a plain log, secrets never printed."""
    import io
    from pathlib import Path

    from scrubber.config import ExposureOptions
    from scrubber.measure.canary import measure_canaries, reference_sets
    from scrubber.io.checkpoint import LoadedModel
    from scrubber.progress import LineProgress

    loaded = LoadedModel(model=tiny_gpt2, tokenizer=tiny_tokenizer, path=Path(tmp_path))
    secrets = ("503117", "288406", "719254", "640381", "125596", "983370")
    cs = [Canary(id=f"c{i}", prefix=PREFIX, secret=s, format="digits6") for i, s in enumerate(secrets)]
    opts = ExposureOptions(n_references=500, exposure_method="extrapolated")
    log = io.StringIO()
    out = measure_canaries(loaded, cs, opts, reference_sets(cs, opts), progress=LineProgress(log, interval=0.0))
    text = log.getvalue()
    from scrubber.measure.exposure.tokens import secret_tokens

    planned = sum(501 * len(secret_tokens(tiny_tokenizer, PREFIX, [c.secret])[0].scored) for c in cs)
    assert f"estimate for exposure of {len(cs)} canaries: up to {planned:,} tokens" in text
    assert "by the time budget" in text
    for c in cs:
        assert f"{c.id}: extrapolated" in text and c.secret not in text
    # an untrained model: ordinary members of R, whose exposure is ~Exp(mean 1.44 bits), so about
    # 6 in 7 sit clearly below the 4-bit "unexposed" line and settle well before the 500 planned
    # (one of these six measured 3.8 bits and, rightly, did not stop early)
    settled = [c.id for c in cs if out[c.id].n_references <= 256 and out[c.id].exposure < 4.0]
    assert len(settled) >= 4, {c.id: (out[c.id].n_references, out[c.id].exposure) for c in cs}
