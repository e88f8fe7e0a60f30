"""Tokenizers of the families users actually have, trained offline in about a second each.

Every measurement (secret spans, scoring, extraction, the tokenizer scan,
substitutes, search) has assumptions about how text becomes tokens; the
project's own tokenizers are all GPT-2-style byte-level BPE, so nothing else
was ever exercised. Each builder here trains a small vocabulary with the
``tokenizers`` library on the stdlib docs (``pydoc_data.topics``), wraps it the
way transformers ships that family, and returns it *after* a
``save_pretrained``/``from_pretrained`` round trip, because that reload is what
users run (and transformers 5 rebuilds some classes, Llama's among them, from
the saved vocabulary and merges rather than reading ``tokenizer.json`` as is).

Families (``FAMILIES``, the ids tests parametrize over):

* ``byte_bpe``: GPT-2 byte-level BPE, the project's own (no BOS; EOS opens documents).
* ``sp_llama_legacy`` / ``sp_llama``: Llama-2 / Mistral / TinyLlama style: ``▁`` for
  spaces, byte-fallback ``<0xNN>`` tokens, digits split one by one (SentencePiece's
  ``split_digits``), BOS added, decoder that strips the sequence's leading space;
  loaded as ``LlamaTokenizer(legacy=True)`` (a ``▁`` before every text) and
  ``legacy=False`` (only before the first).
* ``sp_normalizer``: the same vocabulary as hub ``tokenizer.json`` files converted by
  transformers 4 store it: no pre-tokenizer, a normalizer that prepends ``▁`` and
  replaces spaces (loaded through ``AutoTokenizer``).
* ``sp_unigram``: a Unigram model (T5 / ALBERT / XLNet style) with Metaspace and
  byte fallback.
* ``digits1``: SmolLM2 / Qwen style: one digit per token (``Digits(individual_digits)``
  in a Sequence before ByteLevel).
* ``digits3``: Llama-3 style digit groups of up to three (``\\p{N}{1,3}`` split before ByteLevel).
* ``tiktoken``: cl100k-style regex pre-tokenizer (Split) + ByteLevel without its own regex.
"""

from __future__ import annotations

import json
import random
import tempfile
from functools import lru_cache
from typing import Callable

import pydoc_data.topics
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from scrubber.training.tokenizer import train_bpe_tokenizer

VOCAB = 800
SP_SPECIALS = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]
CL100K = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def corpus(n: int = 60) -> list[str]:
    """The training text: the first ``n`` stdlib doc topics (ships with Python) and lines of numbers.

    The numbers make BPE learn multi-digit tokens (" 72", "915") where the
    pre-tokenizer lets it, so the families differ where secrets live: digits.
    """
    rng = random.Random(1)
    numbers = [" ".join(str(rng.randrange(10 ** rng.randrange(1, 7))) for _ in range(40)) for _ in range(150)]
    return [t for t in pydoc_data.topics.topics.values() if t.strip()][:n] + numbers


def _reload(tok: PreTrainedTokenizerBase, load: Callable[[str], PreTrainedTokenizerBase]) -> PreTrainedTokenizerBase:
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        return load(d)


