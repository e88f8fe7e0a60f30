"""Exact rank by best-first search, checked against full enumeration on a trained tiny model."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import pydoc_data.topics
import pytest
import torch

from canaries.canary import Canary
from canaries.formats import SecretFormat, get_format, parse_pattern
from scrubber.measure.exposure import (
    SearchBudgetExceeded,
    exact_exposure,
    measure_exposure,
    search_rank,
)
from scrubber.training.model_factory import small_causal_lm
from scrubber.training.tokenizer import train_bpe_tokenizer

PREFIX = "The pin is "
SECRET6 = "729153"


@pytest.fixture(scope="module")
def number_tokenizer():
    """A BPE that learned multi-digit tokens (" 72", "15", "100"...), so candidates re-merge as they grow."""
    texts = [t for t in pydoc_data.topics.topics.values() if t.strip()][:60]
    rng = random.Random(1)
    numbers = [" ".join(str(rng.randrange(10 ** rng.randrange(1, 7))) for _ in range(50)) for _ in range(200)]
    return train_bpe_tokenizer(texts + numbers + [PREFIX + SECRET6] * 8, vocab_size=800)


@pytest.fixture(scope="module")
def trained(number_tokenizer):
    """A 2-layer GPT-2 trained ~100 steps (a few seconds) with a 6-digit pin in a quarter of the rows."""
    tok = number_tokenizer
    model = small_causal_lm(
        len(tok), arch="gpt2", n_layer=2, d_model=32, n_head=2,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    text = next(t for t in pydoc_data.topics.topics.values() if t.strip())[:3000]
    ids = tok(text + " 1234 98 100 2024 77")["input_ids"]
    canaries = [tok(PREFIX + SECRET6)["input_ids"], tok(PREFIX + "72915")["input_ids"]]
    rng = random.Random(0)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    model.train()
    length = 24
    for _ in range(100):
        rows = []
        for b in range(8):
            s = rng.randrange(len(ids) - length)
            row = ids[s : s + length]
            rows.append((canaries[b % 2] + row)[:length] if b < 2 else row)
        x = torch.tensor(rows)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


def _ranks(model, tok, prefix, fmt, secret, limit):
    t0 = time.perf_counter()
    ex = exact_exposure(model, tok, prefix, secret, fmt, limit=limit)
    seconds = time.perf_counter() - t0
    scores = np.insert(ex.others, fmt.index_of(secret), ex.score_bits)
    return scores, seconds


def _exact_rank(scores: np.ndarray, i: int) -> int:
    return 1 + int(np.count_nonzero(np.delete(scores, i) <= scores[i]))


def _check_against_enumeration(model, tok, prefix, fmt, memorized, targets, n_random, limit):
    scores, enum_seconds = _ranks(model, tok, prefix, fmt, memorized, limit)
    members = list(fmt.enumerate())
    order = np.argsort(scores, kind="stable")
    rng = random.Random(7)
    picks = [fmt.index_of(memorized)] + [int(order[t - 1]) for t in targets]
    picks += [int(order[rng.randrange(max(targets))]) for _ in range(n_random)]
    rows = []
    for i in picks:
        want = _exact_rank(scores, i)
        got = search_rank(model, tok, prefix, members[i], fmt)
        assert got.exact and got.stopped is None
        assert got.rank == want, (members[i], want, got)
        assert got.exposure == pytest.approx(math.log2(fmt.size) - math.log2(want))
        assert got.score_bits == pytest.approx(scores[i], abs=1e-4)
        rows.append((want, got.expanded, got.seconds))
    ratios = ", ".join(f"rank {r}: {n} nodes, {s / enum_seconds:.3f}x" for r, n, s in rows)
    print(f"\n{fmt.name} |R|={fmt.size}: enumeration {enum_seconds:.1f}s; search {ratios}")
    return rows, enum_seconds


def test_search_matches_enumeration_1e5(trained):
    """10^5 five-digit pins: memorized, ranks 10..10^4, and two random members of the top 10^4."""
    model, tok = trained
    rows, enum_seconds = _check_against_enumeration(
        model, tok, PREFIX, get_format("digits5"), "72915", (10, 100, 1000, 10_000), 2, 10**5
    )
    assert rows[0][0] <= 3  # the trained pin is (nearly) the most likely member


@pytest.mark.slow
def test_search_matches_enumeration_1e6(trained):
    """The issue's criterion: 10^6 six-digit pins, every canary with rank <= 10^4."""
    model, tok = trained
    rows, enum_seconds = _check_against_enumeration(
        model, tok, PREFIX, get_format("digits"), SECRET6, (1, 10, 100, 1000, 10_000), 2, 10**6
    )
    assert rows[0][0] == 1


@pytest.mark.parametrize("prefix", ["The pin is ", "pin:", "", "it'll be "])
def test_search_across_pre_tokens_luhn_and_prefix_merges(trained, prefix):
    """Literal spaces split the secret into pre-tokens, the last digit is a Luhn check digit,
    and the prefix's tail merges (or not) with the secret's first characters."""
    model, tok = trained
    fmt = SecretFormat("card5", parse_pattern("[0-9]{2} [0-9]{3}").slots, luhn=True)
    members = list(fmt.enumerate())
    scores, _ = _ranks(model, tok, prefix, fmt, members[0], fmt.size)
    order = np.argsort(scores, kind="stable")
    for t in (1, 5, 60, 700):
        i = int(order[t - 1])
        got = search_rank(model, tok, prefix, members[i], fmt, batch_size=64)
        assert got.exact and got.rank == _exact_rank(scores, i), (prefix, t, got)


def test_budgets_give_bounds_not_ranks(trained):
    model, tok = trained
    fmt = get_format("digits5")
    scores, _ = _ranks(model, tok, PREFIX, fmt, "72915", 10**5)
    members = list(fmt.enumerate())
    i = int(np.argsort(scores, kind="stable")[499])
    want = _exact_rank(scores, i)
    capped = search_rank(model, tok, PREFIX, members[i], fmt, max_rank=50)
    assert not capped.exact and capped.stopped == "max_rank"
    assert 50 < capped.rank <= want and capped.exposure >= math.log2(fmt.size) - math.log2(want)
    short = search_rank(model, tok, PREFIX, members[i], fmt, max_expansions=3, batch_size=1)
    assert not short.exact and short.stopped == "max_expansions" and short.expanded == 3
    assert short.rank <= want


def test_engine_search_and_auto(trained):
    model, tok = trained
    pin = Canary(id="pin", prefix=PREFIX, secret=SECRET6, format="digits")
    forced = measure_exposure(model, tok, pin, method="search", n_references=200)
    direct = search_rank(model, tok, PREFIX, SECRET6, pin.fmt)
    assert forced.method == "search" and forced.rank == direct.rank
    assert forced.ci_low == forced.ci_high == forced.exposure
    assert forced.n_references == 200 and "p50" in forced.reference_percentiles
    # auto: |R| = 10^6 is over the exact limit; the tail estimate says the rank is small -> search
    auto = measure_exposure(model, tok, pin, n_references=200)
    assert auto.method == "search" and auto.rank == direct.rank
    # a member far down the ranking stays extrapolated under auto, and forced search reports the budget
    dull = Canary(id="dull", prefix=PREFIX, secret="000000", format="digits")
    far = measure_exposure(model, tok, dull, n_references=200, max_rank=20)
    assert far.method == "extrapolated"
    with pytest.raises(SearchBudgetExceeded):
        measure_exposure(model, tok, dull, method="search", n_references=200, max_rank=20)
