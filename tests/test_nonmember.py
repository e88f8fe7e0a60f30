"""The non-member test flags under- and over-scrubbed secrets at its stated false-alarm rate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from canaries import Canary
from scrubber.measure.exposure.engine import references_for
from scrubber.measure.exposure.tokens import secret_tokens
from scrubber.measure.nonmember import (
    classify,
    fidelity,
    min_nonmembers,
    nonmember_strings,
    nonmember_test,
)
from scrubber.training.model_factory import small_causal_lm
from scrubber.training.train import TrainConfig, train_causal_lm

PREFIX = "The door code is "
SECRET = "48213957"


def test_verdicts_on_hand_built_scores():
    s = np.arange(100, 200, dtype=float)  # 100 non-members, 100..199 bits
    assert classify(50.0, s).verdict == "above"  # far more likely than every non-member
    assert classify(150.0, s).verdict == "inside"
    assert classify(300.0, s).verdict == "below"  # far less likely: a trace of the scrub
    # the boundary: p_above = (1 + #{s <= x}) / 101 <= 0.025  <=>  #{s <= x} <= 1 (and mirrored)
    assert classify(100.0, s).verdict == "above" and classify(101.0, s).verdict == "inside"
    assert classify(199.0, s).verdict == "below" and classify(198.0, s).verdict == "inside"
    v = classify(50.0, s)
    assert v.p_above == pytest.approx(1 / 101) and v.fraction_more_likely == 0
    assert v.nonmember_median_bits == pytest.approx(149.5)


def test_false_alarm_rate_is_at_most_alpha_for_exchangeable_secrets():
    """A secret drawn like the non-members (what a model that never saw it gives) is flagged
    at most alpha of the time; measured over 4000 draws, within sampling error."""
    rng = np.random.default_rng(0)
    trials, n = 4000, 200
    flags = 0
    for _ in range(trials):
        scores = rng.normal(size=n + 1)
        flags += classify(scores[0], scores[1:]).verdict != "inside"
    rate = flags / trials
    assert 0.035 < rate < 0.058, rate  # alpha = 0.05; binomial sd ~0.0035


def test_too_few_nonmembers_is_refused():
    assert min_nonmembers(0.05) == 39
    with pytest.raises(ValueError, match="need at least 39"):
        classify(0.0, np.arange(20.0))
    with pytest.raises(ValueError, match="non-finite"):  # NaN would otherwise compare as "above"
        classify(float("nan"), np.arange(100.0))


def test_nonmembers_are_seeded_and_disjoint_from_everything_excluded():
    c = Canary(id="door", prefix=PREFIX, secret=SECRET, format="digits8")
    refs = references_for(c, 500, seed=0)
    a = nonmember_strings(c, 300, seed=0, exclude=refs)
    assert a == nonmember_strings(c, 300, seed=0, exclude=refs)
    assert not set(a) & set(refs) and SECRET not in a
    other = Canary(id="door2", prefix=PREFIX, secret="11111111", format="digits8")
    assert nonmember_strings(other, 300, seed=0) != nonmember_strings(c, 300, seed=0)


def test_fidelity_max_and_mean_absolute():
    f = fidelity({"a": 5.0, "b": 1.0, "c": 2.0}, {"a": 1.0, "b": 3.0, "c": 2.0})
    assert f.differences == {"a": 4.0, "b": -2.0, "c": 0.0}
    assert f.max_abs == 4.0 and f.mean_abs == pytest.approx(2.0)
    with pytest.raises(ValueError, match="missing"):
        fidelity({"a": 1.0}, {"b": 1.0})


@pytest.fixture(scope="module")
def trained_pair(tiny_tokenizer):
    """Two tiny models on the same docs, one of them also on the secret 60 times (seconds)."""
    import pydoc_data.topics

    tok = tiny_tokenizer
    docs = [t for t in pydoc_data.topics.topics.values() if t.strip()][:12]
    models = []
    for extra in ([PREFIX + SECRET] * 60, []):
        m = small_causal_lm(len(tok), n_layer=2, d_model=32, n_head=2, bos_token_id=tok.eos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        train_causal_lm(m, tok, docs + extra, TrainConfig(epochs=3, batch_size=8, block_size=64, lr=5e-3))
        models.append(m.eval())
    return models[0], models[1], tok


def test_memorized_above_clean_inside_pushed_down_below(trained_pair):
    memorized, clean, tok = trained_pair
    c = Canary(id="door", prefix=PREFIX, secret=SECRET, format="digits8")
    nm = {"door": nonmember_strings(c, 199, seed=3, exclude=references_for(c, 200, seed=0))}
    assert nonmember_test(memorized, tok, [c], nm).verdicts[0].verdict == "above"
    clean_v = nonmember_test(clean, tok, [c], nm).verdicts[0]
    assert clean_v.verdict == "inside", clean_v
    # over-scrub: push this one secret down while holding other random codes where they are
    # (plain ascent lowers every code alike: its tokens are shared). The held codes are drawn
    # from another stream and excluded from the non-members' check by construction.
    held = nonmember_strings(c, 16, seed=99, exclude=nm["door"])
    assert not set(held) & set(nm["door"])
    spans = secret_tokens(tok, PREFIX, [SECRET, *held])
    ids = torch.tensor([[*sp.context, *sp.scored] for sp in spans])  # digits8: same length
    start = len(spans[0].context) - 1
    opt = torch.optim.SGD(clean.parameters(), lr=0.1)
    state = {k: v.clone() for k, v in clean.state_dict().items()}
    try:
        for _ in range(30):
            logp = torch.log_softmax(clean(input_ids=ids).logits[:, :-1], -1)
            seq = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)[:, start:].sum(1)  # log p(code | prefix)
            loss = seq[0] - seq[1:].mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(clean.parameters(), 1.0)
            opt.step()
        s = nonmember_test(clean, tok, [c], nm)
        assert s.verdicts[0].verdict == "below", s.verdicts[0]
        assert (s.inside, s.above, s.below) == (0, 0, 1)
    finally:
        clean.load_state_dict(state)
        clean.eval()
