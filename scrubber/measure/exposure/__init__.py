"""Exposure of secrets in causal LMs (Carlini et al., "The Secret Sharer"), in bits.

Layers, bottom up: :mod:`.tokens` (which tokens are the secret's), :mod:`.head`
(body/LM-head split), :mod:`.scoring` (log-perplexities of candidates, fast and
reference), :mod:`.metrics` (interpolated / extrapolated exposure and their
intervals), :mod:`.exact` (enumerate small spaces), :mod:`.search` (exact rank of
well-exposed secrets in large spaces), :mod:`.distributed` (shard scoring with
accelerate), :mod:`.engine` (one call per
canary, method chosen automatically).
"""

from scrubber.measure.exposure.engine import (
    METHODS,
    ExposureResult,
    measure_exposure,
    measure_many,
    references_for,
    resolve_method,
)
from scrubber.measure.exposure.exact import ExactExposure, exact_exposure, exact_rank
from scrubber.measure.exposure.metrics import (
    cap_exposure,
    exposure_extrapolated,
    exposure_from_fit,
    exposure_interpolated,
    extrapolated_interval,
    fit_skewnorm,
    interpolated_interval,
    interpolated_rank,
)
from scrubber.measure.exposure.scoring import (
    score_candidates,
    score_candidates_reference,
    score_token_spans,
)
from scrubber.measure.exposure.search import (
    SearchBudgetExceeded,
    SearchResult,
    SearchUnsupported,
    search_rank,
)
from scrubber.measure.exposure.tokens import SecretTokens, secret_tokens

__all__ = [
    "METHODS",
    "ExactExposure",
    "ExposureResult",
    "SearchBudgetExceeded",
    "SearchResult",
    "SearchUnsupported",
    "SecretTokens",
    "cap_exposure",
    "exact_exposure",
    "exact_rank",
    "exposure_extrapolated",
    "exposure_from_fit",
    "exposure_interpolated",
    "extrapolated_interval",
    "fit_skewnorm",
    "interpolated_interval",
    "interpolated_rank",
    "measure_exposure",
    "measure_many",
    "references_for",
    "resolve_method",
    "score_candidates",
    "score_candidates_reference",
    "score_token_spans",
    "search_rank",
    "secret_tokens",
]
