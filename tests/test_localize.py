"""Localisation on a tiny GPT-2 that memorized one card 32 times, judged by data that did not steer it.

The fixture trains docs 0–39 plus the card 32× (6 epochs: 22.4 bits on the judge's
references, of the format's 49.8); docs 40–69 are the retain text the scores and the
update read; docs 70+ only judge utility. Exposure is judged on 512 references of a
seed neither the probe (1234) nor anything else uses.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

from canaries import Canary
from conftest import CARD_PREFIX as PREFIX, CARD_SECRET as SECRET
from canaries.substitutes import make_substitute
from scrubber.edits import METHODS, UpdateSettings, UpdateTask
from scrubber.edits.localize import (
    DEFAULT_MASS,
    DEFAULT_RULE,
    apply_rule,
    choose,
    localize,
    score_tensors,
    selection_from_names,
)
from scrubber.edits.objective import make_edit_pairs
from scrubber.edits.params import select_parameters
from scrubber.edits.task import ExposureProbe
from scrubber.measure.exposure.engine import measure_exposure
from scrubber.measure.utility import perplexity
from scrubber.training.model_factory import small_causal_lm
from scrubber.training.train import TrainConfig, pack_texts, train_causal_lm

CANARY = Canary(id="card", prefix=PREFIX, secret=SECRET, format="credit_card")
JUDGE_SEED = 20_261_203


@pytest.fixture(scope="module")
def memorized(tiny_tokenizer):
    import pydoc_data.topics

    tok = tiny_tokenizer
    docs = [t for t in pydoc_data.topics.topics.values() if t.strip()]
    torch.manual_seed(0)
    model = small_causal_lm(len(tok), n_layer=2, d_model=32, n_head=2, bos_token_id=tok.eos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    train_causal_lm(model, tok, docs[:40] + [PREFIX + SECRET] * 32,
                    TrainConfig(epochs=6, batch_size=8, block_size=64, lr=5e-3))
    retain = pack_texts(tok, docs[40:70], 64)[:16]
    return model.eval(), tok, retain, docs[70:]


def _task(model, tok, retain, selection=None) -> UpdateTask:
    sub = make_substitute(SECRET, CANARY.fmt, "random", random.Random(0))
    pairs = make_edit_pairs("card", [CANARY.text], SECRET, sub)
    return UpdateTask(model, tok, [CANARY], pairs, selection or select_parameters(model, "all"), retain,
                      probe=ExposureProbe([CANARY], n_references=64, seed=1234))


def judge(model, tok) -> float:
    return measure_exposure(model, tok, CANARY, method="extrapolated", n_references=512, seed=JUDGE_SEED,
                            keep_reference_scores=False).exposure


def test_choose_takes_the_fewest_tensors_that_cover_the_mass():
    scores = {"a": 1.0, "b": 5.0, "c": 3.0, "d": 0.5, "e": 0.5}  # total 10
    names, covered = choose(scores, 0.75)
    assert names == ["b", "c"] and covered == pytest.approx(0.8)  # 5 + 3 ≥ 7.5, and 5 alone is not
    assert choose(scores, 0.8) == (["b", "c"], pytest.approx(0.8))  # exactly reaching the mass suffices
    assert choose(scores, 0.81)[0] == ["a", "b", "c"]
    assert choose(scores, 1.0)[0] == ["a", "b", "c", "d", "e"]
    with pytest.raises(ValueError):
        choose({"a": 0.0}, 0.5)


def test_selective_rule_demotes_a_tensor_the_retain_text_needs_as_much():
    """Equal forget energy, but t1 holds 90% of the retain gradient: the score ranks t2 first by 9×."""
    from scrubber.edits.localize import TensorScore

    d = [TensorScore("t1", 10, 1.0, 9.0, 0.0, 0.0), TensorScore("t2", 10, 1.0, 1.0, 0.0, 0.0)]
    s = apply_rule(d, "selective")
    assert s["t2"] / s["t1"] == pytest.approx(9.0)
    assert apply_rule(d, "energy") == {"t1": 1.0, "t2": 1.0}


def test_localized_selection_is_a_small_subset_covering_the_mass(memorized):
    model, tok, retain, _ = memorized
    task = _task(model, tok, retain)
    loc = localize(task)
    assert loc.rule == DEFAULT_RULE and loc.mass == DEFAULT_MASS
    assert loc.covered >= DEFAULT_MASS
    # the fewest tensors: without the lowest-scoring chosen one the share falls short
    total = sum(loc.scores.values())
    lowest = min(loc.scores[n] for n in loc.names)
    assert loc.covered - lowest / total < DEFAULT_MASS
    # measured 0.54 (4 of 52 tensors); "much smaller than all weights"
    assert loc.fraction < 0.65 and len(loc.names) <= 8
    sel = loc.selection
    assert sel.names == loc.names and sel.numel == loc.numel
    # the tied head is one tensor, selected once, with its alias
    assert "transformer.wte.weight" in sel.names and "lm_head.weight" not in sel.names
    assert task.selection.numel == select_parameters(model, "all").numel  # the task is untouched


def test_selection_from_names_rejects_unknown_names(memorized):
    model = memorized[0]
    assert selection_from_names(model, ["lm_head.weight"]).names == ["transformer.wte.weight"]
    with pytest.raises(ValueError):
        selection_from_names(model, ["transformer.h.9.mlp.c_fc.weight"])
    with pytest.raises(ValueError):
        selection_from_names(model, [])


def test_embeddings_can_be_excluded(memorized):
    model, tok, retain, _ = memorized
    task = _task(model, tok, retain)
    details = score_tensors(task)
    loc = localize(task, exclude_embeddings=True, details=details)
    assert "transformer.wte.weight" in loc.excluded and "transformer.wpe.weight" in loc.excluded
    assert not set(loc.names) & set(loc.excluded)
    assert loc.fraction < 0.25  # measured 0.18: the blocks' share of the score is concentrated in block 0


# Measured on this fixture (judge's references; held-out perplexity 35.1 before, card 22.4 bits):
#   all weights            -> 1.02 bits, ppl +10.2%, 21 steps
#   selective @ 0.8 (54%)  -> 0.60 bits, ppl +5.1%,  27 steps
#   selective @ 0.5 (30%)  -> 0.86 bits, ppl +4.6%,  33 steps
#   energy @ 0.8 (72%)     -> 0.48 bits, ppl +7.3%;  contribution @ 0.8 (37%) -> 0.56 bits, +7.8%
#   selective @ 0.8 without embeddings (18%) -> 2.77 bits, +11.6% (60 steps): the embeddings carry it
MAX_AFTER = 3.0
UTILITY_MARGIN = 0.02


def test_iterative_on_the_localized_selection_scrubs_at_no_more_utility_cost(memorized):
    model0, tok, retain, heldout = memorized
    ppl = lambda m: perplexity(m, tok, heldout, max_tokens=20_000)[0]  # noqa: E731
    before, p0 = judge(model0, tok), ppl(model0)
    assert before > 20, "the fixture must have memorized the card"
    settings = UpdateSettings(max_retain_increase=0.5)

    full = copy.deepcopy(model0)
    METHODS["iterative"](_task(full, tok, retain), settings)
    full_rise = ppl(full) / p0 - 1

    local = copy.deepcopy(model0)
    loc = localize(_task(local, tok, retain))
    before_weights = {n: p.detach().clone() for n, p in local.named_parameters()}
    METHODS["iterative"](_task(local, tok, retain, loc.selection), settings)
    after, local_rise = judge(local, tok), ppl(local) / p0 - 1

    moved = {n for n, p in local.named_parameters() if not torch.equal(p, before_weights[n])}
    assert moved <= set(loc.names) | {"lm_head.weight"}, moved - set(loc.names)
    assert after < MAX_AFTER, (before, after)
    assert local_rise <= full_rise + UTILITY_MARGIN, (local_rise, full_rise)
