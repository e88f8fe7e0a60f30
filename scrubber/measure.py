"""One canary's measurement for the report: exposure plus the greedy-extraction check."""

from __future__ import annotations

from typing import Callable, Sequence

from canaries import Canary
from scrubber.exposure.engine import ExposureResult, measure_exposure, references_for
from scrubber.config import ExposureOptions
from scrubber.extraction import greedy_extracts
from scrubber.models import LoadedModel
from scrubber.report import Measurement


def to_measurement(result: ExposureResult, extracted: bool) -> Measurement:
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
    )


def reference_sets(
    canaries: Sequence[Canary], opts: ExposureOptions
) -> dict[str, list[str]]:
    """Seeded references per canary, drawn once so before and after share them."""
    return {c.id: references_for(c, opts.n_references, seed=opts.seed) for c in canaries}


def measure_canaries(
    loaded: LoadedModel,
    canaries: Sequence[Canary],
    opts: ExposureOptions,
    references: dict[str, list[str]] | None = None,
    on_canary: Callable[[Canary], None] | None = None,
) -> dict[str, Measurement]:
    out: dict[str, Measurement] = {}
    for c in canaries:
        result = measure_exposure(
            loaded.model,
            loaded.tokenizer,
            c,
            method=opts.exposure_method,
            references=(references or {}).get(c.id),
            n_references=opts.n_references,
            exact_limit=opts.exact_limit,
            seed=opts.seed,
            batch_size=opts.batch_size,
            confidence=opts.confidence,
        )
        extracted = greedy_extracts(loaded.model, loaded.tokenizer, c.prefix, c.secret)
        out[c.id] = to_measurement(result, extracted)
        if on_canary:
            on_canary(c)
    return out
