"""Gradient difference (open-unlearning's ``GradDiff``): ascend on forget, descend on retain.

Loss to descend: ``gamma * (-NLL(forget)) + alpha * NLL(retain)``, with
``gamma = alpha = 1`` (open-unlearning ``configs/trainer/GradDiff.yaml``) and
one random retain block drawn per forget item (their forget-anchored pairing).
"""

from __future__ import annotations

from scrubber.edits.task import UpdateResult, UpdateSettings, UpdateTask

from ._common import BaselineConfig, forget_nll, optimize, retain_nll, sample_retain

GAMMA = 1.0
ALPHA = 1.0


def graddiff(
    task: UpdateTask,
    settings: UpdateSettings | None = None,
    *,
    config: BaselineConfig | None = None,
    gamma: float = GAMMA,
    alpha: float = ALPHA,
) -> UpdateResult:
    """GradDiff over ``task.pairs`` (forget) and ``task.retain_blocks`` (retain). ``settings`` is unused."""
    config = config or BaselineConfig()
    if task.retain_blocks is None:
        raise ValueError("graddiff needs retain data (task.retain_blocks)")

    def loss_fn(idx, gen):
        nll, count = forget_nll(task, idx)
        forget = -(nll.sum() / count.sum().clamp(min=1))
        return gamma * forget + alpha * retain_nll(task, sample_retain(task, len(idx), gen))

    return optimize(task, "graddiff", len(task.pairs), loss_fn, config, {"gamma": gamma, "alpha": alpha})
