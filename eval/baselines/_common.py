"""The optimizer loop the gradient-based baselines share (open-unlearning's trainer, in miniature).

Defaults follow open-unlearning's TOFU recipe (``configs/trainer/finetune.yaml``
and ``configs/experiment/unlearn/tofu/default.yaml``): AdamW, effective batch
32 (8 per device x 4 accumulation), 10 epochs, weight decay 0.01, one warmup
epoch then linear decay (the HF Trainer ``linear`` schedule), gradient
clipping at 1.0 (the HF Trainer default). Their learning rate, 1e-5, is the
rate their 1B-7B models were fine-tuned with: TOFU unlearns at the model's own
fine-tuning rate. What transfers to another model is that convention, not the
number, so the benchmark passes the demo's training rate (``DemoSpec.lr``);
``lr`` here keeps open-unlearning's value for callers who bring a large model.

Every baseline updates ``task.selection`` (all weights by default, or LoRA
tensors) and leaves the rest of the model untouched; the loss on a forget
sequence covers the secret's tokens only (``task.loss_span``, the analogue of
TOFU's answer-only loss).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from scrubber.edits.objective import encode_with_spans, token_nll
from scrubber.edits.task import UpdateResult, UpdateTask, relative_rise


@dataclass
class BaselineConfig:
    lr: float = 1e-5
    """open-unlearning's default; the benchmark uses the model's own training rate (TOFU's convention)."""
    epochs: int = 10
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    max_grad_norm: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """HF ``get_linear_schedule_with_warmup`` multiplier (0 at step 0 when warming up)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def sequence_nll(task: UpdateTask, texts: Sequence[str], spans: Sequence[tuple[int, int]] | None,
                 span: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-text summed NLL (nats, differentiable) and the number of scored tokens per text."""
    device = next(task.model.parameters()).device
    batch = encode_with_spans(task.tokenizer, texts, spans, span, device)  # type: ignore[arg-type]
    nll = token_nll(task.model, batch)
    return nll.sum(dim=1), batch.loss_mask.sum(dim=1)


def forget_nll(task: UpdateTask, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL of the original (secret-bearing) texts ``task.pairs[idx]`` on ``task.loss_span``."""
    pairs = [task.pairs[i] for i in idx]
    return sequence_nll(task, [p.original for p in pairs], [p.span for p in pairs], task.loss_span)


def retain_nll(task: UpdateTask, idx: Sequence[int]) -> torch.Tensor:
    """Mean token NLL of retain blocks ``idx`` (the usual LM loss)."""
    assert task.retain_blocks is not None
    blocks = task.retain_blocks[list(idx)]
    return task.model(input_ids=blocks, labels=blocks).loss


def sample_retain(task: UpdateTask, n: int, gen: torch.Generator) -> list[int]:
    """One random retain block per forget item (open-unlearning's forget-anchored pairing)."""
    if task.retain_blocks is None or len(task.retain_blocks) == 0:
        raise ValueError("this baseline needs retain data (task.retain_blocks)")
    return torch.randint(len(task.retain_blocks), (n,), generator=gen).tolist()


LossFn = Callable[[list[int], torch.Generator], torch.Tensor]


def optimize(
    task: UpdateTask,
    name: str,
    n_items: int,
    loss_fn: LossFn,
    config: BaselineConfig,
    extra: dict | None = None,
) -> UpdateResult:
    """AdamW over ``task.selection`` for ``config.epochs`` passes of ``n_items`` items.

    ``loss_fn(batch_indices, generator)`` returns the loss to *descend* for one
    batch. No decay on 1-D tensors (biases, norms), as the HF Trainer does.
    """
    if n_items < 1:
        raise ValueError(f"{name}: nothing to train on")
    start = time.perf_counter()
    sel = task.selection
    r0 = task.retain_value()
    gen = torch.Generator().manual_seed(config.seed)
    per_epoch = math.ceil(n_items / config.batch_size)
    total = per_epoch * config.epochs
    warmup = int(round(config.warmup_epochs * per_epoch))
    losses: list[float] = []
    with sel.requires_grad_only():
        decay = [p for p in sel.params if p.dim() >= 2]
        no_decay = [p for p in sel.params if p.dim() < 2]
        groups = [{"params": ps, "weight_decay": wd}
                  for ps, wd in ((decay, config.weight_decay), (no_decay, 0.0)) if ps]
        opt = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
        task.model.train()
        step = 0
        for _ in range(config.epochs):
            order = torch.randperm(n_items, generator=gen).tolist()
            for b in range(per_epoch):
                idx = order[b * config.batch_size : (b + 1) * config.batch_size]
                for g in opt.param_groups:
                    g["lr"] = config.lr * linear_schedule(step, total, warmup)
                loss = loss_fn(idx, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(sel.params, config.max_grad_norm)
                opt.step()
                losses.append(float(loss.detach()))
                step += 1
                if task.progress:
                    task.progress(step, total)
        opt.zero_grad(set_to_none=True)
    task.model.eval()
    seconds = time.perf_counter() - start
    info = {
        "config": config.to_dict(),
        "steps": step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "retain_rise": relative_rise(r0, task.retain_value()),
    }
    info.update(extra or {})
    residual = task.gradient_residual()  # the scrub methods' diagnostic, computed the same way
    return UpdateResult(name, seconds, tau=config.lr, steps=step, gradient_residual=residual, extra=info)
