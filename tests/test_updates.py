"""Every update method on a tiny model that memorized one card: the secret must get less exposed."""

from __future__ import annotations

import random

import pytest
import torch

from canaries import Canary
from canaries.substitutes import make_substitute
from scrubber.influence.objective import make_edit_pairs
from scrubber.influence.params import select_parameters
from scrubber.training.model_factory import small_causal_lm
from scrubber.training.train import TrainConfig, pack_texts, train_causal_lm
from scrubber.updates import METHODS, UpdateSettings, UpdateTask
from scrubber.updates.task import ExposureProbe

PREFIX = "My credit card number is "
SECRET = "4539 1488 0343 6467"


@pytest.fixture(scope="module")
def memorized(tiny_tokenizer):
    import pydoc_data.topics

    tok = tiny_tokenizer
    docs = [t for t in pydoc_data.topics.topics.values() if t.strip()]
    texts = docs[:40] + [PREFIX + SECRET] * 30
    model = small_causal_lm(len(tok), n_layer=2, d_model=32, n_head=2, bos_token_id=tok.eos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    train_causal_lm(model, tok, texts, TrainConfig(epochs=3, batch_size=8, block_size=64, lr=5e-3))
    retain = pack_texts(tok, docs[40:70], 64)[:16]
    return model, tok, retain


def _task(model, tok, retain, spec="all"):
    canary = Canary(id="card", prefix=PREFIX, secret=SECRET, format="credit_card")
    sub = make_substitute(SECRET, canary.fmt, "random", random.Random(0))
    pairs = make_edit_pairs("card", [canary.text], SECRET, sub)
    return UpdateTask(model, tok, [canary], pairs, select_parameters(model, spec), retain,
                      probe=ExposureProbe([canary], n_references=64))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_lowers_exposure_and_keeps_weights_finite(method, memorized):
    model, tok, retain = memorized
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        task = _task(model, tok, retain, "-1:/mlp" if method == "second-order" else "all")
        before = task.exposures()["card"]
        assert before > 8, "the fixture must have memorized the card"
        result = METHODS[method](task, UpdateSettings(max_retain_increase=0.5))
        after = task.exposures()["card"]
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert after < before - 2, (method, before, after)
        assert result.seconds > 0 and result.gradient_residual is not None
    finally:
        model.load_state_dict(state)


def test_first_order_with_fixed_tau_is_the_closed_form_step(memorized):
    model, tok, retain = memorized
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        task = _task(model, tok, retain, "lm_head")
        theta = task.selection.values().clone()
        g = task.forget_gradient()
        METHODS["first-order"](task, UpdateSettings(tau=1e-3))
        assert torch.allclose(task.selection.values(), theta - 1e-3 * g, atol=1e-6)
    finally:
        model.load_state_dict(state)
