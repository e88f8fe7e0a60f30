"""BalancedSubnet (Sakarvadia et al., "Mitigating Memorization in Language Models", ICLR 2025).

Find a sub-network whose removal forgets the memorized sequences but not the
rest: a mask over the MLP weights is learned with the weights frozen, then the
masked-out weights are pruned (set to zero). The mask is ``sigmoid(s)`` per
weight, scores ``s`` start at ``INIT_SCORE`` (mask ≈ 0.95, the network nearly
intact) and descend

    L(s) = −(1−λ)·CE(memorized) + λ·CE(clean)

with CE(memorized) the mean NLL of the secrets' tokens after their prefixes
(``task.pairs``, ``task.loss_span``) and CE(clean) the mean token NLL of a
retain block per item (``task.retain_blocks``). After ``config.epochs``
passes, weights whose mask is below 0.5 are zeroed and the rest restored
unscaled: the result is the original model minus a set of weights. λ = 0.5
balances the two terms as the paper's name says; the benchmark tunes learning
rate and steps like every other baseline.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from torch.nn.utils import parametrize

from scrubber.edits.task import UpdateResult, UpdateSettings, UpdateTask

from ._common import BaselineConfig, forget_nll, linear_schedule, retain_nll, sample_retain
from .kfac_edit import mlp_weights

LAMBDA = 0.5
INIT_SCORE = 3.0


class _Mask(nn.Module):
    def __init__(self, shape: torch.Size, device: torch.device) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.full(shape, INIT_SCORE, device=device))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * torch.sigmoid(self.scores).to(w.dtype)


def _module_of(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rsplit(".", 1)[0])


def balanced_subnet(
    task: UpdateTask,
    settings: UpdateSettings | None = None,
    *,
    config: BaselineConfig | None = None,
    lam: float = LAMBDA,
) -> UpdateResult:
    """Learn and prune a mask over ``task.model``'s MLP weights. ``settings`` is unused."""
    config = config or BaselineConfig()
    if task.retain_blocks is None:
        raise ValueError("balanced_subnet needs clean text (task.retain_blocks)")
    start = time.perf_counter()
    model = task.model
    sel = mlp_weights(model)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    masks: list[_Mask] = []
    for name, p in zip(sel.names, sel.params):
        m = _Mask(p.shape, p.device)
        parametrize.register_parametrization(_module_of(model, name), "weight", m)
        masks.append(m)
    scores = [m.scores for m in masks]
    opt = torch.optim.Adam(scores, lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    n = len(task.pairs)
    per_epoch = math.ceil(n / config.batch_size)
    total = per_epoch * config.epochs
    warmup = int(round(config.warmup_epochs * per_epoch))
    step, losses = 0, []
    model.train()
    try:
        for _ in range(config.epochs):
            order = torch.randperm(n, generator=gen).tolist()
            for b in range(per_epoch):
                idx = order[b * config.batch_size : (b + 1) * config.batch_size]
                for g in opt.param_groups:
                    g["lr"] = config.lr * linear_schedule(step, total, warmup)
                nll, count = forget_nll(task, idx)
                ce_mem = nll.sum() / count.sum().clamp(min=1)
                ce_clean = retain_nll(task, sample_retain(task, len(idx), gen))
                loss = -(1 - lam) * ce_mem + lam * ce_clean
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                step += 1
        pruned = 0
        with torch.no_grad():
            keep = [torch.sigmoid(s) >= 0.5 for s in scores]
        for name, k in zip(sel.names, keep):
            module = _module_of(model, name)
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            with torch.no_grad():
                module.weight.mul_(k.to(module.weight.dtype))
            pruned += int((~k).sum())
    finally:
        for name in sel.names:  # a failure half-way must not leave masks on the model
            module = _module_of(model, name)
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        for p, rg in frozen:
            p.requires_grad_(rg)
        model.eval()
    residual = task.gradient_residual()
    return UpdateResult(
        "balanced_subnet", time.perf_counter() - start, tau=config.lr, steps=step, gradient_residual=residual,
        extra={"lambda": lam, "weights_pruned": pruned, "mlp_weights": sel.numel,
               "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None},
    )
