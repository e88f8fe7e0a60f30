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
  Raises :class:`~scrubber.measure.exposure.search.SearchBudgetExceeded` when the rank
  exceeds ``max_rank`` or the search runs out of budget.
* ``auto``: exact when ``|R| <= exact_limit``; else the extrapolated estimate,
  and when that puts the rank at or below ``max_rank`` a search (within its
  budget) replaces it with the exact rank; otherwise extrapolated.
  ``max_rank=0`` turns that upgrade off.

Budgets (:class:`scrubber.measure.budget.Budget`, per canary; none by default): the
exact enumeration stops as soon as its remaining cost is predicted not to
fit, and ``auto`` falls back to references; references are scored in batches
and stop when the next would not fit (the first ``first_references`` are
always scored); the search gets what is left (``max_seconds``, and FLOPs as
expansions).  Whenever a budget, or an unsupported tokenizer, makes the
method used differ from the one intended, ``fallback_reason`` says why, and
what an interrupted search proved (at least ``rank - 1`` members beat the
canary) still caps the estimate and its interval.

Adaptive references (sequential estimation, ``adaptive=True``): references
are scored in doubling batches (32, 64, 128, ... up to ``n_references``, the
maximum); after each, scoring stops when

* the canary is plainly unexposed: the Clopper-Pearson upper bound, at a
  Bonferroni-corrected level over the planned looks, is below
  ``unexposed_bits`` (``references_stop="unexposed"``);
* under ``auto``, it beats every reference and the tail estimate puts its
  rank within ``max_rank``: it goes to search (``"exposed"``);
* under ``search``, after the first batch (``"search"``, the references only
  give percentiles).

The reported estimate and interval come from the references actually
scored (``n_references``), at the nominal ``confidence``.

Like with like: references are drawn deterministically from ``seed`` and
never include the secret, and every measurement uses a *prefix* of that same
list, its length fixed by the rule above.  Before and after a scrub the
canary is thus compared against the same members of R, the after-measurement
using at least the first 32; each interval reflects its own count.
"""

from __future__ import annotations

import math
import random
import time
from typing import Callable, Iterable, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedTokenizerBase

from canaries.canary import Canary
from scrubber.measure.exposure import metrics
from scrubber.measure.budget import Budget, flops_per_token
from scrubber.measure.exposure.exact import DEFAULT_EXACT_LIMIT, ExactBudgetExceeded, exact_exposure
from scrubber.measure.exposure.scoring import DType, Progress, score_candidates
from scrubber.measure.exposure.search import (
    DEFAULT_MAX_EXPANSIONS,
    DEFAULT_MAX_RANK,
    SearchBudgetExceeded,
    SearchResult,
    SearchUnsupported,
    search_rank,
)
from scrubber.measure.exposure.tokens import secret_tokens

Method = Literal["auto", "exact", "search", "interpolated", "extrapolated"]
METHODS: tuple[str, ...] = ("auto", "exact", "search", "interpolated", "extrapolated")

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)

DEFAULT_FIRST_REFERENCES = 32
"""References scored before the sequential rule's first look (always scored, whatever the budget)."""
DEFAULT_UNEXPOSED_BITS = 4.0
"""Stop early when the exposure's upper bound is below this: the canary is not in R's best 1/16."""
_MIN_BATCH = 8  # a budget-shrunk batch smaller than this is not worth a model call


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
    n_references: int | None = Field(description="references actually scored; None for exact")
    capped: bool = Field(description="the estimate exceeded log2|R| and was cut to it")
    reference_percentiles: dict[str, float] = Field(
        description="percentiles p1..p99 of the reference (or, for exact, all other members') scores"
    )
    n_references_max: int | None = Field(
        default=None, description="references planned (the seeded list's length); None for exact"
    )
    references_stop: str | None = Field(
        default=None,
        description="why fewer than n_references_max were scored: unexposed | exposed | search | time | "
        "flops; None when all were",
    )
    fallback_reason: str | None = Field(
        default=None, description="why the method used is not the one intended (budget, unsupported search)"
    )
    seconds: float | None = Field(default=None, description="wall-clock seconds spent on this canary")
    reference_scores: list[float] | None = Field(default=None, exclude=True, repr=False)

    def to_dict(self, *, with_reference_scores: bool = False) -> dict:
        """JSON-ready dict; reference scores (long) only on request, e.g. for plots."""
        out = self.model_dump()
        if with_reference_scores:
            out["reference_scores"] = self.reference_scores
        return out


