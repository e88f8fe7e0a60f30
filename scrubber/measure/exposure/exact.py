"""Exact exposure by scoring every member of a small secret space R.

With the whole of R scored there is nothing to estimate:
``rank = 1 + #{members other than the secret scoring <= the secret}`` (ties
count against the secret) and ``exposure = log2|R| - log2 rank``, between 0
(the secret is the least likely member) and ``log2|R|`` (the most likely).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from canaries.formats import SecretFormat
from scrubber.measure.budget import Budget
from scrubber.measure.exposure.scoring import DType, Progress, score_candidates

DEFAULT_EXACT_LIMIT = 100_000

# Members tokenized and scored per call: bounds memory for limits far above the default.
_CHUNK = 65_536
# Under a budget the first chunk is small, so the cost of the rest is predicted early.
_FIRST_BUDGETED_CHUNK = 1_024


class ExactBudgetExceeded(RuntimeError):
    """Enumerating R would not fit the budget; raised as soon as that is predicted."""

    def __init__(self, message: str, *, done: int, total: int, predicted_seconds: float | None,
                 predicted_flops: float | None) -> None:
        super().__init__(message)
        self.done, self.total = done, total
        self.predicted_seconds, self.predicted_flops = predicted_seconds, predicted_flops


@dataclass(frozen=True)
class ExactExposure:
    """Rank and exposure of a secret within all of R, plus every other member's score (bits)."""

    rank: int
    exposure: float
    score_bits: float
    max_exposure: float
    others: np.ndarray  # scores of R without the secret, in enumeration order


def exact_rank(secret_score: float, other_scores: np.ndarray) -> int:
    """``1 + #{other members scoring <= the secret}``."""
    return 1 + int(np.count_nonzero(np.asarray(other_scores) <= secret_score))


def _check_fits(budget: Budget, done: int, total: int, seconds_each: float, flops_each: float) -> None:
    left = total - done
    need_s, need_f = seconds_each * left, flops_each * left
    broken = budget.fits(seconds=need_s, flops=need_f)
    if broken is None:
        return
    need = f"≈ {need_s:.0f} s" if broken == "time" else f"≈ {need_f:.2g} FLOPs"
    raise ExactBudgetExceeded(
        f"enumerating the remaining {left:,} of {total:,} members needs {need}, over the "
        f"{budget.describe()} budget",
        done=done, total=total,
        predicted_seconds=need_s if seconds_each else None, predicted_flops=need_f if flops_each else None,
    )  # fmt: skip


def exact_exposure(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prefix: str,
    secret: str,
    fmt: SecretFormat,
    *,
    limit: int = DEFAULT_EXACT_LIMIT,
    batch_size: int = 256,
    dtype: DType = None,
    progress: Progress | None = None,
    scorer: Callable[..., np.ndarray] = score_candidates,
    budget: Budget | None = None,
    flops_per_member: float = 0.0,
) -> ExactExposure:
    """Score all of R (``fmt.size <= limit``) and rank ``secret`` among it.

    The secret's own score is taken from the same enumeration pass, so it is
    compared with the others under identical batching and arithmetic.
    ``scorer`` (signature of :func:`score_candidates`) lets a caller shard the
    work, e.g. :func:`scrubber.measure.exposure.distributed.sharded_scorer`.

    Under a ``budget`` the members are scored in growing chunks (the first of
    1,024); after each, the time (at the rate measured so far) and FLOPs
    (``flops_per_member`` each, charged to the budget) of the rest are
    predicted, and :class:`ExactBudgetExceeded` is raised as soon as they do
    not fit, instead of after the budget is gone.
    """
    if not fmt.matches(secret):
        raise ValueError(f"the secret does not match format {fmt.name!r}")
    total = fmt.size
    if total > limit:
        raise ValueError(
            f"format {fmt.name!r} has {total} members, over the exact-enumeration limit {limit}"
        )
    scores = np.empty(total, dtype=np.float64)
    done = 0
    bounded = budget is not None and budget.bounded
    if bounded and flops_per_member > 0:
        _check_fits(budget, 0, total, 0.0, flops_per_member)
    t0 = budget.elapsed if bounded else 0.0
    size = _FIRST_BUDGETED_CHUNK if bounded else _CHUNK
    members = fmt.enumerate()
    while chunk := list(itertools.islice(members, size)):
        offset = done

        def report(n: int, _: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + n, total)

        scores[offset : offset + len(chunk)] = scorer(
            model, tokenizer, prefix, chunk, batch_size=batch_size, dtype=dtype, progress=report
        )
        done += len(chunk)
        if bounded:
            budget.charge(flops_per_member * len(chunk))
            if done < total:
                _check_fits(budget, done, total, (budget.elapsed - t0) / done, flops_per_member)
            size = min(_CHUNK, 4 * size)
    idx = fmt.index_of(secret)
    own = float(scores[idx])
    others = np.delete(scores, idx)
    rank = exact_rank(own, others)
    return ExactExposure(
        rank=rank,
        exposure=math.log2(total) - math.log2(rank),
        score_bits=own,
        max_exposure=fmt.log2_size,
        others=others,
    )
