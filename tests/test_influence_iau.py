"""IAU step and gradient restriction; gradient residual and the certified lm_head bound."""

from __future__ import annotations

import pytest
import torch

from scrubber.edits import (
    causal_lm_output_loss,
    certifiable_lm_head,
    certified_bound,
    flat_gradient,
    forget_gradient,
    gradient_residual,
    gradient_restriction_penalty,
    iau_step,
    l2_regularized,
    second_order_step,
    select_parameters,
)
from scrubber.training.model_factory import small_causal_lm

VOCAB = 64


def tiny(arch: str):
    return small_causal_lm(VOCAB, arch=arch, n_layer=2, d_model=32, n_head=2, n_positions=64).double().eval()


def ids(seed: int, shape=(1, 12)) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def test_iau_step_arithmetic():
    gf, gr = torch.tensor([1.0, -2.0, 0.0]), torch.tensor([0.5, 0.5, 4.0])
    torch.testing.assert_close(iau_step(gf, None, 0.1), torch.tensor([-0.1, 0.2, 0.0]))
    torch.testing.assert_close(iau_step(gf, gr, 0.1, retain_weight=2.0), torch.tensor([-0.2, 0.1, -0.8]))
    clipped = iau_step(gf, gr, 10.0, max_norm=1.0)
    assert abs(float(clipped.norm()) - 1.0) < 1e-6
    torch.testing.assert_close(clipped / clipped.norm(), -(gf + gr) / (gf + gr).norm())
    torch.testing.assert_close(forget_gradient(gf), -gf)
    torch.testing.assert_close(forget_gradient(gf, gr), gr - gf)
    with pytest.raises(ValueError, match="tau"):
        iau_step(gf, gr, -1.0)
    with pytest.raises(ValueError, match="shape"):
        iau_step(gf, gr[:2], 0.1)


def test_gradient_correction_protects_retained_data():
    """Small τ: forgetting raises the forget loss; the correction makes the retain loss rise less (or fall)."""
    model = tiny("llama")
    sel = select_parameters(model, "-1/mlp")
    forget = causal_lm_output_loss(model, ids(1))
    retain = causal_lm_output_loss(model, ids(2, (4, 12)))
    g_forget = forget_gradient(flat_gradient(forget, sel))
    g_retain = flat_gradient(retain, sel)
    before = sel.values()
    f0, r0 = float(forget().detach()), float(retain().detach())
    results = {}
    for name, gr in (("plain", None), ("corrected", g_retain)):
        sel.add_(iau_step(g_forget, gr, 0.05))
        results[name] = (float(forget().detach()) - f0, float(retain().detach()) - r0)
        sel.set_(before)
    assert results["plain"][0] > 0 and results["corrected"][0] > 0
    assert results["corrected"][1] < results["plain"][1]


def test_gradient_restriction_penalty_value_and_gradient():
    model = tiny("gpt2")
    sel = select_parameters(model, "-1/mlp")
    loss_fn = causal_lm_output_loss(model, ids(3))
    alpha = 0.3
    with sel.requires_grad_only():
        penalty = gradient_restriction_penalty(loss_fn(), sel, alpha)
        assert abs(float(penalty) - alpha * float(flat_gradient(loss_fn, sel).norm())) < 1e-10
        grad = sel.gradient(penalty)  # needs create_graph inside the penalty
    direction = torch.randn(sel.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    direction /= direction.norm()
    before, eps = sel.values(), 1e-5

    def value() -> float:
        with sel.requires_grad_only():
            return float(gradient_restriction_penalty(loss_fn(), sel, alpha))

    sel.add_(direction, alpha=eps)
    up = value()
    sel.set_(before)
    sel.add_(direction, alpha=-eps)
    down = value()
    sel.set_(before)
    fd = (up - down) / (2 * eps)
    assert abs(float(grad @ direction) - fd) < 1e-6 * max(1.0, abs(fd))
    assert float(gradient_restriction_penalty(loss_fn(), sel, 0.0)) == 0.0


def test_residual_helpers():
    model = tiny("llama")
    sel = select_parameters(model, "lm_head")
    loss_fn = causal_lm_output_loss(model, ids(4))
    assert abs(gradient_residual(loss_fn, sel) - float(flat_gradient(loss_fn, sel).norm())) < 1e-12
    assert certified_bound(2.0, 0.5) == 4.0
    with pytest.raises(ValueError, match="mu"):
        certified_bound(1.0, 0.0)
    center = sel.values() + 1.0
    reg = l2_regularized(loss_fn, sel, 0.2, center=center)
    assert abs(float(reg()) - float(loss_fn()) - 0.1 * sel.numel) < 1e-9
    assert certifiable_lm_head(model).names == ["lm_head.weight"]
    with pytest.raises(ValueError, match="tied"):
        certifiable_lm_head(tiny("gpt2"))


def test_certified_bound_holds_for_l2_regularised_lm_head():
    """μ-strongly convex in the untied head: ‖θ − θ*‖ ≤ residual/μ, with θ* found by Newton steps."""
    model = tiny("llama")
    sel = certifiable_lm_head(model)
    mu = 0.05
    loss = l2_regularized(causal_lm_output_loss(model, ids(5, (4, 12))), sel, mu)
    start = sel.values()
    for _ in range(30):  # Newton with backtracking: exact Hessian (PSD + μI here), no damping needed
        if gradient_residual(loss, sel) < 1e-9:
            break
        step = second_order_step(loss, flat_gradient(loss, sel), sel, curvature="hessian", damping=0.0,
                                 tol=1e-12, max_iter=500)
        here, value, t = sel.values(), float(loss().detach()), 1.0
        while True:
            sel.set_(here + t * step.delta)
            if float(loss().detach()) <= value or t < 1e-4:
                break
            t /= 2
    assert gradient_residual(loss, sel) < 1e-9
    optimum = sel.values()
    for seed, size in ((0, 0.05), (1, 0.5)):
        noise = torch.randn(sel.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        sel.set_(optimum + size * noise / noise.norm())
        residual = gradient_residual(loss, sel)
        distance = float((sel.values() - optimum).norm())
        assert distance <= certified_bound(residual, mu) * (1 + 1e-6)
    sel.set_(start)
