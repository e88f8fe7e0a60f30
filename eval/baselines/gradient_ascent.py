"""Gradient ascent on the forget sequences (open-unlearning's ``GradAscent``).

Loss to descend: ``-NLL(forget)``, the mean token NLL over the secret spans of
the batch (HF's ``outputs.loss``), negated. Unbounded below: the classic
baseline that forgets by breaking the model, which is the point of showing it.
"""

from __future__ import annotations

from scrubber.edits.task import UpdateResult, UpdateSettings, UpdateTask

from ._common import BaselineConfig, forget_nll, optimize


def gradient_ascent(
    task: UpdateTask, settings: UpdateSettings | None = None, *, config: BaselineConfig | None = None
) -> UpdateResult:
    """Ascend the forget loss for ``config.epochs`` passes over ``task.pairs``. ``settings`` is unused."""
    config = config or BaselineConfig()

    def loss_fn(idx, _gen):
        nll, count = forget_nll(task, idx)
        return -(nll.sum() / count.sum().clamp(min=1))

    return optimize(task, "gradient_ascent", len(task.pairs), loss_fn, config)
