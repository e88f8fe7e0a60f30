"""Exact rank of a secret by best-first search over token paths, without enumerating R.

A highly exposed secret has a small rank: only a few members of R score at or
below it.  :func:`search_rank` finds all of them and so gives the *exact* rank
``1 + #{x in R, x != secret, score(x) <= score(secret)}`` at a cost that grows
with the rank, not with |R|.

How, and why it is exact
------------------------

A candidate's score is ``sum_k c(t_k)`` over its *canonical* tokens (the
tokenizer's own tokenization of ``prefix + candidate``, see
:mod:`scrubber.measure.exposure.tokens`), with ``c(t_k) = -log2 p(t_k | t_<k) >= 0``.
Partial *strings* have no consistent partial score (BPE re-merges as
characters are appended: ``" 12"`` may be one token, ``" 123"`` another), so we
search over partial *token paths* instead:

* Root: ``C0``, the prefix's tokens that no appended text can change (below),
  and the text still to be produced, ``u + secret`` where ``u`` is the
  prefix's last pre-token (it may merge with the secret's first characters).
* A node is a token path whose decoded text is a prefix of ``u + x`` for some
  ``x`` in R (checked character by character with ``fmt.allowed``, so Luhn
  and literals are respected).  Its cost is the sum of ``c(t)`` over its
  tokens that cover a secret character (tokens inside ``u`` are context, cost
  0, exactly as in scoring).  Costs only grow along a path.
* For every member ``x``, each prefix of its canonical path is a node and its
  cost is a partial sum of ``score(x)``, hence ``<= score(x)``.  So expanding
  every node whose cost is ``<= threshold`` (the canary's score) reaches
  the canonical path of every member scoring ``<= threshold``: nothing that
  beats the canary can be pruned.  Complete paths are kept only when they
  *are* the canonical tokenization of their text (re-tokenized and compared),
  so each member is counted once and non-canonical paths (other segmentations
  of the same string, which the search visits but which no score uses) never.
* Every member found is re-scored with :func:`score_candidates` in one call
  together with the canary, and the rank counts ``<=`` on those scores, so the
  comparison is like-for-like with every other method.  Pruning uses
  ``threshold + slack`` (1e-3 bits) so float32 noise between batchings cannot
  drop a tie.

Assumptions (checked where they can be):

1. **Stable prefix.** The tokenizer pre-tokenizes with a left-to-right split
   and runs its model (BPE, Unigram) inside each pre-token independently, with
   no normalizer.  Then appending text changes only the last pre-token of the
   prefix, so ``C0`` (the tokens of the earlier pre-tokens) starts every
   candidate's tokenization.  A tokenizer with a normalizer or without a
   pre-tokenizer is refused (:class:`SearchUnsupported`, with the reason).
2. **Token texts.** Each vocabulary token spells, after other text, the text
   it covers; it is read by decoding it after a one-letter anchor piece, since
   SentencePiece-style decoders drop the leading space of a whole sequence.
   Tokens that decode to a partial UTF-8 sequence (byte-fallback pieces of a
   multi-byte character) are left out, so formats must use characters that
   some token spells whole (all ASCII formats).  The canary's own canonical
   path is checked to be a path of the search before starting; if it is not,
   the search refuses rather than guess.

Per tokenizer family (each tested in tests/test_tokenizer_families.py against
full enumeration, or for the refusal):

* byte-level BPE (GPT-2, RoBERTa), tiktoken-style regex ``Split`` + ByteLevel
  (cl100k, Llama-3), digit groups ``\\p{N}{1,3}`` (Llama-3) and one digit per
  token (``Digits(individual_digits=True)`` in a Sequence: SmolLM2, Qwen):
  exact.  With one digit per token a digit secret's trie is 10 children per
  level; each model call expands ``batch_size`` nodes at once (the cheapest
  nodes first, so whole levels of the top of the trie per call).
* SentencePiece-style Metaspace that splits words (T5-style Unigram, byte
  fallback): exact (pre-tokens are words, as for byte-level).
* SentencePiece-style Metaspace that does not split (transformers' Llama-2 /
  Mistral conversion, ``legacy`` True or False): the whole text is one BPE
  word, but when no vocabulary piece holds ``▁`` after another character, no
  merge can join text across the start of a run of spaces, so the last run
  starts the unstable tail: exact.  Otherwise refused.
* Normalizer-based SentencePiece conversions (``Prepend("▁")`` +
  ``Replace(" ", "▁")``, as transformers 4 wrote Llama-2's tokenizer.json),
  and any Unicode normalizer: refused; the engine falls back to the
  reference-based estimate and reports why.

Budgets: ``max_rank`` stops as soon as ``max_rank`` members are known to beat
the canary (its rank is then only bounded: ``> max_rank``); ``max_expansions``
bounds the nodes expanded (model rows); ``max_seconds`` the wall clock
(``stopped="time"``, checked between model calls).  Either way the result says
``exact=False`` with ``rank`` a lower bound and ``exposure`` an upper bound,
and the engine falls back to extrapolation.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
import weakref
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from canaries.formats import SecretFormat
from scrubber.measure.exposure.head import model_parts
from scrubber.measure.exposure.scoring import (
    DType,
    _ContextRunner,
    _device,
    _scoring_mode,
    resolve_dtype,
    score_candidates,
)
from scrubber.measure.context import start_ids
from scrubber.measure.exposure.tokens import _encode, _fallback_start_token, secret_tokens

DEFAULT_MAX_RANK = 10_000
DEFAULT_MAX_EXPANSIONS = 200_000
DEFAULT_SLACK_BITS = 1e-3

_LN2 = math.log(2.0)


class SearchUnsupported(ValueError):
    """The tokenizer breaks an assumption the search needs to be exact (see the module docstring)."""


class SearchBudgetExceeded(RuntimeError):
    """The search stopped before it could prove the rank (``max_rank``, ``max_expansions`` or ``max_seconds``)."""


@dataclass(frozen=True)
class SearchResult:
    """Outcome of :func:`search_rank`; bits throughout.

    ``exact``: ``rank`` is the secret's exact rank in R.  Otherwise ``rank`` is
    a lower bound (``stopped`` says which budget ran out) and ``exposure`` the
    matching upper bound.
    """

    rank: int
    exposure: float
    exact: bool
    expanded: int
    seconds: float
    score_bits: float
    max_exposure: float
    found: int  # members other than the secret proven to score <= it
    stopped: str | None = None  # None, "max_rank", "max_expansions" or "time"


# -- vocabulary as a character trie ---------------------------------------------


class _VocabTrie:
    """Non-special tokens by their decoded text, as a character trie (node: ``[children, token ids]``)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        backend = tokenizer.backend_tokenizer
        decoder = backend.decoder
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        self.root: list = [{}, []]
        self.text: dict[int, str] = {}
        self.max_len = 0
        vocab = backend.get_vocab(with_added_tokens=False)
        anchor = _anchor_piece(vocab, special)
        head = decoder.decode([anchor]) if decoder is not None and anchor is not None else None
        for piece, tid in vocab.items():
            if tid in special:
                continue
            text = _piece_text(decoder, piece, anchor, head)
            if not text or "\ufffd" in text:
                continue  # partial UTF-8 byte: no whole character to match
            self.text[tid] = text
            self.max_len = max(self.max_len, len(text))
            node = self.root
            for ch in text:
                node = node[0].setdefault(ch, [{}, []])
            node[1].append(tid)


