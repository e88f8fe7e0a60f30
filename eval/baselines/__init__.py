"""Baselines the scrub is measured against.

* :func:`~eval.baselines.retrain.load_or_train_twin`: the clean twin, the demo recipe
  retrained on D′ (secrets replaced by the scrub's substitutes): the gold standard.
* :func:`~eval.baselines.retrain.load_or_retrain`: retrain from scratch without the
  canaries, same recipe and tokenizer as the demo model (a second reference).
* ``finetune``, ``gradient_ascent``, ``graddiff``, ``npo`` (open-unlearning), ``balanced_subnet``
  (Sakarvadia et al. 2025) and ``kfac_edit`` (arXiv 2510.24256): functions
  ``(UpdateTask, UpdateSettings | None, *, config=BaselineConfig()) -> UpdateResult``,
  the same interface as ``scrubber.edits.METHODS``, updating ``task.selection``.
"""

from ._common import BaselineConfig
from .balanced_subnet import balanced_subnet
from .finetune import finetune
from .graddiff import graddiff
from .gradient_ascent import gradient_ascent
from .kfac_edit import kfac_edit
from .npo import npo
from .retrain import RetrainOutcome, load_or_retrain, load_or_train_twin, retrain_model

BASELINES = {
    "finetune": finetune,
    "gradient_ascent": gradient_ascent,
    "graddiff": graddiff,
    "npo": npo,
    "balanced_subnet": balanced_subnet,
    "kfac_edit": kfac_edit,
}

__all__ = [
    "BASELINES",
    "BaselineConfig",
    "balanced_subnet",
    "kfac_edit",
    "RetrainOutcome",
    "finetune",
    "graddiff",
    "gradient_ascent",
    "load_or_retrain",
    "load_or_train_twin",
    "npo",
    "retrain_model",
]
