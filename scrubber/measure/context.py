"""What a model sees before a prompt: the document-start token, and no end token after it.

Training packs documents behind an end-of-text token, so a canary that opened a
document was learned right after it. GPT-2-style tokenizers do not add it
themselves; Llama-style ones add BOS (``add_bos_token``). Scoring, extraction
and substitutes must condition on the same start the model saw in training, or
a memorized secret looks unmemorized.

Some tokenizers (T5-style Unigram, Llama with ``add_eos_token=True``) also
*append* EOS to every text. A prompt is the start of a document, not a whole
one: ending it with EOS asks the model what comes after the document, so that
token is dropped from prompts.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

_PROBE = "a"


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when ``tokenizer(text)`` starts with BOS on its own (Llama's ``add_bos_token``)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer(_PROBE)["input_ids"]
    return bool(ids) and ids[0] == bos


def adds_eos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when ``tokenizer(text)`` ends with an EOS the text does not spell (T5, ``add_eos_token``)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        return False
    ids = tokenizer(_PROBE)["input_ids"]
    plain = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    return len(ids) > len(plain) and ids[-1] == eos and (not plain or plain[-1] != eos)


def start_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids to put before a prompt that the tokenizer does not add itself."""
    if adds_bos(tokenizer):
        return []
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [] if start is None else [start]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """``text`` tokenized as it would open a training document (start token, no end token)."""
    ids = list(tokenizer(text)["input_ids"])
    if ids and adds_eos(tokenizer) and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return start_ids(tokenizer) + ids
