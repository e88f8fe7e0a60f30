"""The one call the pipeline makes: a canary in, an exposure with its method and interval out.

Methods (all in bits, all capped at ``log2|R|``, the format's largest exposure):

* ``exact``: score every member of R (when ``|R| <= exact_limit``); the interval
  is the point itself.
* ``interpolated``: rank among N format-random references; Clopper-Pearson
  interval on the fraction of R that beats the canary.
* ``extrapolated``: skew-normal tail fitted to the references; bootstrap
  interval over the references.
* ``search``: exact rank by best-first search (:mod:`.search`), for secrets
  whose rank is small however large R is; the interval is the point itself.
  Raises :class:`~scrubber.exposure.search.SearchBudgetExceeded` when the rank
  exceeds ``max_rank`` or the search ``max_expansions``.
* ``auto``: exact when ``|R| <= exact_limit``; else the extrapolated estimate,
  and when that puts the rank at or below ``max_rank`` a search (within its
  budget) replaces it with the exact rank; otherwise extrapolated.
  ``max_rank=0`` turns that upgrade off.

References are drawn deterministically from ``seed`` and never include the
secret, so measuring before and after a scrub compares like with like.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Iterable, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedTokenizerBase

from canaries.canary import Canary
from scrubber.exposure import metrics
from scrubber.exposure.exact import DEFAULT_EXACT_LIMIT, exact_exposure
from scrubber.exposure.scoring import DType, Progress, score_candidates
from scrubber.exposure.search import (
    DEFAULT_MAX_EXPANSIONS,
    DEFAULT_MAX_RANK,
    SearchBudgetExceeded,
    SearchResult,
    SearchUnsupported,
    search_rank,
)

Method = Literal["auto", "exact", "search", "interpolated", "extrapolated"]
METHODS: tuple[str, ...] = ("auto", "exact", "search", "interpolated", "extrapolated")

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


class ExposureResult(BaseModel):
    """One canary's exposure, with how it was obtained and how sure we are (bits throughout)."""

    model_config = ConfigDict(frozen=True)

    exposure: float = Field(description="bits; capped at max_exposure")
    method: str = Field(description="exact | search | interpolated | extrapolated (the method actually used)")
    ci_low: float | None = Field(description="lower end of the confidence interval (bits)")
    ci_high: float | None = Field(description="upper end of the confidence interval (bits)")
    confidence: float | None = Field(description="level of [ci_low, ci_high]; None for exact")
    rank: int | None = Field(description="exact rank in R, or rank among references; None if extrapolated")
    score_bits: float = Field(description="the canary's log-perplexity -log2 p(secret | prefix)")
    max_exposure: float = Field(description="log2|R|, the largest exposure possible")
    n_references: int | None = Field(description="references scored; None for exact")
    capped: bool = Field(description="the estimate exceeded log2|R| and was cut to it")
    reference_percentiles: dict[str, float] = Field(
        description="percentiles p1..p99 of the reference (or, for exact, all other members') scores"
    )
    reference_scores: list[float] | None = Field(default=None, exclude=True, repr=False)

    def to_dict(self, *, with_reference_scores: bool = False) -> dict:
        """JSON-ready dict; reference scores (long) only on request, e.g. for plots."""
        out = self.model_dump()
        if with_reference_scores:
            out["reference_scores"] = self.reference_scores
        return out


def references_for(canary: Canary, n: int, seed: int = 0) -> list[str]:
    """``n`` uniform members of the canary's format, never its secret; the same for the same seed.

    Drawn with replacement, as the Secret Sharer protocol does.
    """
    if n < 1:
        raise ValueError(f"need at least one reference, got {n}")
    if canary.fmt.size < 2:
        raise ValueError(f"format {canary.format!r} has no member other than the secret")
    return canary.fmt.sample_many(n, random.Random(seed), exclude=[canary.secret])


def resolve_method(method: str, size: int, exact_limit: int) -> str:
    """The concrete method ``auto`` stands for, after checking the name.

    ``auto`` resolves to ``exact`` or ``extrapolated`` here; :func:`measure_exposure`
    may still upgrade an extrapolated estimate to an exact ``search`` rank.
    """
    if method not in METHODS:
        raise ValueError(f"unknown exposure method {method!r}: use one of {', '.join(METHODS)}")
    if method == "auto":
        return "exact" if size <= exact_limit else "extrapolated"
    return method


def _percentiles(scores: np.ndarray) -> dict[str, float]:
    values = np.percentile(scores, PERCENTILES)
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, values)}


def _checked_references(canary: Canary, references: Sequence[str]) -> list[str]:
    refs = list(references)
    if not refs:
        raise ValueError(f"canary {canary.id!r}: empty reference list")
    bad = sum(1 for r in refs if not canary.fmt.matches(r))
    if bad:
        raise ValueError(f"canary {canary.id!r}: {bad} references do not match format {canary.format!r}")
    if canary.secret in refs:
        raise ValueError(f"canary {canary.id!r}: the references include the canary's own secret")
    return refs


