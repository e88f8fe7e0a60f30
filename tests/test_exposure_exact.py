"""Exact exposure by enumeration, the engine's methods, and their agreement on a trained model."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pydoc_data.topics
import pytest
import torch

from canaries.canary import Canary
from canaries.formats import SecretFormat, parse_pattern
from scrubber.measure.exposure import (
    exact_exposure,
    measure_exposure,
    measure_many,
    references_for,
    score_candidates_reference,
)
from scrubber.training.model_factory import small_causal_lm

PREFIX = "The pin is "


# -- exact enumeration against brute force -----------------------------------


def test_exact_matches_brute_force(tiny_gpt2, tiny_tokenizer):
    fmt = parse_pattern("[0-9]{3}")
    members = list(fmt.enumerate())
    assert len(members) == fmt.size == 1000
    brute = score_candidates_reference(tiny_gpt2, tiny_tokenizer, PREFIX, members)
    order = np.argsort(brute)
    for i in (order[0], order[500], order[-1], members.index("042")):
        secret = members[i]
        ex = exact_exposure(tiny_gpt2, tiny_tokenizer, PREFIX, secret, fmt)
        others = np.delete(brute, i)
        rank = 1 + int(np.sum(others <= brute[i]))
        assert ex.rank == rank
        assert ex.exposure == pytest.approx(math.log2(1000) - math.log2(rank))
        assert ex.score_bits == pytest.approx(brute[i], abs=1e-4)
        np.testing.assert_allclose(ex.others, others, atol=1e-4)
    best = exact_exposure(tiny_gpt2, tiny_tokenizer, PREFIX, members[order[0]], fmt)
    assert best.rank == 1 and best.exposure == pytest.approx(fmt.log2_size)
    worst = exact_exposure(tiny_gpt2, tiny_tokenizer, PREFIX, members[order[-1]], fmt)
    assert worst.exposure == pytest.approx(0.0)


def test_exact_on_luhn_format_skips_only_the_secret(tiny_gpt2, tiny_tokenizer):
    fmt = SecretFormat("card4", parse_pattern("[0-9]{4}").slots, luhn=True)
    assert fmt.size == 1000
    secret = next(m for m in fmt.enumerate() if m.startswith("123"))
    ex = exact_exposure(tiny_gpt2, tiny_tokenizer, PREFIX, secret, fmt, batch_size=100)
    assert ex.others.shape == (999,)
    assert ex.rank == 1 + int(np.sum(ex.others <= ex.score_bits))
    assert ex.max_exposure == pytest.approx(math.log2(1000))


def test_exact_refuses_large_space_and_bad_secret(tiny_gpt2, tiny_tokenizer):
    fmt = parse_pattern("[0-9]{6}")
    with pytest.raises(ValueError, match="limit"):
        exact_exposure(tiny_gpt2, tiny_tokenizer, PREFIX, "123456", fmt, limit=1000)
    with pytest.raises(ValueError) as err:
        exact_exposure(tiny_gpt2, tiny_tokenizer, PREFIX, "12a4x6", fmt)
    assert "12a4x6" not in str(err.value)


# -- engine --------------------------------------------------------------------


def _canary(secret: str = "7291", fmt: str = "digits4", cid: str = "pin") -> Canary:
    return Canary(id=cid, prefix=PREFIX, secret=secret, format=fmt)


def test_references_are_deterministic_members_without_the_secret():
    c = _canary(fmt="[0-9]{2}", secret="42")
    refs = references_for(c, 500, seed=3)
    assert refs == references_for(c, 500, seed=3)
    assert refs != references_for(c, 500, seed=4)
    assert len(refs) == 500 and "42" not in refs
    assert all(c.fmt.matches(r) for r in refs)


def test_engine_methods_and_result_shape(tiny_gpt2, tiny_tokenizer):
    c = _canary()
    auto = measure_exposure(tiny_gpt2, tiny_tokenizer, c, exact_limit=10_000)
    assert auto.method == "exact" and auto.ci_low == auto.ci_high == auto.exposure
    assert auto.n_references is None and auto.rank is not None and not auto.capped
    assert auto.max_exposure == pytest.approx(math.log2(10_000))
    assert len(auto.reference_scores) == 9_999
    # max_rank=0: no search upgrade (|R| = 10^4 <= the default max_rank would always search)
    forced = measure_exposure(tiny_gpt2, tiny_tokenizer, c, exact_limit=1000, n_references=200, max_rank=0)
    assert forced.method == "extrapolated"
    assert forced.ci_low <= forced.exposure <= forced.ci_high
    assert forced.score_bits == pytest.approx(auto.score_bits, abs=1e-4)
    interp = measure_exposure(tiny_gpt2, tiny_tokenizer, c, method="interpolated", n_references=200)
    assert interp.method == "interpolated" and interp.n_references == 200
    refs = np.array(interp.reference_scores)
    assert interp.rank == 1 + int(np.sum(refs <= interp.score_bits))
    assert interp.exposure == pytest.approx(math.log2(200) - math.log2(interp.rank))
    assert set(interp.reference_percentiles) == {"p1", "p5", "p25", "p50", "p75", "p95", "p99"}
    # reference scores stay out of the JSON unless asked for
    dumped = json.loads(interp.model_dump_json())
    assert "reference_scores" not in dumped and dumped["method"] == "interpolated"
    assert len(interp.to_dict(with_reference_scores=True)["reference_scores"]) == 200
    # the same seed reuses the same references: before/after scrubs are comparable
    again = measure_exposure(tiny_gpt2, tiny_tokenizer, c, method="interpolated", n_references=200)
    assert again.reference_scores == interp.reference_scores


def test_engine_given_references_and_bad_input(tiny_gpt2, tiny_tokenizer):
    c = _canary()
    refs = ["0001", "0002", "9999"]
    r = measure_exposure(tiny_gpt2, tiny_tokenizer, c, method="interpolated", references=refs)
    assert r.n_references == 3
    for bad in (["0001", "7291"], ["12"], []):
        with pytest.raises(ValueError) as err:
            measure_exposure(tiny_gpt2, tiny_tokenizer, c, method="interpolated", references=bad)
        assert "7291" not in str(err.value)
    with pytest.raises(ValueError, match="method"):
        measure_exposure(tiny_gpt2, tiny_tokenizer, c, method="bogus")
    mismatched = _canary(secret="72a1")  # the record validates the format name only
    with pytest.raises(ValueError) as err:
        measure_exposure(tiny_gpt2, tiny_tokenizer, mismatched)
    assert "72a1" not in str(err.value)


def test_measure_many_keys_by_id(tiny_gpt2, tiny_tokenizer):
    cs = [_canary(cid="a", fmt="digits3", secret="123"), _canary(cid="b", fmt="digits3", secret="999")]
    out = measure_many(tiny_gpt2, tiny_tokenizer, cs, method="exact")
    assert set(out) == {"a", "b"} and all(r.method == "exact" for r in out.values())
    with pytest.raises(ValueError, match="duplicate"):
        measure_many(tiny_gpt2, tiny_tokenizer, [cs[0], cs[0]], method="exact")


# -- agreement on a model that memorized a canary ------------------------------


@pytest.fixture(scope="module")
def memorizing_model(tiny_tokenizer):
    """A 2-layer GPT-2 trained 60 steps on doc text with one canary in a quarter of the rows."""
    tok = tiny_tokenizer
    model = small_causal_lm(
        len(tok), arch="gpt2", n_layer=2, d_model=32, n_head=2,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    text = next(t for t in pydoc_data.topics.topics.values() if t.strip())
    ids = tok(text[:3000])["input_ids"]
    canary_ids = tok(PREFIX + "7291")["input_ids"]
    rng = random.Random(0)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    model.train()
    length = 24
    for _ in range(60):
        rows = []
        for b in range(8):
            s = rng.randrange(len(ids) - length)
            row = ids[s : s + length]
            rows.append((canary_ids + row)[:length] if b < 2 else row)
        x = torch.tensor(rows)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.slow
def test_methods_agree_on_trained_model(memorizing_model, tiny_tokenizer):
    """Exact, interpolated (N=500) and extrapolated exposure of canaries at known exact ranks.

    Stated tolerance: the exact value lies in the interpolated 95% interval, and
    within 0.25 bits of the extrapolated 95% bootstrap interval (the skew-normal
    is a model of the tail; the bootstrap covers sampling error, not misfit).
    """
    model, tok = memorizing_model, tiny_tokenizer
    canary = _canary()
    fmt = canary.fmt
    ex = exact_exposure(model, tok, PREFIX, canary.secret, fmt)
    # memorized: better than every other member, and every method says so
    assert ex.rank == 1 and ex.exposure == pytest.approx(fmt.log2_size)
    interp = measure_exposure(model, tok, canary, method="interpolated", n_references=500)
    assert interp.rank == 1 and interp.ci_low <= ex.exposure <= interp.ci_high
    extra = measure_exposure(model, tok, canary, method="extrapolated", n_references=500)
    # rank 1 only bounds the exact exposure from below (2**-13.3 of R or less beats it);
    # the skew-normal tail puts it well past what 500 references can resolve
    assert extra.ci_low > math.log2(500) + 1

    scores = np.insert(ex.others, fmt.index_of(canary.secret), ex.score_bits)
    members = list(fmt.enumerate())
    order = np.argsort(scores, kind="stable")
    for target in (10, 50, 300):
        i = int(order[target - 1])
        rank = 1 + int(np.sum(np.delete(scores, i) <= scores[i]))
        exact = math.log2(fmt.size) - math.log2(rank)
        c = _canary(secret=members[i], cid=f"rank{target}")
        ip = measure_exposure(model, tok, c, method="interpolated", n_references=500)
        xp = measure_exposure(model, tok, c, method="extrapolated", n_references=500)
        assert ip.ci_low <= exact <= ip.ci_high, (target, exact, ip)
        assert xp.ci_low - 0.25 <= exact <= xp.ci_high + 0.25, (target, exact, xp)
        assert abs(xp.exposure - exact) < 1.5


# -- adaptive reference counts (sequential estimation) --------------------------


def test_reference_schedule_doubles_to_the_maximum():
    from scrubber.measure.exposure.engine import reference_schedule

    assert reference_schedule(1000) == [32, 64, 128, 256, 512, 1000]
    assert reference_schedule(64) == [32, 64] and reference_schedule(10) == [10]


def test_adaptive_stops_early_for_an_unexposed_canary_on_a_prefix_of_the_same_list(tiny_gpt2, tiny_tokenizer):
    # an untrained model: the canary is an ordinary member of R, found out after the first look
    c = _canary(cid="plain", fmt="digits6", secret="503117")
    refs = references_for(c, 1000, seed=0)
    full = measure_exposure(tiny_gpt2, tiny_tokenizer, c, references=refs, max_rank=0)
    quick = measure_exposure(tiny_gpt2, tiny_tokenizer, c, references=refs, max_rank=0, adaptive=True)
    assert full.n_references == 1000 and full.references_stop is None and full.exposure < 4.0
    assert quick.references_stop == "unexposed" and quick.n_references == 32 and quick.n_references_max == 1000
    assert quick.ci_high < 4.0 + 1.0  # the reported (nominal-level) interval agrees: plainly unexposed
    # like with like: exactly what the plain protocol gives on the list's first 32 references
    prefix_only = measure_exposure(tiny_gpt2, tiny_tokenizer, c, references=refs[:32], max_rank=0)
    assert quick.exposure == pytest.approx(prefix_only.exposure, abs=1e-9)
    assert quick.reference_scores == pytest.approx(full.reference_scores[:32], abs=1e-4)