def _sp_bpe_backend(texts: list[str]) -> Tokenizer:
    """SentencePiece-like BPE: words start with ``▁``, digits alone, bytes as ``<0xNN>``."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # train on words (as SentencePiece does), digits split (Llama-2's split_digits) ...
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(prepend_scheme="first", split=True), pre_tokenizers.Digits(individual_digits=True)]
    )
    alphabet = sorted({c for t in texts for c in t if c.isascii() and c.isprintable()} | {"\u2581"})
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB + len(BYTE_TOKENS), special_tokens=SP_SPECIALS + BYTE_TOKENS,
        initial_alphabet=alphabet, show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(texts, trainer=trainer)
    # ... and encode as the Llama-2 conversion does: the whole text one piece
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


@lru_cache(maxsize=None)
def _sp_bpe_fast() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=_sp_bpe_backend(corpus()), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def byte_bpe() -> PreTrainedTokenizerBase:
    return _reload(train_bpe_tokenizer(corpus(), vocab_size=VOCAB), AutoTokenizer.from_pretrained)


def sp_llama(legacy: bool = False) -> PreTrainedTokenizerBase:
    return _reload(_sp_bpe_fast(), lambda d: LlamaTokenizer.from_pretrained(d, legacy=legacy))


def sp_llama_legacy() -> PreTrainedTokenizerBase:
    return sp_llama(legacy=True)


def sp_normalizer() -> PreTrainedTokenizerBase:
    """Llama-2's ``tokenizer.json`` as transformers 4 converted it: the normalizer does the ``▁`` work."""
    backend = Tokenizer.from_str(_sp_bpe_fast().backend_tokenizer.to_str())
    backend.pre_tokenizer = None
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    return _reload(fast, AutoTokenizer.from_pretrained)


def sp_unigram() -> PreTrainedTokenizerBase:
    texts = corpus()
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(prepend_scheme="always", split=True), pre_tokenizers.Digits(individual_digits=True)]
    )
    alphabet = sorted({c for t in texts for c in t if c.isascii() and c.isprintable()} | {"\u2581"})
    trainer = trainers.UnigramTrainer(
        vocab_size=VOCAB + len(BYTE_TOKENS), special_tokens=SP_SPECIALS + BYTE_TOKENS, unk_token="<unk>",
        initial_alphabet=alphabet, show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(texts, trainer=trainer)
    data = json.loads(tok.to_str())
    data["model"]["byte_fallback"] = True  # the trainer does not set it; SentencePiece models have it
    tok = Tokenizer.from_str(json.dumps(data))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(prepend_scheme="always", split=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<unk>")
    return _reload(fast, AutoTokenizer.from_pretrained)


def _byte_level(pre: pre_tokenizers.PreTokenizer) -> PreTrainedTokenizerBase:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>",
        pad_token="<|pad|>",
    )  # fmt: skip
    return _reload(fast, AutoTokenizer.from_pretrained)


def digits1() -> PreTrainedTokenizerBase:
    return _byte_level(pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    ))  # fmt: skip


def digits3() -> PreTrainedTokenizerBase:
    return _byte_level(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}{1,3}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ]))  # fmt: skip


def tiktoken() -> PreTrainedTokenizerBase:
    return _byte_level(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CL100K), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]))  # fmt: skip


BUILDERS: dict[str, Callable[[], PreTrainedTokenizerBase]] = {
    "byte_bpe": byte_bpe,
    "sp_llama_legacy": sp_llama_legacy,
    "sp_llama": sp_llama,
    "sp_normalizer": sp_normalizer,
    "sp_unigram": sp_unigram,
    "digits1": digits1,
    "digits3": digits3,
    "tiktoken": tiktoken,
}
FAMILIES: tuple[str, ...] = tuple(BUILDERS)


@lru_cache(maxsize=None)
def build(family: str) -> PreTrainedTokenizerBase:
    """The family's tokenizer, built once per process."""
    return BUILDERS[family]()


# -- a tiny model for any of them --------------------------------------------------------------


def tiny_llama(tok: PreTrainedTokenizerBase, seed: int = 0):
    """A 2-layer, 48-wide Llama for ``tok`` (special ids from the tokenizer, never Llama's defaults)."""
    from scrubber.training.model_factory import small_causal_lm

    eos = tok.eos_token_id
    bos = tok.bos_token_id if tok.bos_token_id is not None else eos
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    return small_causal_lm(
        len(tok), arch="llama", n_layer=2, d_model=48, n_head=2, bos_token_id=bos, eos_token_id=eos,
        pad_token_id=pad, seed=seed,
    )  # fmt: skip
