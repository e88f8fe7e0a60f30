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
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from .hvp import CurvatureProduct, OutputLoss, make_ggn_vp, make_hvp
from .kfac import KFAC
from .params import ParameterSelection
from .solvers import SolverInfo, inverse_hvp


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
