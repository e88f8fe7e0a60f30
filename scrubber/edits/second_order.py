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

The update method `second_order` takes a few re-linearised Newton steps: the
GGN (or Hessian) of a retain sample scaled by the training-set token count,
damped with 1e-2 of its top eigenvalue unless told otherwise, solved by CG,
LiSSA or EK-FAC (factors fitted once, reused by every step), each step's
length chosen on the probe like the first-order τ.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Literal

import torch

from .curvature import CurvatureProduct, OutputLoss, causal_lm_output_loss, eager_attention, make_ggn_vp, make_hvp
from .first_order import choose_step
from .kfac import KFAC
from .params import ParameterSelection
from .solvers import SolverInfo, inverse_hvp, top_eigenvalue
from .task import UpdateResult, UpdateSettings, UpdateTask, relative_rise


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


CURVATURE_BLOCKS = 8
"""Retain blocks whose GGN/Hessian products CG and LiSSA use (3 backward passes each per product)."""

KFAC_BLOCKS = 32
"""Retain blocks K-FAC's factors are fitted on, once per update (two passes each with EK-FAC)."""

RELATIVE_DAMPING = 1e-2
"""λ = RELATIVE_DAMPING × the top eigenvalue of c·C when --damping is not given (docs/method.md "Curvature")."""

LISSA_DEPTH = 100
"""LiSSA recursion steps per solve: a truncated Neumann series; its residual is reported."""


def _kfac_batches(blocks: torch.Tensor, batch: int = 8) -> list[dict[str, torch.Tensor]]:
    return [{"input_ids": blocks[i : i + batch]} for i in range(0, len(blocks), batch)]


def _remaining_bound(settings: UpdateSettings, r0: float, r_now: float) -> float:
    """The retain-rise budget left after earlier steps, so the bound holds for the whole update."""
    if not (math.isfinite(r0) and math.isfinite(r_now)):
        return settings.max_retain_increase
    return (1.0 + settings.max_retain_increase) * math.exp(r0 - r_now) - 1.0


def second_order(task: UpdateTask, settings: UpdateSettings) -> UpdateResult:
    """Re-linearised Newton steps θ ← θ − t·(c·C + λI)⁻¹g (Warnecke et al.), solver per settings.

    Each step recomputes g = Σ∇ℓ(z̃) − Σ∇ℓ(z) at the current weights over the canaries the
    probe still puts above the aim (a hinge, as in `iterative`), solves with the curvature C
    of the retain loss (training text) scaled by c = the training-set token count, and picks
    t with `first_order.choose_step` (probe and tune blocks only) under what is left of the
    utility bound: the smallest t that meets the aim, else the largest within the bound (measured:
    picking the lowest worst or mean probe exposure instead left a held-out Llama at 34-47 bits
    where this reached 10).
    It stops when every canary is at the aim, the bound leaves no room, or after
    `settings.newton_steps` steps. With `--tau` t is fixed (t = 1 is the paper's step).
    """
    if task.retain_blocks is None:
        raise ValueError("second-order needs retain data for the curvature (--retain-data or --eval-data)")
    if settings.solver not in ("cg", "lissa", "kfac"):
        raise ValueError(f"unknown solver {settings.solver!r}: use cg, lissa or kfac")
    if settings.newton_steps < 1:
        raise ValueError(f"newton_steps must be >= 1, got {settings.newton_steps}")
    start = time.perf_counter()
    sel = task.selection
    c = float(settings.train_tokens) if settings.train_tokens else float(task.retain_blocks.numel())
    blocks = task.retain_blocks[:CURVATURE_BLOCKS]
    r0 = task.retain_value()
    damping = settings.damping
    kfac: KFAC | None = None
    history: list[dict] = []
    target_met = False
    steps = 0
    lissa_scale: float | None = None
    with eager_attention(task.model):
        if settings.solver == "kfac":
            t_fit = time.perf_counter()
            kfac = KFAC.fit(sel, _kfac_batches(task.retain_blocks[:KFAC_BLOCKS]), fisher="mc", ekfac=True)
            history.append({"kfac_fit_seconds": time.perf_counter() - t_fit, "kfac_uncovered": len(kfac.uncovered)})
        exposures = task.exposures()
        for k in range(settings.newton_steps):
            active = {cid for cid, e in exposures.items() if e > settings.aim} if exposures else {c_.id for c_ in task.canaries}
            if not active:
                target_met = True
                break
            pairs = [p for p in task.pairs if p.canary_id in active]
            with sel.requires_grad_only():
                g = task.forget_gradient(pairs)
                out_loss = causal_lm_output_loss(task.model, blocks)
                if damping is None or (settings.solver == "lissa" and lissa_scale is None):
                    if kfac is not None:
                        top = top_eigenvalue(lambda v: kfac.curvature_product(v, scale=c), g, iters=20)
                    else:
                        top = top_eigenvalue(curvature_operator(out_loss, sel, settings.curvature, scale=c), g, iters=10)
                    top = max(top, 1e-8)
                    if damping is None:
                        damping = RELATIVE_DAMPING * top
                    lissa_scale = 1.5 * top + damping
                res = second_order_step(
                    out_loss, g, sel, curvature=settings.curvature, solver=settings.solver,  # type: ignore[arg-type]
                    damping=damping, scale_to_tokens=c, kfac=kfac, max_iter=50, tol=1e-3,
                    lissa_scale=lissa_scale, lissa_depth=LISSA_DEPTH,
                )  # fmt: skip
            if res.info.diverged or not torch.isfinite(res.delta).all():
                history.append({"step": k + 1, "stopped": f"solver diverged: {res.info.message}"})
                break
            entry: dict = {"step": k + 1, "active": len(active), "solver_iterations": res.info.iterations,
                           "solver_relative_residual": res.info.relative_residual,
                           "negative_curvature": res.info.negative_curvature}
            if settings.tau is not None:
                t, step_target = settings.tau, False
            else:
                remaining = _remaining_bound(settings, r0, task.retain_value())
                t, info = choose_step(task, res.delta, replace(settings, max_retain_increase=remaining))
                trail = info["step_search"]
                if not trail or trail[0]["retain_rise"] > remaining:
                    entry["stopped"] = "utility bound: no room for another step"
                    history.append(entry)
                    break
                step_target = bool(info["target_met"])
                entry["search"] = len(trail)
            sel.add_(res.delta, alpha=t)
            steps = k + 1
            entry["t"] = t
            exposures = task.exposures()
            entry["max_exposure"] = max(exposures.values()) if exposures else None
            history.append(entry)
            if step_target or (exposures and max(exposures.values()) <= settings.aim):
                target_met = True
                break
    seconds = time.perf_counter() - start
    residual = task.gradient_residual()
    extra: dict = {"solver": settings.solver, "curvature": "kfac-fisher" if kfac else settings.curvature,
                   "curvature_scale": c, "newton_steps_taken": steps, "target_met": target_met,
                   "retain_rise": relative_rise(r0, task.retain_value()), "history": history}
    last = next((h for h in reversed(history) if "solver_relative_residual" in h), None)
    if last is not None:
        extra["solver_relative_residual"] = last["solver_relative_residual"]
        extra["solver_iterations"] = last["solver_iterations"]
    return UpdateResult("second-order", seconds, tau=history[-1].get("t") if history else None, damping=damping,
                        steps=steps, gradient_residual=residual, extra=extra)
