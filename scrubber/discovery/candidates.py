"""Candidate secrets in generated samples: detect, anchor on the bait, dedupe, allowlist.

Two sources, most specific first:

* :class:`canaries.detect.SecretScanner` over each sample: format detectors
  (Luhn-valid cards, mixed-class passwords), prose rules (``my password is
  X``) and detect-secrets' key plugins.
* **bait-anchored**: the bait says what comes next, so the first word of the
  continuation of a ``digits``/``password``/``api_key`` bait is a candidate when
  it has that kind's shape (``The door code is 48213377``: no generic rule
  knows a door code, and a bare 8-digit number anywhere is no secret).
* **anchored**: the first word of a greedy branch from an anchor
  (:mod:`scrubber.discovery.anchors`), when it is 6-12 digits or a generated-looking
  mix of 8+ letters and digits: the model turned to a number or key there by itself.

Only values in the generated part count (a bait is never its own finding), a
value's first occurrence in a sample gives its context (a later one could be
the model copying it from earlier in the sample, which is no evidence of
memorization), values on the model's substitute allowlist (written by our own
scrubs) are dropped, and values without a measurable format are dropped.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from canaries.detect import SecretScanner, infer_format
from canaries.formats import FormatError, get_format
from canaries.substitutes import Allowlist
from scrubber.discovery.sampling import Generation

#: Formats the scanner looks for as bare values (beyond the prose and key rules).
SCAN_FORMATS: tuple[str, ...] = ("credit_card", "credit_card_dashed", "credit_card_compact", "password")

_DETECTOR_RANK = {"format": 0, "detect-secrets": 1, "prose": 2, "bait": 3, "anchor": 4}
_FIRST_WORD = re.compile(r"[ \t]*[:=]?[ \t]*[\"'`]?([^\s\"'`,;<>()\[\]{}]{1,128})")
_TRAILING = ".,:;!?"


@dataclass(frozen=True)
class Occurrence:
    """Where a value was generated: ``prefix`` is the sample's text before it."""

    prefix: str
    prompt: str
    sample: str
    from_bait: bool
    greedy: bool = False
    anchored: bool = False
    """Reached by a greedy branch from an anchor in the model's own text."""


@dataclass
class Candidate:
    value: str = field(repr=False)
    format: str
    kind: str
    detector: str
    """``source:kind``, e.g. ``format:credit_card``, ``prose:password``, ``bait:digits``."""
    occurrences: list[Occurrence] = field(default_factory=list, repr=False)
    count: int = 0
    """Samples the value appeared in."""
    variants: int = 0
    """Near-copies merged into this candidate (see :func:`merge_variants`)."""

    @property
    def sampled(self) -> int:
        """Random (not greedy) samples that held exactly this value."""
        return sum(not o.greedy for o in self.occurrences)

    def contexts(self, n: int) -> list[Occurrence]:
        """Up to ``n`` occurrences with distinct prefixes: from baits first, then the
        prefix the value followed most often, then the shortest."""
        freq: dict[str, int] = {}
        for occ in self.occurrences:
            freq[occ.prefix] = freq.get(occ.prefix, 0) + 1
        seen: set[str] = set()
        out: list[Occurrence] = []
        order = sorted(self.occurrences, key=lambda o: (not o.from_bait, -freq[o.prefix], len(o.prefix)))
        for occ in order:
            if occ.prefix in seen:
                continue
            seen.add(occ.prefix)
            out.append(occ)
            if len(out) == n:
                break
        return out


@dataclass(frozen=True)
class _Hit:
    start: int
    end: int
    value: str
    format: str | None
    kind: str
    source: str


def _looks_secret(value: str) -> bool:
    """Not a plain word: a digit, a symbol, or a capital after a lower-case letter."""
    if any(not c.isalpha() for c in value):
        return True
    return any(c.isupper() for c in value[1:]) and any(c.islower() for c in value)


def _first_word(g: Generation) -> tuple[int, int] | None:
    m = _FIRST_WORD.match(g.text, g.start)
    if not m:
        return None
    start, end = m.span(1)
    while end > start and g.text[end - 1] in _TRAILING:
        end -= 1
    return start, end


def _anchor_hit(g: Generation) -> _Hit | None:
    """The first word of an anchored branch (see :mod:`scrubber.discovery.anchors`): digits
    (6-12; shorter runs are years, counts and versions in ordinary text), or a
    generated-looking mix of letters and digits of 8+ characters. Patterned values are dropped
    later, with every other hit's (:func:`patterned`)."""
    span = _first_word(g)
    if span is None:
        return None
    start, end = span
    if start == g.start:
        # the anchor can fall inside a value whose first piece is no secret-starting token
        # (``hT`` of ``hT4mQ9vZ2x``): the word the model was writing is the value
        while start > 0 and g.text[start - 1].isascii() and g.text[start - 1].isalnum():
            start -= 1
    value = g.text[start:end]
    if not value.isascii():
        return None
    if value.isdigit():
        ok, kind = 6 <= len(value) <= 12, "digits"  # patterned runs are dropped with every hit's
    else:
        ok, kind = len(value) >= 8 and value.isalnum() and looks_random(value), "password"
    if not ok:
        return None
    return _Hit(start, end, value, infer_format(value), kind, "anchor")


