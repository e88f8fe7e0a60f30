"""Fine-tune on the corrected data: the secret-bearing texts with substitutes, plus a retain sample.

What a user without an unlearning method would do: keep training on D′ and
hope the secret fades. Items are the substitute texts (``task.pairs[*].substitute``,
whole-sequence loss, as in training) and the retain blocks; each batch's loss
is the mean token NLL over everything in it. Same optimizer recipe as the other
baselines (see ``_common``).
"""

from __future__ import annotations

import torch

from scrubber.edits.task import UpdateResult, UpdateSettings, UpdateTask

from ._common import BaselineConfig, optimize, sequence_nll


def finetune(
    task: UpdateTask, settings: UpdateSettings | None = None, *, config: BaselineConfig | None = None
) -> UpdateResult:
    """Train on substitutes + retain blocks for ``config.epochs`` passes. ``settings`` is unused."""
    config = config or BaselineConfig()
    n_sub = len(task.pairs)
    n_ret = 0 if task.retain_blocks is None else len(task.retain_blocks)

    def loss_fn(idx, _gen):
        subs = [task.pairs[i] for i in idx if i < n_sub]
        rets = [i - n_sub for i in idx if i >= n_sub]
        total = torch.zeros((), device=next(task.model.parameters()).device)
        count = 0.0
        if subs:
            nll, n = sequence_nll(task, [p.substitute for p in subs], None, "sequence")
            total = total + nll.sum()
            count += float(n.sum())
        if rets:
            blocks = task.retain_blocks[rets]  # type: ignore[index]
            n = blocks.shape[0] * (blocks.shape[1] - 1)
            total = total + task.model(input_ids=blocks, labels=blocks).loss * n
            count += n
        return total / max(count, 1.0)

    return optimize(task, "finetune", n_sub + n_ret, loss_fn, config,
                    {"substitute_texts": n_sub, "retain_blocks": n_ret})
