"""inverse_hvp (CG, LiSSA) against dense solves, and the second-order step built on it."""

from __future__ import annotations

import pytest
import torch

from scrubber.edits import (
    causal_lm_output_loss,
    dense_hessian,
    inverse_hvp,
    make_ggn_vp,
    make_hvp,
    second_order_step,
    select_parameters,
    top_eigenvalue,
)
from scrubber.training.model_factory import small_causal_lm

VOCAB = 64
SUBSET = "transformer.h.1.mlp.c_proj.bias,transformer.ln_f.*"  # 96 parameters


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


@pytest.fixture(scope="module")
def setup():
    model = small_causal_lm(VOCAB, arch="gpt2", n_layer=2, d_model=32, n_head=2, n_positions=64).double().eval()
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    loss = causal_lm_output_loss(model, ids)
    sel = select_parameters(model, SUBSET)
    H = dense_hessian(loss, sel)
    G = make_ggn_vp(loss, sel).dense()
    v = torch.randn(sel.numel, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, loss, sel, H, G, v


def test_cg_matches_dense_solve_ggn(setup):
    _, loss, sel, _, G, v = setup
    lam = 1e-3 * float(torch.linalg.eigvalsh(G).max())
    x, info = inverse_hvp(make_ggn_vp(loss, sel), v, damping=lam, max_iter=300, tol=1e-10)
    ref = torch.linalg.solve(G + lam * torch.eye(sel.numel, dtype=G.dtype), v)
    assert cosine(x, ref) >= 0.999
    assert float((x - ref).norm() / ref.norm()) < 1e-4
    assert info.converged and not info.negative_curvature and info.relative_residual < 1e-8
    assert info.hvp_calls == info.iterations + 1  # + the honest final residual


def test_cg_matches_dense_solve_damped_hessian(setup):
    _, loss, sel, H, _, v = setup
    lam = 1.5 * abs(float(torch.linalg.eigvalsh(H).min()))  # H is indefinite; this damping makes H + λI PD
    x, info = inverse_hvp(make_hvp(loss, sel), v, damping=lam, max_iter=300, tol=1e-10)
    ref = torch.linalg.solve(H + lam * torch.eye(sel.numel, dtype=H.dtype), v)
    assert cosine(x, ref) >= 0.999 and info.converged


def test_cg_reports_negative_curvature(setup):
    _, loss, sel, H, _, v = setup
    assert float(torch.linalg.eigvalsh(H).min()) < 0
    _, info = inverse_hvp(make_hvp(loss, sel), v, damping=0.0, max_iter=300, tol=1e-10)
    assert info.negative_curvature and not info.converged
    assert "ggn" in info.message


def test_cg_early_stop_and_preconditioner():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(60, 60, generator=gen, dtype=torch.float64))
    A = q @ torch.diag(torch.logspace(-2, 2, 60, dtype=torch.float64)) @ q.T
    b = torch.randn(60, generator=gen, dtype=torch.float64)
    _, loose = inverse_hvp(lambda x: A @ x, b, tol=1e-1, max_iter=200)
    x, tight = inverse_hvp(lambda x: A @ x, b, tol=1e-10, max_iter=200)
    assert loose.converged and loose.iterations < tight.iterations
    assert float((A @ x - b).norm()) < 1e-8
    Ainv = torch.linalg.inv(A)
    _, pre = inverse_hvp(lambda x: A @ x, b, tol=1e-10, preconditioner=lambda r: Ainv @ r)
    assert pre.iterations <= 2
    _, capped = inverse_hvp(lambda x: A @ x, b, tol=1e-12, max_iter=5)
    assert capped.iterations == 5 and not capped.converged