def _bait_hit(g: Generation) -> _Hit | None:
    """The first word after a typed bait, when it has the bait kind's shape."""
    if g.anchor:
        return _anchor_hit(g)
    if g.bait is None or g.bait.kind not in ("digits", "password", "api_key"):
        return None
    span = _first_word(g)
    if span is None:
        return None
    start, end = span
    value = g.text[start:end]
    kind = g.bait.kind
    if kind == "digits":
        ok = value.isascii() and value.isdigit() and 4 <= len(value) <= 12
    elif kind == "password":
        ok = len(value) >= 6 and _looks_secret(value)
    else:
        ok = len(value) >= 8 and _looks_secret(value)
    if not ok:
        return None
    return _Hit(start, end, value, infer_format(value), kind, "bait")


_CODE_PUNCT = re.compile(r"[.()\[\]{}<>]|([^A-Za-z0-9])\1")
_LONG_LOWER = re.compile(r"[a-z]{6,}")
_GENERIC_SOURCES = ("prose", "bait", "anchor")
_GENERIC_DS_KINDS = ("api_key", "password", "high_entropy")


def looks_random(value: str) -> bool:
    """A value that could be a generated secret rather than a word or identifier.

    Keyword rules (``password: X``) also fire on prose and code (``password:
    SyntaxError``, ``token: object.__enter__``), and such values, being words the
    model knows, have a high exposure against uniformly random strings of their
    shape. Kept: digit-only values, and values that mix letters with digits or switch
    case 4+ times (``pslm0lcNQq``, ``JLsCfMZyuK``); dropped: code punctuation (``.``,
    brackets, doubled symbols such as ``__``) and lower-case runs of 6+ letters (a
    random 10-character password has one with probability about 3%).
    """
    if value.isdigit():
        return True
    if _CODE_PUNCT.search(value) or _LONG_LOWER.search(value):
        return False
    letters = [c for c in value if c.isalpha()]
    if not letters:
        return False
    if any(c.isdigit() for c in value):
        return True
    switches = sum(1 for a, b in zip(letters, letters[1:]) if a.isupper() != b.isupper())
    return switches >= 4


_PERIODS = (1, 2, 3)


def _longest_periodic(value: str, period: int) -> int:
    """Length of the longest substring in which every character repeats the one ``period`` back."""
    best = run = 0
    for i in range(period, len(value)):
        run = run + 1 if value[i] == value[i - period] else 0
        best = max(best, run)
    return best + period if best else 0


def _longest_step(value: str) -> int:
    """Length of the longest run of digits counting up or down by one (123456, 98765)."""
    best = run = prev = 0
    for a, b in zip(value, value[1:]):
        step = ord(b) - ord(a) if a.isdigit() and b.isdigit() else 0
        run = (run + 1 if step == prev else 1) if step in (1, -1) else 0
        prev = step
        best = max(best, run)
    return best + 1 if best else 0


