"""Solve (H + λI)x = v from products v ↦ Hv alone: conjugate gradients or LiSSA.

`damping` is always the Tikhonov λ of (H + λI)x = v, for both methods, so
their answers are comparable with each other and with a dense
`torch.linalg.solve`. It adds to any damping already inside `hvp_fn`.

LiSSA (Agarwal et al. 2017; Koh & Liang 2017) iterates
u ← v + (1 − d)u − Hu/s and returns u/s, whose fixed point is
(H + d·s·I)⁻¹v: its own damping d is λ/s here. It converges only when every
eigenvalue of H + λI lies in (0, 2s), so `lissa_scale` must exceed the top
eigenvalue (`top_eigenvalue` estimates it); otherwise the iterates blow up
and we stop and say so. CG needs no scale, stops early on a small residual,
and reports negative curvature (an indefinite H, docs/method.md "Curvature") instead of
silently returning nonsense.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

HVPFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SolverInfo:
    """How a solve went. `residual_norm` is recomputed with one extra product, not taken on trust."""

    method: str
    iterations: int
    residual_norm: float
    relative_residual: float
    converged: bool
    negative_curvature: bool = False
    diverged: bool = False
    hvp_calls: int = 0
    seconds: float = 0.0
    history: list[float] = field(default_factory=list, repr=False)
    message: str = ""


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a.reshape(-1).double(), b.reshape(-1).double()))


def _norm(a: torch.Tensor) -> float:
    return math.sqrt(max(_dot(a, a), 0.0))


def top_eigenvalue(hvp_fn: HVPFn, v_like: torch.Tensor, *, iters: int = 20, seed: int = 0) -> float:
    """Largest-magnitude eigenvalue of the operator by power iteration (a LiSSA scale guide)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(v_like.shape, generator=g, dtype=torch.float64).to(v_like)
    x = x / _norm(x)
    lam = 0.0
    for _ in range(iters):
        y = hvp_fn(x)
        lam = _dot(x, y)
        n = _norm(y)
        if n == 0 or not math.isfinite(n):
            break
        x = y / n
    return lam


def _cg(
    op: HVPFn, v: torch.Tensor, *, max_iter: int, tol: float, x0: torch.Tensor | None, preconditioner: HVPFn | None
) -> tuple[torch.Tensor, dict]:
    """Preconditioned CG; stops at the first direction with pᵀAp ≤ 0 (negative curvature)."""
    v_norm = _norm(v)
    x = torch.zeros_like(v) if x0 is None else x0.clone()
    r = v - op(x) if x0 is not None else v.clone()
    z = preconditioner(r) if preconditioner is not None else r
    p = z.clone()
    rz = _dot(r, z)
    history = [_norm(r)]
    negative = False
    converged = history[-1] <= tol * v_norm
    it = 0
    while not converged and it < max_iter:
        ap = op(p)
        pap = _dot(p, ap)
        if not pap > 1e-30 * max(_dot(p, p), 1e-300):
            negative = True
            break
        alpha = rz / pap
        x = x + alpha * p
        r = r - alpha * ap
        it += 1
        history.append(_norm(r))
        if history[-1] <= tol * v_norm:
            converged = True
            break
        z = preconditioner(r) if preconditioner is not None else r
        rz_new = _dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, {"iterations": it, "negative_curvature": negative, "converged": converged, "history": history}


def _lissa(
    op_raw: HVPFn, v: torch.Tensor, *, damping: float, scale: float, depth: int, tol: float, divergence_factor: float
) -> tuple[torch.Tensor, dict]:
    """u ← v + (1 − d)u − Hu/s with d = λ/s; returns u/s. Step norms shrink monotonically when it converges."""
    d = damping / scale
    u = v.clone()
    history: list[float] = []
    min_step = math.inf
    converged = diverged = False
    it = 0
    for it in range(1, depth + 1):
        u_new = v + (1.0 - d) * u - op_raw(u) / scale
        step = _norm(u_new - u)
        history.append(step)
        if not math.isfinite(step) or step > divergence_factor * min_step:
            diverged = True
            break
        min_step = min(min_step, step)
        u = u_new
        if step <= tol * max(_norm(u), 1e-300):
            converged = True
            break
    return u / scale, {"iterations": it, "converged": converged, "diverged": diverged, "history": history}


