"""Baselines the scrub is measured against.

* :func:`~eval.baselines.retrain.load_or_retrain`: retrain from scratch without the
  canaries (the gold standard), same recipe and tokenizer as the demo model.
* ``finetune``, ``gradient_ascent``, ``graddiff``, ``npo``: functions
  ``(UpdateTask, UpdateSettings | None, *, config=BaselineConfig()) -> UpdateResult``,
  the same interface as ``scrubber.updates.METHODS``, updating ``task.selection``.
"""

from ._common import BaselineConfig
from .finetune import finetune
from .graddiff import graddiff
from .gradient_ascent import gradient_ascent
from .npo import npo
from .retrain import RetrainOutcome, load_or_retrain, retrain_model

BASELINES = {
    "finetune": finetune,
    "gradient_ascent": gradient_ascent,
    "graddiff": graddiff,
    "npo": npo,
}

__all__ = [
    "BASELINES",
    "BaselineConfig",
    "RetrainOutcome",
    "finetune",
    "graddiff",
    "gradient_ascent",
    "load_or_retrain",
    "npo",
    "retrain_model",
]
