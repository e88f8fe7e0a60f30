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
from typing import Callable, Iterator

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from canaries.formats import SecretFormat
from scrubber.exposure.scoring import DType, Progress, score_candidates

DEFAULT_EXACT_LIMIT = 100_000

# Members tokenized and scored per call: bounds memory for limits far above the default.
_CHUNK = 65_536


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


def _chunks(it: Iterator[str], size: int) -> Iterator[list[str]]:
    while chunk := list(itertools.islice(it, size)):
        yield chunk


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
) -> ExactExposure:
    """Score all of R (``fmt.size <= limit``) and rank ``secret`` among it.

    The secret's own score is taken from the same enumeration pass, so it is
    compared with the others under identical batching and arithmetic.
    ``scorer`` (signature of :func:`score_candidates`) lets a caller shard the
    work, e.g. :func:`scrubber.exposure.distributed.sharded_scorer`.
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
    for chunk in _chunks(fmt.enumerate(), _CHUNK):
        offset = done

        def report(n: int, _: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + n, total)

        scores[offset : offset + len(chunk)] = scorer(
            model, tokenizer, prefix, chunk, batch_size=batch_size, dtype=dtype, progress=report
        )
        done += len(chunk)
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