def inverse_hvp(
    hvp_fn: HVPFn,
    v: torch.Tensor,
    *,
    method: Literal["cg", "lissa"] = "cg",
    damping: float = 0.0,
    max_iter: int = 100,
    tol: float = 1e-6,
    x0: torch.Tensor | None = None,
    preconditioner: HVPFn | None = None,
    lissa_scale: float | Literal["auto"] | None = None,
    lissa_depth: int | None = None,
    lissa_divergence_factor: float = 10.0,
) -> tuple[torch.Tensor, SolverInfo]:
    """x ≈ (H + damping·I)⁻¹ v from products hvp_fn(x) = Hx.

    cg: stops when ‖r‖ ≤ tol·‖v‖ or at max_iter; `preconditioner` applies an
    approximate inverse (e.g. K-FAC's) to residuals; a direction of
    non-positive curvature stops it with `negative_curvature` set (the
    iterate so far is returned: use a GGN product or more damping).
    lissa: needs `lissa_scale` > top eigenvalue of H + λI ("auto": 1.5× a
    20-step power-iteration estimate, plus the damping); runs `lissa_depth`
    (default max_iter) steps, stops early when the step is below tol relative
    to the iterate, and flags `diverged` when a step grows past
    `lissa_divergence_factor` × the smallest so far.
    """
    if v.dim() != 1:
        raise ValueError(f"v must be a flat vector, got shape {tuple(v.shape)}")
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    start = time.perf_counter()
    calls = [0]

    def op_raw(x: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return hvp_fn(x)

    def op(x: torch.Tensor) -> torch.Tensor:
        out = op_raw(x)
        return out + damping * x if damping else out

    message = ""
    if method == "cg":
        x, st = _cg(op, v, max_iter=max_iter, tol=tol, x0=x0, preconditioner=preconditioner)
        diverged = False
        if st["negative_curvature"]:
            message = (
                f"CG met non-positive curvature after {st['iterations']} iterations: the curvature is not positive "
                "definite here; use curvature='ggn' or raise damping"
            )
    elif method == "lissa":
        if lissa_scale is None:
            raise ValueError("LiSSA needs lissa_scale > the top eigenvalue of H + damping·I (or lissa_scale='auto')")
        if lissa_scale == "auto":
            scale = 1.5 * abs(top_eigenvalue(op_raw, v)) + damping
        else:
            scale = float(lissa_scale)
        if not scale > 0:
            raise ValueError(f"lissa_scale must be > 0, got {lissa_scale}")
        x, st = _lissa(
            op_raw,
            v,
            damping=damping,
            scale=scale,
            depth=lissa_depth or max_iter,
            tol=tol,
            divergence_factor=lissa_divergence_factor,
        )
        st["negative_curvature"] = False
        diverged = st["diverged"]
        if diverged:
            message = (
                f"LiSSA diverged after {st['iterations']} steps (scale {scale:.3g}): the scale must exceed the top "
                "eigenvalue of H + damping·I, and H + damping·I must be positive definite; the result is unusable"
            )
        message = message or f"LiSSA scale {scale:.3g}"
    else:
        raise ValueError(f"unknown solver {method!r}: use cg or lissa")

    residual = _norm(v - op(x)) if torch.isfinite(x).all() else math.inf
    v_norm = _norm(v)
    if method == "lissa" and not st["converged"] and not diverged and not residual < v_norm:
        # Slow blow-up that never tripped the step test: worse than x = 0 is divergence too.
        diverged = True
        message = f"LiSSA did not converge and its residual {residual:.3g} exceeds ‖v‖ = {v_norm:.3g}: " + message
    info = SolverInfo(
        method=method,
        iterations=st["iterations"],
        residual_norm=residual,
        relative_residual=residual / v_norm if v_norm > 0 else residual,
        converged=st["converged"] and not diverged,
        negative_curvature=st["negative_curvature"],
        diverged=diverged,
        hvp_calls=calls[0],
        seconds=time.perf_counter() - start,
        history=st["history"],
        message=message,
    )
    return x, info
