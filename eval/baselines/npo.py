"""Negative Preference Optimization (Zhang, Lin, Bai, Mei 2024, arXiv:2404.05868).

Loss on a forget sequence ``(x, y)`` (prefix x, secret y):

    L = (2/β) · log(1 + (π_θ(y|x) / π_ref(y|x))^β) = -(2/β) · log σ(-β · log(π_θ/π_ref))

averaged over the batch, with ``log π(y|x)`` summed over the secret's tokens
and ``π_ref`` the frozen original model. β = 0.1 (the paper's TOFU setting and
open-unlearning's ``configs/trainer/NPO.yaml``). As β → 0 it becomes gradient
ascent; unlike GA its per-sequence weight vanishes once a sequence is
unlikely, so it collapses much more slowly.

The reference only ever scores the fixed forget sequences, so their reference
log-likelihoods are computed once, before the first step, instead of keeping
a second model in memory: the same numbers a frozen copy would give.

``retain_weight · NLL(retain)`` is added (open-unlearning's NPO recipe:
``configs/trainer/NPO.yaml`` uses ``alpha = 1.0`` on the retain NLL); 0 gives
bare NPO, which nobody would deploy: without the retain term it breaks the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scrubber.edits.task import UpdateResult, UpdateSettings, UpdateTask

from ._common import BaselineConfig, forget_nll, optimize, retain_nll, sample_retain

BETA = 0.1


def npo(
    task: UpdateTask,
    settings: UpdateSettings | None = None,
    *,
    config: BaselineConfig | None = None,
    beta: float = BETA,
    retain_weight: float = 1.0,
) -> UpdateResult:
    """NPO over ``task.pairs`` against the model as it is on entry. ``settings`` is unused."""
    config = config or BaselineConfig()
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if retain_weight and task.retain_blocks is None:
        raise ValueError("npo with retain_weight > 0 needs retain data (task.retain_blocks)")
    all_idx = list(range(len(task.pairs)))
    with torch.no_grad():
        ref_nll = torch.cat([forget_nll(task, all_idx[i : i + 64])[0] for i in range(0, len(all_idx), 64)])

    def loss_fn(idx, gen):
        nll, _ = forget_nll(task, idx)
        log_ratio = -(nll - ref_nll[idx])  # log π_θ(y|x) − log π_ref(y|x)
        loss = -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()
        if retain_weight:
            loss = loss + retain_weight * retain_nll(task, sample_retain(task, len(idx), gen))
        return loss

    return optimize(task, "npo", len(task.pairs), loss_fn, config,
                    {"beta": beta, "retain_weight": retain_weight})
