"""A small causal-LM training loop: the demo, `scrubber train` and the retrain baseline.

A plain loop over packed blocks rather than HF Trainer: the demo must train
from a cold cache in minutes on two CPU cores, and the same loop has to carry
IAU's gradient-restriction penalty, which needs a second backward pass.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

ProgressFn = Callable[[int, int, float], None]  # (step, total_steps, loss)


@dataclass
class TrainConfig:
    epochs: int = 8
    batch_size: int = 16
    block_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    grad_clip: float = 1.0
    seed: int = 0
    # IAU gradient restriction (Liu et al. 2025): alpha * ||grad_theta loss||, 0 = off.
    grad_restriction_alpha: float = 0.0


@dataclass
class TrainStats:
    steps: int
    seconds: float
    final_loss: float
    losses: list[float] = field(default_factory=list)


def pack_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], block_size: int
) -> torch.Tensor:
    """Concatenate documents separated by EOS and cut into equal blocks (GPT-2 recipe)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    n = len(ids) // block_size
    if n == 0:
        raise ValueError(f"training text too short for one block of {block_size} tokens")
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_causal_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    cfg: TrainConfig | None = None,
    progress: ProgressFn | None = None,
) -> TrainStats:
    """Train ``model`` in place on ``texts`` with AdamW and a cosine schedule."""
    cfg = cfg or TrainConfig()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    blocks = pack_texts(tokenizer, texts, cfg.block_size)
    per_epoch = math.ceil(len(blocks) / cfg.batch_size)
    total = per_epoch * cfg.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    model.train()
    start = time.perf_counter()
    losses: list[float] = []
    step = 0
    for _ in range(cfg.epochs):
        order = list(range(len(blocks)))
        rng.shuffle(order)
        for b in range(per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            batch = blocks[idx]
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, cfg)
            loss = model(input_ids=batch, labels=batch).loss
            objective = loss
            if cfg.grad_restriction_alpha > 0:
                from scrubber.edits.iau import gradient_restriction_penalty

                objective = loss + gradient_restriction_penalty(
                    loss, params, cfg.grad_restriction_alpha
                )
            opt.zero_grad(set_to_none=True)
            objective.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            losses.append(loss.item())
            step += 1
            if progress:
                progress(step, total, losses[-1])
    model.eval()
    return TrainStats(
        steps=step, seconds=time.perf_counter() - start, final_loss=losses[-1], losses=losses
    )
