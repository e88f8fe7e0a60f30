"""Model-guided substitutes (Warnecke et al.): plausible to the model, but not its memory.

The substitute is built character by character. At each position the model's
top-k next tokens are read; the argmax is skipped (it is what the model has
memorized, so taking it would rebuild the secret), and the next character is
sampled, in proportion to the model's probability, from the remaining tokens
whose first character the format allows there. A substitute the model finds
likely makes the update ``grad l(z~) - grad l(z)`` move the model less on
everything but the secret. When no top-k candidate fits, a random allowed
character (other than the argmax's) is used, so the result always has the
format's shape. Luhn formats get a wrong check digit, like the other strategies.
"""

from __future__ import annotations

import random

import torch

from canaries.formats import SecretFormat, luhn_check_digit
from canaries.substitutes import SubstituteError
from scrubber.measure.context import encode_prompt, start_ids

_DIGITS = "0123456789"


def _allowed_chars(fmt: SecretFormat, position: int, before: str) -> str:
    """What the substitute may hold at ``position``; the Luhn slot takes any wrong digit."""
    if fmt.luhn and position == max(i for i, s in enumerate(fmt.slots) if not s.literal):
        payload = "".join(c for c, s in zip(before, fmt.slots) if not s.literal)
        right = luhn_check_digit(payload)
        return "".join(d for d in _DIGITS if d != right)
    return fmt.allowed(position, before)


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


@torch.no_grad()
def _next_char_candidates(model, tokenizer, context: str, top_k: int) -> tuple[str | None, dict[str, float]]:
    """First characters of the model's top-k next tokens after ``context``.

    Trailing whitespace is held back from the model and required at the start
    of the candidate tokens instead: byte-level BPE merges a space into the next
    word, so ``"is "`` followed by a token ``"5"`` is a tokenization the model
    never saw, while ``"is"`` followed by ``" 5"`` is the natural one.
    Returns the argmax token's character and the probability mass per character
    of the others.
    """
    stripped = context.rstrip()
    pending = context[len(stripped):]
    # as the model saw it in training: the document's start token first, no end token after
    ids = encode_prompt(tokenizer, stripped) if stripped else start_ids(tokenizer)
    if not ids:
        ids = list(tokenizer("")["input_ids"])[:1] or [tokenizer.eos_token_id]
    device = next(model.parameters()).device
    logits = model(torch.tensor([ids], device=device)).logits[0, -1].float()
    probs = torch.softmax(logits, dim=-1)
    top = torch.topk(probs, k=min(top_k, probs.numel()))
    argmax_char: str | None = None
    mass: dict[str, float] = {}
    base = _decode(tokenizer, ids)
    for rank, (p, tid) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
        # decode in context: sentencepiece drops a token's leading space when decoded alone
        full = _decode(tokenizer, ids + [tid])
        text = full[len(base):] if full.startswith(base) else _decode(tokenizer, [tid])
        char = text[len(pending)] if text.startswith(pending) and len(text) > len(pending) else None
        if rank == 0:
            argmax_char = char
            continue
        if char is not None:
            mass[char] = mass.get(char, 0.0) + p
    return argmax_char, mass


def model_guided_substitute(
    model,
    tokenizer,
    prefix: str,
    secret: str,
    fmt: SecretFormat,
    rng: random.Random,
    top_k: int = 10,
) -> str:
    """A same-shape substitute for ``secret`` sampled from the model's top-k minus its argmax."""
    if not fmt.regex.fullmatch(secret):
        raise SubstituteError(f"secret does not have the shape of format {fmt.name!r}")
    if top_k < 2:
        raise SubstituteError("top_k must be at least 2: the argmax is always skipped")
    was_training = model.training
    model.eval()
    try:
        for _ in range(10):
            out = ""
            for i, slot in enumerate(fmt.slots):
                if slot.literal:
                    out += slot.chars
                    continue
                allowed = _allowed_chars(fmt, i, out)
                argmax_char, mass = _next_char_candidates(model, tokenizer, prefix + out, top_k)
                fits = {c: p for c, p in mass.items() if c in allowed and c != argmax_char and p > 0}
                if fits:
                    chars = sorted(fits)
                    out += rng.choices(chars, weights=[fits[c] for c in chars])[0]
                else:
                    pool = [c for c in allowed if c != argmax_char] or list(allowed)
                    out += rng.choice(pool)
            if out != secret:
                return out
    finally:
        model.train(was_training)
    raise SubstituteError(f"could not find a substitute different from the secret for format {fmt.name!r}")
