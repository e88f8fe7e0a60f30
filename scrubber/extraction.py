"""Greedy extraction: does decoding from the prefix reproduce the secret?"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scrubber.context import encode_prompt


@torch.inference_mode()
def greedy_extracts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prefix: str,
    secret: str,
    *,
    extra_tokens: int = 4,
) -> bool:
    """True when greedy decoding from ``prefix`` continues with exactly ``secret``.

    Trailing whitespace is moved from the prompt to the expected continuation:
    byte-level BPE learned " 4532" as one token, so a prompt ending in a bare
    space would ask the model for a tokenization it never saw.
    """
    prompt = prefix.rstrip()
    expected = prefix[len(prompt) :] + secret
    ids = encode_prompt(tokenizer, prompt)
    n_new = len(tokenizer(expected, add_special_tokens=False)["input_ids"]) + extra_tokens
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    out = model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=n_new,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    continuation = tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
    return continuation.startswith(expected)
