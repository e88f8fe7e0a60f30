"""Exposure from scores: tensorflow-privacy semantics, ties, capping, extrapolation, intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from scrubber.measure.exposure import (
    cap_exposure,
    exposure_extrapolated,
    exposure_interpolated,
    extrapolated_interval,
    fit_skewnorm,
    interpolated_interval,
    interpolated_rank,
)
from scrubber.measure.exposure.skewfit import refit_weighted


def tf_privacy_interpolation(canaries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """tensorflow-privacy's algorithm as written there (sort all, count references before)."""
    scores = np.concatenate([canaries, references])
    is_ref = np.concatenate([np.zeros(canaries.size), np.ones(references.size)])
    order = np.argsort(scores, kind="stable")
    cum = np.cumsum(is_ref[order])
    ranks_sorted = cum[is_ref[order] == 0] + 1
    ranks = np.empty(canaries.size)
    ranks[order[is_ref[order] == 0]] = ranks_sorted
    return math.log2(references.size) - np.log2(ranks)


def test_hand_checked_ranks_and_ties():
    refs = [1.0, 2.0, 2.0, 3.0]  # N = 4, log2 N = 2
    assert interpolated_rank(0.5, refs) == 1
    assert exposure_interpolated(0.5, refs) == pytest.approx(2.0)  # better than all: log2 N
    # a tie counts against the canary: both references at 2.0 rank ahead of it
    assert interpolated_rank(2.0, refs) == 4
    assert exposure_interpolated(2.0, refs) == pytest.approx(0.0)
    assert interpolated_rank(1.5, refs) == 2
    assert exposure_interpolated(1.5, refs) == pytest.approx(1.0)


def test_negative_when_worse_than_every_reference():
    refs = [1.0, 2.0, 2.0, 3.0]
    e = exposure_interpolated(3.5, refs)
    assert e == pytest.approx(2.0 - math.log2(5))
    assert e < 0
    # tying the worst reference also ranks last
    assert exposure_interpolated(3.0, refs) == pytest.approx(2.0 - math.log2(5))


def test_matches_tf_privacy_without_ties_and_shapes():
    rng = np.random.default_rng(1)
    refs = rng.normal(60, 8, 500)
    canaries = rng.normal(50, 10, 40)
    ours = exposure_interpolated(canaries, refs)
    assert isinstance(ours, np.ndarray) and ours.shape == (40,)
    np.testing.assert_allclose(ours, tf_privacy_interpolation(canaries, refs))
    assert isinstance(exposure_interpolated(float(canaries[0]), refs), float)
    by_reps = exposure_interpolated({1: canaries[:10], 16: canaries[10:]}, refs)
    np.testing.assert_allclose(by_reps[16], ours[10:])


def test_rank_capping_at_format_size():
    refs = np.arange(1024, dtype=float) + 10.0  # log2 N = 10
    assert exposure_interpolated(0.0, refs) == pytest.approx(10.0)
    assert exposure_interpolated(0.0, refs, max_exposure=6.0) == pytest.approx(6.0)
    values, capped = cap_exposure([3.0, 6.0, 9.0], 6.0)
    np.testing.assert_allclose(values, [3.0, 6.0, 6.0])
    assert capped.tolist() == [False, False, True]
    values, capped = cap_exposure([3.0, 90.0], None)
    assert not capped.any() and values[1] == 90.0


@pytest.mark.parametrize("z", [-1.0, -2.0, -3.0])
def test_extrapolation_on_normal_sample(z):
    mu, sigma = 60.0, 7.0
    refs = np.random.default_rng(0).normal(mu, sigma, 20_000)
    expected = -math.log2(stats.norm.cdf(z))
    got = exposure_extrapolated(mu + z * sigma, refs)
    assert got == pytest.approx(expected, abs=0.3)


def test_extrapolation_reaches_past_log2_n_and_caps():
    refs = np.random.default_rng(0).normal(60, 7, 1000)
    far = exposure_extrapolated(60 - 6 * 7, refs)
    assert far > math.log2(1000) + 10  # beyond what interpolation can say
    assert exposure_extrapolated(60 - 6 * 7, refs, max_exposure=13.3) == pytest.approx(13.3)
    lo, hi = extrapolated_interval(60 - 6 * 7, refs, n_boot=50, max_exposure=13.3)
    assert lo == hi == pytest.approx(13.3)


def test_extrapolated_interval_contains_point_and_truth():
    mu, sigma = 60.0, 7.0
    refs = np.random.default_rng(3).normal(mu, sigma, 1000)
    canary = mu - 2.5 * sigma
    point = exposure_extrapolated(canary, refs)
    lo, hi = extrapolated_interval(canary, refs, confidence=0.95, n_boot=200, seed=0)
    assert lo <= point <= hi
    assert lo <= -math.log2(stats.norm.cdf(-2.5)) <= hi
    assert 0.05 < hi - lo < 5.0  # a real interval, neither degenerate nor vacuous
    narrow = extrapolated_interval(canary, refs, confidence=0.5, n_boot=200, seed=0)
    assert narrow[0] >= lo and narrow[1] <= hi
    assert extrapolated_interval(canary, refs, n_boot=50, seed=7) == extrapolated_interval(
        canary, refs, n_boot=50, seed=7
    )


def test_bootstrap_refit_matches_scipy_mle():
    rng = np.random.default_rng(5)
    for refs in (rng.gamma(4, 3, 800) + 40, -rng.gamma(2, 3, 800) + 90):
        start = fit_skewnorm(refs)
        counts = rng.multinomial(refs.size, np.full(refs.size, 1 / refs.size), size=4)
        fits = refit_weighted(refs, counts, start)
        canary = np.percentile(refs, 0.5)
        for row, w in zip(fits, counts):
            sample = np.repeat(refs, w)
            scipy_params = stats.skewnorm.fit(sample)
            assert stats.skewnorm.nnlf(tuple(row), sample) <= stats.skewnorm.nnlf(scipy_params, sample) + 1e-6
            ours = -stats.skewnorm.logcdf(canary, *row) / math.log(2)
            theirs = -stats.skewnorm.logcdf(canary, *scipy_params) / math.log(2)
            assert ours == pytest.approx(theirs, abs=1e-2)


def test_interpolated_interval():
    refs = np.random.default_rng(0).normal(60, 7, 1000)
    canary = float(np.sort(refs)[19])  # 20 references at or below: rank 21
    point = exposure_interpolated(canary, refs)
    lo, hi = interpolated_interval(canary, refs)
    assert lo < point < hi
    assert lo <= -math.log2(20 / 1000) <= hi
    # better than every reference: interpolation gives no upper bound, the format does
    lo, hi = interpolated_interval(0.0, refs, max_exposure=40.0)
    assert hi == 40.0 and lo < math.log2(1000)
    assert math.isinf(interpolated_interval(0.0, refs)[1])


@pytest.mark.parametrize(
    "call",
    [
        lambda: exposure_interpolated(1.0, []),
        lambda: exposure_interpolated(float("nan"), [1.0, 2.0]),
        lambda: exposure_extrapolated(1.0, [1.0, 1.0, 2.0]),
        lambda: exposure_extrapolated(1.0, [1.0, float("inf"), 2.0, 3.0]),
        lambda: extrapolated_interval(1.0, [1.0, 2.0, 3.0, 4.0], confidence=1.5),
        lambda: extrapolated_interval(1.0, [1.0, 2.0, 3.0, 4.0], n_boot=1),
    ],
)
def test_bad_input_is_value_error(call):
    with pytest.raises(ValueError):
        call()
