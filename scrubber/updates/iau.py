"""IAU (Liu et al. 2025): the first-order step plus the gradient of a retain sample.

Unlearning z ≈ learning a point with the opposite gradient, so H⁻¹ becomes a
step size; the gradient correction adds ∇ of the remaining data's loss so the
step also defends utility. τ is chosen like the first-order step's.
"""

from __future__ import annotations

import time

from scrubber.influence.iau import iau_step
from scrubber.influence.residual import gradient_residual
from scrubber.updates.first_order import choose_step
from scrubber.updates.task import UpdateResult, UpdateSettings, UpdateTask


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
    residual = gradient_residual(task.corrected_loss, task.selection)
    return UpdateResult("iau", seconds, tau=tau, gradient_residual=residual, extra=extra)