def _anchor_piece(vocab: dict[str, int], special: set[int]) -> str | None:
    """A plain one-letter piece to decode other pieces after (see :func:`_piece_text`)."""
    for ch in "aeiostnrlAEIOST":
        if ch in vocab and vocab[ch] not in special:
            return ch
    return None


def _piece_text(decoder, piece: str, anchor: str | None, head: str | None) -> str:
    """The text ``piece`` adds when it follows other text.

    Decoded after an anchor letter, not alone: SentencePiece-style decoders
    (Metaspace, or Replace + Strip) drop the leading space of a *sequence*, so
    ``▁7`` alone reads ``7`` although it spells `` 7`` after the prefix.
    Byte-level decoders give the same text either way.
    """
    if decoder is None:
        return piece
    if anchor is not None and head is not None:
        both = decoder.decode([anchor, piece])
        if both.startswith(head):
            return both[len(head):]
    return decoder.decode([piece])


_TRIES: "weakref.WeakKeyDictionary[object, _VocabTrie]" = weakref.WeakKeyDictionary()


def _vocab_trie(tokenizer: PreTrainedTokenizerBase) -> _VocabTrie:
    backend = tokenizer.backend_tokenizer
    try:
        trie = _TRIES.get(backend)
    except TypeError:
        return _VocabTrie(tokenizer)
    if trie is None:
        trie = _VocabTrie(tokenizer)
        _TRIES[backend] = trie
    return trie


