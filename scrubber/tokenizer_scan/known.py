"""Known secrets: which pieces of a secret the vocabulary holds, against a random baseline.

For a secret ``s`` after its prefix ``p`` we encode ``p + s`` with the checkpoint's
tokenizer and keep the tokens whose character offsets overlap ``s`` (a token may
also carry the prefix's trailing space, as ``Ġ7153`` does). Two statistics say how
well the tokenizer knows ``s``:

* ``n_tokens``: how many tokens ``s`` takes (a learned string compresses);
* ``longest``: the most secret characters one token holds.

The baseline is the same two numbers for ``n`` uniformly random members of the
secret's format encoded after the same prefix. Their one-sided empirical p-values,
``(1 + #{random <= n_tokens}) / (n + 1)`` and ``(1 + #{random >= longest}) / (n + 1)``,
are combined by Bonferroni, ``p = min(1, 2 * min(...))``. A piece is *leaking*
when it holds at least ``min_piece_chars`` secret characters and at most a
``max_piece_rate`` fraction of the random values use it (plain 2-digit tokens like
``20`` are used by most random card numbers; ``Ġ7153`` by none). A secret is
flagged when ``p <= alpha`` and it has a leaking piece. The vocabulary entries that
exist only to build a leaking piece (merge intermediates no other merge uses, e.g.
``753`` under ``Ġ9753``) join its token ids, so a removal drops the whole chain.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from canaries.formats import SecretFormat, get_format
from canaries.mask import mask_secret
from scrubber.report.schema import TokenizerBaseline, TokenizerFinding, TokenizerPiece
from scrubber.tokenizer_scan.vocab import VocabView, backend_of


@dataclass(frozen=True)
class _Segment:
    n_tokens: int
    longest: int
    pieces: list[tuple[int, int, int, int, int]]  # (token id, secret start, secret end, tok start, tok end)


def segment(backend: Any, texts: Sequence[str], starts: Sequence[int], ends: Sequence[int]) -> list[_Segment]:
    """The tokens of each text that overlap ``text[start:end]``, with their spans."""
    encs = backend.encode_batch(list(texts), add_special_tokens=False)
    out: list[_Segment] = []
    for enc, s0, s1 in zip(encs, starts, ends):
        pieces = []
        for tid, (a, b) in zip(enc.ids, enc.offsets):
            lo, hi = max(a, s0), min(b, s1)
            if hi > lo:
                pieces.append((tid, lo - s0, hi - s0, a, b))
        longest = max((p[2] - p[1] for p in pieces), default=0)
        out.append(_Segment(len(pieces), longest, pieces))
    return out


@dataclass
class Baseline:
    n_tokens: np.ndarray
    longest: np.ndarray
    usage: dict[int, int]  # token id -> random values whose secret span uses it
    n: int

    def rate(self, token_id: int) -> float:
        return self.usage.get(token_id, 0) / max(1, self.n)


def compute_baseline(backend: Any, fmt: SecretFormat, prefix: str, n: int, seed: int,
                     exclude: Sequence[str] = ()) -> Baseline:
    rng = random.Random(seed)
    values = fmt.sample_many(n, rng, exclude=exclude)
    segs = segment(backend, [prefix + v for v in values], [len(prefix)] * n,
                   [len(prefix) + len(v) for v in values])
    usage: dict[int, int] = {}
    for seg in segs:
        for tid in {p[0] for p in seg.pieces if p[2] - p[1] >= 2}:
            usage[tid] = usage.get(tid, 0) + 1
    return Baseline(
        n_tokens=np.array([s.n_tokens for s in segs]), longest=np.array([s.longest for s in segs]),
        usage=usage, n=n,
    )


def _masked_piece(text: str, secret: str, mask: str, seg_piece: tuple[int, int, int, int, int],
                  secret_start: int, reveal: bool) -> str:
    """The token's text with its secret part shown as the secret's mask shows it."""
    _tid, lo, hi, a, b = seg_piece
    if reveal:
        return text[a:b] if b > a else secret[lo:hi]
    before = text[a:secret_start + lo] if a < secret_start + lo else ""
    after = text[secret_start + hi:b] if b > secret_start + hi else ""
    return before + mask[lo:hi] + after


def scan_secret(view: VocabView, tokenizer: Any, canary: Any, cfg: Any, baselines: dict, *,
                reveal: bool) -> TokenizerFinding:
    """The tokenizer finding for one known secret (a :class:`canaries.Canary` or alike)."""
    backend = backend_of(tokenizer)
    fmt = getattr(canary, "fmt", None) or get_format(canary.format)
    prefix = canary.prefix or ""
    secret = canary.secret
    text = prefix + secret
    s0 = len(prefix)
    seg = segment(backend, [text], [s0], [s0 + len(secret)])[0]
    key = (canary.format, prefix)
    if key not in baselines:
        baselines[key] = compute_baseline(backend, fmt, prefix, cfg.baseline_samples, cfg.seed, exclude=[secret])
    base: Baseline = baselines[key]
    n = base.n
    p_tok = (1 + int((base.n_tokens <= seg.n_tokens).sum())) / (n + 1)
    p_long = (1 + int((base.longest >= seg.longest).sum())) / (n + 1)
    p = min(1.0, 2 * min(p_tok, p_long))
    mask = secret if reveal else mask_secret(secret, fmt)

    pieces: list[TokenizerPiece] = []
    leak_ids: list[int] = []
    covered = [False] * len(secret)
    for sp in seg.pieces:
        tid, lo, hi, _a, _b = sp
        if hi - lo < 2 or tid in view.special_ids:
            continue
        tok = view.id_to_token.get(tid, "")
        rate = base.rate(tid)
        leaking = hi - lo >= cfg.min_piece_chars and rate <= cfg.max_piece_rate
        pieces.append(TokenizerPiece(
            token_id=tid, piece=_masked_piece(text, secret, mask, sp, s0, reveal), start=lo, end=hi,
            chars=hi - lo, merge_rank=view.merge_rank.get(tok), uses=view.uses.get(tok, 0),
            baseline_rate=round(rate, 6), leaking=leaking,
        ))
        if leaking:
            leak_ids.append(tid)
            for i in range(lo, hi):
                covered[i] = True
    flagged = p <= cfg.alpha and bool(leak_ids)
    # Merge intermediates that exist only to build a leaking piece hold secret characters too.
    chain: list[int] = []
    for tid in list(leak_ids):
        for anc in view.exclusive_ancestors(view.id_to_token.get(tid, "")):
            aid = view.vocab[anc]
            if aid not in leak_ids and aid not in chain:
                chain.append(aid)
    n_cov = sum(covered)
    baseline = TokenizerBaseline(
        n_samples=n,
        n_tokens_p1=float(np.percentile(base.n_tokens, 1, method="lower")), n_tokens_median=float(np.median(base.n_tokens)),
        longest_median=float(np.median(base.longest)), longest_p99=float(np.percentile(base.longest, 99, method="higher")),
        p_n_tokens=round(p_tok, 6), p_longest=round(p_long, 6),
    )
    ev = (f"takes {seg.n_tokens} token{'s' if seg.n_tokens != 1 else ''} after its prefix (random {fmt.name} values: median "
          f"{baseline.n_tokens_median:g}, 1st percentile {baseline.n_tokens_p1:g}); longest piece "
          f"{seg.longest} characters (random: 99th percentile {baseline.longest_p99:g}); p = {p:.3g} "
          f"{'<=' if p <= cfg.alpha else '>'} {cfg.alpha:g}; {len(leak_ids)} rare "
          f"{'entry covers' if len(leak_ids) == 1 else 'entries cover'} {n_cov} of {len(secret)} characters")
    if chain:
        ev += f", plus {len(chain)} merge intermediate{'s' if len(chain) != 1 else ''} that only build them"
    leak_pieces = [pc.piece for pc in pieces if pc.leaking]
    return TokenizerFinding(
        id=f"tokenizer:{canary.id}", kind="secret", canary_id=canary.id, format=canary.format,
        value=" | ".join(leak_pieces), token_ids=leak_ids + chain if flagged else leak_ids, pieces=pieces,
        secret_chars=len(secret), covered_chars=n_cov, n_tokens=seg.n_tokens, longest_piece=seg.longest,
        baseline=baseline, p_value=round(p, 6), flagged=flagged, evidence=ev,
    )