def references_for(canary: Canary, n: int, seed: int = 0) -> list[str]:
    """``n`` uniform members of the canary's format, never its secret; the same for the same seed.

    Drawn with replacement, as the Secret Sharer protocol does.  Every prefix
    of the list is itself a uniform sample, which is what lets the sequential
    rule stop early and still compare like with like.
    """
    if n < 1:
        raise ValueError(f"need at least one reference, got {n}")
    if canary.fmt.size < 2:
        raise ValueError(f"format {canary.format!r} has no member other than the secret")
    return canary.fmt.sample_many(n, random.Random(seed), exclude=[canary.secret])


def reference_schedule(n_max: int, first: int = DEFAULT_FIRST_REFERENCES) -> list[int]:
    """Cumulative reference counts at which the sequential rule looks: first, 2·first, 4·first, ..., n_max."""
    if n_max < 1 or first < 1:
        raise ValueError("n_max and first must be at least 1")
    out, n = [], min(first, n_max)
    while n < n_max:
        out.append(n)
        n *= 2
    out.append(n_max)
    return out


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


def _searchable(raw_exposure: float, max_exposure: float, max_rank: int) -> bool:
    """The tail estimate puts the rank at or below ``max_rank``: few members beat it, count them."""
    return max_rank >= 1 and max_exposure - raw_exposure <= math.log2(max_rank)


def clearly_unexposed(
    own: float, ref_scores: np.ndarray, *, looks: int, confidence: float, unexposed_bits: float,
    max_exposure: float,
) -> bool:  # fmt: skip
    """The sequential rule's "stop, unexposed": the interval's upper end is below ``unexposed_bits``.

    Uses the distribution-free Clopper-Pearson interval on the fraction of R
    beating the canary, at level ``1 - (1 - confidence) / looks`` (Bonferroni
    over the planned looks), so that looking after every batch does not make
    a wrongly early stop likelier than ``1 - confidence`` overall.
    """
    per_look = 1.0 - (1.0 - confidence) / max(1, looks)
    _, hi = metrics.interpolated_interval(own, ref_scores, per_look, max_exposure=max_exposure)
    return hi < unexposed_bits


