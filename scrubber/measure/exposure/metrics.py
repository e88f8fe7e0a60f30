"""Exposure from scores: interpolated (rank among references) and extrapolated (skew-normal tail).

Units: every *score* is a log-perplexity in bits (``-log2 p(secret | prefix)``,
lower = more likely); every *exposure* is in bits too.  An exposure of ``e``
bits says the canary is about as likely as the best ``2**-e`` fraction of the
format's space R; it can never meaningfully exceed ``log2|R|``.

Semantics follow tensorflow-privacy's ``secret_sharer/exposures.py``:

* ``compute_exposure_interpolation`` sorts canaries and references together and
  sets ``rank = 1 + (number of references sorted before the canary)``; other
  canaries never count, and ``exposure = log2 N - log2 rank`` with N the number
  of references.  Its ``np.argsort`` is not stable, so ties between a canary
  and a reference fall either way; we break them against the canary (a
  reference scoring *equal* counts as better), as the Secret Sharer's
  definition of rank does.  Hence exposure lies in
  ``[log2 N - log2(N+1), log2 N]``: it is slightly *negative*
  (``-log2(1 + 1/N)``) exactly when the canary scores worse than every
  reference, and at most ``log2 N`` however well the canary is memorized.
* ``compute_exposure_extrapolation`` fits ``scipy.stats.skewnorm`` to the
  references by maximum likelihood and returns ``-log2 CDF(canary score)``;
  it can exceed ``log2 N``.  We evaluate it as ``-logcdf / ln 2`` so far tails
  do not underflow to ``inf``.

``max_exposure`` (the format's ``log2|R|``) caps either; :func:`cap_exposure`
also says which values the cap changed, since a capped number is a bound, not
a measurement.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence, TypeVar, Union

import numpy as np
from scipy import stats

from scrubber.measure.exposure.skewfit import SkewNormParams, fit_skewnorm as _mle, refit_weighted

ArrayLike = Union[float, Sequence[float], np.ndarray]
K = TypeVar("K")

_LN2 = math.log(2.0)


def _references(reference_scores: ArrayLike) -> np.ndarray:
    ref = np.asarray(reference_scores, dtype=np.float64).ravel()
    if ref.size == 0:
        raise ValueError("no reference scores")
    if not np.all(np.isfinite(ref)):
        raise ValueError("reference scores must be finite numbers")
    return ref


def _canaries(canary_scores: ArrayLike) -> np.ndarray:
    arr = np.asarray(canary_scores, dtype=np.float64)
    if np.any(np.isnan(arr)):
        raise ValueError("canary score is NaN")
    return arr


def _shape_like(canary_scores: ArrayLike, values: np.ndarray) -> float | np.ndarray:
    return float(values) if np.ndim(canary_scores) == 0 else values


def _per_key(fn, canary_scores: Mapping[K, ArrayLike], *args, **kwargs) -> dict[K, np.ndarray]:
    return {k: np.asarray(fn(np.asarray(v, dtype=np.float64), *args, **kwargs)) for k, v in canary_scores.items()}


def cap_exposure(exposure: ArrayLike, max_exposure: float | None) -> tuple[np.ndarray, np.ndarray]:
    """``(min(exposure, max_exposure), exposure > max_exposure)``; no cap when ``max_exposure`` is None."""
    e = np.asarray(exposure, dtype=np.float64)
    if max_exposure is None:
        return e, np.zeros(e.shape, dtype=bool)
    over = e > max_exposure
    return np.where(over, max_exposure, e), over


def interpolated_rank(canary_scores: ArrayLike, reference_scores: ArrayLike) -> int | np.ndarray:
    """``1 + #{references scoring <= canary}`` (a tie counts against the canary)."""
    ref = np.sort(_references(reference_scores))
    c = _canaries(canary_scores)
    ranks = 1 + np.searchsorted(ref, c, side="right")
    return int(ranks) if np.ndim(canary_scores) == 0 else ranks


def exposure_interpolated(
    canary_scores: ArrayLike | Mapping[K, ArrayLike],
    reference_scores: ArrayLike,
    *,
    max_exposure: float | None = None,
) -> float | np.ndarray | dict[K, np.ndarray]:
    """``log2 N - log2 rank`` in bits for each canary score (see the module docstring).

    Accepts a scalar, an array, or tensorflow-privacy's ``{repetitions: scores}`` dict.
    """
    if isinstance(canary_scores, Mapping):
        return _per_key(exposure_interpolated, canary_scores, reference_scores, max_exposure=max_exposure)
    n = _references(reference_scores).size
    rank = np.asarray(interpolated_rank(canary_scores, reference_scores), dtype=np.float64)
    exposure, _ = cap_exposure(math.log2(n) - np.log2(rank), max_exposure)
    return _shape_like(canary_scores, exposure)


