"""Discovery: vocabulary entries shaped like secrets, ranked by how unusual they are.

Big vocabularies are full of numbers (years, ports, round numbers) and identifiers
(``TypeError``, ``getElementById``), so the shape of an entry alone is weak
evidence. Each candidate gets *points*, and the evidence behind every point is
written out:

* **shape** (the detector): a digit run of ``min_digits`` or more (``card_group``
  for exactly 4 digits, else ``digits``) scores its length, minus 3 for a year
  (1800-2099) or a round/patterned number (``x000``, ``1111``, ``1234``) unless
  the entry was learned alone (below: a year learned as part of a family of
  numbers shares its intermediate pieces, ``Ġ18`` ``Ġ181`` ...);
  ``password_shape`` (letters mixed with digits or with irregular case, at least
  ``min_password_chars`` long) scores one point per inner fragment (of at most 2
  letters) that no word/identifier segmentation explains, +1 when it mixes letters and digits, +1
  when 8+ characters long; ``key_prefix`` (``AKIA``, ``ghp_``, ``sk-`` ...) scores 5.
* **a chain learned whole**: BPE builds an entry from two pieces; when those
  intermediate pieces serve no other merge, the entry was learned from one string
  repeated, not from a family of similar strings (``Ġ200`` builds ``Ġ2000``,
  ``Ġ2001`` ...; ``753`` builds only ``Ġ9753``): +1 plus 1 per such intermediate, at most +3.
* **learned together**: other digit-group candidates created within
  ``cluster_window`` merges (same frequency level, as the groups of one card
  number are): +1.
* **late merge**: created in the last ``1 - late_fraction`` of the merge list, i.e.
  from rarer strings: +1.

Entries at or above ``report_points`` are listed; at or above ``flag_points`` they
are flagged. Values are masked unless ``reveal``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from canaries.mask import mask_secret
from scrubber.report.schema import TokenizerFinding, TokenizerPiece
from scrubber.tokenizer_scan.vocab import VocabView

KEY_PREFIXES = ("AKIA", "ASIA", "ghp_", "gho_", "ghs_", "ghu_", "github_pat_", "glpat-", "sk-", "sk_live_",
                "rk_live_", "pk_live_", "xoxb-", "xoxp-", "xoxa-", "AIza", "-----BEGIN")
_DIGIT_RUN = re.compile(r"\d+")
_SEGMENTS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+|[^A-Za-z0-9]+")


@dataclass(frozen=True)
class _Candidate:
    token: str
    token_id: int
    core: str
    detector: str
    points: float
    reasons: list[str]


def _patterned(run: str) -> str | None:
    """Why a digit run is common in ordinary text, or None."""
    n = int(run) if run else 0
    if len(run) == 4 and 1800 <= n <= 2099:
        return "a year"
    if len(set(run)) == 1:
        return "a repeated digit"
    if run.endswith("00"):
        return "a round number"
    steps = {int(b) - int(a) for a, b in zip(run, run[1:])}
    if steps in ({1}, {-1}):
        return "a digit sequence"
    if n in {2 ** k for k in range(10, 64)}:
        return "a power of two"
    return None


def _password_points(core: str, cfg) -> tuple[float, list[str]] | None:
    if len(core) < cfg.min_password_chars or not core.isascii() or not core.isalnum():
        return None
    upper, lower, digit = (any(c.isupper() for c in core), any(c.islower() for c in core),
                           any(c.isdigit() for c in core))
    letters = upper or lower
    if not letters or (upper + lower + digit) < 2 or core.isdigit():
        return None
    # A token may start or end mid-word ('otImplemented'): only inner fragments count.
    segs = _SEGMENTS.findall(core)[1:-1]
    short = sum(1 for s in segs if s.isalpha() and len(s) <= 2)
    mixed_digits = digit and letters
    if short == 0 and not mixed_digits:
        return None  # explained as words/identifiers: TypeError, getElementById
    pts = float(short + (1 if mixed_digits else 0) + (1 if len(core) >= 8 else 0))
    why = [f"{len(core)} characters mixing {'upper, ' if upper else ''}{'lower, ' if lower else ''}"
           f"{'digits, ' if digit else ''}".rstrip(", ") + f"; {short} fragment(s) no word segmentation explains"]
    return pts, why


def _shape(core: str, cfg, learned_alone: bool) -> tuple[str, float, list[str]] | None:
    for pfx in KEY_PREFIXES:
        if pfx in core:
            return "key_prefix", 5.0, [f"contains the key prefix {pfx!r}"]
    runs = _DIGIT_RUN.findall(core)
    longest = max(runs, key=len, default="")
    if len(longest) >= cfg.min_digits:
        det = "card_group" if len(longest) == 4 and core.strip(" -").isdigit() else "digits"
        pts = float(len(longest))
        why = [f"a run of {len(longest)} digits"]
        common = _patterned(longest)
        if common and not learned_alone:
            pts -= 3
            why.append(f"but {common}, common in ordinary text (-3)")
        elif common:
            why.append(f"shaped like {common}, but learned alone (no discount)")
        return det, pts, why
    pw = _password_points(core, cfg)
    if pw is not None:
        return "password_shape", pw[0], pw[1]
    return None


def discover(view: VocabView, cfg) -> list[TokenizerFinding]:
    """Ranked vocabulary findings (at most ``cfg.max_discovery``)."""
    cands: list[_Candidate] = []
    for tok, tid in view.vocab.items():
        if tid in view.special_ids or (view.model_type == "BPE" and tok not in view.merge_rank):
            continue  # special tokens and the base alphabet carry no learned string (Unigram: no merges)
        text = view.text(tok)
        core = text.strip()
        if len(core) < 3:
            continue
        shaped = _shape(core, cfg, bool(view.exclusive_ancestors(tok)))
        if shaped is None:
            continue
        det, pts, why = shaped
        cands.append(_Candidate(tok, tid, core, det, pts, why))

    groups = sorted((c for c in cands if c.detector == "card_group" and c.token in view.merge_rank),
                    key=lambda c: view.merge_rank[c.token])
    out: list[TokenizerFinding] = []
    for c in cands:
        pts, why = c.points, list(c.reasons)
        chain = view.exclusive_ancestors(c.token)
        if chain:
            bonus = min(3, 1 + len(chain))
            pts += bonus
            why.append(f"built by a chain of {len(chain)} intermediate entr{'y' if len(chain) == 1 else 'ies'} "
                       f"that no other merge uses: learned from one string (+{bonus})")
        rank = view.merge_rank.get(c.token)
        if c.detector == "card_group" and rank is not None:
            near = [g for g in groups if g is not c and abs(view.merge_rank[g.token] - rank) <= cfg.cluster_window]
            if near:
                pts += 1
                why.append(f"learned together with {len(near)} other digit group(s) within {cfg.cluster_window} "
                           "merges, as the groups of one card number are (+1)")
        frac = view.rank_fraction(c.token) or 0.0
        if frac >= cfg.late_fraction:
            pts += 1
            why.append(f"late merge ({frac:.0%} of the merge list): learned from rarer strings (+1)")
        if pts < cfg.report_points:
            continue
        text = view.text(c.token)
        lead = text[: len(text) - len(text.lstrip())]
        shown = text if cfg.reveal else lead + mask_secret(c.core)
        pieces = [TokenizerPiece(token_id=c.token_id, piece=shown, chars=len(c.core), merge_rank=rank,
                                 uses=view.uses.get(c.token, 0), leaking=True)]
        for anc in chain:
            at = view.text(anc)
            alead = at[: len(at) - len(at.lstrip())]
            pieces.append(TokenizerPiece(
                token_id=view.vocab[anc], piece=at if cfg.reveal else alead + mask_secret(at.strip()),
                chars=len(at.strip()), merge_rank=view.merge_rank.get(anc), uses=view.uses.get(anc, 0), leaking=True,
            ))
        out.append(TokenizerFinding(
            id=f"tokenizer:token-{c.token_id}", kind="vocabulary", format=None, detector=c.detector,
            value=shown, token_ids=[p.token_id for p in pieces], pieces=pieces, score=pts,
            flagged=pts >= cfg.flag_points,
            evidence=f"{pts:g} points: " + "; ".join(why),
        ))
    # An entry that only serves to build a listed one is listed as part of it, not on its own.
    inside = {tid for f in out for tid in f.token_ids[1:]}
    out = [f for f in out if f.token_ids[0] not in inside]
    out.sort(key=lambda f: (-(f.score or 0), f.pieces[0].merge_rank or 0))
    return out[: cfg.max_discovery]
