"""Every baseline, at a working setting, lowers a memorized secret's exposure by a stated amount.

Exposure is measured with 200 references (seed 0) that no baseline sees (they read only
the forget pairs and retain blocks; the task's probe, seed 1234, is never consulted by
them); utility on six documents that are neither trained on nor retained.
"""

from __future__ import annotations

import copy
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `eval` lives at the repo root

from canaries import Canary  # noqa: E402
from canaries.substitutes import make_substitute  # noqa: E402
from eval.baselines import BASELINES, BaselineConfig  # noqa: E402
from eval.baselines.cost import count_tokens  # noqa: E402
from eval.baselines.kfac_edit import keep_mask  # noqa: E402
from scrubber.measure.exposure import metrics  # noqa: E402
from scrubber.measure.exposure.engine import references_for  # noqa: E402
from scrubber.measure.exposure.scoring import score_candidates  # noqa: E402
from scrubber.edits.objective import make_edit_pairs  # noqa: E402
from scrubber.edits.params import select_parameters  # noqa: E402
from scrubber.training.model_factory import small_causal_lm  # noqa: E402
from scrubber.training.train import TrainConfig, pack_texts, train_causal_lm  # noqa: E402
from scrubber.edits.task import ExposureProbe, UpdateTask  # noqa: E402
from scrubber.measure.utility import document_utility  # noqa: E402

CANARY = Canary(id="door", prefix="The door code is ", secret="48213957", format="digits8")

# (baseline, keyword arguments, min exposure drop in bits, max relative bits-per-byte rise)
CASES = [
    ("gradient_ascent", {"config": BaselineConfig(lr=3e-3, epochs=5)}, 3.0, 0.03),
    ("graddiff", {"config": BaselineConfig(lr=1e-3, epochs=10)}, 2.0, 0.03),
    ("npo", {"config": BaselineConfig(lr=1e-3, epochs=10)}, 2.0, 0.03),
    ("finetune", {"config": BaselineConfig(lr=3e-3, epochs=10)}, 2.0, 0.03),
    ("balanced_subnet", {"config": BaselineConfig(lr=0.5, epochs=20, batch_size=4)}, 3.0, 0.08),
    ("kfac_edit", {"keep_mass": 0.5}, 2.0, 0.04),
]


@pytest.fixture(scope="module")
def memorized(tiny_tokenizer):
    import pydoc_data.topics

    tok = tiny_tokenizer
    docs = [t for t in pydoc_data.topics.topics.values() if t.strip()]
    model = small_causal_lm(len(tok), n_layer=2, d_model=32, n_head=2, bos_token_id=tok.eos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    train_causal_lm(model, tok, docs[:12] + [CANARY.text] * 60,
                    TrainConfig(epochs=3, batch_size=8, block_size=64, lr=5e-3))
    retain = pack_texts(tok, docs[12:30], 64)[:32]
    return model.eval(), tok, retain, docs[40:46]


def _exposure(model, tok) -> float:
    refs = references_for(CANARY, 200, seed=0)
    s = score_candidates(model, tok, CANARY.prefix, [CANARY.secret, *refs])
    return float(metrics.exposure_extrapolated(s[0], s[1:]))


def _task(model, tok, retain, canary=CANARY):
    sub = make_substitute(canary.secret, canary.fmt, "random", random.Random(0))
    pairs = make_edit_pairs(canary.id, [canary.text] * 8, canary.secret, sub)
    return UpdateTask(model, tok, [canary], pairs, select_parameters(model, "all"), retain,
                      probe=ExposureProbe([canary], n_references=64))


@pytest.mark.parametrize("name,kwargs,min_drop,max_rise", CASES, ids=[c[0] for c in CASES])
def test_baseline_lowers_exposure_at_bounded_cost(name, kwargs, min_drop, max_rise, memorized):
    base, tok, retain, eval_docs = memorized
    before = _exposure(base, tok)
    assert before > 8, "the fixture must have memorized the code"
    bpb_before = document_utility(base, tok, eval_docs, max_tokens=4000).bits_per_byte
    model = copy.deepcopy(base)
    task = _task(model, tok, retain)
    with count_tokens(model) as cost:
        BASELINES[name](task, None, **kwargs)
    after = _exposure(model, tok)
    bpb = document_utility(model, tok, eval_docs, max_tokens=4000).bits_per_byte
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert after < before - min_drop, (name, before, after)
    assert (bpb - bpb_before) / bpb_before < max_rise, (name, bpb_before, bpb)
    assert cost.forward_tokens > 0 and cost.backward_tokens > 0


def test_kfac_edit_reads_no_forget_set(memorized):
    """Unsupervised: the edit is the same whatever canary the task names."""
    base, tok, retain, _ = memorized
    other = Canary(id="card", prefix="My card is ", secret="4539 1488 0343 6467", format="credit_card")
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    BASELINES["kfac_edit"](_task(a, tok, retain), None, keep_mass=0.7)
    BASELINES["kfac_edit"](_task(b, tok, retain, other), None, keep_mass=0.7)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    changed = sum(not torch.equal(pa, pb) for pa, pb in zip(a.parameters(), base.parameters()))
    assert changed == 4  # c_fc and c_proj weights of both layers, nothing else


def test_keep_mask_keeps_the_top_curvature_mass():
    curv = torch.tensor([[8.0, 1.0], [0.5, 0.5]])  # total 10
    assert keep_mask(curv, 0.8).tolist() == [[True, False], [False, False]]
    assert keep_mask(curv, 0.85).tolist() == [[True, True], [False, False]]
    assert keep_mask(curv, 1.0).all()


def test_balanced_subnet_only_zeroes_mlp_weights(memorized):
    base, tok, retain, _ = memorized
    model = copy.deepcopy(base)
    BASELINES["balanced_subnet"](_task(model, tok, retain), None,
                                 config=BaselineConfig(lr=0.5, epochs=20, batch_size=4))
    pruned = 0
    original = dict(base.named_parameters())
    for name, p in model.named_parameters():  # by name: removing a parametrization re-registers `weight`
        q = original[name]
        if "mlp" in name and p.dim() == 2:
            kept = p != 0
            assert torch.equal(p[kept], q[kept])  # surviving weights are untouched, not rescaled
            pruned += int((~kept).sum())
        else:
            assert torch.equal(p, q), name
    assert pruned > 0
