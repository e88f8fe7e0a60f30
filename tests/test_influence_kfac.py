"""K-FAC / EK-FAC: exact where the Kronecker factorisation is exact, a sensible approximation elsewhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from scrubber.edits import (
    KFAC,
    OutputLoss,
    causal_lm_output_loss,
    flat_gradient,
    inverse_hvp,
    make_ggn_vp,
    second_order_step,
    select_parameters,
    top_eigenvalue,
)
from scrubber.training.model_factory import small_causal_lm

VOCAB = 64
D_IN, N_CLASSES = 6, 5


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double(), b.double(), dim=0))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class OneLayer(nn.Module):
    """logits = layer(x): the case where K-FAC can be checked against the exact matrix."""

    def __init__(self, conv1d: bool):
        super().__init__()
        self.layer = Conv1D(N_CLASSES, D_IN) if conv1d else nn.Linear(D_IN, N_CLASSES)

    def forward(self, x):
        return self.layer(x)


def one_layer(conv1d: bool):
    torch.manual_seed(0)
    model = OneLayer(conv1d).double()
    with torch.no_grad():
        model.layer.bias.normal_()
    return model


@pytest.mark.parametrize("conv1d", [False, True])
@pytest.mark.parametrize("ekfac", [False, True])
def test_exact_for_a_single_example(conv1d, ekfac):
    """One token: the empirical Fisher is (g gᵀ) ⊗ (a aᵀ) exactly, weight and bias together."""
    model = one_layer(conv1d)
    sel = select_parameters(model, "all")
    x = torch.randn(1, 1, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([[3]])
    kfac = KFAC.fit(sel, [{"x": x, "labels": y}], fisher="empirical", ekfac=ekfac,
                    logits_fn=lambda b: model(b["x"]), shift_labels=False)
    assert kfac.uncovered == [] and len(kfac.layers) == 1
    with sel.requires_grad_only():
        g = sel.gradient(F.cross_entropy(model(x).reshape(-1, N_CLASSES), y.reshape(-1)))
    fisher = torch.outer(g, g)
    v = torch.randn(sel.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert rel(kfac.curvature_product(v), fisher @ v) < 1e-10
    lam = 1e-2
    ref = torch.linalg.solve(fisher + lam * torch.eye(sel.numel, dtype=torch.float64), v)
    out = kfac.apply_inverse(v, lam)
    assert cosine(out, ref) > 1 - 1e-10 and rel(out, ref) < 1e-8


def test_exact_for_one_input_at_many_positions_with_ignored_labels():
    """Same activation everywhere: A is exact, so K-FAC equals the per-token Fisher, scaled by loss tokens only.

    Labels -100 and padding contribute activations but no loss term: the Fisher of the mean loss divides by
    the 3 loss tokens, not the 6 positions.
    """
    model = one_layer(conv1d=False)
    sel = select_parameters(model, "all")
    x = torch.randn(1, 1, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).expand(1, 6, D_IN)
    labels = torch.tensor([[1, -100, 4, -100, 0, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])  # last position is padding: its label is dropped too
    kfac = KFAC.fit(sel, [{"x": x, "labels": labels, "attention_mask": mask}], fisher="empirical",
                    logits_fn=lambda b: model(b["x"]), shift_labels=False)
    assert kfac.n_loss_tokens == 3
    per_token = []
    for t in (0, 2, 4):
        with sel.requires_grad_only():
            per_token.append(sel.gradient(torch.nn.functional.cross_entropy(model(x[:, t]), labels[:, t])))
    fisher = sum(torch.outer(g, g) for g in per_token) / 3
    v = torch.randn(sel.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert rel(kfac.curvature_product(v), fisher @ v) < 1e-10


@pytest.mark.parametrize("conv1d", [False, True])
def test_mc_fisher_approaches_the_ggn(conv1d):
    """Sampled labels: E[g gᵀ] = H_out, so K-FAC → the exact GGN (a aᵀ) ⊗ H_out for one input."""
    model = one_layer(conv1d)
    sel = select_parameters(model, "all")
    x = torch.randn(1, 1, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([[3]])
    n = 4000  # the same input repeated: the sample mean of g gᵀ over n label draws
    kfac = KFAC.fit(sel, [{"x": x.expand(1, n, D_IN), "labels": torch.zeros(1, n, dtype=torch.long)}],
                    fisher="mc", logits_fn=lambda b: model(b["x"]), shift_labels=False)
    ggn = OutputLoss(lambda: model(x), lambda z: F.cross_entropy(z.reshape(-1, N_CLASSES), y.reshape(-1)))
    G = make_ggn_vp(ggn, sel).dense()
    w = torch.randn(sel.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    v = G @ w  # inside the GGN's range, where the approximation matters (elsewhere both give v/λ)
    assert rel(kfac.curvature_product(v), G @ v) < 0.1
    lam = 1e-3 * float(torch.linalg.eigvalsh(G).max())
    ref = torch.linalg.solve(G + lam * torch.eye(sel.numel, dtype=torch.float64), v)
    assert cosine(kfac.apply_inverse(v, lam), ref) > 0.99


@pytest.fixture(scope="module")
def gpt2_setup():
    model = small_causal_lm(VOCAB, arch="gpt2", n_layer=2, d_model=32, n_head=2, n_positions=64).double().eval()
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, VOCAB, (4, 16), generator=gen)} for _ in range(4)]
    train = causal_lm_output_loss(model, torch.cat([b["input_ids"] for b in batches]))
    probe = causal_lm_output_loss(model, torch.randint(0, VOCAB, (1, 16), generator=gen))
    sel = select_parameters(model, "-1/mlp")
    g = flat_gradient(probe, sel)  # a real gradient, like a scrub's, not a random vector
    op = make_ggn_vp(train, sel)
    lam = 1e-2 * top_eigenvalue(op, g, iters=30)
    exact, info = inverse_hvp(op, g, damping=lam, max_iter=500, tol=1e-8)
    assert info.converged
    return model, batches, train, sel, g, lam, exact, info


@pytest.mark.parametrize("fisher, ekfac", [("mc", False), ("mc", True), ("empirical", False)])
def test_sensible_approximation_on_a_transformer_block(gpt2_setup, fisher, ekfac):
    """Last GPT-2 MLP block (8352 params), λ = 1e-2·top: measured cosine ≈ 0.96 against the CG solve."""
    _, batches, _, sel, g, lam, exact, _ = gpt2_setup
    kfac = KFAC.fit(sel, batches, fisher=fisher, ekfac=ekfac)
    approx = kfac.apply_inverse(g, lam)
    assert cosine(approx, exact) >= 0.9
    assert cosine(approx, exact) > cosine(g, exact) + 0.2  # far better than ignoring curvature (g/λ)


def test_preconditioned_cg_needs_fewer_products(gpt2_setup):
    _, batches, train, sel, g, lam, exact, plain = gpt2_setup
    kfac = KFAC.fit(sel, batches, ekfac=True)
    x, pre = inverse_hvp(make_ggn_vp(train, sel), g, damping=lam, max_iter=500, tol=1e-8,
                         preconditioner=kfac.preconditioner(lam))
    assert pre.converged and cosine(x, exact) > 0.99999
    assert pre.iterations < 0.6 * plain.iterations
    # The same through second_order_step: K-FAC alone, and K-FAC-preconditioned CG.
    step = second_order_step(train, g, sel, solver="kfac", kfac=kfac, damping=lam)
    torch.testing.assert_close(step.delta, -kfac.apply_inverse(g, lam))
    assert 0 < step.info.relative_residual < 1
    pcg = second_order_step(train, g, sel, solver="cg", kfac=kfac, precondition=True, damping=lam, tol=1e-8)
    assert cosine(pcg.delta, -exact) > 0.99999 and pcg.info.iterations == pre.iterations


def test_uncovered_tensors_and_large_factors(gpt2_setup):
    model, batches, _, _, _, _, _, _ = gpt2_setup
    sel = select_parameters(model, "-1/mlp,transformer.ln_f.*")
    kfac = KFAC.fit(sel, batches[:1])
    assert kfac.uncovered == ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    v = torch.randn(sel.numel, dtype=torch.float64)
    out = sel.named_tensors(kfac.apply_inverse(v, 0.5))
    torch.testing.assert_close(out["transformer.ln_f.bias"], sel.named_tensors(v)["transformer.ln_f.bias"] / 0.5)
    with pytest.raises(ValueError, match="max_factor_dim"):
        KFAC.fit(sel, batches[:1], max_factor_dim=64)
    with pytest.raises(ValueError, match="covers no tensor"):
        KFAC.fit(select_parameters(model, "transformer.ln_f.*"), batches[:1])
    with pytest.raises(ValueError, match="damping"):
        kfac.apply_inverse(v, 0.0)
