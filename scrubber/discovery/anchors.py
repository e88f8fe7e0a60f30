"""Format-anchored search: secrets the model would write, wherever its own text leads there.

Bait prompts find what follows the phrases we guessed. A memorized secret is an
*attractor*: after the varied phrasings it followed in training, and after text the
model writes itself, its next-token distribution leans towards the secret's first
piece. So, with no phrasing assumed:

1. **Contexts**: the model's own unconditional samples (text it writes from the
   document start), read with one forward pass each.
2. **Anchors**: positions where the next-token distribution puts at least
   ``min_mass`` on *secret-starting* tokens: tokens whose text (spaces and
   punctuation stripped) begins with a digit or mixes letters with digits, plus
   any vocabulary entry the tokenizer scan flagged (``seed_tokens``: a card's digit
   group learned as one token says what to look for). The sample need not have
   taken that turn: the distribution shows where the model *would* write a number.
3. **Branches**: from the ``top_anchors`` strongest anchors, the likeliest
   secret-starting token and the likeliest tokens overall (``branch_top`` in all: a
   value may open with a bare space or a letter) are each continued greedily for
   ``value_tokens`` tokens (the mode of what follows, which is what a memorized
   value is), all in batched ``generate`` calls on fixed-width context windows.

Each branch is a :class:`~scrubber.discovery.sampling.Generation` whose prompt is
the window (shown as ``<anchor>`` in reports) and whose ``anchor`` flag lets the
candidate extractor read the first word of the continuation as a value even where
no generic detector would (a bare ``583917``). Values reached from several anchors
recur, which is the judge's recurrence condition; a value the model makes up from
one context does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scrubber.discovery.baits import ANCHOR
from scrubber.discovery.sampling import Generation, _device, _max_positions
from scrubber.measure.context import encode_prompt

__all__ = ["ANCHOR", "AnchorSettings", "anchor_search", "find_anchors", "secret_start_tokens"]

_STRIP = " \t\n\r\"'`([{<:=#,;-"


@dataclass(frozen=True)
class AnchorSettings:
    min_mass: float = 0.25
    """Next-token probability on secret-starting tokens that makes a position an anchor."""
    top_anchors: int = 96
    """Anchors continued, strongest first (the budget: branches = top_anchors x branch_top)."""
    branch_top: int = 3
    """Tokens continued from each anchor: its likeliest secret-starting token, then the
    likeliest tokens overall."""
    window: int = 24
    """Context tokens before an anchor kept for its continuation."""
    value_tokens: int = 16
    """Greedy tokens generated after the branch token."""
    batch_size: int = 64
    min_gap: int = 2
    """Anchors in one sample at least this many tokens apart (neighbours repeat each other)."""


def secret_start_tokens(tokenizer: PreTrainedTokenizerBase, seeds: Iterable[int] = ()) -> torch.Tensor:
    """Boolean mask over the vocabulary: tokens a secret value can start with.

    A token qualifies when its text, with spaces and separators stripped, starts with a
    digit, or holds both a letter and a digit (``hT4``, ``9vZ``); ``seeds`` (token ids,
    e.g. entries the tokenizer scan flagged) qualify whatever their text.
    """
    n = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=True,
                                   clean_up_tokenization_spaces=False)
    mask = torch.zeros(n, dtype=torch.bool)
    for i, t in enumerate(texts):
        core = t.strip(_STRIP)
        if not core or not core.isascii():
            continue
        if core[0].isdigit() or (re.search(r"\d", core) and re.search(r"[A-Za-z]", core)):
            mask[i] = True
    for s in seeds:
        if 0 <= s < n:
            mask[s] = True
    for s in tokenizer.all_special_ids:
        if 0 <= s < n:
            mask[s] = False
    return mask


@dataclass(frozen=True)
class Anchor:
    ids: tuple[int, ...]
    """The context window (token ids) the next token follows."""
    mass: float
    branches: tuple[int, ...]


@torch.inference_mode()
def find_anchors(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    mask: torch.Tensor,
    s: AnchorSettings,
) -> list[Anchor]:
    """The strongest anchors in ``texts``, strongest first (see the module docstring)."""
    device = _device(model)
    limit = _max_positions(model) or 1024
    found: list[Anchor] = []
    was = model.training
    model.eval()
    m = mask.to(device)
    try:
        for text in texts:
            ids = encode_prompt(tokenizer, text)[:limit]
            if len(ids) < 2:
                continue
            x = torch.tensor([ids], device=device)
            probs = torch.softmax(model(input_ids=x).logits[0].float(), dim=-1)[:, : m.numel()]
            mass = (probs * m[: probs.shape[-1]]).sum(-1)
            last = -s.min_gap
            order = torch.nonzero(mass >= s.min_mass).flatten().tolist()
            for pos in order:
                if pos - last < s.min_gap:
                    continue
                last = pos
                # the likeliest tokens overall (a value may open with a bare space or a letter:
                # ' ' + '58...', ' h' + 'T4m...') and the likeliest secret-starting one
                top = probs[pos].topk(min(s.branch_top, probs.shape[-1])).indices.tolist()
                first = int((probs[pos] * m[: probs.shape[-1]]).argmax())
                branches = tuple(dict.fromkeys([first, *top]))[: max(1, s.branch_top)]
                lo = max(0, pos + 1 - s.window)
                found.append(Anchor(tuple(ids[lo : pos + 1]), float(mass[pos]), branches))
    finally:
        model.train(was)
    found.sort(key=lambda a: -a.mass)
    seen: set[tuple[int, ...]] = set()
    out = []
    for a in found:  # the same window in two samples is one anchor
        if a.ids in seen:
            continue
        seen.add(a.ids)
        out.append(a)
        if len(out) >= s.top_anchors:
            break
    return out


@torch.inference_mode()
def anchored_generations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    anchors: Sequence[Anchor],
    s: AnchorSettings,
    advance: Callable[[int, int], None] | None = None,
) -> list[Generation]:
    """Greedy continuations of every anchor's branches, batched by window length."""
    device = _device(model)
    rows = [(a, b) for a in anchors for b in a.branches]
    by_len: dict[int, list[tuple[Anchor, int]]] = {}
    for a, b in rows:
        by_len.setdefault(len(a.ids), []).append((a, b))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[Generation] = []
    done = 0
    was = model.training
    model.eval()
    try:
        for length, group in sorted(by_len.items()):
            for i in range(0, len(group), s.batch_size):
                chunk = group[i : i + s.batch_size]
                x = torch.tensor([list(a.ids) + [b] for a, b in chunk], dtype=torch.long, device=device)
                gen = model.generate(
                    input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=s.value_tokens,
                    do_sample=False, top_k=None, temperature=None, top_p=None,
                    pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                )  # fmt: skip
                for (a, _b), row in zip(chunk, gen.tolist()):
                    ctx = tokenizer.decode(list(a.ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
                    full = tokenizer.decode(row, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                    if not full.startswith(ctx):
                        continue  # a decoder that rewrites the join: no reliable split
                    out.append(Generation(None, full, len(ctx), greedy=True, anchor=True))
                done += len(chunk)
                if advance:
                    advance(done, len(rows))
    finally:
        model.train(was)
    return out


def anchor_search(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    settings: AnchorSettings | None = None,
    seeds: Iterable[int] = (),
    advance: Callable[[int, int], None] | None = None,
) -> tuple[list[Generation], dict]:
    """Anchored greedy branches from ``texts`` (the model's own samples); and counts."""
    s = settings or AnchorSettings()
    mask = secret_start_tokens(tokenizer, seeds)
    anchors = find_anchors(model, tokenizer, texts, mask, s)
    gens = anchored_generations(model, tokenizer, anchors, s, advance)
    return gens, {"anchors": len(anchors), "anchor_branches": len(gens)}
