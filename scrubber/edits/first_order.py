"""First-order influence update (Warnecke et al.): θ ← θ − τ (Σ∇ℓ(z̃) − Σ∇ℓ(z)).

With τ unset, τ is chosen on a doubling grid: the smallest step that brings
every canary's probe exposure to the target, provided retain loss rises no
more than the bound; otherwise the largest step within the bound (the report
then shows the target was missed, rather than silently breaking the model).
"""

from __future__ import annotations

import time

import torch

from scrubber.edits.task import (
    UpdateResult,
    UpdateSettings,
    UpdateTask,
    reference_norm,
    relative_rise,
    worst,
)


def choose_step(
    task: UpdateTask,
    direction: torch.Tensor,
    settings: UpdateSettings,
    *,
    base_norm: float = 1e-3,
    max_doublings: int = 16,
) -> tuple[float, dict]:
    """Smallest multiplier t (step = t·direction) meeting the target within the retain bound."""
    theta_norm = reference_norm(task.selection)
    d_norm = float(direction.norm()) or 1.0
    t = base_norm * theta_norm / d_norm
    r0 = task.retain_value()
    best_ok, trail = None, []
    for _ in range(max_doublings):
        task.selection.add_(direction, alpha=t)
        exp = task.exposures()
        rise = relative_rise(r0, task.retain_value())
        task.selection.add_(direction, alpha=-t)
        trail.append({"t": t, "max_exposure": worst(exp), "retain_rise": rise})
        if rise > settings.max_retain_increase:
            break
        best_ok = t
        if worst(exp) <= settings.aim:
            break
        t *= 2
    chosen = best_ok if best_ok is not None else trail[0]["t"] / 2
    return chosen, {"step_search": trail, "target_met": bool(trail) and best_ok is not None
                    and trail[[x["t"] for x in trail].index(best_ok)]["max_exposure"] <= settings.aim}


def first_order(task: UpdateTask, settings: UpdateSettings) -> UpdateResult:
    start = time.perf_counter()
    g = task.forget_gradient()
    extra: dict = {"gradient_norm": float(g.norm())}
    if settings.tau is None:
        tau, info = choose_step(task, -g, settings)
        extra.update(info)
    else:
        tau = settings.tau
    task.selection.add_(g, alpha=-tau)
    seconds = time.perf_counter() - start
    residual = task.gradient_residual()
    return UpdateResult("first-order", seconds, tau=tau, gradient_residual=residual, extra=extra)
