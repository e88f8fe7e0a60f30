"""IAU (Liu, Wu, Lian, Chen 2025, "Efficient Machine Unlearning via Influence Approximation").

Removing a point z shifts the optimum by +H⁻¹∇ℓ(z)/n; adding one shifts it by
−H⁻¹∇ℓ(z)/n. So unlearning z is approximated by *learning* a point whose
gradient is the opposite of z's, and the learning step size stands in for
H⁻¹: no Hessian at all. Their gradient correction adds the gradient of a
sample of the remaining data, so the step also descends the loss the model
must keep (a converged model has Σ over all data of ∇ℓ ≈ 0, so forgetting z
alone leaves the retained gradient unbalanced). Their gradient restriction
is a training-time penalty α‖∇θℓ‖ that keeps each point's gradient small,
which makes a later single-step unlearning more accurate.

Conventions here: every gradient is one we *descend*. `g_forget` is the
direction whose descent forgets (−Σ∇ℓ(z) for plain removal, or
Σ∇ℓ(z̃) − Σ∇ℓ(z) when z is replaced by a substitute z̃: `forget_gradient`
builds either); `g_retain_sample` is ∇ of the mean loss on a sample of the
remaining data.

The update method `iau` takes one such step on an `UpdateTask`, its step
size chosen like the first-order τ; `gradient_restriction_penalty` is the
training-time half (`scrubber train --grad-restriction-alpha`).
"""

from __future__ import annotations

import time
from typing import Iterable

import torch

from .first_order import choose_step
from .params import ParameterSelection
from .task import UpdateResult, UpdateSettings, UpdateTask


def forget_gradient(g_original: torch.Tensor, g_substitute: torch.Tensor | None = None) -> torch.Tensor:
    """The descent direction that unlearns: g(z̃) − g(z) with a substitute, else −g(z)."""
    return -g_original if g_substitute is None else g_substitute - g_original


def iau_step(
    g_forget: torch.Tensor,
    g_retain_sample: torch.Tensor | None,
    tau: float,
    *,
    retain_weight: float = 1.0,
    max_norm: float | None = None,
) -> torch.Tensor:
    """delta = −τ·(g_forget + retain_weight·g_retain_sample), optionally clipped to ‖delta‖ ≤ max_norm.

    With g_retain_sample None (or retain_weight 0) this is the plain
    first-order step. retain_weight sets how much the retained data's
    gradient counts relative to the forget gradient's units: a sum over the
    forget set against a mean over the retain sample, so values around the
    number of forget sequences keep the two on one scale.
    """
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    direction = g_forget.clone()
    if g_retain_sample is not None and retain_weight:
        if g_retain_sample.shape != g_forget.shape:
            raise ValueError(f"retain gradient shape {tuple(g_retain_sample.shape)} != forget {tuple(g_forget.shape)}")
        direction = direction + retain_weight * g_retain_sample
    delta = -tau * direction
    if max_norm is not None:
        norm = float(delta.norm())
        if norm > max_norm > 0:
            delta = delta * (max_norm / norm)
    return delta


def gradient_restriction_penalty(
    loss: torch.Tensor,
    params: ParameterSelection | Iterable[torch.Tensor],
    alpha: float,
    *,
    eps: float = 1e-12,
) -> torch.Tensor:
    """α·‖∇θ loss‖ with create_graph=True: add it to the training loss and call backward.

    Differentiating it needs second derivatives of the model (eager attention
    on CPU). eps keeps the norm differentiable at a zero gradient.
    """
    if alpha == 0:
        return loss.new_zeros(())
    tensors = params.params if isinstance(params, ParameterSelection) else [p for p in params if p.requires_grad]
    if not tensors:
        raise ValueError("gradient restriction needs at least one tensor that requires grad")
    grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
    sq = sum((g.to(torch.promote_types(g.dtype, torch.float32)) ** 2).sum() for g in grads if g is not None)
    if not isinstance(sq, torch.Tensor):
        return loss.new_zeros(())
    return alpha * torch.sqrt(sq + eps).to(loss.dtype)


def iau(task: UpdateTask, settings: UpdateSettings, *, retain_weight: float | None = None) -> UpdateResult:
    start = time.perf_counter()
    g_forget = task.forget_gradient()
    g_retain = task.retain_gradient(16) if task.retain_blocks is not None else None
    # The forget gradient sums over sequences, the retain one is a mean: put them on one scale.
    w = float(len(task.pairs)) if retain_weight is None else retain_weight
    direction = iau_step(g_forget, g_retain, 1.0, retain_weight=w)  # = −(g_f + w·g_r)
    extra: dict = {"retain_weight": w}
    if settings.tau is None:
        tau, info = choose_step(task, direction, settings)
        extra.update(info)
    else:
        tau = settings.tau
    task.selection.add_(direction, alpha=tau)
    seconds = time.perf_counter() - start
    residual = task.gradient_residual()
    return UpdateResult("iau", seconds, tau=tau, gradient_residual=residual, extra=extra)
