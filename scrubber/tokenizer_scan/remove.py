"""Opt-in surgery: drop leaking entries from a fast BPE tokenizer, token ids kept.

The model's embedding matrix is indexed by token id, so ids must not move. For each
dropped entry we

1. remove every merge that produces it, and every merge that takes it as an input
   (those can never fire again), then every merge whose input became unreachable,
   transitively (the entries those merges produced are dropped too: they contain
   the dropped text);
2. keep the id slot but rename the entry to a placeholder, ``␀scrubbed:<id>␀``,
   that no input can produce: ``␀`` (U+2400) is not a byte-level character, and a
   sentencepiece-style input would have to contain it literally. Renaming matters:
   an entry kept under its old string would still ship the secret in
   ``tokenizer.json`` (and tokenizers with ``ignore_merges`` look words up in the
   vocabulary directly).

Text that used to become a dropped entry now becomes its pieces, so it still
decodes to the same string. The new tokenizer is written to a temporary folder,
checked (same size and ids, every check text round-trips as before, no dropped id
is produced for its own text or any check text, no dropped string left in any
written file) and only then moved into ``out_dir``. Stale legacy files there
(``vocab.json``, ``merges.txt``, ``tokenizer.model`` ...) that would still hold the
old vocabulary are deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from scrubber.report.schema import TokenizerFinding, TokenizerSection
from scrubber.tokenizer_scan.vocab import TokenizerScanError, VocabView, backend_json, backend_of

PLACEHOLDER = "\u2400scrubbed:{id}\u2400"
LEGACY_FILES = ("vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                "vocab.txt", "bpe.codes")


@dataclass
class RemovalResult:
    """What :func:`remove_tokens` did; ``ok`` is the verdict (nothing installed unless ok)."""

    out_dir: Path
    requested_ids: list[int]
    removed_ids: list[int] = field(default_factory=list)  # requested ids actually dropped
    cascaded_ids: list[int] = field(default_factory=list)  # entries unreachable once those were dropped
    skipped_ids: list[int] = field(default_factory=list)  # special tokens / base alphabet: never dropped
    removed_merges: int = 0
    n_check_texts: int = 0
    roundtrip_mismatches: list[int] = field(default_factory=list)  # indexes into check_texts
    identical_roundtrips: int = 0  # check texts with decode(encode(t)) == t under the new tokenizer
    still_produced: list[int] = field(default_factory=list)  # dropped ids the new tokenizer still emits
    leftover_strings: int = 0  # dropped token strings still found in a written file
    ids_stable: bool = False
    installed: bool = False
    files: list[str] = field(default_factory=list)

    @property
    def dropped_ids(self) -> list[int]:
        return self.removed_ids + self.cascaded_ids

    @property
    def ok(self) -> bool:
        return (self.ids_stable and not self.roundtrip_mismatches and not self.still_produced
                and not self.leftover_strings)

    def summary(self) -> str:
        verdict = "installed" if self.installed else "NOT installed"
        return (f"token removal {verdict}: {len(self.removed_ids)} entries dropped (+{len(self.cascaded_ids)} "
                f"that depended on them), {self.removed_merges} merges removed, ids kept; "
                f"{self.n_check_texts - len(self.roundtrip_mismatches)}/{self.n_check_texts} check texts "
                f"round-trip as before; {len(self.still_produced)} dropped ids still produced; "
                f"{self.leftover_strings} dropped strings left in files")


def _requested(flagged: Any) -> list[int]:
    if isinstance(flagged, TokenizerSection):
        return list(flagged.flagged_token_ids)
    out: list[int] = []
    for item in flagged:
        if isinstance(item, TokenizerFinding):
            if item.flagged:
                out += item.token_ids
        else:
            out.append(int(item))
    return list(dict.fromkeys(out))


def edit_tokenizer_json(data: dict, view: VocabView, ids: Iterable[int]) -> tuple[dict, list[int], list[int],
                                                                                  list[int], int]:
    """The edited ``tokenizer.json`` and (removed, cascaded, skipped, merges removed)."""
    removed, skipped = [], []
    drop: set[str] = set()
    for tid in ids:
        tok = view.id_to_token.get(tid)
        if tok is None or tid in view.special_ids or tok not in view.merge_rank:
            skipped.append(tid)  # unknown id, special token, or a base character needed to spell anything
            continue
        drop.add(tok)
        removed.append(tid)
    # Reachability in merge order: base tokens, then results of merges whose inputs are reachable.
    reachable = {t for t in view.vocab if t not in view.merge_rank}
    kept_idx: list[int] = []
    for i, (a, b) in enumerate(view.merges):
        out = a + b
        if out in drop or a not in reachable or b not in reachable:
            continue
        kept_idx.append(i)
        reachable.add(out)
    cascaded = sorted(view.vocab[t] for t in view.vocab
                      if t not in reachable and t not in drop and t in view.merge_rank
                      and view.vocab[t] not in view.special_ids)
    data = json.loads(json.dumps(data))
    model = data["model"]
    raw_merges = model["merges"]
    model["merges"] = [raw_merges[i] for i in kept_idx]
    vocab = model["vocab"]
    for tid in removed + cascaded:
        tok = view.id_to_token[tid]
        vocab.pop(tok, None)
        vocab[PLACEHOLDER.format(id=tid)] = tid
    model["vocab"] = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    return data, removed, cascaded, skipped, len(raw_merges) - len(kept_idx)


def _encode(tok: Any, text: str) -> list[int]:
    if hasattr(tok, "backend_tokenizer"):
        return tok.encode(text, add_special_tokens=False)
    return tok.encode(text, add_special_tokens=False).ids


def _decode(tok: Any, ids: list[int]) -> str:
    if hasattr(tok, "backend_tokenizer"):
        return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return tok.decode(ids, skip_special_tokens=False)


def remove_tokens(tokenizer: Any, flagged: Any, out_dir: str | Path, check_texts: Sequence[str]) -> RemovalResult:
    """Drop ``flagged`` entries (a :class:`TokenizerSection`, its findings, or token ids)
    from a fast BPE tokenizer and write the result to ``out_dir`` if every check passes.

    ``out_dir`` may already hold the (scrubbed) model: only tokenizer files are
    written there. ``check_texts`` (held-out or retain texts) must round-trip exactly
    as under the old tokenizer. Returns a :class:`RemovalResult`; ``result.ok`` says
    whether it was installed. Raises :class:`TokenizerScanError` for tokenizers it
    cannot edit.
    """
    out = Path(out_dir)
    view = VocabView.from_tokenizer(tokenizer)
    if not view.merges:
        raise TokenizerScanError("token removal needs a BPE tokenizer with a merge list")
    requested = _requested(flagged)
    data, removed, cascaded, skipped, n_merges = edit_tokenizer_json(backend_json(tokenizer), view, requested)
    res = RemovalResult(out_dir=out, requested_ids=requested, removed_ids=removed, cascaded_ids=cascaded,
                        skipped_ids=skipped, removed_merges=n_merges, n_check_texts=len(check_texts))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tok-", dir=out.parent))
    try:
        new = _write(tokenizer, data, tmp)
        res.files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        _check(res, view, tokenizer, new, data, tmp, check_texts)
        if res.ok:
            out.mkdir(parents=True, exist_ok=True)
            for name in LEGACY_FILES:
                if (out / name).exists() and not (tmp / name).exists():
                    (out / name).unlink()
            for name in res.files:
                os.replace(tmp / name, out / name)
            res.installed = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def _write(tokenizer: Any, data: dict, tmp: Path) -> Any:
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(json.dumps(data, ensure_ascii=False))
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(tmp)
        for name in LEGACY_FILES:  # would still spell the old vocabulary
            (tmp / name).unlink(missing_ok=True)
        backend.save(str(tmp / "tokenizer.json"))
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tmp)
    backend.save(str(tmp / "tokenizer.json"))
    return Tokenizer.from_file(str(tmp / "tokenizer.json"))


def _check(res: RemovalResult, view: VocabView, old: Any, new: Any, data: dict, tmp: Path,
           check_texts: Sequence[str]) -> None:
    dropped = set(res.dropped_ids)
    new_vocab = backend_of(new).get_vocab(with_added_tokens=True)
    old_vocab = backend_of(old).get_vocab(with_added_tokens=True)
    dropped_tokens = {view.id_to_token[i] for i in dropped}
    res.ids_stable = len(new_vocab) == len(old_vocab) and all(
        new_vocab.get(t) == i for t, i in old_vocab.items() if t not in dropped_tokens
    )
    produced: set[int] = set()
    for i, text in enumerate(check_texts):
        old_ids, new_ids = _encode(old, text), _encode(new, text)
        produced |= dropped.intersection(new_ids)
        new_rt = _decode(new, new_ids)
        if new_rt != _decode(old, old_ids):
            res.roundtrip_mismatches.append(i)
        res.identical_roundtrips += new_rt == text
    for tid in dropped:  # each dropped entry's own text, alone and after a word
        text = view.text_of_id(tid)
        for probe in (text, "x" + text, "x " + text.lstrip()):
            produced |= dropped.intersection(_encode(new, probe))
    res.still_produced = sorted(produced)
    needles = set()
    for tok in dropped_tokens:
        needles |= {json.dumps(tok, ensure_ascii=False), json.dumps(tok, ensure_ascii=True)}
    left = 0
    for p in tmp.iterdir():
        if p.is_file():
            blob = p.read_text(encoding="utf-8", errors="replace")
            left += sum(1 for n in needles if n in blob)
            # merges are written as "a b" or ["a", "b"]: a dropped token as an input was removed above
    res.leftover_strings = left