def test_lissa_converges_when_scale_exceeds_top_eigenvalue(setup):
    _, loss, sel, _, G, v = setup
    top = float(torch.linalg.eigvalsh(G).max())
    lam = 0.05 * top
    ref = torch.linalg.solve(G + lam * torch.eye(sel.numel, dtype=G.dtype), v)
    x, info = inverse_hvp(make_ggn_vp(loss, sel), v, method="lissa", damping=lam, lissa_scale=1.2 * top,
                          lissa_depth=1000, tol=1e-9)
    assert info.converged and not info.diverged and info.iterations < 1000
    assert cosine(x, ref) >= 0.999
    assert abs(top_eigenvalue(make_ggn_vp(loss, sel), v, iters=50) - top) / top < 1e-3
    xa, auto = inverse_hvp(make_ggn_vp(loss, sel), v, method="lissa", damping=lam, lissa_scale="auto",
                           lissa_depth=1000, tol=1e-9)
    assert auto.converged and cosine(xa, ref) >= 0.999


def test_lissa_threshold_is_half_the_top_eigenvalue(setup):
    """The recursion contracts iff every eigenvalue of H + λI lies in (0, 2s): s just above/below (top+λ)/2."""
    _, _, sel, _, G, v = setup
    top = float(torch.linalg.eigvalsh(G).max())
    lam = 0.05 * top
    ref = torch.linalg.solve(G + lam * torch.eye(sel.numel, dtype=G.dtype), v)
    x, ok = inverse_hvp(lambda y: G @ y, v, method="lissa", damping=lam, lissa_scale=0.55 * (top + lam),
                        lissa_depth=3000, tol=1e-9)
    assert ok.converged and cosine(x, ref) >= 0.999
    _, bad = inverse_hvp(lambda y: G @ y, v, method="lissa", damping=lam, lissa_scale=0.45 * (top + lam),
                         lissa_depth=3000, tol=1e-9)
    assert bad.diverged and bad.iterations < 3000


def test_lissa_flags_divergence(setup):
    _, loss, sel, H, G, v = setup
    top = float(torch.linalg.eigvalsh(G).max())
    x, info = inverse_hvp(make_ggn_vp(loss, sel), v, method="lissa", damping=1e-3 * top,
                          lissa_scale=0.25 * top, lissa_depth=500)
    assert info.diverged and not info.converged and info.iterations < 500
    assert "diverged" in info.message
    # An indefinite Hessian cannot converge at any scale.
    _, indefinite = inverse_hvp(make_hvp(loss, sel), v, method="lissa", damping=0.0,
                                lissa_scale=2 * float(torch.linalg.eigvalsh(H).abs().max()), lissa_depth=2000)
    assert indefinite.diverged
    with pytest.raises(ValueError, match="lissa_scale"):
        inverse_hvp(make_ggn_vp(loss, sel), v, method="lissa")


def test_second_order_step_scaling_and_apply(setup):
    model, loss, sel, _, G, v = setup
    n_tokens, lam = 1000.0, 0.5
    res = second_order_step(loss, v, sel, damping=lam, scale_to_tokens=n_tokens, tol=1e-10, max_iter=300)
    ref = -torch.linalg.solve(n_tokens * G + lam * torch.eye(sel.numel, dtype=G.dtype), v)
    assert cosine(res.delta, ref) >= 0.999 and res.curvature_scale == n_tokens
    before = sel.values()
    try:
        applied = second_order_step(loss, v, sel, damping=lam, scale_to_tokens=n_tokens, tol=1e-10, apply=True)
        assert applied.applied
        torch.testing.assert_close(sel.values(), before + applied.delta)
    finally:
        sel.set_(before)
    with pytest.raises(ValueError, match="OutputLoss"):
        second_order_step(lambda: loss(), v, sel, curvature="ggn")
    with pytest.raises(ValueError, match="fitted KFAC"):
        second_order_step(loss, v, sel, solver="kfac")
    with pytest.raises(RuntimeError, match="diverged"):
        second_order_step(loss, v, sel, solver="lissa", damping=1e-6, lissa_scale=1e-3, lissa_depth=200, apply=True)
    torch.testing.assert_close(sel.values(), before)
    with pytest.warns(RuntimeWarning, match="curvature"):
        hess = second_order_step(lambda: loss(), v, sel, curvature="hessian", damping=0.0)
    assert hess.info.negative_curvature
