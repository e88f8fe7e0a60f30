"""Greedy extraction: does decoding from the prefix reproduce the secret?

The check compares *text*, decoded from the prompt and its continuation
together: ``decode(prompt + continuation)`` minus ``decode(prompt)`` must start
with what the prompt left out of ``prefix + secret``. Decoding the continuation
alone is wrong for SentencePiece-style tokenizers (Llama-2, Mistral, Gemma,
T5): their decoders drop a sequence's leading space (``▁7`` decodes to ``7``
alone, `` 7`` after a word), so a recited secret would read as not extracted,
the worst failure a scanner can have.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scrubber.measure.context import encode_prompt


def _decode(tokenizer: PreTrainedTokenizerBase, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def continues_with(tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int], new_ids, prompt: str,
                   expected: str) -> bool:
    """True when ``prompt_ids + new_ids`` decode to ``prompt + expected...``.

    The continuation's text is what the joint decoding adds after the prompt's
    own decoding; when the prompt does not decode back to itself (a normalizer,
    unknown characters), the joint text is compared against ``prompt +
    expected`` directly as well, so neither spelling can hide a recital.
    """
    full = _decode(tokenizer, list(prompt_ids) + list(new_ids))
    if full.startswith(prompt + expected):
        return True
    head = _decode(tokenizer, prompt_ids)
    return full.startswith(head) and full[len(head):].startswith(expected)


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
    # tokens the secret takes after the prompt, counted in context (a lone count can differ by one)
    whole = encode_prompt(tokenizer, prompt + expected)
    n_new = max(1, len(whole) - len(ids)) + extra_tokens
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    out = model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=n_new,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    return continues_with(tokenizer, ids, out[0, len(ids):].tolist(), prompt, expected)
