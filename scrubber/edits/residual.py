"""The gradient residual ‖∇L(θ_new; D′)‖: how far an update is from a stationary point of the corrected data.

Warnecke et al. (after Guo et al. 2020) report it for every unlearning update.
It is a certificate only where L is μ-strongly convex in the updated
parameters: then ‖θ − θ*‖ ≤ ‖∇L(θ)‖/μ, θ* the exact minimiser on D′. That
holds for the lm_head weights alone with an L2 term (μ/2)‖W − W₀‖², features
fixed: cross-entropy is convex in the logits, the logits are linear in W, and
the L2 term adds μ. It fails for a tied lm_head (GPT-2's is the input
embedding, so the features move with it): `certifiable_lm_head` refuses one.
Everywhere else the residual is an honest progress signal, not a bound.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .params import ParameterSelection, select_parameters

LossFn = Callable[[], torch.Tensor]


def gradient_residual(loss_fn_on_corrected_data: LossFn, selection: ParameterSelection) -> float:
    """‖∇θ L(θ; D′)‖ over the selection at the current weights."""
    with selection.requires_grad_only():
        g = selection.gradient(loss_fn_on_corrected_data())
    return float(g.double().norm())


def certified_bound(residual: float, mu: float) -> float:
    """Upper bound on ‖θ − θ*‖ for a μ-strongly convex loss: residual/μ."""
    if not mu > 0:
        raise ValueError(f"strong convexity mu must be > 0, got {mu}")
    if residual < 0:
        raise ValueError(f"residual must be >= 0, got {residual}")
    return residual / mu


def l2_regularized(
    loss_fn: LossFn, selection: ParameterSelection, mu: float, center: torch.Tensor | None = None
) -> LossFn:
    """loss_fn() + (μ/2)‖θ − center‖² over the selection (center defaults to the current weights, kept fixed)."""
    if mu < 0:
        raise ValueError(f"mu must be >= 0, got {mu}")
    anchor = (selection.values() if center is None else center.detach().clone()).to(selection.dtype)
    anchors = selection.unflatten(anchor)

    def loss() -> torch.Tensor:
        base = loss_fn()
        if mu == 0:
            return base
        reg = sum(((p - a) ** 2).sum() for p, a in zip(selection.params, anchors))
        return base + 0.5 * mu * reg

    return loss


def certifiable_lm_head(model: nn.Module) -> ParameterSelection:
    """The lm_head tensors, refusing a head tied to the input embeddings (not convex then)."""
    sel = select_parameters(model, "lm_head")
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    emb_w = getattr(emb, "weight", None)
    if emb_w is not None and any(p is emb_w for p in sel.params):
        raise ValueError(
            "lm_head is tied to the input embeddings, so the loss is not convex in it: "
            "the certified mode needs an untied head (tie_word_embeddings=False)"
        )
    return sel
