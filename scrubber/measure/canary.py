"""One canary's measurement for the report: exposure plus the greedy-extraction check.

Product defaults live here, not in the engine (whose defaults are the plain
Secret Sharer protocol): each canary gets its own time budget
(:data:`scrubber.measure.budget.DEFAULT_EXPOSURE_SECONDS` unless the options say
otherwise) and adaptive reference counts, and a one-line cost estimate goes
to the progress log before the first canary.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from canaries import Canary
from scrubber.measure.budget import DEFAULT_EXPOSURE_SECONDS, Budget, CostEstimate, estimate_exposure, flops_per_token
from scrubber.config import ExposureOptions
from scrubber.measure.exposure.engine import ExposureResult, measure_exposure, references_for
from scrubber.measure.exposure.tokens import secret_tokens
from scrubber.measure.extraction import greedy_extracts
from scrubber.io.checkpoint import LoadedModel
from scrubber.progress import Progress, Silent
from scrubber.report import Measurement


ADAPTIVE_REFERENCES = True
"""Default of the sequential reference rule (until the options carry ``adaptive_references``)."""

# Engine fields the report carries under the same name once its schema has them (see the lead's notes).
_PASSED_THROUGH = ("fallback_reason", "n_references_max", "references_stop", "seconds")


def to_measurement(result: ExposureResult, extracted: bool) -> Measurement:
    extra = {k: getattr(result, k) for k in _PASSED_THROUGH if k in Measurement.model_fields}
    return Measurement(
        exposure=result.exposure,
        exposure_method=result.method,
        ci_low=result.ci_low,
        ci_high=result.ci_high,
        rank=result.rank,
        score_bits=result.score_bits,
        n_references=result.n_references or 0,
        capped=result.capped,
        extracted=extracted,
        reference_percentiles=result.reference_percentiles,
        reference_scores=result.reference_scores,
        **extra,
    )


def reference_sets(
    canaries: Sequence[Canary], opts: ExposureOptions
) -> dict[str, list[str]]:
    """Seeded references per canary, drawn once so before and after share them (as prefixes)."""
    return {c.id: references_for(c, opts.n_references, seed=opts.seed) for c in canaries}


def canary_budget(opts: ExposureOptions) -> Budget:
    """A fresh per-canary budget from the options (``exposure_seconds`` / ``exposure_flops``)."""
    return Budget(
        seconds=getattr(opts, "exposure_seconds", DEFAULT_EXPOSURE_SECONDS),
        flops=getattr(opts, "exposure_flops", None),
    )


@torch.inference_mode()
def measured_flop_rate(model: torch.nn.Module, n_tokens: int = 16) -> float:
    """Model FLOP/s on one short forward (``2 * n_parameters`` per token), for the time estimate.

    One row of ``n_tokens`` costs about as much as 16 scored tokens: cheap on
    any model, and a fair (if pessimistic: no batching) rate.
    """
    n_params = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device
    ids = torch.zeros((1, n_tokens), dtype=torch.long, device=device)
    was = model.training
    model.eval()
    try:
        model(input_ids=ids[:, :2])  # warm-up: first calls allocate
        t0 = time.perf_counter()
        model(input_ids=ids)
        dt = time.perf_counter() - t0
    finally:
        model.train(was)
    return flops_per_token(n_params) * n_tokens / max(dt, 1e-9)


def _activation_bytes(model: torch.nn.Module, rows: int, seq: int) -> int:
    """Scoring's peak beyond the weights: a batch's KV cache, hidden states, and the head's logits chunk."""
    cfg = getattr(model, "config", None)
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 1)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 1)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // max(1, heads)
    kv = 2 * layers * kv_heads * head_dim * rows * seq * 4
    return int(kv + 4 * rows * seq * hidden * 4 + 2**27)


def estimate_canaries(
    loaded: LoadedModel, canaries: Sequence[Canary], opts: ExposureOptions, n_max: dict[str, int]
) -> CostEstimate:
    """Planned reference tokens for every canary (at the maximum count) and what that costs."""
    model = loaded.model
    tokens = [
        (n_max.get(c.id, opts.n_references) + 1)
        * len(secret_tokens(loaded.tokenizer, c.prefix, [c.secret])[0].scored)
        for c in canaries
    ]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    seq = max((len(s.context) + len(s.scored)) for c in canaries
              for s in secret_tokens(loaded.tokenizer, c.prefix, [c.secret]))  # fmt: skip
    return estimate_exposure(
        loaded.n_parameters, tokens, flop_rate=measured_flop_rate(model), per_canary=canary_budget(opts),
        weight_bytes=weights, activation_bytes=_activation_bytes(model, opts.batch_size, seq),
    )  # fmt: skip


def describe_result(c: Canary, r: ExposureResult) -> str:
    """One log line per canary: method, exposure, interval, references used and why (no secret)."""
    ci = "" if r.ci_low is None else f" [{r.ci_low:.1f}, {r.ci_high:.1f}]"
    refs = "" if r.n_references is None else f", {r.n_references}/{r.n_references_max} references"
    stop = f" (stopped: {r.references_stop})" if r.references_stop else ""
    why = f"; fallback: {r.fallback_reason}" if r.fallback_reason else ""
    secs = f", {r.seconds:.1f} s" if r.seconds is not None else ""
    return f"{c.id}: {r.method} {r.exposure:.1f} bits{ci}{refs}{stop}{secs}{why}"


def measure_canaries(
    loaded: LoadedModel,
    canaries: Sequence[Canary],
    opts: ExposureOptions,
    references: dict[str, list[str]] | None = None,
    on_canary: Callable[[Canary], None] | None = None,
    progress: Progress | None = None,
) -> dict[str, Measurement]:
    """Measure every canary within its own budget; notes and a cost estimate go to ``progress``."""
    progress = progress or Silent()
    references = references or {}
    adaptive = getattr(opts, "adaptive_references", ADAPTIVE_REFERENCES)
    n_max = {c.id: len(references.get(c.id) or []) or opts.n_references for c in canaries}
    if canaries:
        progress.log(estimate_canaries(loaded, canaries, opts, n_max).describe(f"exposure of {len(canaries)} canaries"))
    out: dict[str, Measurement] = {}
    for c in canaries:
        with progress.stage(f"exposure {c.id}", total=n_max[c.id], unit="references") as advance:
            result = measure_exposure(
                loaded.model,
                loaded.tokenizer,
                c,
                method=opts.exposure_method,
                references=references.get(c.id),
                n_references=opts.n_references,
                exact_limit=opts.exact_limit,
                seed=opts.seed,
                batch_size=opts.batch_size,
                confidence=opts.confidence,
                progress=advance,
                budget=canary_budget(opts),
                adaptive=adaptive,
                notify=progress.log,
            )
        progress.log(describe_result(c, result))
        extracted = greedy_extracts(loaded.model, loaded.tokenizer, c.prefix, c.secret)
        out[c.id] = to_measurement(result, extracted)
        if on_canary:
            on_canary(c)
    return out
