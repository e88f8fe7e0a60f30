"""Every update method on a tiny model that memorized one card, judged by data that did not steer it.

Each method steers by an :class:`ExposureProbe` (64 references, seed 1234) and a
retain set; judging it by the same references would reward overfitting to them.
So "after" is measured here with an independent reference draw (another seed,
512 references), and utility on held-out documents that neither trained the
model nor entered the method (not as retain text, not as curvature sample).
"""

from __future__ import annotations

import random

import pytest
import torch

from canaries import Canary
from canaries.substitutes import make_substitute
from scrubber.measure.exposure.engine import measure_exposure
from scrubber.edits.objective import make_edit_pairs
from scrubber.edits.params import select_parameters
from scrubber.training.model_factory import small_causal_lm
from scrubber.training.train import TrainConfig, pack_texts, train_causal_lm
from scrubber.edits import METHODS, UpdateSettings, UpdateTask
from scrubber.edits.task import ExposureProbe
from scrubber.measure.utility import perplexity

PREFIX = "My credit card number is "
SECRET = "4539 1488 0343 6467"
CANARY = Canary(id="card", prefix=PREFIX, secret=SECRET, format="credit_card")
PROBE_SEED = 1234
JUDGE_SEED = 20_261_201  # not the probe's, not the pipeline's (0) nor its probe's (1)