# -- the search -----------------------------------------------------------------


def _check_position(fmt: SecretFormat) -> int | None:
    if not fmt.luhn:
        return None
    return max((i for i, s in enumerate(fmt.slots) if not s.literal), default=None)


class _Space:
    """Which tokens may follow a node: the text to produce is ``u + member``."""

    def __init__(self, trie: _VocabTrie, u: str, fmt: SecretFormat) -> None:
        self.trie, self.u, self.fmt = trie, u, fmt
        self.total = len(u) + fmt.length
        self.check = _check_position(fmt)
        self._memo: dict = {}

    def _allowed(self, pos: int, before: str) -> str:
        if pos < len(self.u):
            return self.u[pos]
        return self.fmt.allowed(pos - len(self.u), before)

    def children(self, consumed: int, sofar: str) -> tuple[np.ndarray, list[int], list[str]]:
        """Viable next tokens from text position ``consumed`` (``sofar``: secret chars so far).

        Returns token ids, the text position after each, and the secret chars each adds.
        """
        depends = self.check is not None and consumed - len(self.u) + self.trie.max_len > self.check
        key = (consumed, sofar if depends else None)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        ids: list[int] = []
        ends: list[int] = []
        adds: list[str] = []
        stack = [(self.trie.root, consumed, "")]
        while stack:
            node, pos, added = stack.pop()
            if added or pos > consumed:
                for tid in node[1]:
                    ids.append(tid)
                    ends.append(pos)
                    adds.append(added)
            if pos >= self.total:
                continue
            for ch in self._allowed(pos, sofar + added):
                nxt = node[0].get(ch)
                if nxt is not None:
                    stack.append((nxt, pos + 1, added + ch if pos >= len(self.u) else added))
        out = (np.asarray(ids, dtype=np.int64), ends, adds)
        if len(self._memo) < 100_000:
            self._memo[key] = out
        return out


def _pre_tokenizers(pre) -> list:
    """The components of a (possibly nested) Sequence pre-tokenizer, in order."""
    out, i = [], 0
    if type(pre).__name__ != "Sequence":
        return [pre]
    while True:
        try:
            part = pre[i]
        except Exception:  # the Rust Sequence raises its own error past the end
            return out
        out += _pre_tokenizers(part)
        i += 1


def _unsplit_metaspace(backend) -> bool:
    """True for a Metaspace pre-tokenizer that keeps the whole text one piece (Llama-2 conversion)."""
    return any(
        type(p).__name__ == "Metaspace" and not getattr(p, "split", True)
        for p in _pre_tokenizers(backend.pre_tokenizer)
    )


def _space_run_start(prefix: str) -> int:
    """Start of the last run of spaces in ``prefix`` (0 when it has none)."""
    i = prefix.rfind(" ")
    if i < 0:
        return 0
    while i > 0 and prefix[i - 1] == " ":
        i -= 1
    return i


