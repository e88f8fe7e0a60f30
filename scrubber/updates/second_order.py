"""Second-order influence update: θ ← θ − t·(C + λI)⁻¹ g, C the GGN of the retain loss.

The GGN (PSD) rather than the Hessian, which is indefinite for LMs (docs/method.md "Curvature").
Curvature comes from a retain sample; λ defaults to 1e-2 of the curvature's top
eigenvalue, so directions the sample never saw get a bounded step, and the
overall scale t is chosen like the first-order τ (the curvature sample's
normalisation against the summed forget gradient is otherwise a guess).
"""

from __future__ import annotations

import time

from scrubber.influence.hvp import causal_lm_output_loss, eager_attention
from scrubber.influence.residual import gradient_residual
from scrubber.influence.second_order import curvature_operator, second_order_step
from scrubber.influence.solvers import top_eigenvalue
from scrubber.updates.first_order import choose_step
from scrubber.updates.task import UpdateResult, UpdateSettings, UpdateTask


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