def measure_exposure(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    canary: Canary,
    *,
    method: Method = "auto",
    references: list[str] | None = None,
    n_references: int = 1000,
    exact_limit: int = DEFAULT_EXACT_LIMIT,
    seed: int = 0,
    batch_size: int = 256,
    dtype: DType = None,
    confidence: float = 0.95,
    n_boot: int = 200,
    keep_reference_scores: bool = True,
    progress: Progress | None = None,
    max_rank: int = DEFAULT_MAX_RANK,
    max_expansions: int = DEFAULT_MAX_EXPANSIONS,
    scorer: Callable[..., np.ndarray] = score_candidates,
) -> ExposureResult:
    """Exposure of ``canary`` in ``model``, by ``method`` (see the module docstring).

    ``scorer`` (signature of :func:`score_candidates`) scores the references
    and, for ``exact``, R; pass a sharded one to spread that over processes.
    The search is sequential and runs where it is called.
    """
    fmt = canary.fmt
    if not fmt.matches(canary.secret):
        raise ValueError(f"canary {canary.id!r}: secret does not match format {canary.format!r}")
    chosen = resolve_method(method, fmt.size, exact_limit)
    max_exposure = fmt.log2_size

    if chosen == "exact":
        ex = exact_exposure(
            model, tokenizer, canary.prefix, canary.secret, fmt,
            limit=exact_limit, batch_size=batch_size, dtype=dtype, progress=progress, scorer=scorer,
        )  # fmt: skip
        return ExposureResult(
            exposure=ex.exposure, method="exact", ci_low=ex.exposure, ci_high=ex.exposure,
            confidence=None, rank=ex.rank, score_bits=ex.score_bits, max_exposure=max_exposure,
            n_references=None, capped=False, reference_percentiles=_percentiles(ex.others),
            reference_scores=ex.others.tolist() if keep_reference_scores else None,
        )  # fmt: skip

    refs = (
        _checked_references(canary, references)
        if references is not None
        else references_for(canary, n_references, seed)
    )
    scores = scorer(
        model, tokenizer, canary.prefix, [canary.secret, *refs],
        batch_size=batch_size, dtype=dtype, progress=progress,
    )  # fmt: skip
    own, ref_scores = float(scores[0]), scores[1:]

    def from_search(found: SearchResult) -> ExposureResult:
        return ExposureResult(
            exposure=found.exposure, method="search", ci_low=found.exposure, ci_high=found.exposure,
            confidence=None, rank=found.rank, score_bits=found.score_bits, max_exposure=max_exposure,
            n_references=len(ref_scores), capped=False, reference_percentiles=_percentiles(ref_scores),
            reference_scores=ref_scores.tolist() if keep_reference_scores else None,
        )  # fmt: skip

    def search() -> SearchResult:
        return search_rank(
            model, tokenizer, canary.prefix, canary.secret, fmt, max_rank=max_rank,
            max_expansions=max_expansions, batch_size=batch_size, dtype=dtype,
        )  # fmt: skip

    if chosen == "search":
        found = search()
        if not found.exact:
            raise SearchBudgetExceeded(
                f"canary {canary.id!r}: search stopped at {found.stopped} after {found.expanded} "
                f"expansions with rank > {found.rank - 1}; raise max_rank/max_expansions or use "
                "method='extrapolated'"
            )
        return from_search(found)

    rank: int | None = None
    if chosen == "interpolated":
        rank = int(metrics.interpolated_rank(own, ref_scores))
        raw = math.log2(len(ref_scores)) - math.log2(rank)
        lo, hi = metrics.interpolated_interval(own, ref_scores, confidence, max_exposure=max_exposure)
    else:
        raw = float(metrics.exposure_extrapolated(own, ref_scores))
        lo, hi = metrics.extrapolated_interval(
            own, ref_scores, confidence, n_boot=n_boot, seed=seed, max_exposure=max_exposure
        )
    if method == "auto" and chosen == "extrapolated" and max_rank >= 1:
        # the tail estimate says how many members beat the canary: few -> count them exactly
        if max_exposure - raw <= math.log2(max_rank):
            try:
                found = search()
            except SearchUnsupported:
                found = None
            if found is not None and found.exact:
                return from_search(found)
    value, over = metrics.cap_exposure(raw, max_exposure)
    return ExposureResult(
        exposure=float(value), method=chosen, ci_low=lo, ci_high=hi, confidence=confidence,
        rank=rank, score_bits=own, max_exposure=max_exposure, n_references=len(ref_scores),
        capped=bool(over), reference_percentiles=_percentiles(ref_scores),
        reference_scores=ref_scores.tolist() if keep_reference_scores else None,
    )  # fmt: skip


def measure_many(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    canaries: Iterable[Canary],
    **kwargs,
) -> dict[str, ExposureResult]:
    """:func:`measure_exposure` for each canary, keyed by canary id (same keyword options for all)."""
    out: dict[str, ExposureResult] = {}
    for canary in canaries:
        if canary.id in out:
            raise ValueError(f"duplicate canary id {canary.id!r}")
        out[canary.id] = measure_exposure(model, tokenizer, canary, **kwargs)
    return out
