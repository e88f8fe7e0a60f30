"""The second-order influence step θ ← θ − (c·H + λI)⁻¹ g on the selected parameters.

Scaling, the trap docs/method.md "Curvature" describes: `loss_fn_train` is the *mean* loss over
a few training sequences, so its curvature H is per token; the gradient g is
a *sum* over the affected sequences (Σ∇ℓ(z̃) − Σ∇ℓ(z)). Influence functions
pair a summed gradient with the curvature of the loss summed over the whole
training set, ≈ N_train·H. Pass `scale_to_tokens=N_train` (tokens, if g sums
token losses; sequences, if it sums per-sequence means) to use c = N_train.
Without it (c = 1) the step is N_train times too large.

The sample is small, so c·H has low rank: its null space gets 1/λ. λ then
decides the step in every direction the sample did not see (measured: λ ≥
10⁴ barely moved the secrets, λ ≤ 100 blew the model up). The exact Hessian
of an LM is indefinite: use curvature="ggn" (default, PSD) or enough damping;
CG reports negative curvature if it meets it.

The update method `second_order` builds the GGN of a retain sample, damps it
with 1e-2 of its top eigenvalue unless told otherwise, solves, and scales the
result like the first-order τ (the sample's normalisation against the summed
forget gradient is otherwise a guess).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from .curvature import CurvatureProduct, OutputLoss, causal_lm_output_loss, eager_attention, make_ggn_vp, make_hvp
from .first_order import choose_step
from .kfac import KFAC
from .params import ParameterSelection
from .residual import gradient_residual
from .solvers import SolverInfo, inverse_hvp, top_eigenvalue
from .task import UpdateResult, UpdateSettings, UpdateTask


@dataclass
class SecondOrderResult:
    """delta is the change to add to the weights (−(cH + λI)⁻¹g); info says how the solve went."""

    delta: torch.Tensor
    info: SolverInfo
    curvature: str
    solver: str
    damping: float
    curvature_scale: float
    applied: bool = False


def curvature_operator(
    loss_fn_train: Callable[[], torch.Tensor] | OutputLoss,
    selection: ParameterSelection,
    curvature: Literal["ggn", "hessian"] = "ggn",
    *,
    scale: float = 1.0,
    hvp_method: str | None = None,
) -> CurvatureProduct:
    """The undamped, scaled curvature product second_order_step solves with."""
    if curvature == "ggn":
        if not isinstance(loss_fn_train, OutputLoss):
            raise ValueError(
                "curvature='ggn' needs the loss split at the logits: pass an OutputLoss (e.g. causal_lm_output_loss)"
            )
        return make_ggn_vp(loss_fn_train, selection, scale=scale, method=hvp_method or "reverse")
    if curvature == "hessian":
        return make_hvp(loss_fn_train, selection, scale=scale, method=hvp_method or "double_backward")
    raise ValueError(f"unknown curvature {curvature!r}: use ggn or hessian")


def second_order_step(
    loss_fn_train: Callable[[], torch.Tensor] | OutputLoss,
    g: torch.Tensor,
    selection: ParameterSelection,
    *,
    curvature: Literal["ggn", "hessian"] = "ggn",
    solver: Literal["cg", "lissa", "kfac"] = "cg",
    damping: float = 1e-3,
    scale_to_tokens: float | None = None,
    kfac: KFAC | None = None,
    precondition: bool = False,
    max_iter: int = 100,
    tol: float = 1e-4,
    lissa_scale: float | Literal["auto"] | None = "auto",
    lissa_depth: int | None = None,
    hvp_method: str | None = None,
    apply: bool = False,
) -> SecondOrderResult:
    """delta = −(c·C + λI)⁻¹ g, C the GGN or Hessian of loss_fn_train at the current weights.

    solver="kfac" uses a fitted `kfac` (KFAC.fit) instead of products and
    reports its residual against the exact curvature product (one product);
    with solver="cg", precondition=True uses `kfac` as CG's preconditioner.
    apply=True adds delta to the weights unless the solve diverged.
    """
    if g.shape != (selection.numel,):
        raise ValueError(f"g must be a flat vector of {selection.numel} values, got {tuple(g.shape)}")
    c = float(scale_to_tokens) if scale_to_tokens is not None else 1.0
    if c <= 0:
        raise ValueError(f"scale_to_tokens must be > 0, got {scale_to_tokens}")
    op = curvature_operator(loss_fn_train, selection, curvature, scale=c, hvp_method=hvp_method)

    if solver == "kfac" or precondition:
        if kfac is None:
            raise ValueError("solver='kfac' and precondition=True need a fitted KFAC (KFAC.fit(selection, batches))")
        if kfac.selection.names != selection.names:
            raise ValueError("the KFAC was fitted on a different parameter selection")

    if solver == "kfac":
        start = time.perf_counter()
        x = kfac.apply_inverse(g, damping, scale=c)
        residual = float((op(x) + damping * x - g).norm())
        g_norm = float(g.norm())
        info = SolverInfo(
            method="kfac",
            iterations=0,
            residual_norm=residual,
            relative_residual=residual / g_norm if g_norm else residual,
            converged=True,
            hvp_calls=1,
            seconds=time.perf_counter() - start,
            message=f"K-FAC ({kfac.fisher} Fisher) approximate inverse; residual against exact {curvature} products",
        )
    else:
        pre = kfac.preconditioner(damping, scale=c) if precondition else None
        x, info = inverse_hvp(
            op,
            g,
            method=solver,
            damping=damping,
            max_iter=max_iter,
            tol=tol,
            preconditioner=pre,
            lissa_scale=lissa_scale,
            lissa_depth=lissa_depth,
        )
    if info.negative_curvature:
        warnings.warn(info.message, RuntimeWarning, stacklevel=2)
    delta = -x
    applied = False
    if apply:
        if info.diverged or not torch.isfinite(delta).all():
            raise RuntimeError(f"not applying a diverged second-order step: {info.message}")
        selection.add_(delta)
        applied = True
    return SecondOrderResult(delta, info, curvature, solver, float(damping), c, applied)


def second_order(task: UpdateTask, settings: UpdateSettings, *, curvature_blocks: int = 8) -> UpdateResult:
    if task.retain_blocks is None:
        raise ValueError("second-order needs retain data for the curvature (--retain-data or --eval-data)")
    start = time.perf_counter()
    with eager_attention(task.model):
        g = task.forget_gradient()
        blocks = task.retain_blocks[:curvature_blocks]
        with task.selection.requires_grad_only():
            out_loss = causal_lm_output_loss(task.model, blocks)
            damping = settings.damping
            if damping is None:
                op = curvature_operator(out_loss, task.selection, settings.curvature)
                damping = 1e-2 * max(top_eigenvalue(op, g, iters=10), 1e-8)
            res = second_order_step(
                out_loss, g, task.selection, curvature=settings.curvature, solver=settings.solver,
                damping=damping, max_iter=50, tol=1e-3,
            )
    direction = res.delta
    extra: dict = {"solver": res.info.method, "solver_iterations": res.info.iterations,
                   "solver_relative_residual": res.info.relative_residual,
                   "negative_curvature": res.info.negative_curvature}
    if settings.tau is None:
        t, info = choose_step(task, direction, settings)
        extra.update(info)
    else:
        t = settings.tau
    task.selection.add_(direction, alpha=t)
    seconds = time.perf_counter() - start
    residual = gradient_residual(task.corrected_loss, task.selection)
    return UpdateResult("second-order", seconds, tau=t, damping=damping, gradient_residual=residual, extra=extra)
