"""A read-only view of a fast BPE (or Unigram) tokenizer's vocabulary and merge list.

Everything the scan needs comes from ``tokenizer.json`` (``backend_tokenizer``):
the vocabulary (token string -> id), the merges in rank order, and how a token
string maps back to text. Two spellings of the same text are handled:

* **byte-level** (GPT-2, RoBERTa, Llama 3, Qwen): every byte is a printable
  stand-in character (``Ġ`` is the space byte 0x20), so a token's text is the
  UTF-8 decoding of its bytes;
* **sentencepiece-like** (Llama 2, Mistral, T5 converted to fast): ``▁`` marks a
  space, and ``<0xNN>`` byte-fallback tokens stand for single bytes.

Anything else (WordPiece-style ``##`` continuations included) is read as is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from scrubber.errors import ScrubberError

SP_SPACE = "\u2581"  # ▁


class TokenizerScanError(ScrubberError):
    """A tokenizer the scan or the token removal cannot handle; the message names no secret."""


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable character table, inverted (character -> byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _walk(node: Any) -> list[dict]:
    """A component and every component nested in it (Sequence pre-tokenizers etc.)."""
    if not isinstance(node, dict):
        return []
    out = [node]
    for key in ("pretokenizers", "normalizers", "decoders", "processors"):
        for child in node.get(key) or []:
            out += _walk(child)
    return out


def backend_json(tokenizer: Any) -> dict:
    """``tokenizer.json`` of a transformers fast tokenizer or a ``tokenizers.Tokenizer``."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    to_str = getattr(backend, "to_str", None)
    if to_str is None:
        raise TokenizerScanError(
            "the tokenizer scan needs a fast tokenizer (tokenizer.json); this one is a slow, Python tokenizer"
        )
    return json.loads(to_str())


def backend_of(tokenizer: Any):
    return getattr(tokenizer, "backend_tokenizer", tokenizer)


@dataclass
class VocabView:
    """Vocabulary, merges and token texts of a fast BPE tokenizer."""

    data: dict
    kind: str  # "byte_level" | "sentencepiece" | "plain"
    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    special_ids: set[int] = field(default_factory=set)
    continuing_prefix: str = ""
    model_type: str = "BPE"  # "BPE" | "Unigram" (no merges: learned entries are every non-base piece)

    # -- construction -------------------------------------------------------
    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "VocabView":
        data = backend_json(tokenizer)
        model = data.get("model") or {}
        if model.get("type") == "Unigram":
            # SentencePiece unigram (T5, ALBERT, XLNet): a scored piece list, no merges
            vocab = {str(entry[0]): i for i, entry in enumerate(model.get("vocab") or [])}
            merges: list = []
        elif model.get("type") == "BPE":
            vocab = dict(model.get("vocab") or {})
            merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
        else:
            raise TokenizerScanError(
                f"the tokenizer scan reads BPE and Unigram tokenizers; this one is {model.get('type') or 'unknown'}"
            )
        comps = []
        for key in ("normalizer", "pre_tokenizer", "decoder"):
            comps += _walk(data.get(key))
        types = {c.get("type") for c in comps}
        blob = json.dumps([data.get("normalizer"), data.get("pre_tokenizer"), data.get("decoder")])
        if "ByteLevel" in types:
            kind = "byte_level"
        elif "Metaspace" in types or SP_SPACE in blob or "\\u2581" in blob:
            kind = "sentencepiece"
        else:
            kind = "plain"
        special = {int(t["id"]) for t in data.get("added_tokens") or []}
        return cls(
            data=data, kind=kind, vocab=vocab, merges=merges, special_ids=special, model_type=model["type"],
            continuing_prefix=model.get("continuing_subword_prefix") or "",
        )

    # -- derived tables -----------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.vocab)

    def __post_init__(self) -> None:
        self.id_to_token: dict[int, str] = {i: t for t, i in self.vocab.items()}
        self.merge_rank: dict[str, int] = {}  # token -> rank of the first merge producing it
        self.parents: dict[str, tuple[str, str]] = {}
        self.uses: dict[str, int] = {}  # token -> merges taking it as an input
        self.children: dict[str, list[str]] = {}
        for r, (a, b) in enumerate(self.merges):
            out = a + b
            if out not in self.merge_rank:
                self.merge_rank[out] = r
                self.parents[out] = (a, b)
            for piece in {a, b}:
                self.uses[piece] = self.uses.get(piece, 0) + 1
                self.children.setdefault(piece, []).append(out)

    # -- token text -----------------------------------------------------------
    def text(self, token: str) -> str:
        """The text a token stands for (its leading space included)."""
        if self.kind == "byte_level":
            table = byte_decoder()
            if all(c in table for c in token):
                return bytes(table[c] for c in token).decode("utf-8", errors="replace")
            return token
        if self.kind == "sentencepiece":
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                try:
                    return bytes([int(token[3:5], 16)]).decode("utf-8", errors="replace")
                except ValueError:
                    return token
            return token.replace(SP_SPACE, " ")
        if self.continuing_prefix and token.startswith(self.continuing_prefix):
            return token[len(self.continuing_prefix):]
        return token

    def text_of_id(self, token_id: int) -> str:
        return self.text(self.id_to_token.get(token_id, ""))

    def rank_fraction(self, token: str) -> float | None:
        """Position of the token's merge in the merge list, 0 (first) .. 1 (last); None for base tokens."""
        r = self.merge_rank.get(token)
        if r is None or not self.merges:
            return None
        return r / max(1, len(self.merges) - 1)

    def exclusive_ancestors(self, token: str, min_chars: int = 2) -> list[str]:
        """Intermediate tokens of ``token``'s derivation that no other merge uses: pieces
        that exist only to build this token (the trace of one string learned whole)."""
        out: list[str] = []
        stack = list(self.parents.get(token, ()))
        seen: set[str] = set()
        while stack:
            t = stack.pop()
            if t in seen or t not in self.parents:
                continue
            seen.add(t)
            if self.uses.get(t, 0) == 1 and len(self.text(t).strip()) >= min_chars:
                out.append(t)
                stack.extend(self.parents[t])
        return out
