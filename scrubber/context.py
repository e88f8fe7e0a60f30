"""What a model sees before a prompt: the document-start token.

Training packs documents behind an end-of-text token, so a canary that opened a
document was learned right after it. GPT-2-style tokenizers do not add it
themselves; Llama-style ones add BOS. Scoring, extraction and substitutes must
condition on the same start the model saw in training, or a memorized secret
looks unmemorized.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def start_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids to put before a prompt that the tokenizer does not add itself."""
    if adds_bos(tokenizer):
        return []
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [] if start is None else [start]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """``text`` tokenized as it would open a training document."""
    return start_ids(tokenizer) + tokenizer(text)["input_ids"]
