"""Curvature products against finite differences and dense references on tiny selections."""

from __future__ import annotations

import pytest
import torch

from scrubber.edits import (
    OutputLoss,
    causal_lm_output_loss,
    dense_hessian,
    eager_attention,
    finite_difference_hvp,
    make_ggn_vp,
    make_hvp,
    select_parameters,
)
from scrubber.training.model_factory import small_causal_lm

VOCAB = 64


def tiny(arch: str, dtype=torch.float64, attn: str = "eager"):
    model = small_causal_lm(VOCAB, arch=arch, n_layer=2, d_model=32, n_head=2, n_positions=64, attn_implementation=attn)
    return model.to(dtype).eval()


def batch(seed: int = 0, shape=(2, 8)) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def rand(n: int, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.fixture(scope="module")
def gpt2():
    return tiny("gpt2")


@pytest.fixture(scope="module")
def gpt2_loss(gpt2):
    return causal_lm_output_loss(gpt2, batch())


def test_exact_hvp_matches_dense_hessian(gpt2, gpt2_loss):
    sel = select_parameters(gpt2, "transformer.h.1.mlp.c_proj.bias")  # 32 parameters
    H = dense_hessian(gpt2_loss, sel)
    torch.testing.assert_close(H, H.T, rtol=0, atol=1e-10)
    eig = torch.linalg.eigvalsh(H)
    assert eig.min() < 0 < eig.max()  # indefinite: why GGN products exist
    for method in ("double_backward", "forward_over_reverse"):
        op = make_hvp(gpt2_loss, sel, method=method)
        for seed in (1, 2):
            v = rand(sel.numel, seed=seed)
            assert rel(op(v), H @ v) < 1e-10, method
    assert op.calls == 2


def test_ggn_matches_explicit_jacobian_and_is_psd(gpt2, gpt2_loss):
    sel = select_parameters(gpt2, "transformer.h.1.mlp.c_proj.bias")
    ids = batch()
    from scrubber.edits.curvature import _functional

    f = _functional(sel, gpt2_loss.logits_fn)
    J = torch.autograd.functional.jacobian(lambda flat: f(*sel.unflatten(flat)), sel.values(), vectorize=True)
    logits = gpt2_loss.logits_fn().detach()
    n = ids[:, 1:].numel()
    G = torch.zeros(sel.numel, sel.numel, dtype=torch.float64)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):  # the last position predicts nothing
            p = torch.softmax(logits[b, t], -1)
            G += J[b, t].T @ (torch.diag(p) - torch.outer(p, p)) @ J[b, t] / n
    for method in ("reverse", "forward"):
        dense = make_ggn_vp(gpt2_loss, sel, method=method).dense()
        assert rel(dense, G) < 1e-10, method
    eig = torch.linalg.eigvalsh(G)
    assert eig.min() > -1e-12 * eig.max()


@pytest.mark.parametrize("spec", ["-1/mlp", "lm_head"])  # 8352 params; GPT-2's tied head/embedding, 2048
def test_exact_hvp_matches_finite_differences(gpt2, gpt2_loss, spec):
    sel = select_parameters(gpt2, spec)
    before = sel.values()
    v = rand(sel.numel)
    fd = finite_difference_hvp(gpt2_loss, sel, v, eps=1e-4)
    assert torch.equal(sel.values(), before)  # weights restored exactly
    for method in ("double_backward", "forward_over_reverse"):
        assert rel(make_hvp(gpt2_loss, sel, method=method)(v), fd) < 1e-6, method


def test_float32_llama_hvp_matches_finite_differences():
    model = tiny("llama", dtype=torch.float32)
    loss = causal_lm_output_loss(model, batch(3))
    sel = select_parameters(model, "-1/mlp")
    v = rand(sel.numel, dtype=torch.float32)
    fd = finite_difference_hvp(loss, sel, v, eps=1e-2)
    assert rel(make_hvp(loss, sel)(v), fd) < 1e-3  # measured 2.6e-5 (RMSNorm computes in float32)


def test_ggn_equals_hessian_where_logits_are_linear():
    """Logits are linear in an untied lm_head, so H = Jᵀ H_out J exactly there."""
    model = tiny("llama")
    loss = causal_lm_output_loss(model, batch(4))
    sel = select_parameters(model, "lm_head")
    v = rand(sel.numel)
    assert rel(make_ggn_vp(loss, sel)(v), make_hvp(loss, sel)(v)) < 1e-10


def test_closed_form_output_hessian_matches_autograd(gpt2, gpt2_loss):
    sel = select_parameters(gpt2, "-1/mlp")
    generic = OutputLoss(gpt2_loss.logits_fn, gpt2_loss.loss_from_logits)  # no closed form: double backward
    v = rand(sel.numel)
    assert rel(make_ggn_vp(generic, sel)(v), make_ggn_vp(gpt2_loss, sel)(v)) < 1e-10


def test_damping_and_scale(gpt2, gpt2_loss):
    sel = select_parameters(gpt2, "transformer.ln_f.*")
    v = rand(sel.numel)
    plain = make_ggn_vp(gpt2_loss, sel)(v)
    torch.testing.assert_close(make_ggn_vp(gpt2_loss, sel, damping=0.5, scale=3.0)(v), 3.0 * plain + 0.5 * v)
    with pytest.raises(ValueError, match="damping"):
        make_hvp(gpt2_loss, sel, damping=-1.0)


def test_padding_and_ignored_labels_are_left_out():
    model = tiny("gpt2")
    ids = batch(5)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    labels = ids.clone()
    labels[0, :3] = -100
    loss = causal_lm_output_loss(model, ids, attention_mask=mask, labels=labels)
    ref = model(input_ids=ids, attention_mask=mask, labels=labels.masked_fill(mask == 0, -100)).loss
    torch.testing.assert_close(loss(), ref.to(torch.float64), rtol=1e-6, atol=1e-6)
    sel = select_parameters(model, "-1/mlp")
    generic = OutputLoss(loss.logits_fn, loss.loss_from_logits)
    v = rand(sel.numel)
    assert rel(make_ggn_vp(loss, sel)(v), make_ggn_vp(generic, sel)(v)) < 1e-10


def test_fused_attention_error_names_the_fix():
    model = tiny("llama", dtype=torch.float32, attn="sdpa")
    loss = causal_lm_output_loss(model, batch())
    sel = select_parameters(model, "0/attn")
    for product in (make_hvp(loss, sel).__call__, lambda v: make_hvp(loss, sel, method="forward_over_reverse")(v),
                    lambda v: make_ggn_vp(loss, sel, method="forward")(v)):
        with pytest.raises(RuntimeError, match="attn_implementation='eager'"):
            product(rand(sel.numel, dtype=torch.float32))
    with eager_attention(model):
        hv = make_hvp(loss, sel)(rand(sel.numel, dtype=torch.float32))
    assert torch.isfinite(hv).all() and hv.abs().sum() > 0
    assert model.config._attn_implementation == "sdpa"
