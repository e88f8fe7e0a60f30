"""Seeded, batched sampling from bait prompts and from the document-start token.

Every prompt is encoded as it would open a training document
(:func:`scrubber.measure.context.encode_prompt`), and samples of one prompt go through
``generate`` together (same length, so no padding). Each batch draws from its
own seed (``seed``, the prompt's position and the batch's), inside a forked RNG,
so a scan is reproducible and does not disturb the caller's random state.
Generation stops at the end-of-text token: what follows it would be another
document.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scrubber.measure.context import encode_prompt
from scrubber.discovery.baits import ANCHOR, UNCONDITIONAL, Bait

Advance = Callable[[int, int], None]


@dataclass(frozen=True)
class Generation:
    """One sample: ``text = prompt + continuation``; ``bait`` is None for unconditional ones."""

    bait: Bait | None
    text: str
    start: int
    """Index in ``text`` where the generated continuation begins (``len(prompt)``)."""
    greedy: bool = False
    anchor: bool = False
    """Continued from an anchor (:mod:`scrubber.discovery.anchors`): the prompt is a window of
    the model's own text, and the continuation's first word is read as a value."""

    @property
    def prompt(self) -> str:
        return self.text[: self.start]

    @property
    def prompt_label(self) -> str:
        """The bait's text, ``<anchor>`` for anchored branches, or ``<document start>``."""
        if self.anchor:
            return ANCHOR
        return self.bait.text if self.bait is not None else UNCONDITIONAL


@dataclass(frozen=True)
class SamplingSettings:
    samples_per_bait: int = 32
    unconditional_samples: int = 64
    max_new_tokens: int = 32
    unconditional_tokens: int = 128
    top_k: int = 40
    temperature: float = 1.0
    greedy: bool = True
    branch_top: int = 8
    batch_size: int = 64
    seed: int = 0


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _max_positions(model: PreTrainedModel) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.inference_mode()
def _branches(model: PreTrainedModel, ids: list[int], k: int) -> list[int]:
    """The ``k`` likeliest next tokens after ``ids``."""
    x = torch.tensor([ids], dtype=torch.long, device=_device(model))
    logits = model(input_ids=x).logits[0, -1]
    return logits.topk(min(k, logits.numel())).indices.tolist()


@torch.inference_mode()
def _generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    ids: list[int],
    n: int,
    new_tokens: int,
    s: SamplingSettings,
    seed: int,
    do_sample: bool,
) -> list[str]:
    device = _device(model)
    limit = _max_positions(model)
    if limit is not None:
        new_tokens = min(new_tokens, limit - len(ids))
    if new_tokens < 1:
        return []
    x = torch.tensor([ids] * n, dtype=torch.long, device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs: dict = dict(
        input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
        pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, do_sample=do_sample,
    )
    if do_sample:
        kwargs.update(top_k=s.top_k if s.top_k > 0 else None, temperature=s.temperature, top_p=None)
    else:
        kwargs.update(top_k=None, temperature=None, top_p=None)
    was_training = model.training
    model.eval()
    try:
        with _seeded(seed, device):
            out = model.generate(**kwargs)
    finally:
        model.train(was_training)
    return tokenizer.batch_decode(out[:, len(ids):], skip_special_tokens=True)


def sample_generations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    baits: Sequence[Bait],
    settings: SamplingSettings | None = None,
    advance: Advance | None = None,
) -> list[Generation]:
    """Samples from every bait, greedy continuations from its likeliest first tokens, and
    unconditional samples."""
    s = settings or SamplingSettings()
    jobs: list[tuple[Bait | None, int, bool]] = []  # (bait, n, greedy)
    for b in baits:
        if s.greedy and s.branch_top <= 1:  # the top branch is the greedy continuation
            jobs.append((b, 1, True))
        if s.greedy and s.branch_top > 1:
            jobs.append((b, -s.branch_top, True))  # greedy from each of the top first tokens
        if s.samples_per_bait:
            jobs.append((b, s.samples_per_bait, False))
    if s.unconditional_samples:
        jobs.append((None, s.unconditional_samples, False))
    total = sum(abs(n) for _, n, _ in jobs)
    done = 0
    out: list[Generation] = []
    for j, (bait, n, greedy) in enumerate(jobs):
        prompt = bait.text if bait is not None else ""
        ids = encode_prompt(tokenizer, prompt)
        if not ids:
            raise ValueError("the tokenizer has no BOS or EOS token to start an unconditional sample")
        new_tokens = s.max_new_tokens if bait is not None else s.unconditional_tokens
        if n < 0:
            # Samples from a bait that several secrets followed mostly repeat the likeliest
            # one; continuing each of the likeliest first tokens greedily reaches the others.
            firsts = _branches(model, ids, -n)
            x_ids = [ids + [t] for t in firsts]
            for row in x_ids:
                (cont,) = _generate(model, tokenizer, row, 1, new_tokens - 1, s, 0, False) or [""]
                out.append(Generation(bait, prompt + tokenizer.decode(row[len(ids):]) + cont, len(prompt), True))
            done += len(firsts)
            if advance:
                advance(done, total)
            continue
        for b0 in range(0, n, s.batch_size):
            k = min(s.batch_size, n - b0)
            seed = (s.seed * 1_000_003 + j * 10_007 + b0) % (2**63)
            for cont in _generate(model, tokenizer, ids, k, new_tokens, s, seed, not greedy):
                out.append(Generation(bait, prompt + cont, len(prompt), greedy))
            done += k
            if advance:
                advance(done, total)
    return out