def fit_skewnorm(reference_scores: ArrayLike) -> SkewNormParams:
    """Maximum-likelihood skew-normal fit to the reference scores (as tensorflow-privacy does)."""
    ref = _references(reference_scores)
    if np.unique(ref).size < 3:
        raise ValueError("need at least 3 distinct reference scores to fit a skew-normal")
    return _mle(ref)


def exposure_from_fit(
    canary_scores: ArrayLike, params: SkewNormParams, *, max_exposure: float | None = None
) -> float | np.ndarray:
    """``-log2 CDF(score)`` under an already fitted skew-normal (bits; ``inf`` if the CDF is 0)."""
    c = _canaries(canary_scores)
    exposure = -stats.skewnorm.logcdf(c, *params) / _LN2
    exposure, _ = cap_exposure(np.maximum(exposure, 0.0), max_exposure)
    return _shape_like(canary_scores, exposure)


def exposure_extrapolated(
    canary_scores: ArrayLike | Mapping[K, ArrayLike],
    reference_scores: ArrayLike,
    *,
    max_exposure: float | None = None,
) -> float | np.ndarray | dict[K, np.ndarray]:
    """``-log2 CDF_skewnorm(canary score)`` in bits, the skew-normal fitted to the references.

    Accepts a scalar, an array, or a ``{key: scores}`` dict (one fit for all).
    """
    params = fit_skewnorm(reference_scores)
    if isinstance(canary_scores, Mapping):
        return _per_key(exposure_from_fit, canary_scores, params, max_exposure=max_exposure)
    return exposure_from_fit(canary_scores, params, max_exposure=max_exposure)


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    return 1.0 - confidence


def extrapolated_interval(
    canary_score: float,
    reference_scores: ArrayLike,
    confidence: float = 0.95,
    n_boot: int = 200,
    seed: int = 0,
    *,
    max_exposure: float | None = None,
) -> tuple[float, float]:
    """Bootstrap percentile interval (bits) for the extrapolated exposure of one canary.

    The references are a random sample of R, so the fitted tail is uncertain:
    resample them with replacement, refit (a batched Newton MLE started at
    the full-sample fit, see :mod:`.skewfit`), and take the
    ``(1 ± confidence)/2`` percentiles of the resulting exposures.  The interval is widened to
    contain the point estimate so a report never shows a value outside its
    own interval.
    """
    alpha = _check_confidence(confidence)
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, got {n_boot}")
    ref = _references(reference_scores)
    params = fit_skewnorm(ref)
    point = float(exposure_from_fit(float(canary_score), params, max_exposure=max_exposure))
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(ref.size, np.full(ref.size, 1.0 / ref.size), size=n_boot)
    fits = refit_weighted(ref, counts, params)
    boots = exposure_from_fit(
        np.full(n_boot, float(canary_score)), (fits[:, 0], fits[:, 1], fits[:, 2]),
        max_exposure=max_exposure,
    )
    lo, hi = np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return min(float(lo), point), max(float(hi), point)


def interpolated_interval(
    canary_score: float,
    reference_scores: ArrayLike,
    confidence: float = 0.95,
    *,
    max_exposure: float | None = None,
) -> tuple[float, float]:
    """Clopper-Pearson interval (bits) for ``-log2 q``, q = P(random member scores <= canary).

    ``k = rank - 1`` of N references score at or below the canary, a binomial
    draw with success probability q.  With k = 0 the upper end is unbounded
    (capped at ``max_exposure`` when given): interpolation alone cannot say
    how much better than every reference the canary is.
    """
    alpha = _check_confidence(confidence)
    ref = _references(reference_scores)
    n = ref.size
    k = int(interpolated_rank(float(canary_score), ref)) - 1
    q_lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    q_hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    hi = math.inf if q_lo == 0.0 else -math.log2(q_lo)
    lo = -math.log2(q_hi)
    point = math.log2(n) - math.log2(k + 1)
    lo, hi = min(lo, point), max(hi, point)
    if max_exposure is not None:
        lo, hi = min(lo, max_exposure), min(hi, max_exposure)
    return lo, hi
