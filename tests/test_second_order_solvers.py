"""Second order's three solvers against dense solves, each solver on a memorized card, and the certified head.

References are independent of the code under test: dense matrices built column by
column and `torch.linalg.solve`; exposure judged with references no method saw; the
certified head's exact minimiser found by plain gradient descent on an objective
written here with autograd.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from canaries import Canary
from canaries.substitutes import make_substitute
from scrubber.edits import (
    KFAC,
    METHODS,
    SOLVERS,
    OutputLoss,
    UpdateSettings,
    UpdateTask,
    build_head_objective,
    make_ggn_vp,
    second_order_step,
    select_parameters,
)
from scrubber.edits.certified_head import minimise
from scrubber.edits.objective import make_edit_pairs
from scrubber.edits.task import ExposureProbe
from scrubber.measure.exposure.engine import measure_exposure
from scrubber.training.model_factory import small_causal_lm
from scrubber.training.train import TrainConfig, pack_texts, train_causal_lm

D_IN, N_CLASSES = 6, 5


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double(), b.double(), dim=0))


# ----------------------------------------------------------------------------- the three solvers, dense reference


def test_cg_lissa_kfac_agree_with_a_dense_solve_where_kfac_is_exact():
    """One linear layer, one input at 4000 positions with sampled labels: GGN = (a aᵀ) ⊗ H_out exactly and
    the MC K-FAC estimates it, so all three solves of (c·G + λI)x = g match torch.linalg.solve."""
    torch.manual_seed(0)
    model = nn.Linear(D_IN, N_CLASSES).double()
    sel = select_parameters(model, "all")  # 35 parameters
    x = torch.randn(1, 1, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([[3]])
    loss = OutputLoss(lambda: model(x), lambda z: F.cross_entropy(z.reshape(-1, N_CLASSES), y.reshape(-1)))
    G = make_ggn_vp(loss, sel).dense()
    g = G @ torch.randn(sel.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    c = 50.0  # "training tokens": the step solves (c·G + λI)x = g
    lam = 1e-2 * c * float(torch.linalg.eigvalsh(G).max())
    ref = -torch.linalg.solve(c * G + lam * torch.eye(sel.numel, dtype=torch.float64), g)
    n = 4000
    kfac = KFAC.fit(sel, [{"x": x.expand(1, n, D_IN), "labels": torch.zeros(1, n, dtype=torch.long)}],
                    fisher="mc", logits_fn=lambda b: model(b["x"]), shift_labels=False)
    top = c * float(torch.linalg.eigvalsh(G).max())
    out = {
        solver: second_order_step(loss, g, sel, solver=solver, damping=lam, scale_to_tokens=c, kfac=kfac,
                                  max_iter=2000, tol=1e-10, lissa_scale=0.6 * (top + lam), lissa_depth=5000)
        for solver in SOLVERS
    }
    rel = {s: float((r.delta - ref).norm() / ref.norm()) for s, r in out.items()}
    assert rel["cg"] < 1e-8 and rel["lissa"] < 1e-6, rel
    assert rel["kfac"] < 0.05 and cosine(out["kfac"].delta, ref) > 0.999, rel  # MC noise of 4000 draws
    assert all(r.curvature_scale == c and r.solver == s for s, r in out.items())


# ----------------------------------------------------------------------------- the method on a memorized card

PREFIX = "My credit card number is "
SECRET = "4539 1488 0343 6467"
CANARY = Canary(id="card", prefix=PREFIX, secret=SECRET, format="credit_card")
JUDGE_SEED = 20_261_201


@pytest.fixture(scope="module")
def memorized(tiny_tokenizer):
    """tests/test_updates.py's recipe on fewer documents (10 s to train): docs 0–11 + the card 30× train,
    40–69 retain; the judge uses references no method saw."""
    import pydoc_data.topics

    tok = tiny_tokenizer
    docs = [t for t in pydoc_data.topics.topics.values() if t.strip()]
    torch.manual_seed(0)
    model = small_causal_lm(len(tok), n_layer=2, d_model=32, n_head=2, bos_token_id=tok.eos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    train_causal_lm(model, tok, docs[:12] + [PREFIX + SECRET] * 30, TrainConfig(epochs=3, batch_size=8,
                                                                               block_size=64, lr=5e-3))
    return model, tok, pack_texts(tok, docs[40:70], 64)[:16]


def _judge(model, tok) -> float:
    return measure_exposure(model, tok, CANARY, method="extrapolated", n_references=512, seed=JUDGE_SEED,
                            keep_reference_scores=False).exposure


def _task(model, tok, retain, spec):
    sub = make_substitute(SECRET, CANARY.fmt, "random", random.Random(0))
    return UpdateTask(model, tok, [CANARY], make_edit_pairs("card", [CANARY.text], SECRET, sub),
                      select_parameters(model, spec), retain, probe=ExposureProbe([CANARY], n_references=64, seed=1234))


# Measured on this fixture (judge's references, 12.63 bits before), params -1:/mlp, bound 0.5, 3 Newton steps:
#   kfac -> 1.75 bits (3 steps), cg -> 0.88 (2 steps), lissa -> 0.51 (2 steps); 7-10 s each.
DROP = 8.0
AFTER = 3.5


@pytest.mark.parametrize("solver", SOLVERS)
def test_solver_moves_the_secret(memorized, solver):
    model, tok, retain = memorized
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        before = _judge(model, tok)
        res = METHODS["second-order"](_task(model, tok, retain, "-1:/mlp"),
                                      UpdateSettings(solver=solver, max_retain_increase=0.5))
        after = _judge(model, tok)
        assert res.extra["solver"] == solver
        if solver == "kfac":
            assert res.extra["curvature"] == "kfac-fisher"
            assert "kfac_fit_seconds" in res.extra["history"][0]  # fitted once, before the first step
        assert 1 <= res.steps <= UpdateSettings().newton_steps
        assert before > 11 and before - after >= DROP and after <= AFTER, (before, after, res.extra["history"])
    finally:
        model.load_state_dict(state)


def test_unknown_solver_is_refused(memorized):
    model, tok, retain = memorized
    with pytest.raises(ValueError, match="solver"):
        METHODS["second-order"](_task(model, tok, retain, "-1:/mlp"), UpdateSettings(solver="newton"))


# ----------------------------------------------------------------------------- certified lm_head


@pytest.fixture(scope="module")
def untied(tiny_tokenizer):
    """An untied 2-layer Llama trained briefly with the card in its data (so the head has work to do)."""
    import pydoc_data.topics

    tok = tiny_tokenizer
    docs = [t for t in pydoc_data.topics.topics.values() if t.strip()]
    model = small_causal_lm(len(tok), arch="llama", n_layer=2, d_model=32, n_head=2, bos_token_id=tok.eos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    train_causal_lm(model, tok, docs[:20] + [PREFIX + SECRET] * 20, TrainConfig(epochs=2, batch_size=8,
                                                                               block_size=64, lr=5e-3))
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    return model.eval(), tok, pack_texts(tok, docs[40:70], 64)[:8]


def _autograd_objective(obj):
    """F written independently: weighted cross-entropy by F.cross_entropy, tilt, L2 anchor."""
    def f(theta: torch.Tensor) -> torch.Tensor:
        nll = F.cross_entropy(obj.features @ theta.t(), obj.targets, reduction="none")
        return (obj.weights * nll).sum() - (obj.tilt * theta).sum() + 0.5 * obj.mu * (theta - obj.anchor).pow(2).sum()
    return f


def test_certified_bound_holds_against_the_exact_minimiser(untied):
    model, tok, retain = untied
    task = _task(model, tok, retain, "all")
    obj = build_head_objective(task, UpdateSettings(l2=None))
    # the features are the model's: Θ₀ x reproduces its logits at the retain positions
    logits = model(input_ids=retain[:1]).logits[0, :-1].double()
    torch.testing.assert_close(obj.features[: logits.shape[0]] @ obj.anchor.t(), logits, atol=1e-4, rtol=1e-4)
    obj.mu = float(obj.mu) * 100  # condition number ~10: gradient descent reaches W* in a few hundred steps
    f = _autograd_objective(obj)
    theta = obj.anchor.clone().requires_grad_(True)
    lipschitz = obj.mu / 1e-1 + obj.mu  # top eigenvalue + μ, with μ = 0.1 × top
    for _ in range(600):  # contraction 10/11 per step: e^-57 of the start
        (grad,) = torch.autograd.grad(f(theta), theta)
        with torch.no_grad():
            theta -= grad / lipschitz
    (grad,) = torch.autograd.grad(f(theta), theta)
    star, star_err = theta.detach(), float(grad.norm()) / obj.mu  # W* to within star_err
    assert star_err < 1e-9 and float((star - obj.anchor).norm()) > 1e3 * star_err  # W* is not W₀
    for newton in (0, 1, 2, 20):  # a loose solve gives a loose but valid bound
        w, _ = minimise(obj, max_newton=newton)
        residual = float(obj.gradient(w).norm())
        dist = float((w - star).norm())
        assert dist <= residual / obj.mu + star_err, (newton, dist, residual / obj.mu)
        if newton == 0:
            assert dist > 0.1 * residual / obj.mu  # not vacuous: within 10x of the true distance
    assert residual / obj.mu < 1e-6  # converged Newton-CG: certified to a micro-unit of the weights


def test_certified_head_method_reports_its_bound(untied):
    model, tok, retain = untied
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        head0 = model.get_output_embeddings().weight.detach().clone()
        body0 = {k: v.clone() for k, v in model.state_dict().items() if "lm_head" not in k}
        res = METHODS["certified-head"](_task(model, tok, retain, "all"), UpdateSettings(max_retain_increase=1.0))
        assert res.method == "certified-head" and res.extra["mu"] > 0
        assert res.extra["certified_bound"] == pytest.approx(res.gradient_residual / res.extra["mu"])
        assert res.extra["certified_bound"] < 1e-6
        assert float((model.get_output_embeddings().weight.detach() - head0).norm()) > 0  # the head moved
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in body0.items())  # nothing else did
    finally:
        model.load_state_dict(state)


def test_certified_head_refuses_a_tied_head(tiny_gpt2, tiny_tokenizer):
    retain = pack_texts(tiny_tokenizer, ["some retained text " * 40], 32)[:2]
    with pytest.raises(ValueError, match="tied"):
        METHODS["certified-head"](_task(tiny_gpt2, tiny_tokenizer, retain, "all"), UpdateSettings())

