"""``scan_tokenizer``: the tokenizer section of a report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

from scrubber.report.schema import TokenizerFinding, TokenizerSection
from scrubber.tokenizer_scan.discover import discover
from scrubber.tokenizer_scan.known import scan_secret
from scrubber.tokenizer_scan.vocab import VocabView


@dataclass(frozen=True)
class TokenizerScanConfig:
    """Thresholds of the vocabulary leak scan (see docs/tokenizer.md for the reasoning)."""

    # known secrets
    baseline_samples: int = 1000  # random same-format values per (format, prefix)
    alpha: float = 0.01  # flag when the Bonferroni p-value is at most this ...
    min_piece_chars: int = 2  # ... and a piece holding this many secret characters ...
    max_piece_rate: float = 0.01  # ... is used by at most this fraction of random values
    seed: int = 0
    # discovery
    discovery: bool = True
    min_digits: int = 4
    min_password_chars: int = 5
    cluster_window: int = 16
    late_fraction: float = 0.75
    report_points: float = 4.0
    flag_points: float = 6.0
    max_discovery: int = 50
    reveal: bool = False  # set by scan_tokenizer from its ``reveal`` argument

    def settings(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("reveal")
        return d


ADVICE_RETRAIN = (
    "Best fix: retrain the tokenizer on the cleaned corpus (secrets removed or replaced by their substitutes), "
    "then retrain or fine-tune the model with it; scrubbing the weights alone leaves these entries in "
    "tokenizer.json of every released copy."
)
ADVICE_DROP = (
    "Quick fix: drop the leaking entries (scrub with --drop-leaking-tokens): scrubber removes the merges that "
    "build them and renames the entries to unreachable placeholders, keeping every token id so the scrubbed "
    "model still loads; the new tokenizer is written beside the model only if every check text still "
    "encodes and decodes to the same text. Rotate the secrets anyway: earlier copies still hold them."
)


def scan_tokenizer(
    tokenizer: Any,
    canaries: Sequence[Any] | None,
    *,
    reveal: bool = False,
    config: TokenizerScanConfig = TokenizerScanConfig(),
) -> TokenizerSection:
    """Scan a fast BPE tokenizer (transformers fast tokenizer or ``tokenizers.Tokenizer``).

    ``canaries``: known secrets (:class:`canaries.Canary`, or anything with ``id``,
    ``prefix``, ``secret`` and ``format``), each measured against random members of
    its format; ``None`` or empty runs discovery only. Raises
    :class:`~scrubber.tokenizer_scan.vocab.TokenizerScanError` (a ``ScrubberError``)
    for tokenizers it cannot read.
    """
    cfg = replace(config, reveal=reveal)
    view = VocabView.from_tokenizer(tokenizer)
    findings: list[TokenizerFinding] = []
    baselines: dict = {}
    for c in canaries or []:
        findings.append(scan_secret(view, tokenizer, c, cfg, baselines, reveal=reveal))
    if cfg.discovery:
        known_ids = {t for f in findings if f.flagged for t in f.token_ids}
        for f in discover(view, cfg):
            if f.token_ids and set(f.token_ids) <= known_ids:
                continue  # already reported as a piece of a known secret
            findings.append(f)
    flagged = [f for f in findings if f.flagged]
    ids = list(dict.fromkeys(t for f in flagged for t in f.token_ids))
    advice: list[str] = []
    if flagged:
        n_sec = sum(f.kind == "secret" for f in flagged)
        n_voc = len(flagged) - n_sec
        what = []
        if n_sec:
            what.append(f"pieces of {n_sec} known secret{'s' if n_sec != 1 else ''}")
        if n_voc:
            what.append(f"{n_voc} secret-shaped entr{'y' if n_voc == 1 else 'ies'}")
        advice.append(f"The tokenizer holds {' and '.join(what)} ({len(ids)} vocabulary entries).")
        advice.append(ADVICE_RETRAIN)
        advice.append(ADVICE_DROP if view.merges else  # removal edits merges: none for Unigram
                      "Token removal is not available for this tokenizer: retrain it.")
    else:
        advice.append("No vocabulary entry holds secret pieces beyond what random same-format values get; "
                      "nothing to do for the tokenizer.")
    return TokenizerSection(
        tokenizer_kind=view.kind, vocab_size=view.size, n_merges=len(view.merges), findings=findings,
        n_flagged=len(flagged), flagged_token_ids=ids, removable=bool(view.merges), settings=cfg.settings(),
        advice=advice,
    )