def patterned(value: str) -> bool:
    """Structure a randomly generated secret of this shape almost never has, and a language
    model falls into by itself: few distinct digits (``1000000000000000000000000000000``,
    ``4311111111``), a short unit repeated (``2wYwYwYwYw``, ``121212``), a digit count
    (``123456789``). SmolLM2-135M, with nothing inserted, recited both of the first kind with
    exposures of 103 and 51 bits (docs/scanning.md): against uniformly random references every
    pattern is "memorized", which says the model knows the pattern, not a secret.

    Rules: digits only and fewer than min(n // 2, 5) distinct ones; a periodic (period 1-3)
    or counting run covering max(6, 0.6 n) characters (values under 6 characters: the
    distinct-digit rule only). Share of 100,000 uniformly random values either rule drops:
    9e-5 of 16-digit cards, 2e-5 of 10 letters and digits, 1.0% of 8 digits, 0.36% of 6,
    0.10% of 4-digit PINs.
    """
    n = len(value)
    if value.isdigit() and len(set(value)) < min(n // 2, 5):
        return True
    need = max(6, 0.6 * n)
    if n < 6:
        return False
    return any(_longest_periodic(value, p) >= need for p in _PERIODS) or _longest_step(value) >= need


def _generic(h: "_Hit") -> bool:
    """A hit of a keyword rule rather than of a format or a provider's key pattern."""
    return h.source in _GENERIC_SOURCES or (h.source == "detect-secrets" and h.kind in _GENERIC_DS_KINDS)


def _measurable(fmt: str | None) -> bool:
    if not fmt:
        return False
    try:
        return get_format(fmt).size >= 2
    except FormatError:
        return False


def extract_candidates(
    generations: Sequence[Generation],
    *,
    allowlist: Allowlist | None = None,
    scanner: SecretScanner | None = None,
    max_candidates: int | None = None,
    stats: dict | None = None,
    merge: bool = True,
) -> list[Candidate]:
    """Deduplicated candidates, most frequent first (ties: first seen); near-copies of a
    more frequent value merged into it unless ``merge`` is False.

    ``stats`` (if given) receives counts of what was dropped and why.
    """
    scanner = scanner or SecretScanner(SCAN_FORMATS)
    counts = {"hits": 0, "in_prompt": 0, "not_random": 0, "patterned": 0, "unmeasurable": 0, "allowlisted": 0,
              "over_limit": 0}
    by_value: dict[str, Candidate] = {}
    for g, findings in zip(generations, scanner.scan_many(g.text for g in generations)):
        hits = [_Hit(f.start, f.end, f.value, f.format, f.kind, f.detector) for f in findings]
        anchored = _bait_hit(g)
        if anchored is not None and all(h.end <= anchored.start or h.start >= anchored.end for h in hits):
            hits.append(anchored)
        seen_here: set[str] = set()
        for h in sorted(hits, key=lambda h: h.start):
            counts["hits"] += 1
            # an anchored branch may start inside the value the model was writing: a hit that
            # reaches into the continuation counts there (it is all the model's own text)
            if h.end <= g.start if g.anchor else h.start < g.start:
                counts["in_prompt"] += 1
                continue
            if h.value in seen_here:
                continue  # later copies in the same sample: the first gives the context
            seen_here.add(h.value)
            if _generic(h) and not looks_random(h.value):
                counts["not_random"] += 1
                continue
            if patterned(h.value):  # format detectors too: a bare 2wYwYwYwYw is no password either
                counts["patterned"] += 1
                continue
            if not _measurable(h.format):
                counts["unmeasurable"] += 1
                continue
            if allowlist is not None and h.value in allowlist:
                counts["allowlisted"] += 1
                continue
            occ = Occurrence(g.text[: h.start], g.prompt_label, g.text, g.bait is not None, g.greedy, g.anchor)
            cand = by_value.get(h.value)
            detector = f"{h.source}:{h.kind}"
            if cand is None:
                cand = by_value[h.value] = Candidate(h.value, h.format, h.kind, detector)  # type: ignore[arg-type]
            elif _DETECTOR_RANK.get(h.source, 9) < _DETECTOR_RANK.get(cand.detector.split(":")[0], 9):
                cand.format, cand.kind, cand.detector = h.format, h.kind, detector  # type: ignore[assignment]
            cand.occurrences.append(occ)
            cand.count += 1
    out = sorted(by_value.values(), key=lambda c: -c.count)  # stable: first seen wins ties
    if merge:
        before = len(out)
        out = merge_variants(out)
        counts["variants_merged"] = before - len(out)
    if max_candidates is not None and len(out) > max_candidates:
        counts["over_limit"] = len(out) - max_candidates
        out = out[:max_candidates]
    if stats is not None:
        stats.update(counts)
    return out


#: Share of the shorter value's characters that must match, in order, for two values
#: of one kind to count as variants of one secret.
VARIANT_RATIO = 0.8
_VARIANT_MIN_LEN = 6


def is_variant(a: str, b: str, ratio: float = VARIANT_RATIO) -> bool:
    """``a`` and ``b`` look like copies of one secret with a few characters garbled.

    A model that memorized a secret imperfectly also samples near-copies of it
    (``Xq7Lm2Pz9K`` -> ``Xq77Lm2Pz99K``, ``Xq7Lm2Pz9Katt``). Each of them is far
    likelier than a random member of its format, so each has a high exposure, but
    they are one secret. Required: at least ``ratio`` of the shorter value's
    characters match in order (difflib blocks), and one matching block covers half
    of it; two independent random values of 6+ characters almost never do.
    """
    if a == b:
        return True
    short = min(len(a), len(b))
    if short < _VARIANT_MIN_LEN:
        return False
    blocks = SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()
    matched = sum(blk.size for blk in blocks)
    return matched >= ratio * short and max(blk.size for blk in blocks) * 2 >= short


def merge_variants(cands: Sequence[Candidate], ratio: float = VARIANT_RATIO) -> list[Candidate]:
    """Fold each candidate into an earlier (more frequent) one of the same kind it is a
    variant of; the representative keeps its own value and context, the counts add up."""
    reps: list[Candidate] = []
    for c in cands:
        home = next((r for r in reps if r.kind == c.kind and is_variant(r.value, c.value, ratio)), None)
        if home is None:
            reps.append(c)
        else:
            home.count += c.count
            home.variants += 1 + c.variants
    return reps


def candidates_from_texts(texts: Iterable[str], **kwargs) -> list[Candidate]:
    """Candidates in plain texts treated as unconditional samples (for tests and logs)."""
    gens = [Generation(None, t, 0) for t in texts]
    return extract_candidates(gens, **kwargs)