def _n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
    budget: Budget | None = None,
    adaptive: bool = False,
    first_references: int = DEFAULT_FIRST_REFERENCES,
    unexposed_bits: float = DEFAULT_UNEXPOSED_BITS,
    notify: Callable[[str], None] | None = None,
) -> ExposureResult:
    """Exposure of ``canary`` in ``model``, by ``method`` (see the module docstring).

    ``scorer`` (signature of :func:`score_candidates`) scores the references
    and, for ``exact``, R; pass a sharded one to spread that over processes.
    The search is sequential and runs where it is called.

    ``budget`` bounds this canary's work (see the module docstring for what
    happens when it runs out); ``adaptive`` turns on the sequential reference
    rule (``n_references`` / the list given is then the maximum).  The
    defaults (no budget, not adaptive) are the plain Secret Sharer protocol;
    :func:`scrubber.measure.canary.measure_canaries` turns both on.  ``notify``
    receives one-line notes (search started, fallbacks) for a progress log.
    """
    t_start = time.perf_counter()
    fmt = canary.fmt
    if not fmt.matches(canary.secret):
        raise ValueError(f"canary {canary.id!r}: secret does not match format {canary.format!r}")
    chosen = resolve_method(method, fmt.size, exact_limit)
    max_exposure = fmt.log2_size
    budget = budget if budget is not None and budget.bounded else None
    note = notify or (lambda _msg: None)
    fallback: str | None = None

    # cost model: scored tokens per candidate (the canary's own count) x 2 x n_parameters
    n_tokens = 1
    flop_tok = 0.0
    if budget is not None:
        n_tokens = max(1, len(secret_tokens(tokenizer, canary.prefix, [canary.secret])[0].scored))
        flop_tok = flops_per_token(_n_parameters(model))

    if chosen == "exact":
        last = fmt.slots[-1]
        per_member = flop_tok * (max(1, n_tokens - 1) / max(1, last.size) + 1)  # siblings share a row
        try:
            ex = exact_exposure(
                model, tokenizer, canary.prefix, canary.secret, fmt, limit=exact_limit,
                batch_size=batch_size, dtype=dtype, progress=progress, scorer=scorer,
                budget=budget, flops_per_member=per_member,
            )  # fmt: skip
        except ExactBudgetExceeded as err:
            if method == "exact":
                raise
            fallback = f"exact enumeration skipped: {err}"
            note(f"{canary.id}: {fallback}")
            chosen = "extrapolated"
        else:
            return ExposureResult(
                exposure=ex.exposure, method="exact", ci_low=ex.exposure, ci_high=ex.exposure,
                confidence=None, rank=ex.rank, score_bits=ex.score_bits, max_exposure=max_exposure,
                n_references=None, capped=False, reference_percentiles=_percentiles(ex.others),
                reference_scores=ex.others.tolist() if keep_reference_scores else None,
                seconds=time.perf_counter() - t_start,
            )  # fmt: skip

    refs = (
        _checked_references(canary, references)
        if references is not None
        else references_for(canary, n_references, seed)
    )
    n_max = len(refs)
    looks = reference_schedule(n_max, first_references) if adaptive or budget is not None else [n_max]
    wants_search = method == "auto" and chosen == "extrapolated" and max_rank >= 1
    own: float | None = None
    parts: list[np.ndarray] = []
    n_done = 0
    stop: str | None = None
    t_refs = time.perf_counter()
    for i, target in enumerate(looks):
        want = target - n_done
        if i > 0 and budget is not None:
            per_ref = (time.perf_counter() - t_refs) / n_done
            left_s, left_f = budget.remaining_seconds(), budget.remaining_flops()
            fit = want
            if left_s is not None:
                fit = min(fit, int(left_s / per_ref) if per_ref > 0 else want)
            if left_f is not None:
                fit = min(fit, int(left_f / (flop_tok * n_tokens)) if flop_tok > 0 else want)
            if fit < want:
                stop = budget.fits(seconds=want * per_ref, flops=want * flop_tok * n_tokens) or "time"
                if fit < _MIN_BATCH:
                    break
                want = fit
        batch = refs[n_done : n_done + want]
        cands = batch if own is not None else [canary.secret, *batch]
        offset = n_done

        def report(done: int, _total: int, offset: int = offset, extra: int = len(cands) - len(batch)) -> None:
            if progress is not None:
                progress(min(n_max, offset + max(0, done - extra)), n_max)

        scores = scorer(
            model, tokenizer, canary.prefix, cands, batch_size=batch_size, dtype=dtype, progress=report,
        )  # fmt: skip
        if budget is not None:
            budget.charge(flop_tok * n_tokens * len(cands))
        if own is None:
            own, scores = float(scores[0]), scores[1:]
        parts.append(np.asarray(scores, dtype=np.float64))
        n_done += len(batch)
        if stop is not None:
            break  # the budget shrank this batch: nothing more fits
        if n_done >= n_max or not adaptive:
            continue
        ref_now = np.concatenate(parts)
        if chosen == "search":
            stop = "search"
        elif clearly_unexposed(
            own, ref_now, looks=len(looks), confidence=confidence, unexposed_bits=unexposed_bits,
            max_exposure=max_exposure,
        ):  # fmt: skip
            stop = "unexposed"
        elif wants_search and np.all(ref_now > own) and np.unique(ref_now).size >= 3:
            if _searchable(float(metrics.exposure_extrapolated(own, ref_now)), max_exposure, max_rank):
                stop = "exposed"
        if stop is not None:
            break
    assert own is not None
    ref_scores = np.concatenate(parts)
    if stop in ("time", "flops"):
        note(f"{canary.id}: {stop} budget ({budget.describe() if budget else ''}) reached after "
             f"{n_done} of {n_max} references")  # fmt: skip

    common = dict(
        score_bits=own, max_exposure=max_exposure, n_references=n_done, n_references_max=n_max,
        references_stop=stop, reference_percentiles=_percentiles(ref_scores),
        reference_scores=ref_scores.tolist() if keep_reference_scores else None,
    )  # fmt: skip

    def from_search(found: SearchResult, why: str | None) -> ExposureResult:
        return ExposureResult(
            exposure=found.exposure, method="search", ci_low=found.exposure, ci_high=found.exposure,
            confidence=None, rank=found.rank, capped=False, fallback_reason=why,
            seconds=time.perf_counter() - t_start, **common | {"score_bits": found.score_bits},
        )  # fmt: skip

    def search() -> SearchResult | str:
        """The search within what is left of the budget, or why it was not run."""
        kwargs: dict = {}
        limit = max_expansions
        if budget is not None:
            left_s, left_f = budget.remaining_seconds(), budget.remaining_flops()
            if (left_s is not None and left_s <= 0) or (left_f is not None and left_f <= 0):
                return f"no {budget.exhausted() or 'time'} budget left for the search ({budget.describe()})"
            per_expansion = flop_tok * max(1.0, n_tokens / 2)  # a node re-runs its path: half a secret on average
            if left_f is not None:
                limit = min(limit, max(1, int(left_f / per_expansion)))
            if left_s is not None:
                kwargs["max_seconds"] = left_s
            note(f"{canary.id}: exact-rank search, budget {left_s if left_s is not None else float('inf'):.1f} s")
        found = search_rank(
            model, tokenizer, canary.prefix, canary.secret, fmt, max_rank=max_rank,
            max_expansions=limit, batch_size=batch_size, dtype=dtype, **kwargs,
        )  # fmt: skip
        if budget is not None:
            budget.charge(found.expanded * flop_tok * max(1.0, n_tokens / 2))
        return found

    if chosen == "search":
        found = search()
        if isinstance(found, str) or not found.exact:
            why = found if isinstance(found, str) else (
                f"search stopped at {found.stopped} after {found.expanded} expansions with rank > {found.rank - 1}"
            )
            raise SearchBudgetExceeded(
                f"canary {canary.id!r}: {why}; raise max_rank/max_expansions or the time budget, or use "
                "method='extrapolated'"
            )
        return from_search(found, fallback)

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
    value, over = metrics.cap_exposure(raw, max_exposure)
    value = float(value)
    if wants_search and _searchable(raw, max_exposure, max_rank):
        try:
            found = search()
        except SearchUnsupported as err:
            found = f"search unsupported: {err}"
        if isinstance(found, SearchResult) and found.exact:
            return from_search(found, fallback)
        if isinstance(found, SearchResult):
            why = (
                f"search stopped ({found.stopped}) after {found.expanded:,} expansions in "
                f"{found.seconds:.1f} s with {found.found} members proven to beat the canary"
            )
            # what the search did prove still bounds the estimate: rank >= found.rank
            value, lo, hi = min(value, found.exposure), min(lo, found.exposure), min(hi, found.exposure)
        else:
            why = found
        fallback = f"{fallback}; {why}" if fallback else why
        note(f"{canary.id}: {why}; reporting the {chosen} estimate")
    return ExposureResult(
        exposure=value, method=chosen, ci_low=lo, ci_high=hi, confidence=confidence,
        rank=rank, capped=bool(over), fallback_reason=fallback,
        seconds=time.perf_counter() - t_start, **common,
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