@pytest.fixture(scope="module")
def memorized(tiny_tokenizer):
    """Docs 0–39 (+ the card 30×) train; docs 40–69 are the method's retain text;
    docs 70+ are held out from everything and only judge."""
    import pydoc_data.topics

    tok = tiny_tokenizer
    docs = [t for t in pydoc_data.topics.topics.values() if t.strip()]
    texts = docs[:40] + [PREFIX + SECRET] * 30
    torch.manual_seed(0)
    model = small_causal_lm(len(tok), n_layer=2, d_model=32, n_head=2, bos_token_id=tok.eos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    train_causal_lm(model, tok, texts, TrainConfig(epochs=3, batch_size=8, block_size=64, lr=5e-3))
    retain = pack_texts(tok, docs[40:70], 64)[:16]
    heldout = docs[70:]
    return model, tok, retain, heldout


def judge(model, tok) -> float:
    """Exposure against references no method ever scored (512, independent seed)."""
    return measure_exposure(model, tok, CANARY, method="extrapolated", n_references=512, seed=JUDGE_SEED,
                            keep_reference_scores=False).exposure


def heldout_ppl(model, tok, heldout) -> float:
    return perplexity(model, tok, heldout, max_tokens=20_000)[0]


def _task(model, tok, retain, spec="all"):
    sub = make_substitute(SECRET, CANARY.fmt, "random", random.Random(0))
    pairs = make_edit_pairs("card", [CANARY.text], SECRET, sub)
    return UpdateTask(model, tok, [CANARY], pairs, select_parameters(model, spec), retain,
                      probe=ExposureProbe([CANARY], n_references=64, seed=PROBE_SEED))


# Measured on this fixture, judge's references (before: 11.65 bits), held-out ppl 57.39 before:
#   iterative     -> 2.97 bits, ppl +3.17%
#   first-order   -> 0.34 bits, ppl +13.0%
#   iau           -> 0.34 bits, ppl +12.9%
#   second-order  -> 2.86 bits, ppl +9.3%   (last block's MLP only: the GGN solve stays small)
# Since scoring conditions on the document-start token (as training did), the card reads 12.45 bits
# before, and iterative's default 60 steps end at 4.05 bits on the judge's references (all 60 used).
# With the step doubling while the secret stalls (and halving as it nears the aim), iterative
# stops after 18 steps at 1.29 bits, ppl +4.5%: fewer retain steps to repair what longer steps cost.
# Every method must cut at least DROP bits and land near the 3-bit target on references it never
# saw; the utility bounds sit ~1.4x above what each method costs today.
DROP = 6.0
EXPECT = {  # method: (parameters, largest relative held-out perplexity rise, largest exposure after)
    "iterative": ("all", 0.075, 4.5),
    "first-order": ("all", 0.18, 4.0),
    "iau": ("all", 0.18, 4.0),
    "second-order": ("-1:/mlp", 0.13, 4.0),
}


def test_every_method_is_covered():
    """certified-head needs an untied head (this fixture's GPT-2 head is tied): tests/test_second_order_solvers.py."""
    assert set(METHODS) == set(EXPECT) | {"certified-head"}


@pytest.mark.parametrize("method", sorted(EXPECT))
def test_method_drops_independent_exposure_within_utility_bound(method, memorized):
    model, tok, retain, heldout = memorized
    spec, max_rise, max_after = EXPECT[method]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        before, ppl0 = judge(model, tok), heldout_ppl(model, tok, heldout)
        assert before > 8, "the fixture must have memorized the card"
        METHODS[method](_task(model, tok, retain, spec), UpdateSettings(max_retain_increase=0.5))
        after, ppl1 = judge(model, tok), heldout_ppl(model, tok, heldout)
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert before - after >= DROP and after <= max_after, (method, before, after)
        assert ppl1 / ppl0 - 1 <= max_rise, (method, ppl0, ppl1)
    finally:
        model.load_state_dict(state)


def test_first_order_with_fixed_tau_is_the_closed_form_step(memorized):
    model, tok, retain, _ = memorized
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        task = _task(model, tok, retain, "lm_head")
        theta = task.selection.values().clone()
        g = task.forget_gradient()
        METHODS["first-order"](task, UpdateSettings(tau=1e-3))
        assert torch.allclose(task.selection.values(), theta - 1e-3 * g, atol=1e-6)
    finally:
        model.load_state_dict(state)


def test_chunked_gradients_equal_one_batch_of_every_pair(memorized, monkeypatch):
    """Gradients are summed over length-sorted chunks of pairs (bounded memory, docs/scaling.md):
    the same vector, to float32 rounding, as one padded batch of all of them."""
    from scrubber.edits import task as task_module
    from scrubber.edits.residual import gradient_residual

    model, tok, retain, _ = memorized
    sub = make_substitute(SECRET, CANARY.fmt, "random", random.Random(0))
    docs = [f"note {i}: " + "x" * (7 * i) + " " + CANARY.text for i in range(11)]  # 11 pairs, varied lengths
    pairs = make_edit_pairs("card", docs, SECRET, sub)
    task = UpdateTask(model, tok, [CANARY], pairs, select_parameters(model, "-1:"), retain)
    with task.selection.requires_grad_only():
        whole = task.selection.gradient(task.forget_loss())
    whole_residual = gradient_residual(task.corrected_loss, task.selection)
    monkeypatch.setattr(task_module, "PAIR_CHUNK", 3)
    assert len(task_module.pair_chunks(pairs)) == 4
    chunked = task.forget_gradient()
    assert torch.allclose(chunked, whole, rtol=1e-4, atol=1e-6 * float(whole.abs().max()))
    assert abs(task.gradient_residual() - whole_residual) <= 1e-4 * whole_residual


def _probe_norms(result) -> list[float]:
    return [h["step_norm"] for h in result.extra["history"] if "active" in h]


def test_iterative_step_grows_while_the_bound_has_room(memorized):
    """The first step is small (a 135M model's top blocks broke a 2% bound within three steps of
    a larger one); while the retain rise stays under half the bound the step doubles, at most
    MAX_GROWTH times: on this fixture the default's fixed step took all 60 steps, growing takes
    far fewer (18 measured), to the same independent exposure bound as above."""
    from scrubber.edits.iterative import MAX_GROWTH

    model, tok, retain, _ = memorized
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        res = METHODS["iterative"](_task(model, tok, retain), UpdateSettings(max_retain_increase=0.5))
        norms = _probe_norms(res)
        assert max(norms) >= 4 * norms[0], norms
        assert max(norms) <= MAX_GROWTH * norms[0] * (1 + 1e-9), norms
        assert res.extra["target_met"] and res.steps <= 30, (res.steps, res.extra["history"])
        assert judge(model, tok) <= EXPECT["iterative"][2]
    finally:
        model.load_state_dict(state)


def test_iterative_undoes_and_halves_a_step_that_broke_the_bound(memorized):
    """The step-size control on a scripted task: the retain loss rises with the distance moved
    and the secret falls slowly, so the step grows until it breaks a 2% bound; that step is
    undone and the step never again exceeds half its size; breaks in a row end the update,
    and what is kept is within the bound."""
    from scrubber.edits.iterative import MAX_HALVINGS

    model, tok, retain, _ = memorized
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        task = _task(model, tok, retain)
        theta0 = task.selection.values().clone()
        direction = torch.randn(theta0.shape, generator=torch.Generator().manual_seed(0))
        moved = lambda: float((task.selection.values() - theta0).norm())  # noqa: E731
        scale = float(theta0.norm())
        task.forget_gradient = lambda pairs=None: direction.clone()
        task.retain_value = lambda n_blocks=16: 3.0 + 0.5 * moved() / scale  # +2% at 4% of |theta|
        task.exposures = lambda ids=None: {"card": max(0.0, 50.0 - 100.0 * moved() / scale)}
        task.retain_blocks = None  # the direction alone: no retain-gradient term
        res = METHODS["iterative"](task, UpdateSettings(max_retain_increase=0.02))
        hist = res.extra["history"]
        broke = [i for i, h in enumerate(hist) if "reverted_to" in h]
        assert broke, hist
        norms = [h["step_norm"] for h in hist[:broke[0]] if "active" in h]
        assert norms[-1] >= 2 * norms[0], norms  # it grew before it broke
        for i in broke:  # after a break the step stays at most half the size that broke
            assert all(h["step_norm"] <= hist[i]["step_norm"] / 2 * (1 + 1e-9) for h in hist[i + 1:]), hist
        # the secret can only go on falling by breaking the bound: the update ends on breaks in a row
        assert res.extra["utility_bound_hit"] and len(broke) >= MAX_HALVINGS + 1, hist
        assert res.extra["retain_rise"] <= 0.02
        assert moved() > 0  # it kept the progress made within the bound
    finally:
        model.load_state_dict(state)


def test_each_step_takes_a_few_occurrences_of_each_active_canary_and_rotates_through_all():
    from scrubber.edits.iterative import step_pairs

    card = make_edit_pairs("card", [f"doc {i}: {CANARY.text}" for i in range(10)], SECRET, "4000 0000 0000 0002")
    pin = make_edit_pairs("pin", ["my PIN is 4821"], "4821", "1937")
    done = make_edit_pairs("done", ["code 55123"], "55123", "90817")
    seen: set[str] = set()
    for step in range(3):  # ceil(10 / 4) steps see every occurrence of the card
        chosen = step_pairs([*card, *pin, *done], {"card", "pin"}, step, per_canary=4)
        assert sum(p.canary_id == "card" for p in chosen) == 4
        assert [p.canary_id for p in chosen].count("pin") == 1 and all(p.canary_id != "done" for p in chosen)
        seen |= {p.original for p in chosen if p.canary_id == "card"}
    assert seen == {p.original for p in card}