def _stable_prefix(tokenizer: PreTrainedTokenizerBase, prefix: str) -> int:
    """Character offset ``a`` such that appending text never changes ``prefix[:a]``'s tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not getattr(tokenizer, "is_fast", False):
        raise SearchUnsupported("search needs a fast (Rust) tokenizer")
    if backend.normalizer is not None:
        raise SearchUnsupported(
            f"search assumes a tokenizer without a normalizer; this one has {type(backend.normalizer).__name__} "
            "(SentencePiece conversions that prepend/replace '\u2581' in a normalizer, or Unicode normalization) "
            "and appended text may change how the prefix normalizes"
        )
    if backend.pre_tokenizer is None:
        raise SearchUnsupported("search assumes a pre-tokenizer that splits text into words; this one has none")
    if not prefix:
        return 0
    if _unsplit_metaspace(backend):
        # The whole text is one BPE word. A piece never holds '▁' after another character, so no
        # merge joins text across the start of a space run: the last run starts the unstable tail.
        bad = next(
            (p for p in backend.get_vocab(with_added_tokens=False) if "\u2581" in p.lstrip("\u2581")), None
        )
        if bad is not None:
            raise SearchUnsupported(
                "search needs word boundaries: this Metaspace tokenizer does not split words and its "
                "vocabulary has pieces that run across a space, so appended text may re-tokenize the prefix"
            )
        return _space_run_start(prefix)
    pieces = backend.pre_tokenizer.pre_tokenize_str(prefix)
    if not pieces:
        return 0
    if len(pieces) >= 2 and "'" in prefix[-3:]:
        # GPT-2's contractions ('ll, 're, ...) can regroup the last two pre-tokens ("'", "l" -> "'ll")
        return pieces[-2][1][0]
    return pieces[-1][1][0]


def search_rank(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prefix: str,
    secret: str,
    fmt: SecretFormat,
    *,
    max_rank: int = DEFAULT_MAX_RANK,
    max_expansions: int = DEFAULT_MAX_EXPANSIONS,
    batch_size: int = 256,
    dtype: DType = None,
    slack_bits: float = DEFAULT_SLACK_BITS,
    max_seconds: float | None = None,
) -> SearchResult:
    """Exact rank of ``secret`` in ``fmt``'s space R after ``prefix``, by best-first search.

    ``batch_size`` nodes are expanded per model call (their next-token
    distributions computed at once); ``max_rank``, ``max_expansions`` and
    ``max_seconds`` (wall clock, checked between model calls; ``None``: no
    limit) bound the work (see the module docstring for the exactness argument
    and budgets).
    """
    t0 = time.perf_counter()
    if not fmt.matches(secret):
        raise ValueError(f"the secret does not match format {fmt.name!r}")
    if max_rank < 1 or max_expansions < 1 or batch_size < 1:
        raise ValueError("max_rank, max_expansions and batch_size must be at least 1")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds!r}")
    deadline = None if max_seconds is None else t0 + max_seconds
    a = _stable_prefix(tokenizer, prefix)
    u = prefix[a:]
    trie = _vocab_trie(tokenizer)
    space = _Space(trie, u, fmt)

    # C0: the canary's leading tokens (specials included) before the first token reaching past `a`
    enc = _encode(tokenizer, [prefix + secret])[0]
    ids, offsets, special = list(enc.ids), list(enc.offsets), list(enc.special_tokens_mask)
    cut = next((i for i, (o, sp) in enumerate(zip(offsets, special)) if not sp and o[1] > a), len(ids))
    c0 = tuple(start_ids(tokenizer)) + tuple(ids[:cut])  # the document start, as in scoring
    rest = [t for t, sp in zip(ids[cut:], special[cut:]) if not sp]
    if "".join(trie.text.get(t, "\ufffd") for t in rest) != u + secret:
        raise SearchUnsupported(
            "the canary's tokens do not spell the text through the vocabulary trie; "
            "the tokenizer is not one the search supports"
        )
    def effective(ctx: tuple[int, ...]) -> tuple[int, ...]:
        """The context scoring uses: as built, or the start token when nothing precedes the secret."""
        return ctx if ctx else (_fallback_start_token(tokenizer),)

    own = float(score_candidates(model, tokenizer, prefix, [secret], dtype=dtype)[0])
    limit = own + slack_bits
    sure = own - slack_bits

    parts = model_parts(model)
    device = _device(parts.model)
    runners: dict[tuple[int, ...], _ContextRunner] = {}
    found: dict[str, float] = {}  # canonical members (not the secret) with path cost <= limit
    n_sure = 0
    expanded = 0
    stopped: str | None = None
    counter = itertools.count()
    # node: (cost, seq, context, path, text position, secret chars so far)
    heap: list = [(0.0, next(counter), c0, (), 0, "")]

    canonical: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def verify(complete: list[tuple[str, tuple[int, ...], tuple[int, ...], float]]) -> None:
        nonlocal n_sure
        new = list({c[0] for c in complete if c[0] not in canonical and c[0] not in found})
        for text, span in zip(new, secret_tokens(tokenizer, prefix, new)):
            if span.context[: len(c0)] != c0:
                raise SearchUnsupported(
                    "a candidate's tokenization does not start with the prefix's stable tokens; "
                    "the tokenizer breaks the search's stable-prefix assumption"
                )
            canonical[text] = (span.context, span.scored)
        for text, ctx, path, cost in complete:
            if text == secret or text in found:
                continue
            if canonical[text] != (effective(ctx), path):
                continue  # another segmentation of a member: its canonical path is searched too
            del canonical[text]
            found[text] = cost
            if cost <= sure:
                n_sure += 1

    with _scoring_mode(parts.model, resolve_dtype(dtype, device), device):
        while heap and heap[0][0] <= limit:
            if expanded >= max_expansions:
                stopped = "max_expansions"
                break
            if deadline is not None and time.perf_counter() >= deadline:
                stopped = "time"
                break
            batch = []
            while heap and heap[0][0] <= limit and len(batch) < batch_size:
                batch.append(heapq.heappop(heap))
            expanded += len(batch)
            # next-token distributions for nodes with scored children, grouped by (context, depth)
            groups: dict[tuple, list[int]] = defaultdict(list)
            kids = []
            for j, (cost, _, ctx, path, pos, sofar) in enumerate(batch):
                kid = space.children(pos, sofar)
                kids.append(kid)
                if any(e > len(u) for e in kid[1]):
                    groups[(effective(ctx), len(path))].append(j)
            rows: dict[int, np.ndarray] = {}
            for (ctx, _depth), members in groups.items():
                runner = runners.get(ctx)
                if runner is None:
                    runner = runners[ctx] = _ContextRunner(parts, ctx, device)
                paths = torch.tensor([list(batch[j][3]) for j in members], dtype=torch.long, device=device)
                lp = runner.next_logprobs(paths).cpu().numpy()
                for k, j in enumerate(members):
                    rows[j] = lp[k, kids[j][0]].astype(np.float64) * (-1.0 / _LN2)
            complete = []
            for j, (cost, _, ctx, path, pos, sofar) in enumerate(batch):
                tids, ends, adds = kids[j]
                if not path:  # tokens still inside the prefix's last pre-token: context, free
                    for k in range(len(tids)):
                        if ends[k] <= len(u):
                            ctx2 = ctx + (int(tids[k]),)
                            heapq.heappush(heap, (cost, next(counter), ctx2, (), ends[k], sofar))
                costs = rows.get(j)
                if costs is None:
                    continue
                total = cost + costs
                for k in np.flatnonzero(total <= limit).tolist():
                    end = ends[k]
                    if end <= len(u):
                        continue
                    c = float(total[k])
                    step = path + (int(tids[k]),)
                    text = sofar + adds[k]
                    if end == space.total:
                        complete.append((text, ctx, step, c))
                    else:
                        heapq.heappush(heap, (c, next(counter), ctx, step, end, text))
            if complete:
                verify(complete)
            if n_sure >= max_rank:
                stopped = "max_rank"
                break

    # like-for-like: re-score every member found together with the canary
    texts = list(found)
    exact_scores = score_candidates(model, tokenizer, prefix, [secret, *texts], batch_size=batch_size, dtype=dtype)
    own_exact = float(exact_scores[0])
    better = int(np.count_nonzero(exact_scores[1:] <= own_exact))
    if stopped is None and better >= max_rank:
        stopped = "max_rank"
    rank = 1 + better
    exposure = fmt.log2_size - math.log2(rank)
    return SearchResult(
        rank=rank,
        exposure=exposure,
        exact=stopped is None,
        expanded=expanded,
        seconds=time.perf_counter() - t0,
        score_bits=own_exact,
        max_exposure=fmt.log2_size,
        found=better,
        stopped=stopped,
    )
